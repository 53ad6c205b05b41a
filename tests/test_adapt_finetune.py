"""``blocksearch adapt lora --finetune-steps N`` (adapt/finetune.py): the mapped LoRA continued on the student by KD
against the tiny teacher with its LoRA fused. 0 steps reproduce the mapped LoRA's deltas exactly; N steps change only
the LoRA, lower the KD loss against the teacher-plus-LoRA, and the result loads warning-free with the stock loader,
in the input's key convention."""

import pytest
import torch
from diffusers import StableDiffusionPipeline
from diffusers.utils.state_dict_utils import convert_state_dict_to_kohya
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file, save_file

from blocksearch.adapt.blockmap import block_map, write_block_map
from blocksearch.adapt.finetune import finetune_lora
from blocksearch.adapt.lora import adapt_lora
from blocksearch.cli import main
from blocksearch.errors import BlocksearchError
from blocksearch.families.base import get_family
from blocksearch.recipe.distill import DistillConfig, Distiller, batch_stream
from blocksearch.teachers import load_teacher, with_denoiser
from tests.conftest import make_tiny_pipeline, save_tiny_teacher
from tests.test_adapt_lora import ADAPTER, KEY_WARNING, add_lora, deltas, load_messages

CUT = "L1-1-1_T1-1-1_Mnone"  # bk_tiny
KD = dict(batch_size=4, lr=5e-3, seed=0)
pytestmark = pytest.mark.usefixtures("one_thread")  # 2 OpenMP threads on the shared 2-core machine: far slower


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(tmp, teacher folder): the tiny teacher, a student cut from it, a peft LoRA on the teacher (peft keys, scale
    folded in) and the same LoRA in kohya keys."""
    tmp = tmp_path_factory.mktemp("ft")
    teacher = save_tiny_teacher(tmp)
    pipe = make_tiny_pipeline()  # the same seeded weights as the saved teacher
    family, genome = get_family("unet"), get_family("unet").arch_from_id(CUT)
    student = family.build_student(pipe.unet, genome).unet
    with_denoiser(pipe, student, family).save_pretrained(tmp / "student", safe_serialization=True)
    write_block_map(tmp / "student", block_map(family, pipe.unet, genome, "toy", "unet_blocks"))
    add_lora(pipe.unet, targets=["to_q", "to_v", "proj_in"])
    state = {f"unet.{k}": v * 2 if ".lora_B." in k else v  # peft's scale 2 (alpha 8 / r 4), folded into B
             for k, v in get_peft_model_state_dict(pipe.unet, adapter_name=ADAPTER).items()}
    save_file(state, tmp / "lora.safetensors")
    save_file(convert_state_dict_to_kohya(state), tmp / "kohya.safetensors")
    return tmp, teacher


def student_deltas(folder, lora):
    pipe = StableDiffusionPipeline.from_pretrained(folder)
    with load_messages() as messages:
        pipe.load_lora_weights(lora)
    assert not any(KEY_WARNING.search(m) for m in messages), messages
    return pipe.unet, deltas(pipe.unet)


@pytest.mark.parametrize("lora", ["lora.safetensors", "kohya.safetensors"])
def test_zero_steps_keep_the_mapped_lora_and_n_steps_train_only_the_lora(setup, tmp_path, lora):
    tmp, teacher = setup
    adapt_lora(tmp / lora, tmp / "student", tmp_path / "mapped.safetensors")
    zero = finetune_lora(tmp / lora, tmp_path / "mapped.safetensors", tmp / "student", tmp_path / "zero.safetensors",
                         0, teacher, **KD)
    tuned = finetune_lora(tmp / lora, tmp_path / "mapped.safetensors", tmp / "student", tmp_path / "tuned.safetensors",
                          6, teacher, **KD)
    assert set(load_file(zero.out)) == set(load_file(tuned.out))
    assert all(k.startswith("lora_unet_") for k in load_file(tuned.out)) == (lora == "kohya.safetensors")
    _, mapped = student_deltas(tmp / "student", tmp_path / "mapped.safetensors")
    _, kept = student_deltas(tmp / "student", zero.out)
    _, trained = student_deltas(tmp / "student", tuned.out)
    assert set(mapped) == set(kept) == set(trained)
    for name in mapped:
        torch.testing.assert_close(kept[name], mapped[name], rtol=1e-5, atol=1e-7)
    assert max(float((trained[n] - mapped[n]).abs().max()) for n in mapped) > 1e-4  # the LoRA trained
    assert tuned.steps == 6 and tuned.first_loss > 0 and tuned.last_loss > 0


def test_fine_tuning_lowers_the_kd_loss_against_the_teacher_with_its_lora(setup, tmp_path):
    """On held-out batches of the KD stream (not trained on), the fine-tuned LoRA is closer to the teacher-plus-LoRA
    than the mapped one: the loss fine-tuning minimises, measured independently."""
    tmp, teacher = setup
    adapt_lora(tmp / "lora.safetensors", tmp / "student", tmp_path / "mapped.safetensors")
    tuned = finetune_lora(tmp / "lora.safetensors", tmp_path / "mapped.safetensors", tmp / "student",
                          tmp_path / "tuned.safetensors", 20, teacher, **KD)
    t = load_teacher(teacher)
    t.pipeline.load_lora_weights(tmp / "lora.safetensors")
    t.pipeline.fuse_lora()
    config = DistillConfig(steps=1, teacher_cache="off", lambda_task=0.0, **KD)
    stream, losses = batch_stream(t, config), {}
    for name, file in (("mapped", tmp_path / "mapped.safetensors"), ("tuned", tuned.out)):
        student = t.family.load_student(tmp / "student", t.unet)
        pipe = with_denoiser(t.pipeline, student.denoiser, t.family)
        student.denoiser.load_lora_adapter(load_file(file), prefix="unet", adapter_name="x")
        recipe = Distiller(t, student, config)
        with torch.no_grad():
            losses[name] = sum(float(recipe.losses(b, *recipe.teacher_targets(b))["loss"])
                               for b in (stream[i] for i in range(100, 104)))
        recipe.close()
        del pipe
    assert losses["tuned"] < 0.9 * losses["mapped"], losses


def test_the_cli_fine_tunes_and_refuses_what_it_cannot(setup, tmp_path, capsys):
    tmp, teacher = setup
    assert main(["adapt", "lora", str(tmp / "lora.safetensors"), "--student", str(tmp / "student"), "-o",
                 str(tmp_path), "--finetune-steps", "2", "--teacher", teacher, "--batch-size", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("lora: ") and out[1].startswith("finetune: 2 KD steps against the teacher with its "
                                                             "LoRA in ")
    assert out[-1] == f"student LoRA written to {tmp_path / 'pytorch_lora_weights.safetensors'}"
    assert main(["adapt", "lora", str(tmp / "lora.safetensors"), "--student", str(tmp / "student"), "-o",
                 str(tmp_path), "--finetune-steps", "-1"]) == 2
    assert "--finetune-steps -1; allowed: an integer >= 0" in capsys.readouterr().err
    with pytest.raises(BlocksearchError, match="lr must be > 0"):
        finetune_lora(tmp / "lora.safetensors", tmp_path / "pytorch_lora_weights.safetensors", tmp / "student",
                      tmp_path / "x.safetensors", 1, teacher, lr=-1.0)
