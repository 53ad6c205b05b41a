"""Cost of an architecture: exact parameter count and MACs of one denoiser forward (a U-Net's, or another
family's with its ``forward_inputs``).

MACs come from ``torch.utils.flop_counter.FlopCounterMode`` (matmuls, convolutions, attention;
norms and pointwise ops are not counted), run on the meta device so no memory or weights are needed.
MACs = FLOPs / 2.
"""

from __future__ import annotations

import copy

import torch
from torch.utils.flop_counter import FlopCounterMode

from blocksearch.families.base import Family, get_family


def count_params(unet: torch.nn.Module) -> int:
    """Exact number of parameters."""
    return sum(p.numel() for p in unet.parameters())


def unet_inputs(config, batch: int = 1, latent_size: int | None = None, device="meta",
                dtype=torch.float32, text_len: int = 77) -> dict:
    """Inputs of one U-Net forward for ``config`` (SDXL's added text-time embeddings included)."""
    size = latent_size or config["sample_size"]
    width = config["cross_attention_dim"]
    width = width[0] if isinstance(width, (list, tuple)) else width
    kwargs = dict(
        sample=torch.randn(batch, config["in_channels"], size, size, device=device, dtype=dtype),
        timestep=torch.full((batch,), 500, device=device, dtype=torch.long),
        encoder_hidden_states=torch.randn(batch, text_len, width, device=device, dtype=dtype),
    )
    if config.get("addition_embed_type") == "text_time":
        time_dim = 6 * config["addition_time_embed_dim"]
        text_dim = config["projection_class_embeddings_input_dim"] - time_dim
        kwargs["added_cond_kwargs"] = dict(
            text_embeds=torch.randn(batch, text_dim, device=device, dtype=dtype),
            time_ids=torch.randn(batch, 6, device=device, dtype=dtype))
    return kwargs


def count_macs(unet: torch.nn.Module, latent_size: int | None = None, text_len: int = 77,
               family: Family | None = None) -> int:
    """MACs of one forward at batch 1 (no classifier-free-guidance doubling) of the denoiser ``unet`` of
    ``family`` (default: a U-Net), rebuilt from its config on the meta device."""
    with torch.device("meta"):
        meta = type(unet).from_config(copy.deepcopy(dict(unet.config)))
    inputs = (family or get_family("unet")).forward_inputs(meta.config, 1, latent_size, text_len=text_len)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        meta(**inputs)
    return counter.get_total_flops() // 2
