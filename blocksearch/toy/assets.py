"""The bundled toy assets (blocksearch/toy/assets/): the teacher pipeline loader and the file checks every
asset loader uses (the judge's loader is in judge.py). Local files only, no network."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import diffusers
from diffusers import StableDiffusionPipeline
from diffusers.utils import logging as dlog
from safetensors import SafetensorError, safe_open
from transformers.utils import logging as tlog

from blocksearch.errors import BlocksearchError

ASSETS = Path(__file__).parent / "assets"
ASSETS_DIT = Path(__file__).parent / "assets_dit"  # the toy transformer teacher (PixArt-style), toy/build_dit.py
JUDGE_FILE = "judge.safetensors"
REBUILD = "blocksearch toy build --out blocksearch/toy/assets"
REBUILD_DIT = "blocksearch toy build --family dit --out blocksearch/toy/assets_dit"
# every file load_toy_teacher reads (the toy transformer teacher's: transformer/ for unet/); checked up front so a
# missing one is named, not a deep library error
TEACHER_FILES = (
    "model_index.json",
    "scheduler/scheduler_config.json",
    "tokenizer/tokenizer_config.json",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
)
COMPONENTS = ("unet", "transformer", "vae", "text_encoder", "tokenizer", "scheduler")  # a pipeline folder's parts


class ToyAssetError(BlocksearchError):
    """A toy teacher/judge file is missing or unreadable; the message names it and the rebuild command."""


def asset_error(path: Path, why: str) -> ToyAssetError:
    """The one-line error for a bad asset file: what is wrong, and the rebuild command."""
    root = path.parent.parent if path.parent.name in COMPONENTS else path.parent
    return ToyAssetError(f"toy asset {path} is {why}; rebuild it with: {_rebuild(toy_denoiser(root))}")


def _rebuild(denoiser: str) -> str:
    return REBUILD_DIT if denoiser == "transformer" else REBUILD


def toy_denoiser(root: Path) -> str:
    """The denoiser subfolder of a toy teacher folder: ``transformer`` for the toy transformer (its bundled folder,
    or a build with ``transformer/`` and no ``unet/``), else ``unet``."""
    own = (root / "transformer").is_dir() and not (root / "unet").is_dir()
    return "transformer" if own or root.resolve() == ASSETS_DIT.resolve() else "unet"


def check_asset(path: Path) -> None:
    """Raise a ToyAssetError naming ``path`` if it is missing or does not parse (JSON, safetensors header)."""
    if not path.is_file():
        raise asset_error(path, "missing")
    if path.suffix == ".json":
        try:
            json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError) as e:
            raise asset_error(path, f"corrupt ({type(e).__name__})") from None
    elif path.suffix == ".safetensors":
        try:
            with safe_open(path, "pt") as f:  # parses and bounds-checks the header without reading tensors
                f.keys()
        except (SafetensorError, OSError, ValueError) as e:
            raise asset_error(path, f"corrupt ({str(e).splitlines()[0][:80]})") from None


def load_toy_teacher(device: str = "cpu", path: str | Path | None = None):
    """The toy pipeline (fp32, no safety checker) from `path` or the bundled assets: a StableDiffusionPipeline,
    or the class its ``model_index.json`` names (the toy transformer teacher's PixArtSigmaPipeline; a tiny SDXL,
    SD3 or Flux folder with a judge beside it)."""
    root = Path(path) if path is not None else ASSETS
    sub = toy_denoiser(root)
    for f in TEACHER_FILES:
        check_asset(root / f.replace("unet/", f"{sub}/"))
    verbosity = dlog.get_verbosity()
    dlog.set_verbosity_error()  # fp16-stored weights upcast to fp32: expected, not worth a warning
    dlog.disable_progress_bar()
    tlog.disable_progress_bar()
    try:
        index = json.loads((root / "model_index.json").read_text()).get("_class_name")
        if index != "StableDiffusionPipeline":  # the toy dit's PixArtSigmaPipeline (a CLIP text encoder where PixArt
            # expects T5: toy/build_dit.py says why); a tiny SDXL, SD3 or Flux folder with a judge (toy/tiny_*.py)
            pipe = getattr(diffusers, index).from_pretrained(root, dtype=torch.float32, local_files_only=True)
        else:
            pipe = StableDiffusionPipeline.from_pretrained(
                root, dtype=torch.float32, local_files_only=True, safety_checker=None,
                feature_extractor=None, requires_safety_checker=False,
            )
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise ToyAssetError(f"toy teacher at {root} does not load ({str(e).splitlines()[0][:120]}); rebuild it "
                            f"with: {_rebuild(sub)}") from None
    finally:
        dlog.set_verbosity(verbosity)
        dlog.enable_progress_bar()
        tlog.enable_progress_bar()
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)
