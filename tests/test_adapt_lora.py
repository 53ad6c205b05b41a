"""``blocksearch adapt lora`` (adapt/lora.py) on the tiny SD pipeline and a tiny PixArt transformer: a peft LoRA on the
teacher, remapped onto a cut student, loads with stock ``load_lora_weights`` warning-free and gives the teacher's
deltas on every kept module; kohya and diffusers' older keys; another base model refused."""

import logging
import re
import warnings
from contextlib import contextmanager

import pytest
import torch
from diffusers import StableDiffusionPipeline
from diffusers.utils import logging as diffusers_logging
from diffusers.utils.state_dict_utils import convert_state_dict_to_kohya
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file, save_file

from blocksearch.adapt.blockmap import block_map, read_block_map, write_block_map
from blocksearch.adapt.lora import adapt_lora
from blocksearch.cli import main
from blocksearch.errors import BlocksearchError
from blocksearch.families.base import get_family
from blocksearch.teachers import with_denoiser
from tests.conftest import make_tiny_pipeline, tiny_unet
from tests.test_families_dit import TINY as TINY_DIT

CUT = "L1-1-1_T1-1-1_Mnone"  # bk_tiny: removes a stage (renames every up stage) and a layer per stage
TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "conv1"]  # attention, a projection and convolutions
ADAPTER = "default"
KEY_WARNING = re.compile(r"(missing|unexpected) keys|inconsistency", re.I)  # diffusers' words for both


def add_lora(model, seed=0, targets=TARGETS) -> LoraConfig:
    """A random (non-zero) peft LoRA on ``model``: r 4, alpha 8, so peft's scale alpha/r is 2."""
    torch.manual_seed(seed)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False)
    model.add_adapter(config, adapter_name=ADAPTER)
    return config


def deltas(model) -> dict[str, torch.Tensor]:
    """Every LoRA layer's delta weight (scale included), by module name."""
    return {name: m.get_delta_weight(next(iter(m.lora_A))) for name, m in model.named_modules()
            if hasattr(m, "lora_A") and len(m.lora_A)}


@pytest.fixture(scope="module")
def sd(tmp_path_factory):
    """(tmp, the teacher pipeline with a LoRA, the LoRA's deltas, the student folder): the teacher LoRA in peft
    (with diffusers' adapter metadata), kohya and diffusers' older keys; the student as export writes it."""
    tmp = tmp_path_factory.mktemp("adapt")
    pipe = make_tiny_pipeline()
    family, genome = get_family("unet"), get_family("unet").arch_from_id(CUT)
    student = family.build_student(pipe.unet, genome).unet
    with_denoiser(pipe, student, family).save_pretrained(tmp / "student", safe_serialization=True)
    write_block_map(tmp / "student", block_map(family, pipe.unet, genome, "toy", "unet_blocks"))
    config = add_lora(pipe.unet)
    state = get_peft_model_state_dict(pipe.unet, adapter_name=ADAPTER)
    StableDiffusionPipeline.save_lora_weights(tmp / "peft", unet_lora_layers=state,
                                              unet_lora_adapter_metadata=config.to_dict())
    scaled = {f"unet.{k}": v * 2 if ".lora_B." in k else v for k, v in state.items()}  # peft's scale 2, in B
    save_file(convert_state_dict_to_kohya(scaled), tmp / "kohya.safetensors")  # kohya's alpha: the rank
    save_file({k.replace(".lora_A.", ".lora.down.").replace(".lora_B.", ".lora.up."): v for k, v in scaled.items()},
              tmp / "old.safetensors")  # diffusers' older keys, no alpha: scale 1
    return tmp, pipe, deltas(pipe.unet)


@contextmanager
def load_messages():
    """Warnings and diffusers' log records at WARNING and above, whatever verbosity an earlier test set."""
    seen, level = [], diffusers_logging.get_verbosity()
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: seen.append(record.getMessage())
    diffusers_logging.set_verbosity_warning()
    logging.getLogger("diffusers").addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield seen
        seen += [str(w.message) for w in caught]
    finally:
        logging.getLogger("diffusers").removeHandler(handler)
        diffusers_logging.set_verbosity(level)


def expected_counts(doc: dict, teacher_deltas: dict) -> tuple[int, int, int, float]:
    """(kept, renamed, dropped, norm share) computed from the block map and the teacher's deltas by hand."""
    inverse = {t: s for s, t in doc["modules"].items()}
    kept = [t for t in teacher_deltas if t in inverse]
    norm = lambda names: sum(float(teacher_deltas[t].double().pow(2).sum()) for t in names)  # noqa: E731
    return (len(kept), sum(inverse[t] != t for t in kept), len(teacher_deltas) - len(kept),
            (norm(kept) / norm(teacher_deltas)) ** 0.5)


@pytest.mark.parametrize("lora", ["peft", "kohya.safetensors", "old.safetensors"])
def test_the_mapped_lora_loads_on_the_student_warning_free_with_the_teachers_deltas(sd, tmp_path, lora):
    tmp, _, teacher_deltas = sd
    result = adapt_lora(tmp / lora, tmp / "student", tmp_path / "out")
    doc = read_block_map(tmp / "student")
    kept, renamed, dropped, share = expected_counts(doc, teacher_deltas)
    assert (result.kept, result.renamed, len(result.dropped)) == (kept, renamed, dropped)
    assert 0 < renamed < kept and dropped > 0 and result.norm_kept == pytest.approx(share, rel=1e-6)
    teacher = make_tiny_pipeline()
    with load_messages() as teacher_messages:  # what diffusers says of the input on the teacher (unet-only: a note)
        teacher.load_lora_weights(tmp / lora)
    pipe = StableDiffusionPipeline.from_pretrained(tmp / "student")
    with load_messages() as messages:
        pipe.load_lora_weights(tmp_path / "out")
    assert messages == teacher_messages and not any(KEY_WARNING.search(m) for m in messages)
    loaded = deltas(pipe.unet)
    assert len(loaded) == kept
    for s, delta in loaded.items():
        torch.testing.assert_close(delta, teacher_deltas[doc["modules"][s]], rtol=1e-5, atol=1e-7)


def test_the_mapped_lora_equals_the_teachers_kept_modules_added_by_hand(sd, tmp_path):
    """The student with the mapped LoRA gives the outputs of the student whose kept weights get the teacher's
    deltas by hand (W + scale * B A)."""
    tmp, _, teacher_deltas = sd
    adapt_lora(tmp / "peft", tmp / "student", tmp_path / "out.safetensors")
    doc = read_block_map(tmp / "student")
    pipe = StableDiffusionPipeline.from_pretrained(tmp / "student")
    by_hand = StableDiffusionPipeline.from_pretrained(tmp / "student").unet
    with torch.no_grad():
        for s, t in doc["modules"].items():
            if t in teacher_deltas:
                by_hand.get_submodule(s).weight += teacher_deltas[t]
    pipe.load_lora_weights(tmp_path / "out.safetensors")
    torch.manual_seed(1)
    x = dict(sample=torch.randn(2, 4, 16, 16), timestep=torch.tensor([10, 700]),
             encoder_hidden_states=torch.randn(2, 77, 16))
    with torch.no_grad():
        with_lora, hand, bare = pipe.unet(**x).sample, by_hand(**x).sample, pipe.unet(**x, cross_attention_kwargs={
            "scale": 0.0}).sample
    torch.testing.assert_close(with_lora, hand, rtol=1e-4, atol=1e-5)
    assert (with_lora - bare).abs().max() > 1e-3  # the LoRA does something: the check can fail


def test_kohya_and_peft_names_give_the_same_modules(sd, tmp_path):
    """diffusers <-> kohya: the same LoRA in both conventions maps to the same student modules and tensors."""
    tmp, _, _ = sd
    peft_out = load_file(adapt_lora(tmp / "peft", tmp / "student", tmp_path / "p.safetensors").out)
    kohya_out = load_file(adapt_lora(tmp / "kohya.safetensors", tmp / "student", tmp_path / "k.safetensors").out)
    as_kohya = convert_state_dict_to_kohya(peft_out)  # baked scale: alpha == r
    assert set(as_kohya) == set(kohya_out)
    assert "lora_unet_up_blocks_0_resnets_1_conv1.lora_down.weight" in kohya_out  # teacher up_blocks.1.resnets.2
    assert not any(k.startswith("lora_unet_mid_block") or "down_blocks_3" in k for k in kohya_out)
    for key, value in kohya_out.items():
        if key.endswith(".alpha"):
            continue
        alpha = float(kohya_out[key.split(".")[0] + ".alpha"]) / 4
        torch.testing.assert_close(value * (alpha if "lora_up" in key else 1.0), as_kohya[key])


def test_the_cli_prints_the_counts_and_where_the_lora_went(sd, tmp_path, capsys):
    tmp, _, teacher_deltas = sd
    assert main(["adapt", "lora", str(tmp / "peft"), "--student", str(tmp / "student"), "-o", str(tmp_path)]) == 0
    kept, renamed, dropped, share = expected_counts(read_block_map(tmp / "student"), teacher_deltas)
    out = capsys.readouterr().out.splitlines()
    assert out[0] == (f"lora: {kept + dropped} modules on the unet: {kept} kept ({renamed} renamed), {dropped} "
                      f"dropped (removed by the cut); weight norm kept {100 * share:.1f}%")
    assert out[-1] == f"student LoRA written to {tmp_path / 'pytorch_lora_weights.safetensors'}"


def test_a_lora_for_another_base_model_is_refused_in_one_line(sd, tmp_path, capsys):
    tmp, _, _ = sd
    other = tiny_unet("sd-v2")  # SD-v2's topology, another text width: its cross-attention keys are 24 wide
    add_lora(other, targets=["to_k"])
    state = {f"unet.{k}": v for k, v in get_peft_model_state_dict(other, adapter_name=ADAPTER).items()}
    save_file(state, tmp_path / "v2.safetensors")
    assert main(["adapt", "lora", str(tmp_path / "v2.safetensors"), "--student", str(tmp / "student"), "-o",
                 str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "another base model" in err and "attn2.to_k" in err
    assert not (tmp_path / "o").exists()
    cases = {"transformer.transformer_blocks.0.attn1.to_q": "targets a transformer; the student's denoiser is a unet",
             "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn9.to_q": "no module of teacher 'toy'"}
    for module, message in cases.items():
        save_file({f"{module}.lora_A.weight": torch.ones(4, 8), f"{module}.lora_B.weight": torch.ones(8, 4)},
                  tmp_path / "bad.safetensors")
        with pytest.raises(BlocksearchError, match=message):
            adapt_lora(tmp_path / "bad.safetensors", tmp / "student", tmp_path / "o")
    sgm = "lora_unet_input_blocks_4_1_proj_in"  # kohya in the original checkpoint's names (SDXL's kohya LoRAs)
    save_file({f"{sgm}.lora_down.weight": torch.ones(4, 8), f"{sgm}.lora_up.weight": torch.ones(8, 4)},
              tmp_path / "sgm.safetensors")
    with pytest.raises(BlocksearchError, match="names the original checkpoint's blocks"):
        adapt_lora(tmp_path / "sgm.safetensors", tmp / "student", tmp_path / "o")
    save_file({"unet.conv_in.lora_A.weight": torch.ones(4, 4, 3, 3)}, tmp_path / "half.safetensors")
    with pytest.raises(BlocksearchError, match="needs both its down"):
        adapt_lora(tmp_path / "half.safetensors", tmp / "student", tmp_path / "o")
    (tmp_path / "lora.bin").write_bytes(b"pickle")
    with pytest.raises(BlocksearchError, match="not a .safetensors file"):
        adapt_lora(tmp_path / "lora.bin", tmp / "student", tmp_path / "o")


def test_a_transformer_lora_is_remapped_block_by_block(tmp_path):
    """The dit family: SD3 blocks 1 and 3 of 4 kept (as student blocks 0 and 1); the mapped LoRA, loaded by the
    stock ``load_lora_adapter``, gives the teacher's deltas there; blocks 0 and 2 are dropped."""
    torch.manual_seed(0)
    teacher = TINY_DIT["sd3"]().eval()  # PixArt's transformer has no LoRA loader in diffusers; SD3's has
    family = get_family("dit").for_teacher({**dict(teacher.config), "_class_name": type(teacher).__name__})
    arch = family.arch_from_id("D1.3")
    student = family.build_student(teacher, arch).denoiser
    student.save_pretrained(tmp_path / "student" / "transformer", safe_serialization=True)
    write_block_map(tmp_path / "student", block_map(family, teacher, arch, "toy-dit", "dit_blocks"))
    add_lora(teacher, targets=["to_q", "to_v", "ff.net.2"])
    save_file({f"transformer.{k}": v for k, v in get_peft_model_state_dict(teacher, adapter_name=ADAPTER).items()},
              tmp_path / "lora.safetensors")
    result = adapt_lora(tmp_path / "lora.safetensors", tmp_path / "student", tmp_path / "out.safetensors")
    assert (result.kept, result.renamed, len(result.dropped)) == (6, 6, 6)  # attn.to_q, attn.to_v, ff.net.2 a block
    assert all(d.startswith(("transformer_blocks.0.", "transformer_blocks.2.")) for d in result.dropped)
    with load_messages() as messages:
        student.load_lora_adapter(str(tmp_path / "out.safetensors"), prefix="transformer")
    assert not any(KEY_WARNING.search(m) for m in messages)
    # the saved file has no adapter metadata, so it means scale 1 (B A) where the teacher's peft layers use 2
    teacher_deltas, student_deltas = deltas(teacher), deltas(student)
    assert set(student_deltas) == {k.replace("blocks.1.", "blocks.0.").replace("blocks.3.", "blocks.1.")
                                   for k in teacher_deltas if k.startswith(("transformer_blocks.1.",
                                                                            "transformer_blocks.3."))}
    for name, delta in student_deltas.items():
        source = name.replace("blocks.1.", "blocks.3.").replace("blocks.0.", "blocks.1.")
        torch.testing.assert_close(2 * delta, teacher_deltas[source])
