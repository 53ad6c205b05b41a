"""The U-Net teacher: its block topology read from a diffusers config, the published SD-family configs (meta
device: no weights, no download), loading a U-Net folder, and the inputs of one forward (MACs, latency).
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import UNet2DConditionModel

from blocksearch.errors import BlocksearchError
from blocksearch.families.unet.genome import Topology

# Published U-Net configs (the fields that differ from diffusers' defaults).
SD_V1 = dict(  # CompVis/stable-diffusion-v1-4: 859.5M params
    sample_size=64, cross_attention_dim=768, attention_head_dim=8,
)
SD_V2 = dict(  # stabilityai/stable-diffusion-2-1-base: linear projections, per-stage head dims, 1024-d text
    sample_size=64, cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20),
    use_linear_projection=True,
)
SDXL = dict(  # stabilityai/stable-diffusion-xl-base-1.0: 3 stages, depth 1/2/10, added text-time embeddings
    sample_size=128, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(320, 640, 1280), transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20), cross_attention_dim=2048, use_linear_projection=True,
    addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)
ARCHITECTURES = {"sd-v1": SD_V1, "sd-v2": SD_V2, "sdxl": SDXL}
# what else is published of each: the Hub checkpoint whose config it copies, its licence (Hub id) and its space file
ARCH_HUB = {"sd-v1": "CompVis/stable-diffusion-v1-4", "sd-v2": "stabilityai/stable-diffusion-2-1-base",
            "sdxl": "stabilityai/stable-diffusion-xl-base-1.0"}
ARCH_LICENSE = {"sd-v1": "creativeml-openrail-m", "sd-v2": "openrail++", "sdxl": "openrail++"}
ARCH_SPACE = {"sd-v1": "unet_blocks", "sd-v2": "unet_blocks", "sdxl": "unet_blocks_sdxl"}

_DOWN = {"CrossAttnDownBlock2D": True, "DownBlock2D": False}
_UP = {"CrossAttnUpBlock2D": True, "UpBlock2D": False}
_MID = {"UNetMidBlock2DCrossAttn": "cross_attn", "UNetMidBlock2D": "resnet", None: "none"}


def per_stage(value, n: int) -> tuple:
    """diffusers accepts an int or a per-stage tuple for many fields; always return the tuple."""
    return tuple(value) if isinstance(value, (list, tuple)) else (value,) * n


def topology_of(config) -> Topology:
    """Read the block topology of a ``UNet2DConditionModel`` config; reject what surgery cannot do."""
    config = dict(config)
    down, up = list(config["down_block_types"]), list(config["up_block_types"])
    n = len(down)
    unknown = [t for t in down if t not in _DOWN] + [t for t in up if t not in _UP]
    if unknown or config.get("mid_block_type", "UNetMidBlock2DCrossAttn") not in _MID:
        raise BlocksearchError(
            f"teacher U-Net block type {(unknown or [config.get('mid_block_type')])[0]!r} is not "
            f"supported; allowed: {sorted(_DOWN) + sorted(_UP)} and mid {list(_MID)}")
    if [_DOWN[t] for t in down] != [_UP[t] for t in reversed(up)]:
        raise BlocksearchError("teacher U-Net: up stages do not mirror down stages (attention differs)")
    layers = tuple(int(k) for k in per_stage(config.get("layers_per_block", 2), n))
    tlayers = per_stage(config.get("transformer_layers_per_block", 1), n)
    attention = [_DOWN[t] for t in down]
    depth = tuple(_stage_depth(d, k, a, f"down_blocks.{i}") for i, (d, k, a) in enumerate(zip(tlayers, layers, attention)))
    reverse = config.get("reverse_transformer_layers_per_block")
    up = ()
    if reverse is not None:  # an up path that differs from the down path (SSD-1B): per up stage, per layer
        if len(reverse) != n:
            raise BlocksearchError(f"teacher U-Net: reverse_transformer_layers_per_block has {len(reverse)} entries; "
                                   f"expected one per up stage ({n})")
        up = tuple(_layer_depths(reverse[n - 1 - i], layers[i] + 1, depth[i], f"up_blocks.{n - 1 - i}")
                   for i in range(n))
    mid = _MID[config.get("mid_block_type", "UNetMidBlock2DCrossAttn")]
    last = tlayers[-1][0] if isinstance(tlayers[-1], (list, tuple)) else tlayers[-1]  # diffusers' mid block depth
    return Topology(layers, depth, mid, int(last), up)


def _stage_depth(value, n_layers: int, attention: bool, where: str) -> int:
    """One down stage's transformer depth: an int, or a per-layer list whose entries are all equal."""
    if not attention:
        return 0
    depths = set(_layer_depths(value, n_layers, 1, where))
    if len(depths) != 1:
        raise BlocksearchError(f"teacher U-Net {where}: per-layer transformer depths {list(value)} differ; allowed on "
                               f"the way down: one depth per stage (reverse_transformer_layers_per_block: the way up)")
    return depths.pop()


def _layer_depths(value, n_layers: int, attention: int, where: str) -> tuple[int, ...]:
    """Per-layer transformer depths of one stage (an int applies to every layer; 0s where it has no attention)."""
    if not attention:
        return (0,) * n_layers
    depths = tuple(int(d) for d in value) if isinstance(value, (list, tuple)) else (int(value),) * n_layers
    if len(depths) != n_layers:
        raise BlocksearchError(f"teacher U-Net {where}: {len(depths)} transformer depths for {n_layers} layers")
    return depths


def architecture(name: str, device: str = "meta") -> UNet2DConditionModel:
    """A published architecture with uninitialised weights (meta device: no memory, no download)."""
    if name not in ARCHITECTURES:
        raise BlocksearchError(f"unknown architecture {name!r}; allowed: {sorted(ARCHITECTURES)}")
    with torch.device(device):
        return UNet2DConditionModel(**ARCHITECTURES[name])


def unet_subfolder(folder, what: str = "teacher folder",
                   expected: str = "a diffusers pipeline or U-Net folder") -> str | None:
    """``"unet"`` for a pipeline folder (``unet/config.json``), None for a U-Net folder (``config.json``)."""
    folder = Path(folder)
    if (folder / "unet" / "config.json").is_file():
        return "unet"
    if (folder / "config.json").is_file():
        return None
    raise BlocksearchError(f"{what} {folder} has no unet/config.json or config.json; expected {expected}")


def load_unet(folder, device: str = "cpu", what: str = "teacher folder",
              expected: str = "a diffusers pipeline or U-Net folder") -> UNet2DConditionModel:
    """The U-Net of a pipeline folder (``DIR/unet``) or of a U-Net folder (safetensors weights)."""
    sub = unet_subfolder(folder, what, expected)
    return UNet2DConditionModel.from_pretrained(folder, subfolder=sub, use_safetensors=True).to(device)



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
