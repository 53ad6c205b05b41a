"""Teachers: the published SD-family U-Net architectures (meta device), the toy teacher, local folders.

``--teacher`` accepts ``toy`` (the bundled default), ``sd-v1`` / ``sd-v2`` / ``sdxl`` (architectures
only, built on the meta device: no weights, no download), a local diffusers folder, or a hub id that
is already in the local Hugging Face cache (this tool never downloads at run time by itself).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel

from blocksearch.errors import BlocksearchError
from blocksearch.space import Topology

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
TEACHER_CHOICES = "toy, sd-v1, sd-v2, sdxl, a local diffusers folder, or a cached hub id"

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
    layers = per_stage(config.get("layers_per_block", 2), n)
    tlayers = per_stage(config.get("transformer_layers_per_block", 1), n)
    if config.get("reverse_transformer_layers_per_block") is not None:
        raise BlocksearchError("teacher U-Net: reverse_transformer_layers_per_block is not supported")
    if any(isinstance(t, (list, tuple)) for t in tlayers):
        raise BlocksearchError("teacher U-Net: per-layer transformer depths are not supported")
    depth = tuple(int(d) if _DOWN[t] else 0 for d, t in zip(tlayers, down))
    mid = _MID[config.get("mid_block_type", "UNetMidBlock2DCrossAttn")]
    return Topology(tuple(int(k) for k in layers), depth, mid, int(tlayers[-1]))


def architecture(name: str, device: str = "meta") -> UNet2DConditionModel:
    """A published architecture with uninitialised weights (meta device: no memory, no download)."""
    if name not in ARCHITECTURES:
        raise BlocksearchError(f"unknown architecture {name!r}; allowed: {sorted(ARCHITECTURES)}")
    with torch.device(device):
        return UNet2DConditionModel(**ARCHITECTURES[name])


def load_teacher_unet(spec: str, device: str = "cpu") -> UNet2DConditionModel:
    """The teacher U-Net named by ``--teacher`` (weights where there are any)."""
    if spec in ARCHITECTURES:
        return architecture(spec, device="meta")
    if spec == "toy":
        from blocksearch.toy import load_toy_teacher

        return load_toy_teacher(device=device).unet
    folder = Path(spec)
    if folder.exists():
        sub = "unet" if (folder / "unet" / "config.json").exists() else None
        if sub is None and not (folder / "config.json").exists():
            raise BlocksearchError(
                f"teacher folder {folder} has neither unet/config.json nor config.json; expected a "
                f"diffusers pipeline or U-Net folder")
        return UNet2DConditionModel.from_pretrained(folder, subfolder=sub, use_safetensors=True).to(device)
    return _from_hub_cache(spec, device)


def _from_hub_cache(hub_id: str, device: str) -> UNet2DConditionModel:
    if "/" not in hub_id:
        raise BlocksearchError(f"unknown teacher {hub_id!r}; allowed: {TEACHER_CHOICES}")
    try:
        return UNet2DConditionModel.from_pretrained(
            hub_id, subfolder="unet", use_safetensors=True, local_files_only=True).to(device)
    except (OSError, ValueError) as err:
        raise BlocksearchError(
            f"teacher {hub_id!r} is not in the local Hugging Face cache and this tool does not "
            f"download at run time (offline machine?); download it first (huggingface-cli download "
            f"{hub_id}) or pass a local folder ({type(err).__name__})") from None


# -- whole pipelines (distill / evaluate need the VAE, text encoder and scheduler too) -------------
@dataclass(frozen=True, eq=False)
class Teacher:
    """A loaded teacher pipeline; ``.unet`` is the teacher U-Net.

    ``judge_path`` is set for the toy teacher (the bundled one, or a ``blocksearch toy build`` folder,
    recognised by its ``judge.safetensors``): its FID and alignment use the toy judge.
    """

    name: str  # the --teacher spec: "toy", a folder, or a hub id
    pipeline: StableDiffusionPipeline
    judge_path: Path | None = None

    @property
    def unet(self) -> UNet2DConditionModel:
        return self.pipeline.unet

    @property
    def is_toy(self) -> bool:
        return self.judge_path is not None


def load_teacher(spec: str = "toy", device: str = "cpu") -> Teacher:
    """The teacher pipeline named by ``--teacher`` (local files only); a clear error when missing."""
    from blocksearch.toy.assets import ASSETS, JUDGE_FILE, load_toy_teacher

    if spec in ARCHITECTURES:
        raise BlocksearchError(
            f"teacher {spec!r} is an architecture without weights (for space/bench latency only); "
            f"distill and evaluate need a pipeline: toy, a local diffusers folder, or a cached hub id")
    if spec == "toy":
        return Teacher(spec, load_toy_teacher(device=device), ASSETS / JUDGE_FILE)
    folder = Path(spec)
    if folder.exists():
        if (folder / JUDGE_FILE).is_file():  # a `blocksearch toy build --out DIR` folder
            return Teacher(spec, load_toy_teacher(device=device, path=folder), folder / JUDGE_FILE)
        if not (folder / "model_index.json").is_file():
            raise BlocksearchError(
                f"teacher folder {folder} has no model_index.json; expected a diffusers "
                f"StableDiffusionPipeline folder (save_pretrained)")
        return Teacher(spec, _pipeline(str(folder), device))
    if spec.startswith((".", "/", "~")) or spec.count("/") != 1:
        raise BlocksearchError(
            f"teacher {spec!r} is neither a folder that exists nor a hub id (owner/name); "
            f"allowed: {TEACHER_CHOICES}")
    try:
        return Teacher(spec, _pipeline(spec, device))
    except (OSError, ValueError) as err:
        raise BlocksearchError(
            f"teacher {spec!r} is not in the local Hugging Face cache and this machine is offline "
            f"(blocksearch never downloads at run time); download it first (huggingface-cli download "
            f"{spec}) or pass a local folder ({type(err).__name__})") from None


def _pipeline(source: str, device: str) -> StableDiffusionPipeline:
    pipe = StableDiffusionPipeline.from_pretrained(
        source, local_files_only=True, use_safetensors=True, safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)
