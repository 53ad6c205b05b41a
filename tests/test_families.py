"""The family interface (families/base.py) on the U-Net family: the same surgery behind one object."""

import pytest
import torch
from diffusers import DDPMScheduler

from blocksearch.errors import BlocksearchError
from blocksearch.families.base import get_family, scheduler_target
from blocksearch.families.unet.surgery import build_student
from blocksearch.space import load_space
from blocksearch.families.unet.topology import architecture, topology_of


def test_unet_family_is_todays_surgery_and_describes_every_kept_block():
    family = get_family("unet")
    teacher = architecture("sd-v1")
    bound = load_space("unet_blocks").bind(topology_of(teacher.config))
    tiny = bound.design("bk_tiny")
    assert family.student_config(teacher.config, tiny)["mid_block_type"] is None
    rows = dict(family.describe(tiny, teacher.config))
    assert rows["up_blocks.0.resnets.1"] == "up_blocks.1.resnets.2"  # BK: keeps teacher up resnets 0 and 2, shifted
    assert rows["down_blocks.0.resnets.0"] == "down_blocks.0.resnets.0"
    assert "down_blocks.0.resnets.1" not in rows and "mid_block.resnets.0" not in rows
    assert family.kd_pairs(tiny, topology_of(teacher.config)) == build_student(teacher, tiny).kd_pairs
    inputs = family.forward_inputs(teacher.config, batch=2)
    assert inputs["sample"].shape == (2, 4, 64, 64)


def test_training_target_follows_the_scheduler():
    latents, noise, t = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8), torch.tensor([10, 500])
    eps = DDPMScheduler(prediction_type="epsilon")
    v = DDPMScheduler(prediction_type="v_prediction")
    assert torch.equal(scheduler_target(eps, latents, noise, t), noise)
    assert torch.allclose(scheduler_target(v, latents, noise, t), v.get_velocity(latents, noise, t))


def test_unknown_family_is_one_line():
    with pytest.raises(BlocksearchError, match="unknown denoiser family 'mamba'; allowed: sdxl, unet, dit"):
        get_family("mamba")
