"""Teachers: the published SD-family U-Net architectures (meta device), the toy teacher, local folders.

``--teacher`` accepts ``toy`` (the bundled default), ``sd-v1`` / ``sd-v2`` / ``sdxl`` (architectures
only, built on the meta device: no weights, no download), a local diffusers folder, or a hub id that
is already in the local Hugging Face cache (this tool never downloads at run time by itself).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import diffusers
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from huggingface_hub import try_to_load_from_cache

from blocksearch.errors import BlocksearchError
from blocksearch.families.base import DEFAULT_FAMILY, FAMILIES, Family, family_name_of, get_family
from blocksearch.families.unet.topology import ARCHITECTURES, architecture, load_unet
from blocksearch.toy.assets import ASSETS, ASSETS_DIT, JUDGE_FILE, check_asset, load_toy_teacher, toy_denoiser
from blocksearch.toy.models import UNET as TOY_UNET

TOY_TEACHERS = {"toy": ASSETS, "toy-dit": ASSETS_DIT}  # the bundled toy teachers: SD's U-Net, a PixArt transformer
TEACHER_CHOICES = "toy, sd-v1, sd-v2, sdxl, toy-dit (the toy transformer), a local diffusers folder, or a cached hub id"


def teacher_kind(spec: str) -> str:
    """What ``--teacher`` names: ``architecture``, ``toy`` (bundled), ``toy-folder`` (a ``blocksearch toy
    build`` folder, recognised by its judge), ``folder`` or ``hub`` (an owner/name id)."""
    if spec in ARCHITECTURES:
        return "architecture"
    if spec in TOY_TEACHERS:
        return "toy"
    folder = Path(spec)
    if folder.exists():
        return "toy-folder" if (folder / JUDGE_FILE).is_file() else "folder"
    if spec.startswith((".", "/", "~")) or spec.count("/") != 1:
        raise BlocksearchError(f"unknown teacher {spec!r}: neither a folder that exists nor a hub id "
                               f"(owner/name); allowed: {TEACHER_CHOICES}")
    return "hub"


def _not_cached(hub_id: str, err: Exception) -> BlocksearchError:
    return BlocksearchError(
        f"teacher {hub_id!r} is not in the local Hugging Face cache and this machine is offline "
        f"(blocksearch never downloads at run time); download it first (hf download "
        f"{hub_id}) or pass a local folder ({type(err).__name__})")


@dataclass(frozen=True)
class TeacherRef:
    """``--teacher`` resolved once, from files only (no weights): what it names, where its pipeline folder is
    (bundled toy, toy build or local folder), and its denoiser ``family`` (for this teacher's class)."""

    spec: str
    kind: str  # teacher_kind's
    folder: Path | None  # the pipeline (or bare U-Net) folder; None for an architecture or a hub id
    family: Family

    def denoiser_config(self) -> dict:
        """The denoiser's diffusers config (``config.json`` of ``unet/`` or ``transformer/``)."""
        return _denoiser_config(self.spec, self.kind, self.folder, self.family.subfolder)

    def topology(self):
        """What surgery needs of the teacher's denoiser (families/base.py ``topology``)."""
        return self.family.topology(self.denoiser_config())

    @property
    def is_toy(self) -> bool:
        """The toy teacher (bundled, or a ``blocksearch toy build`` folder): its defaults and scores are the toy's
        (judge FID, judge alignment); every other teacher is scored as a real one."""
        return self.kind in ("toy", "toy-folder")

    def native_resolution(self) -> int:
        """The teacher's own image size, read from the configs only (``_native_resolution``)."""
        return _native_resolution(self)

    def load(self, device: str = "cpu") -> "Teacher":
        """The teacher pipeline (local files only); a clear error when missing (``_load``)."""
        return _load(self, device)

    def load_denoiser(self, device: str = "cpu") -> torch.nn.Module:
        """The teacher's denoiser with its weights (a U-Net in SD's layout, SD's or SDXL's: also an architecture, on
        the meta device, or a bare denoiser folder)."""
        if self.family.subfolder == FAMILIES[DEFAULT_FAMILY].subfolder:  # SD's layout: also an architecture or a
            return _load_unet(self, device)                               # bare denoiser folder
        return self.load(device).denoiser


def _denoiser_config(spec: str, kind: str, folder: Path | None, sub: str) -> dict:
    """The config of the denoiser in subfolder ``sub`` of the teacher ``spec`` (read from files only)."""
    if kind == "architecture":
        return dict(architecture(spec).config)
    if kind == "hub":
        try:
            return dict(UNet2DConditionModel.load_config(spec, subfolder=sub, local_files_only=True))  # any class: it reads config.json
        except (OSError, ValueError) as err:
            raise _not_cached(spec, err) from None
    if kind == "toy" and spec == "toy":
        return dict(TOY_UNET)
    if kind == "toy":  # a bundled toy teacher not built yet: the error names its build command
        check_asset(folder / sub / "config.json")
    if not (folder / sub).is_dir() and (folder / "config.json").is_file():  # a bare denoiser folder
        return json.loads((folder / "config.json").read_text())
    return _read_config(folder / sub / "config.json")


def resolve_teacher(spec: str) -> TeacherRef:
    """Read ``--teacher`` once: its kind, folder and family (``family_name_of`` the pipeline's parts: a folder's
    subfolders, a cached hub id's ``model_index.json``); one-line errors as ``teacher_kind``'s."""
    kind = teacher_kind(spec)
    folder = TOY_TEACHERS[spec] if kind == "toy" else Path(spec) if kind in ("toy-folder", "folder") else None
    parts: set[str] = set()
    if folder is not None:
        parts = {p.name for p in folder.iterdir() if p.is_dir()} if folder.is_dir() else set()
        parts |= {toy_denoiser(folder)} if kind == "toy" else set()  # a bundled toy teacher not built yet
    elif kind == "hub":  # the cached model_index.json names its parts (not cached: loading says so, _not_cached)
        index = try_to_load_from_cache(spec, "model_index.json")
        if isinstance(index, str):
            parts = set(json.loads(Path(index).read_text()))
    family = get_family(family_name_of(parts))
    if family.specialise is not None:  # the family of this teacher's class (its pipeline follows the class)
        family = family.for_teacher(_denoiser_config(spec, kind, folder, family.subfolder))
    return TeacherRef(spec, kind, folder, family)


def show_space(space, teacher: str | None, latent: int | None) -> int:
    """``space show``: ``space`` bound to ``teacher`` (default: the space's own), printed by its family
    (``Family.show_space``, which resolves the teacher through ``resolve_teacher``); the exit code."""
    return get_family(space.family).show_space(space, teacher or space.teacher, latent, resolve_teacher, TOY_TEACHERS)


def _read_config(path: Path) -> dict:
    if not path.is_file():
        raise BlocksearchError(f"teacher folder {path.parent.parent} has no {path.parent.name}/config.json; expected a "
                               f"diffusers pipeline folder (save_pretrained)")
    return json.loads(path.read_text())


def _load_unet(ref: TeacherRef, device: str) -> UNet2DConditionModel:
    """The teacher U-Net of ``ref`` (weights where there are any; an architecture's on the meta device)."""
    spec, kind = ref.spec, ref.kind
    if kind == "architecture":
        return architecture(spec, device="meta")
    if kind == "toy":
        return ref.load(device).unet
    if kind == "hub":
        try:
            return UNet2DConditionModel.from_pretrained(
                spec, subfolder=ref.family.subfolder, use_safetensors=True, local_files_only=True).to(device)
        except (OSError, ValueError) as err:
            raise _not_cached(spec, err) from None
    return load_unet(spec, device)


# -- whole pipelines (distill / evaluate need the VAE, text encoder and scheduler too) -------------
@dataclass(frozen=True, eq=False)
class Teacher:
    """A loaded teacher pipeline and its denoiser family (the ``TeacherRef``'s, or ``family_of`` the pipeline);
    ``.denoiser`` is the teacher U-Net or transformer (``.unet``: the same, under its U-Net name).

    ``judge_path`` is set for the toy teacher (the bundled one, or a ``blocksearch toy build`` folder,
    recognised by its ``judge.safetensors``): its FID and alignment use the toy judge.
    """

    name: str  # the --teacher spec: "toy", a folder, or a hub id
    pipeline: diffusers.DiffusionPipeline
    family: Family
    judge_path: Path | None = None

    @property
    def denoiser(self) -> torch.nn.Module:
        return getattr(self.pipeline, self.family.subfolder)

    @property
    def unet(self) -> torch.nn.Module:
        return self.denoiser

    @property
    def is_toy(self) -> bool:
        return self.judge_path is not None


def load_teacher(spec: str = "toy", device: str = "cpu") -> Teacher:
    """The teacher pipeline named by ``--teacher`` (local files only); a clear error when missing."""
    return resolve_teacher(spec).load(device)


def _load(ref: TeacherRef, device: str) -> Teacher:
    """``TeacherRef.load``: the pipeline of a toy teacher, a folder or a cached hub id."""
    spec, kind = ref.spec, ref.kind
    if kind == "architecture":
        raise BlocksearchError(
            f"teacher {spec!r} is an architecture without weights (for space/bench latency only); "
            f"distill and evaluate need a pipeline: toy, a local diffusers folder, or a cached hub id")
    if kind in ("toy", "toy-folder"):
        return Teacher(spec, load_toy_teacher(device=device, path=ref.folder), ref.family, ref.folder / JUDGE_FILE)
    if kind == "folder":
        if not (Path(spec) / "model_index.json").is_file():
            raise BlocksearchError(
                f"teacher folder {spec} has no model_index.json; expected a diffusers "
                f"StableDiffusionPipeline folder (save_pretrained)")
        return Teacher(spec, ref.family.load_pipeline(spec, device), ref.family)
    try:
        return Teacher(spec, ref.family.load_pipeline(spec, device), ref.family)
    except (OSError, ValueError) as err:
        raise _not_cached(spec, err) from None


def with_denoiser(pipeline, denoiser: torch.nn.Module, family: Family):
    """A pipeline of the same class with the same components and ``denoiser`` in the family's place (the
    student in its teacher's pipeline, as BK-SDM ships students)."""
    parts = dict(pipeline.components) | {family.subfolder: denoiser}
    return type(pipeline)(**parts, **({"requires_safety_checker": False} if "safety_checker" in parts else {}))


# -- what a study records of its teacher, and the defaults that follow it ---------------------------
def is_toy(spec: str) -> bool:
    """``resolve_teacher(spec).is_toy`` without reading folders (commands/run.py's ``--print-config``)."""
    return teacher_kind(spec) in ("toy", "toy-folder")


def _native_resolution(ref: TeacherRef) -> int:
    """The teacher's own image size: the denoiser's ``sample_size`` x the VAE's scale factor (2^(stages-1)), as
    diffusers' pipelines default to; read from the configs only."""
    spec, kind, sub = ref.spec, ref.kind, ref.family.subfolder
    if kind == "architecture":
        return int(architecture(spec).config.sample_size) * 8  # every SD-family VAE downsamples 8x
    if kind == "hub":
        try:
            unet = ref.denoiser_config()
            vae = AutoencoderKL.load_config(spec, subfolder="vae", local_files_only=True)
        except (OSError, ValueError) as err:
            raise _not_cached(spec, err) from None
    else:
        folder = ref.folder
        configs = [folder / part / "config.json" for part in (sub, "vae")]
        for config in configs if kind == "toy" else ():
            check_asset(config)  # a bundled toy teacher not built yet: the error names its build command
        missing = [c for c in configs if not c.is_file()]
        if missing:
            raise BlocksearchError(f"teacher folder {folder} has no {missing[0].parent.name}/config.json; expected "
                                   f"a diffusers StableDiffusionPipeline folder (save_pretrained)")
        unet, vae = (json.loads(c.read_text()) for c in configs)
    if "sample_size" not in unet:  # a denoiser without one (Flux's transformer): the VAE's image size, as FLUX.1's
        return int(vae["sample_size"])  # 1024 is its pipeline's default (128 latents x 8)
    return int(unet["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)


def weights_sha256(unet: torch.nn.Module) -> str:
    """sha256 of every tensor of ``unet`` (name, dtype, shape and bytes, in name order): the teacher's
    identity in a study. Unlike ``data.fingerprint`` it reads every byte (SD-v1's 3.4 GB: a few seconds)."""
    h = hashlib.sha256()
    for name, tensor in sorted(unet.state_dict().items()):
        h.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        h.update(flat.view(torch.uint8).numpy().data if flat.numel() else b"")
    return h.hexdigest()
