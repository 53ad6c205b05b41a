"""Shared fixtures: tiny seeded U-Nets with SD-v1, SD-v2 and SDXL topology (STYLE.md #8)."""

import os

import pytest
import torch
from diffusers import UNet2DConditionModel

os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # tests start local Ray clusters deliberately without tokens
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))

TINY = dict(block_out_channels=(8, 16, 16, 16), norm_num_groups=4, sample_size=16,
            cross_attention_dim=16, attention_head_dim=4)
TINY_CONFIGS = {
    "sd-v1": TINY,
    "sd-v2": dict(TINY, cross_attention_dim=24, attention_head_dim=(2, 4, 4, 4), use_linear_projection=True),
    "sdxl": dict(
        block_out_channels=(8, 16, 16), norm_num_groups=4, sample_size=16, cross_attention_dim=24,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10), attention_head_dim=(2, 4, 4), use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=4,
        projection_class_embeddings_input_dim=12 + 6 * 4),
}
SPACE_OF = {"sd-v1": "unet_blocks", "sd-v2": "unet_blocks", "sdxl": "unet_blocks_sdxl"}


def tiny_unet(kind: str = "sd-v1", seed: int = 0) -> UNet2DConditionModel:
    """A tiny seeded U-Net with the block topology of ``kind``; weights are random but non-trivial."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**TINY_CONFIGS[kind]).eval()
    with torch.no_grad():  # diffusers zero-initialises some projections; make every tensor distinctive
        for p in unet.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return unet


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", help="also run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
