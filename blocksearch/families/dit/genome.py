"""Transformer denoisers as the dit family sees them: block groups, the genome (kept blocks per group) and its
id, and the shipped teacher configs (PixArt-Sigma, SD3-medium, FLUX.1-dev, DiT-XL/2; no download). Torch-free:
the space loader and the CLI import it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from blocksearch.errors import BlocksearchError

CONFIGS_DIR = Path(__file__).resolve().parent / "configs"
TEACHERS = ("pixart-sigma", "sd3-medium", "flux-dev", "dit-xl")  # configs/<name>.json, shipped (no download)
# Block group -> (id letter, the diffusers config field that holds its length).
GROUPS = {"transformer_blocks": ("D", "num_layers"), "single_transformer_blocks": ("S", "num_single_layers")}
# Supported diffusers classes -> (block group, diffusers' default length) for each of its groups.
CLASSES = {"PixArtTransformer2DModel": (("transformer_blocks", 28),),
           "SD3Transformer2DModel": (("transformer_blocks", 18),),
           "DiTTransformer2DModel": (("transformer_blocks", 28),),
           "FluxTransformer2DModel": (("transformer_blocks", 19), ("single_transformer_blocks", 38))}
# A config without ``_class_name`` (``model.config``) is recognised by a field only its class has.
_FINGERPRINTS = (("num_single_layers", "FluxTransformer2DModel"), ("pos_embed_max_size", "SD3Transformer2DModel"),
                 ("caption_channels", "PixArtTransformer2DModel"), ("norm_type", "DiTTransformer2DModel"))
_LETTER = {letter: group for group, (letter, _) in GROUPS.items()}


# -- genome ids: kept blocks as runs ----------------------------------------------------------------
def encode_runs(kept: tuple[int, ...]) -> str:
    """``(0, 1, 2, 3, 5, 7, 8, 9)`` -> ``0-3.5.7-9``; a stride run of 3 or more -> ``A-BsK`` (``0-26s2``)."""
    out, i = [], 0
    while i < len(kept):
        step = kept[i + 1] - kept[i] if i + 1 < len(kept) else 1
        j = i
        while j + 1 < len(kept) and kept[j + 1] - kept[j] == step:
            j += 1
        if j == i or (step > 1 and j - i < 2):
            out.append(str(kept[i]))
            i += 1
        else:
            out.append(f"{kept[i]}-{kept[j]}" + (f"s{step}" if step > 1 else ""))
            i = j + 1
    return ".".join(out)


def decode_runs(text: str) -> tuple[int, ...]:
    kept: list[int] = []
    for run in text.split("."):
        match = re.fullmatch(r"(\d+)(?:-(\d+)(?:s([1-9]\d*))?)?", run)
        if not match or int(match[2] or match[1]) < int(match[1]):
            raise ValueError(run)
        kept += range(int(match[1]), int(match[2] or match[1]) + 1, int(match[3] or 1))
    return tuple(kept)


@dataclass(frozen=True, order=True)
class DitGenome:
    """One architecture: the teacher blocks kept in each block group. Hashable, with a stable id."""

    kept: tuple[tuple[str, tuple[int, ...]], ...]  # (group, sorted kept teacher indices), groups in GROUPS order
    family: ClassVar[str] = "dit"  # the denoiser family whose architectures these are (families/base.py)

    def __post_init__(self):
        groups = [g for g, _ in self.kept]
        if groups != [g for g in GROUPS if g in groups] or any(
                not k or list(k) != sorted(set(k)) or k[0] < 0 for _, k in self.kept):
            raise BlocksearchError(f"malformed dit genome {self.kept!r}: per group, its kept blocks, sorted, non-empty")

    def blocks(self, group: str) -> tuple[int, ...]:
        return dict(self.kept)[group]

    @property
    def groups(self) -> tuple[str, ...]:
        return tuple(g for g, _ in self.kept)

    @property
    def id(self) -> str:
        """One letter per group (D = transformer_blocks, S = single_transformer_blocks) and its kept teacher
        blocks as runs: ``D0-7_S0-37`` (Flux.1-Lite), ``D0-26s2`` (DiT-XL/2, every other block)."""
        return "_".join(GROUPS[g][0] + encode_runs(k) for g, k in self.kept)

    @property
    def attention_free(self) -> bool:
        """Every transformer block attends; only a genome without blocks would be attention-free (never valid)."""
        return not any(k for _, k in self.kept)

    @classmethod
    def from_id(cls, text: str) -> "DitGenome":
        try:
            return cls(tuple((_LETTER[part[0]], decode_runs(part[1:])) for part in text.split("_")))
        except (KeyError, IndexError, ValueError):
            raise BlocksearchError(f"dit genome id {text!r} is malformed: expected e.g. 'D0-7_S0-37' (D = "
                                   "transformer_blocks, S = single_transformer_blocks; kept blocks as runs 'A', "
                                   "'A-B' or 'A-BsK' joined by '.')") from None


# -- the teacher -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DitTopology:
    """What surgery needs to know of a teacher transformer: its class and the length of each block group."""

    model_class: str
    depths: tuple[tuple[str, int], ...]  # (group, number of blocks)

    def depth(self, group: str) -> int:
        return dict(self.depths)[group]

    @property
    def groups(self) -> tuple[str, ...]:
        return tuple(g for g, _ in self.depths)


def model_class_of(config) -> str:
    """The diffusers class of a transformer config (its ``_class_name``, else a field only that class has)."""
    config = dict(config)
    name = config.get("_class_name") or next((c for key, c in _FINGERPRINTS if key in config), None)
    if name not in CLASSES:
        raise BlocksearchError(f"transformer class {name!r} is not supported by the dit family; allowed: "
                               f"{', '.join(CLASSES)}")
    return name


def topology_of(config) -> DitTopology:
    """Read the block groups of a supported transformer config (diffusers' default where a field is absent)."""
    model_class, config = model_class_of(config), dict(config)
    return DitTopology(model_class, tuple((g, int(config.get(GROUPS[g][1]) or default))
                                          for g, default in CLASSES[model_class]))


def load_teacher_config(spec: str) -> dict:
    """A teacher transformer's config: a shipped one by name (TEACHERS), a diffusers pipeline or transformer
    folder, or a ``config.json``."""
    path = Path(spec)
    candidates = [CONFIGS_DIR / f"{spec}.json"] if spec in TEACHERS else [
        path, path / "config.json", path / "transformer" / "config.json"]
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        raise BlocksearchError(f"unknown dit teacher {spec!r}; allowed: {', '.join(TEACHERS)}, a diffusers "
                               "pipeline or transformer folder, or its config.json")
    try:
        config = json.loads(found.read_text())
    except json.JSONDecodeError as err:
        raise BlocksearchError(f"{found}: malformed JSON: {err.msg} (line {err.lineno})") from None
    model_class_of(config)
    return config


# -- the report's and model card's words -----------------------------------------------------------------
def architecture_diff(genome: DitGenome, topo: DitTopology) -> str:
    """What ``genome`` removes, per group: e.g. 'transformer_blocks: 8 of 16 blocks kept (teacher blocks 0-7);
    removed 8-15', or '... (teacher blocks 0-14 step 2); removed 1-15 step 2'."""
    parts = []
    for g, n in topo.depths:
        kept = genome.blocks(g)
        if len(kept) < n:
            gone = tuple(i for i in range(n) if i not in kept)
            parts.append(f"{g}: {len(kept)} of {n} blocks kept (teacher blocks {_runs(kept)}); removed {_runs(gone)}")
    return "; ".join(parts) or "teacher (nothing removed)"


def _runs(blocks: tuple[int, ...]) -> str:
    """Block indices as the genome id's runs, in words: '0-3, 8-15', '0-14 step 2'."""
    return re.sub(r"s(\d+)", r" step \1", encode_runs(blocks).replace(".", ", "))


def architecture_table(genome: DitGenome, topo: DitTopology) -> list[tuple[str, str, str]]:
    """(teacher block, the teacher's, the student's): each teacher block, kept as which student block or removed."""
    rows = []
    for g, n in topo.depths:
        student = {t: i for i, t in enumerate(genome.blocks(g))}
        rows += [(f"{g}.{t}", "transformer block", f"kept as {g}.{student[t]}" if t in student else "removed")
                 for t in range(n)]
    return rows


def removed(genome: DitGenome, topo: DitTopology) -> dict[str, str]:
    return {f"{g}.{t}": "the whole block" for g, n in topo.depths for t in range(n) if t not in genome.blocks(g)}
