"""``blocksearch adapt ip-adapter`` (adapt/ip_adapter.py) on the tiny SD pipeline: a random IP-Adapter on the teacher,
remapped onto cut students, loads through the stock ``pipe.load_ip_adapter`` from a local folder (offline, a tiny
random CLIP image encoder beside it) with no key warnings, every kept layer's weights the teacher's; another base
model's IP-Adapter and transformer students are refused in one line."""

import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import load_file, save_file
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from blocksearch.adapt.blockmap import block_map, read_block_map, write_block_map
from blocksearch.adapt.ip_adapter import adapt_ip_adapter, cross_attention_layers
from blocksearch.cli import main
from blocksearch.errors import BlocksearchError
from blocksearch.families.base import get_family
from blocksearch.teachers import with_denoiser
from tests.conftest import make_tiny_pipeline
from tests.test_adapt_lora import KEY_WARNING, load_messages
from tests.test_families_dit import TINY as TINY_DIT

EMBED = 8  # the tiny image encoder's projection width: ImageProjection's input
pytestmark = pytest.mark.usefixtures("one_thread")  # 2 OpenMP threads on the shared 2-core machine: far slower
DESIGNS = ["L1-1-1-1_T1-1-1-0_Mnone", "L1-1-1_T1-1-1_Mnone", "L2-1-2-1_T1-1-1-0_Mattn"]  # bk_small, bk_tiny, a mid kept


def ip_adapter_state(unet, seed=0) -> dict[str, torch.Tensor]:
    """A random IP-Adapter for ``unet`` in the file's numbering: layer k of the cross-attention processors is
    ``ip_adapter.{2k+1}``; an ImageProjection (4 tokens) from the image embedding to the text width."""
    gen = torch.Generator().manual_seed(seed)
    width = unet.config.cross_attention_dim
    state = {"image_proj.proj.weight": torch.randn(4 * width, EMBED, generator=gen),
             "image_proj.proj.bias": torch.randn(4 * width, generator=gen),
             "image_proj.norm.weight": torch.ones(width), "image_proj.norm.bias": torch.zeros(width)}
    for k, layer in enumerate(cross_attention_layers(unet)):
        hidden = unet.get_submodule(layer).to_k.weight.shape[0]
        for proj in ("to_k_ip", "to_v_ip"):
            state[f"ip_adapter.{2 * k + 1}.{proj}.weight"] = torch.randn(hidden, width, generator=gen)
    return state


@pytest.fixture(scope="module")
def sd(tmp_path_factory):
    """(tmp, teacher pipeline): the teacher saved as a folder (its config for the meta rebuild) and its IP-Adapter
    folder (ip_adapter.safetensors + image_encoder/)."""
    tmp = tmp_path_factory.mktemp("ip")
    pipe = make_tiny_pipeline()
    pipe.save_pretrained(tmp / "teacher", safe_serialization=True)
    (tmp / "adapter").mkdir()
    save_file(ip_adapter_state(pipe.unet), tmp / "adapter" / "ip_adapter.safetensors")
    torch.manual_seed(0)
    encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=32,
        patch_size=8, projection_dim=EMBED))
    encoder.save_pretrained(tmp / "adapter" / "image_encoder", safe_serialization=True)
    return tmp, pipe


def student_folder(tmp, pipe, arch_id):
    family = get_family("unet")
    arch = family.arch_from_id(arch_id)
    student = family.build_student(pipe.unet, arch).unet
    with_denoiser(pipe, student, family).save_pretrained(tmp / arch_id, safe_serialization=True)
    write_block_map(tmp / arch_id, block_map(family, pipe.unet, arch, "toy", "unet_blocks"))
    return tmp / arch_id


def load(folder, adapter):
    """The pipeline of ``folder`` with the IP-Adapter folder ``adapter`` loaded by the stock loader (offline)."""
    pipe = StableDiffusionPipeline.from_pretrained(folder)
    with load_messages() as messages:
        pipe.load_ip_adapter(str(adapter), subfolder="", weight_name="ip_adapter.safetensors", local_files_only=True)
    return pipe, messages


def ip_weights(unet) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(to_k_ip, to_v_ip) weights of each loaded IP-Adapter processor, by its attention module."""
    return {name.removesuffix(".processor"): (p.to_k_ip[0].weight, p.to_v_ip[0].weight)
            for name, p in unet.attn_processors.items() if hasattr(p, "to_k_ip")}


def set_scale(unet, scale: float) -> None:
    """The IP-Adapter's scale on every processor. ``pipe.set_ip_adapter_scale`` cannot be used on these students:
    diffusers' ``_maybe_expand_lora_scales`` adds 1 to ``layers_per_block``, a list per stage in a student."""
    for p in unet.attn_processors.values():
        if hasattr(p, "to_k_ip"):
            p.scale = [scale] * len(p.scale)


@pytest.mark.parametrize("arch_id", DESIGNS)
def test_the_mapped_ip_adapter_loads_on_the_student_with_the_teachers_layers(sd, tmp_path, arch_id, capsys):
    tmp, pipe = sd
    folder = student_folder(tmp_path, pipe, arch_id)
    assert main(["adapt", "ip-adapter", str(tmp / "adapter"), "--student", str(folder), "--teacher",
                 str(tmp / "teacher"), "-o", str(tmp_path / "ip")]) == 0
    out = capsys.readouterr().out.splitlines()
    teacher, t_messages = load(tmp / "teacher", tmp / "adapter")
    student, messages = load(folder, tmp_path / "ip")
    assert not any(KEY_WARNING.search(m) for m in messages + t_messages) and messages == t_messages
    t_ip, s_ip = ip_weights(teacher.unet), ip_weights(student.unet)
    modules = read_block_map(folder)["modules"]
    assert set(s_ip) == set(cross_attention_layers(student.unet)) and len(s_ip) < len(t_ip)
    for layer, (k, v) in s_ip.items():
        source = modules[f"{layer}.to_k"].removesuffix(".to_k")
        torch.testing.assert_close(k, t_ip[source][0])
        torch.testing.assert_close(v, t_ip[source][1])
    written = load_file(tmp_path / "ip" / "ip_adapter.safetensors")
    assert {int(k.split(".")[1]) for k in written if k.startswith("ip_adapter.")} == set(range(1, 2 * len(s_ip), 2))
    assert out[0] == (f"ip-adapter: {len(s_ip)} of the teacher's {len(t_ip)} cross-attention layers kept, "
                      f"{len(t_ip) - len(s_ip)} dropped (removed by the cut); image projection unchanged")
    student.set_progress_bar_config(disable=True)
    run = lambda scale: set_scale(student.unet, scale) or student(  # noqa: E731
        "a red circle", ip_adapter_image=torch.rand(1, 3, 32, 32), num_inference_steps=2, output_type="np",
        generator=torch.Generator().manual_seed(0)).images
    with_image, without = run(1.0), run(0.0)
    assert with_image.shape == (1, 64, 64, 3) and abs(with_image - without).max() > 1e-4  # the adapter acts


def test_an_ip_adapter_the_student_cannot_take_is_refused_in_one_line(sd, tmp_path, capsys):
    tmp, pipe = sd
    folder = student_folder(tmp_path, pipe, DESIGNS[1])
    state = load_file(tmp / "adapter" / "ip_adapter.safetensors")
    save_file({k: v for k, v in state.items() if not k.startswith("ip_adapter.15.")}, tmp_path / "short.safetensors")
    capsys.readouterr()
    assert main(["adapt", "ip-adapter", str(tmp_path / "short.safetensors"), "--student", str(folder), "--teacher",
                 str(tmp / "teacher"), "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "another base model" in err, err
    wide = {k: torch.cat([v, v], 1) if k.startswith("ip_adapter.") else v for k, v in state.items()}
    save_file(wide, tmp_path / "wide.safetensors")
    with pytest.raises(BlocksearchError, match="does not fit the student's .*another base model"):
        adapt_ip_adapter(tmp_path / "wide.safetensors", folder, tmp_path / "o", teacher=str(tmp / "teacher"))
    torch.manual_seed(0)
    dit = TINY_DIT["sd3"]().eval()
    family = get_family("dit").for_teacher({**dict(dit.config), "_class_name": type(dit).__name__})
    write_block_map(tmp_path, block_map(family, dit, family.arch_from_id("D1.3"), "sd3-medium", "dit_blocks"))
    assert main(["adapt", "ip-adapter", str(tmp / "adapter"), "--student", str(tmp_path), "-o",
                 str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "SD3Transformer2DModel" in err and "not supported" in err, err
    assert not (tmp_path / "o").exists()
