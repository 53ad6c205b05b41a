"""``blocksearch adapt ip-adapter``: a teacher's IP-Adapter (Ye et al., arXiv 2308.06721) carried onto a student.

An IP-Adapter adds a second key/value projection (``to_k_ip``, ``to_v_ip``) to every cross-attention layer of the
U-Net, and an image projection (``image_proj``) that turns the image encoder's embedding into extra tokens. Its file
numbers the layers as diffusers' loader reads them (``UNet2DConditionLoadersMixin._convert_ip_adapter_attn_to_
diffusers``): the k-th cross-attention processor of ``unet.attn_processors`` (in that order) reads
``ip_adapter.{2k+1}.to_k_ip.weight`` and ``.to_v_ip.weight`` (the original code counted self- and cross-attention
alike, so cross-attention got the odd numbers). The teacher's processor list is rebuilt from its config on the meta
device (the block map lists removed parts as collapsed prefixes); each student cross-attention layer takes the
weights of the teacher layer it came from (``block_map.json``), renumbered in the student's order; the image
projection is unchanged (the text width is the teacher's). Transformer students are refused: their IP-Adapters
(SD3, Flux) attach per block in formats of their own, not mapped yet.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import diffusers
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from blocksearch.adapt.blockmap import read_block_map
from blocksearch.errors import BlocksearchError
from blocksearch.teachers import resolve_teacher

U_NET = "UNet2DConditionModel"  # the denoiser class whose IP-Adapters this maps
WEIGHT_NAME = "ip_adapter.safetensors"
IMAGE_ENCODER = "image_encoder"  # the folder load_ip_adapter reads the image encoder from, beside the weights
PROJECTIONS = ("to_k_ip.weight", "to_v_ip.weight")


@dataclass(frozen=True)
class IpAdapted:
    """What ``adapt_ip_adapter`` did: cross-attention layers kept of the teacher's, and where the result went."""

    kept: int
    teacher_layers: int
    dropped: tuple[str, ...]  # teacher cross-attention layers the cut removed
    out: Path

    def summary(self) -> str:
        return (f"ip-adapter: {self.kept} of the teacher's {self.teacher_layers} cross-attention layers kept, "
                f"{len(self.dropped)} dropped (removed by the cut); image projection unchanged")


def cross_attention_layers(model) -> list[str]:
    """The cross-attention modules of a U-Net in ``attn_processors`` order: those whose processor diffusers'
    IP-Adapter loader numbers (every ``attn2``; ``attn1`` is self-attention)."""
    return [name.removesuffix(".processor") for name in model.attn_processors
            if not name.endswith("attn1.processor") and "motion_modules" not in name]


def teacher_layers(doc: dict, teacher: str | None) -> list[str]:
    """The teacher's cross-attention modules in diffusers' order, from its config (``--teacher``, default the block
    map's teacher) with the model built on the meta device: no weights read."""
    spec = teacher or doc["teacher"]
    config = resolve_teacher(spec).denoiser_config()
    with torch.device("meta"):
        model = getattr(diffusers, doc["model_class"]).from_config(config)
    names = {n for n, _ in model.named_modules()}
    missing = sorted({t.rpartition(".")[0] for t in doc["modules"].values()} - names)
    if missing:
        raise BlocksearchError(f"teacher {spec!r} has no module {missing[0]} that the student's block map names; "
                               f"allowed: --teacher naming the teacher the student was cut from")
    return cross_attention_layers(model)


def adapt_ip_adapter(adapter: str | Path, student: str | Path, out: str | Path,
                     teacher: str | None = None) -> IpAdapted:
    """Remap the IP-Adapter ``adapter`` (a safetensors file with ``image_proj.`` and ``ip_adapter.`` keys, or a
    folder with ``ip_adapter.safetensors``) onto ``student``; write ``out`` (a ``.safetensors`` file, or a folder
    that gets ``ip_adapter.safetensors`` and a copy of the adapter folder's ``image_encoder/``)."""
    doc = read_block_map(student)
    if doc["model_class"] != U_NET:
        raise BlocksearchError(f"adapt ip-adapter maps IP-Adapters of {U_NET} students; the student's denoiser is "
                               f"a {doc['model_class']} (family {doc['family']}): not supported")
    path = _adapter_file(Path(adapter))
    with safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    t_layers = teacher_layers(doc, teacher)
    _check_teacher(tensors, t_layers, path)
    with torch.device("meta"):
        s_model = diffusers.UNet2DConditionModel.from_config(
            diffusers.UNet2DConditionModel.load_config(Path(student) / doc["subfolder"]))
    shapes = {k: tuple(v.shape) for k, v in s_model.state_dict().items()}
    index = {name: 2 * k + 1 for k, name in enumerate(t_layers)}
    written = {k: v for k, v in tensors.items() if k.startswith("image_proj.")}
    kept = set()
    for k, layer in enumerate(cross_attention_layers(s_model)):
        source = _teacher_layer(layer, doc["modules"])
        if source not in index:
            raise BlocksearchError(f"the student's {layer} comes from teacher {source}, which is no cross-attention "
                                   f"layer of teacher {teacher or doc['teacher']!r}")
        kept.add(source)
        for proj in PROJECTIONS:
            tensor = tensors[f"ip_adapter.{index[source]}.{proj}"]
            wanted = (shapes[f"{layer}.to_k.weight"][0], shapes[f"{layer}.to_k.weight"][1])
            if tuple(tensor.shape) != wanted:
                raise BlocksearchError(f"{path}: ip_adapter.{index[source]}.{proj} {tuple(tensor.shape)} does not "
                                       f"fit the student's {layer} {wanted}: an IP-Adapter for another base model")
            written[f"ip_adapter.{2 * k + 1}.{proj}"] = tensor.contiguous()
    target = _write(written, Path(out), path)
    return IpAdapted(len(kept), len(t_layers), tuple(n for n in t_layers if n not in kept), target)


def _adapter_file(path: Path) -> Path:
    """The adapter's safetensors file: ``path`` itself, or ``path/ip_adapter.safetensors`` (never pickle)."""
    file = path / WEIGHT_NAME if path.is_dir() else path
    if not file.is_file() or file.suffix != ".safetensors":
        raise BlocksearchError(f"IP-Adapter {path}: no .safetensors file; allowed: an ip_adapter .safetensors file "
                               f"or a folder with {WEIGHT_NAME} (pickled .bin files are not read)")
    return file


def _check_teacher(tensors: dict, t_layers: list[str], path: Path) -> None:
    """The file is an IP-Adapter with exactly one (to_k_ip, to_v_ip) pair per teacher cross-attention layer."""
    numbers = {int(k.split(".")[1]) for k in tensors if k.startswith("ip_adapter.")}
    if not any(k.startswith("image_proj.") for k in tensors) or not numbers:
        raise BlocksearchError(f"{path}: no image_proj. and ip_adapter. keys; allowed: an IP-Adapter as diffusers' "
                               f"load_ip_adapter reads it")
    wanted = {2 * k + 1 for k in range(len(t_layers))}
    if numbers != wanted:
        raise BlocksearchError(f"{path}: {len(numbers)} IP-Adapter layers (numbered {min(numbers)}..{max(numbers)}); "
                               f"the teacher has {len(t_layers)} cross-attention layers (1..{2 * len(t_layers) - 1}): "
                               f"an IP-Adapter for another base model")


def _teacher_layer(layer: str, modules: dict[str, str]) -> str:
    """The teacher module a student attention module came from (through its ``to_k``, as the block map lists it)."""
    source = modules.get(f"{layer}.to_k")
    if source is None:
        raise BlocksearchError(f"the student's cross-attention {layer} has no teacher module in its block map")
    return source.removesuffix(".to_k")


def _write(tensors: dict[str, torch.Tensor], out: Path, source: Path) -> Path:
    """``out`` itself when it ends in ``.safetensors``; else ``out/ip_adapter.safetensors`` and the adapter folder's
    image encoder beside it, so that ``load_ip_adapter(out, subfolder="", weight_name=...)`` finds both."""
    path = out if out.suffix == ".safetensors" else out / WEIGHT_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"format": "pt"})
    encoder = source.parent / IMAGE_ENCODER
    if path.parent != source.parent and out.suffix != ".safetensors" and encoder.is_dir():
        shutil.copytree(encoder, path.parent / IMAGE_ENCODER, dirs_exist_ok=True)
    return path
