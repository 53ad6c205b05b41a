"""``blocksearch adapt lora``: a LoRA (Hu et al., arXiv 2106.09685) trained on the teacher, remapped onto a student.

The student's ``block_map.json`` says which teacher module every student module came from: a LoRA module on a kept
teacher module is renamed to its student module, one on a removed module is dropped, one on no module of the teacher
is a LoRA for another base model (refused, as are shapes that differ from the student's). Keys stay in the input's
convention: diffusers/peft (``unet.<module>.lora_A.weight``), diffusers' older ``<module>.lora.down.weight`` and
kohya's (``lora_unet_<module with _>.lora_down.weight`` with ``.alpha``). peft keys carry their scale (``lora_alpha
/ r``, from the file's adapter metadata) folded into ``lora_B`` and are written without metadata, so diffusers'
default scale 1 reproduces them; text-encoder modules pass through unchanged (the text encoder is the teacher's).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from blocksearch.adapt.blockmap import read_block_map
from blocksearch.errors import BlocksearchError
from blocksearch.families.base import FAMILIES

OUT_FILE = "pytorch_lora_weights.safetensors"  # what ``pipe.load_lora_weights(folder)`` reads
METADATA_KEY = "lora_adapter_metadata"  # diffusers' safetensors metadata entry (a packed peft LoraConfig)
# suffix -> (role, style): down/up projections and the kohya-style alpha
SUFFIXES = {"lora_A.weight": ("down", "peft"), "lora_B.weight": ("up", "peft"), "lora_B.bias": ("up_bias", "peft"),
            "lora.down.weight": ("down", "diffusers"), "lora.up.weight": ("up", "diffusers"),
            "lora_linear_layer.down.weight": ("down", "diffusers"), "lora_linear_layer.up.weight": ("up", "diffusers"),
            "lora_down.weight": ("down", "kohya"), "lora_up.weight": ("up", "kohya"), "alpha": ("alpha", None)}
_KOHYA = re.compile(r"^lora_(?:(unet)|(te\d*))_([A-Za-z0-9_]+)\.(.+)$")  # the denoiser's, or a text encoder's
_SGM = re.compile(r"^(input_blocks|middle_block|output_blocks)_")  # SD's original (LDM) U-Net names, e.g. SDXL kohya
ALLOWED = ("unet.<module>.lora_A.weight / lora_B.weight (diffusers, peft), <module>.lora.down.weight / lora.up.weight, "
           "lora_unet_<module>.lora_down.weight / lora_up.weight / alpha (kohya)")


@dataclass
class LoraModule:
    """One adapted module: where it sits (``denoiser`` or a text encoder) and its tensors by role."""

    component: str
    module: str  # the teacher module (diffusers dotted name; a kohya text-encoder module: its flat name)
    kohya: str | None = None  # the kohya prefix ``lora_unet`` / ``lora_te1``, None for dotted keys
    prefix: str = ""  # the dotted keys' component prefix (``unet.``; "" for bare keys)
    tensors: dict[str, tuple[str, torch.Tensor]] = field(default_factory=dict)  # suffix -> (role, tensor)


@dataclass(frozen=True)
class LoraAdapted:
    """What ``adapt_lora`` did: module counts, the weight norm kept, and where the result went."""

    kept: int
    renamed: int
    dropped: tuple[str, ...]
    text_encoder: int
    norm_kept: float  # ||kept deltas||_F / ||all deltas||_F over the denoiser's modules
    out: Path
    denoiser: str  # the student's denoiser subfolder (unet, transformer)

    def summary(self) -> str:
        total = self.kept + len(self.dropped)
        line = (f"lora: {total} modules on the {self.denoiser}: {self.kept} kept ({self.renamed} renamed), "
                f"{len(self.dropped)} dropped (removed by the cut); weight norm kept {100 * self.norm_kept:.1f}%")
        return line + (f"; {self.text_encoder} text-encoder modules unchanged" if self.text_encoder else "")


def adapt_lora(lora: str | Path, student: str | Path, out: str | Path) -> LoraAdapted:
    """Remap the LoRA file ``lora`` onto the student folder ``student`` (its ``block_map.json``); write ``out`` (a
    ``.safetensors`` file, or a folder that gets ``pytorch_lora_weights.safetensors``)."""
    doc = read_block_map(student)
    tensors, metadata = read_lora(lora)
    modules = parse(tensors, doc)
    scales = peft_scales(metadata, modules, doc["subfolder"])
    shapes = student_shapes(Path(student) / doc["subfolder"])
    inverse = {t: s for s, t in doc["modules"].items()}
    flat = {t.replace(".", "_"): t for t in inverse}
    written, kept, renamed, dropped, te, norms = {}, 0, 0, [], 0, [0.0, 0.0]
    for m in modules:
        scale = scales.get(id(m), 1.0)
        if m.component != "denoiser":
            te += 1
            written.update(rename(m, m.module, scale))
            continue
        teacher = flat.get(m.module, m.module) if m.kohya else m.module
        target = inverse.get(teacher)
        energy = delta_norm2(m, scale)
        norms[1] += energy
        if target is None:
            if m.kohya and _SGM.match(teacher):
                raise BlocksearchError(f"{lora}: kohya key {m.kohya}_{teacher} names the original checkpoint's blocks "
                                       f"(input_blocks, middle_block, output_blocks); allowed: diffusers module "
                                       f"names: load it into the teacher pipeline and save_lora_weights it first")
            if not any(_under(teacher, p, m.kohya) for p in doc["removed"]):
                raise BlocksearchError(f"{lora}: LoRA module {teacher} is no module of teacher {doc['teacher']!r} "
                                       f"({doc['model_class']}, block map of {student}); a LoRA for another base "
                                       f"model?")
            dropped.append(teacher)
            continue
        check_shapes(m, target, shapes, lora)
        kept, renamed, norms[0] = kept + 1, renamed + (target != teacher), norms[0] + energy
        written.update(rename(m, target, scale))
    if not written:
        raise BlocksearchError(f"{lora}: every one of its {len(dropped)} modules sits in a module the cut removed; "
                               f"nothing to write")
    path = write_lora(written, out)
    share = (norms[0] / norms[1]) ** 0.5 if norms[1] else 1.0
    return LoraAdapted(kept, renamed, tuple(dropped), te, share, path, doc["subfolder"])


def read_lora(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """A LoRA's tensors and adapter metadata: a ``.safetensors`` file or a folder holding one (never pickle)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.safetensors"))
        if len(files) != 1:
            raise BlocksearchError(f"LoRA folder {path} holds {len(files)} .safetensors files; allowed: exactly one "
                                   f"(or pass the file)")
        path = files[0]
    if not path.is_file() or path.suffix != ".safetensors":
        raise BlocksearchError(f"LoRA {path}: not a .safetensors file; allowed: a .safetensors file or a folder "
                               f"with one (pickled .bin/.pt/.ckpt files are not read)")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return tensors, json.loads(meta[METADATA_KEY]) if meta.get(METADATA_KEY) else {}


def parse(tensors: dict[str, torch.Tensor], doc: dict) -> list[LoraModule]:
    """Group a LoRA's keys into modules; keys for another family's denoiser or of no known form are refused."""
    denoisers = {ref.subfolder for ref in FAMILIES.values()}
    modules: dict[tuple, LoraModule] = {}
    for key, tensor in tensors.items():
        kohya = _KOHYA.match(key)
        name, suffix = (kohya[3], kohya[4]) if kohya else _split(key)
        if suffix not in SUFFIXES:
            raise BlocksearchError(f"LoRA key {key!r} is of no form adapt reads; allowed: {ALLOWED}")
        if kohya:
            component, prefix, module = ("denoiser" if kohya[1] else kohya[2]), "", name
        else:
            first, _, rest = name.partition(".")
            component, prefix, module = ((first, first + ".", rest) if first in denoisers or
                                         first.startswith("text_encoder") else (doc["subfolder"], "", name))
            if component in denoisers and component != doc["subfolder"]:
                raise BlocksearchError(f"LoRA key {key!r} targets a {component}; the student's denoiser is a "
                                       f"{doc['subfolder']} (family {doc['family']}, teacher {doc['teacher']!r}): a "
                                       f"LoRA for another base model")
            component = "denoiser" if component == doc["subfolder"] else component
        m = modules.setdefault((key[:len(key) - len(suffix)],), LoraModule(
            component, module, f"lora_{kohya[1] or kohya[2]}" if kohya else None, prefix))
        m.tensors[suffix] = (SUFFIXES[suffix][0], tensor)
    for m in modules.values():
        roles = {role for role, _ in m.tensors.values()}
        if not {"down", "up"} <= roles:
            raise BlocksearchError(f"LoRA module {m.module} has {sorted(m.tensors)}; a LoRA module needs both its "
                                   f"down (A) and up (B) weights")
    return list(modules.values())


def _split(key: str) -> tuple[str, str]:
    """(module with its prefix, suffix) of a dotted key: the longest known suffix."""
    for suffix in sorted(SUFFIXES, key=len, reverse=True):
        if key.endswith("." + suffix):
            return key[:-len(suffix) - 1], suffix
    return key.rpartition(".")[0], key.rpartition(".")[2]


def _under(name: str, prefix: str, kohya: str | None) -> bool:
    sep = "_" if kohya else "."
    prefix = prefix.replace(".", "_") if kohya else prefix
    return name == prefix or name.startswith(prefix + sep)


def peft_scales(metadata: dict, modules: list[LoraModule], subfolder: str) -> dict[int, float]:
    """peft's ``scaling = lora_alpha / r`` per peft-style module, from diffusers' adapter metadata (a LoraConfig
    packed per component: ``unet.lora_alpha``, ``unet.alpha_pattern``; a pattern matches as peft matches it,
    ``(.*\\.)?<pattern>$``); modules without metadata: 1."""
    out = {}
    for m in modules:
        if m.kohya or "lora_A.weight" not in m.tensors:
            continue
        prefixes = [m.prefix] if m.prefix else [f"{subfolder}.", ""]
        prefix = next((p for p in prefixes if f"{p}lora_alpha" in metadata), None)
        if prefix is None:
            continue
        patterns = metadata.get(f"{prefix}alpha_pattern") or {}
        alpha = next((v for p, v in patterns.items() if re.match(rf"(.*\.)?({p})$", m.module)),
                     metadata[f"{prefix}lora_alpha"])
        out[id(m)] = float(alpha) / m.tensors["lora_A.weight"][1].shape[0]
    return out


def student_shapes(folder: Path) -> dict[str, tuple[int, ...]]:
    """Tensor shapes of the student's denoiser, read from its safetensors headers (no weights loaded)."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise BlocksearchError(f"{folder}: no .safetensors weights; allowed: a student folder written by blocksearch "
                               f"distill or export")
    shapes = {}
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            shapes.update({k: tuple(f.get_slice(k).get_shape()) for k in f.keys()})
    return shapes


def check_shapes(m: LoraModule, target: str, shapes: dict, lora) -> None:
    """The LoRA's down / up weights fit the student module's weight (in and out features); else another base."""
    weight = shapes.get(f"{target}.weight")
    down = next(t for role, t in m.tensors.values() if role == "down")
    up = next(t for role, t in m.tensors.values() if role == "up")
    if weight is None or len(weight) < 2 or down.shape[1] != weight[1] or up.shape[0] != weight[0]:
        raise BlocksearchError(f"{lora}: LoRA module {m.module} maps {tuple(down.shape[1:2])} -> {up.shape[0]} "
                               f"features, the student's {target} {weight and (weight[1], weight[0])}: a LoRA for "
                               f"another base model")


def delta_norm2(m: LoraModule, scale: float) -> float:
    """||scale * alpha/r * B A||_F^2 via the rank x rank Gram matrices: trace((B^T B)(A A^T))."""
    down = next(t for role, t in m.tensors.values() if role == "down").double().flatten(1)
    up = next(t for role, t in m.tensors.values() if role == "up").double().flatten(1)
    alpha = next((t for role, t in m.tensors.values() if role == "alpha"), None)
    factor = scale * (float(alpha) / down.shape[0] if alpha is not None else 1.0)
    return factor ** 2 * float(torch.trace((up.T @ up) @ (down @ down.T)))


def rename(m: LoraModule, target: str, scale: float) -> dict[str, torch.Tensor]:
    """The module's keys under ``target``, in its own convention; peft ``lora_B`` times its scale."""
    out = {}
    for suffix, (role, tensor) in m.tensors.items():
        if SUFFIXES[suffix][1] == "peft" and role.startswith("up") and scale != 1.0:
            tensor = tensor * scale
        key = f"{m.kohya}_{target.replace('.', '_')}.{suffix}" if m.kohya else f"{m.prefix}{target}.{suffix}"
        out[key] = tensor.contiguous()
    return out


def write_lora(tensors: dict[str, torch.Tensor], out: str | Path) -> Path:
    """``out`` itself when it ends in ``.safetensors``, else ``out/pytorch_lora_weights.safetensors``."""
    out = Path(out)
    path = out if out.suffix == ".safetensors" else out / OUT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"format": "pt"})
    return path
