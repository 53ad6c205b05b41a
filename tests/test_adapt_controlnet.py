"""``blocksearch adapt controlnet`` (adapt/controlnet.py): a tiny teacher ControlNet cut as the student U-Net was; its
zero convolutions line up with the student's skips in a forward through the stock StableDiffusionControlNetPipeline;
students diffusers' ControlNetModel cannot express, and transformer students, are refused in one line."""

import pytest
import torch
from diffusers import ControlNetModel, StableDiffusionControlNetPipeline

from blocksearch.adapt.blockmap import block_map, write_block_map
from blocksearch.adapt.controlnet import adapt_controlnet
from blocksearch.cli import main
from blocksearch.errors import BlocksearchError
from blocksearch.families.base import get_family
from blocksearch.teachers import with_denoiser
from tests.conftest import make_tiny_pipeline
from tests.test_families_dit import TINY as TINY_DIT


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """(tmp, the tiny teacher pipeline, its ControlNet: random, every zero convolution non-zero)."""
    tmp = tmp_path_factory.mktemp("controlnet")
    pipe = make_tiny_pipeline()
    torch.manual_seed(0)
    cn = ControlNetModel.from_unet(pipe.unet, conditioning_embedding_out_channels=(4, 8, 8)).eval()  # 64 px -> 16
    with torch.no_grad():
        for p in cn.parameters():
            p.add_(0.02 * torch.randn_like(p))
    cn.save_pretrained(tmp / "controlnet", safe_serialization=True)
    return tmp, pipe, cn


def student_folder(tmp, pipe, arch_id):
    family = get_family("unet")
    arch = family.arch_from_id(arch_id)
    student = family.build_student(pipe.unet, arch).unet.eval()
    with_denoiser(pipe, student, family).save_pretrained(tmp / arch_id, safe_serialization=True)
    write_block_map(tmp / arch_id, block_map(family, pipe.unet, arch, "toy", "unet_blocks"))
    return tmp / arch_id, student


@pytest.mark.parametrize("arch_id", ["L1-1-1-1_T1-1-1-0_Mnone", "L1-1-1_T1-1-1_Mnone"])  # bk_small, bk_tiny
def test_the_student_controlnet_follows_the_students_skips_in_the_stock_pipeline(teacher, tmp_path, arch_id, capsys):
    tmp, pipe, cn = teacher
    folder, student = student_folder(tmp_path, pipe, arch_id)
    assert main(["adapt", "controlnet", str(tmp / "controlnet"), "--student", str(folder), "-o",
                 str(tmp_path / "cn")]) == 0
    assert f"written to {tmp_path / 'cn'}" in capsys.readouterr().out
    student_cn = ControlNetModel.from_pretrained(tmp_path / "cn").eval()
    torch.manual_seed(1)
    x, t, h, cond = torch.randn(1, 4, 16, 16), torch.tensor([500]), torch.randn(1, 77, 16), torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        t_down, s_down = cn(x, t, h, cond, return_dict=False)[0], student_cn(x, t, h, cond, return_dict=False)[0]
    # the skips before the first cut layer see the same weights: conv_in's and stage 0's first layer
    for k in (0, 1):
        torch.testing.assert_close(s_down[k], t_down[k])
    assert len(student_cn.controlnet_down_blocks) == 1 + sum(student.config.layers_per_block) + len(
        student.config.layers_per_block) - 1  # one per student skip: conv_in, every layer, every downsampler
    parts = {k: v for k, v in pipe.components.items() if k != "unet"}
    cn_pipe = StableDiffusionControlNetPipeline(**parts, unet=student, controlnet=student_cn,
                                                requires_safety_checker=False)
    cn_pipe.set_progress_bar_config(disable=True)
    run = lambda scale: cn_pipe("a red circle", image=cond, num_inference_steps=2, output_type="np",  # noqa: E731
                                controlnet_conditioning_scale=scale, generator=torch.Generator().manual_seed(0)).images
    with_control, without = run(1.0), run(0.0)
    assert with_control.shape == (1, 64, 64, 3) and abs(with_control - without).max() > 1e-4


def test_a_controlnet_the_student_cannot_take_is_refused_in_one_line(teacher, tmp_path, capsys):
    tmp, pipe, _ = teacher
    folder, _ = student_folder(tmp_path, pipe, "L1-2-1-2_T1-1-1-0_Mattn")  # stages keep 1, 2, 1, 2 layers
    capsys.readouterr()
    assert main(["adapt", "controlnet", str(tmp / "controlnet"), "--student", str(folder), "-o",
                 str(tmp_path / "cn")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "one layers_per_block for every stage" in err, err
    torch.manual_seed(0)
    dit = TINY_DIT["sd3"]().eval()
    family = get_family("dit").for_teacher({**dict(dit.config), "_class_name": type(dit).__name__})
    arch = family.arch_from_id("D1.3")
    write_block_map(tmp_path, block_map(family, dit, arch, "sd3-medium", "dit_blocks"))
    with pytest.raises(BlocksearchError, match="the student's denoiser is a SD3Transformer2DModel .*not supported"):
        adapt_controlnet(tmp / "controlnet", tmp_path, tmp_path / "cn2")
    with pytest.raises(BlocksearchError, match="no config.json; allowed: a diffusers ControlNetModel folder"):
        adapt_controlnet(tmp_path / "nothing", folder, tmp_path / "cn2")
