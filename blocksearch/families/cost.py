"""Cost of a denoiser: exact parameter count and MACs of one denoiser forward (a U-Net's, or another
family's with its ``forward_inputs``).

MACs come from ``torch.utils.flop_counter.FlopCounterMode`` (matmuls, convolutions, attention;
norms and pointwise ops are not counted), run on the meta device so no memory or weights are needed.
MACs = FLOPs / 2.
"""

from __future__ import annotations

import copy

import torch
from torch.utils.flop_counter import FlopCounterMode

from blocksearch.families.base import Family


def count_params(unet: torch.nn.Module) -> int:
    """Exact number of parameters."""
    return sum(p.numel() for p in unet.parameters())


def count_macs(unet: torch.nn.Module, latent_size: int | None = None, text_len: int = 77, *, family: Family) -> int:
    """MACs of one forward at batch 1 (no classifier-free-guidance doubling) of the denoiser ``unet`` of
    ``family``, rebuilt from its config on the meta device."""
    with torch.device("meta"):
        meta = type(unet).from_config(copy.deepcopy(dict(unet.config)))
    inputs = family.forward_inputs(meta.config, 1, latent_size, text_len=text_len)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        meta(**inputs)
    return counter.get_total_flops() // 2
