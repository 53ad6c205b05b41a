"""The U-Net family's architectures: the teacher's block topology and the Genome (kept layers, transformer depth and
mid block per stage, and per-layer transformer depths of an up path that differs from the down path) with its
stable id. BK-SDM (arXiv 2305.15798), SnapFusion (arXiv 2306.00980), KOALA (arXiv 2312.04005), SSD-1B (Gupta et
al., arXiv 2401.02677: fewer transformer layers on the way up than on the way down). Torch-free.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar

from blocksearch.errors import BlocksearchError

MID_CHOICES = ("cross_attn", "resnet", "none")
_MID_CODE = {"cross_attn": "attn", "resnet": "res", "none": "none"}


@dataclass(frozen=True)
class Topology:
    """What surgery needs to know of a teacher U-Net, read from its diffusers config."""

    layers: tuple[int, ...]  # layers per down stage
    depth: tuple[int, ...]  # transformer depth per stage, 0 where the stage has no attention
    mid: str  # one of MID_CHOICES
    mid_depth: int = 1  # transformer depth of a cross-attention mid block
    up: tuple[tuple[int, ...], ...] = ()  # per down stage, the tied up stage's depth per layer; (): ``depth``'s

    def __post_init__(self):
        object.__setattr__(self, "up", _normal_up(self.layers, self.depth, self.up))

    @property
    def n_stages(self) -> int:
        return len(self.layers)

    @property
    def up_depths(self) -> tuple[tuple[int, ...], ...]:
        """Per down stage, the transformer depth of each layer of its tied up stage (``layers + 1`` of them)."""
        return self.up or uniform_up(self.layers, self.depth)


@dataclass(frozen=True, order=True)
class Genome:
    """One architecture: kept layers per down stage, transformer depth per stage (0 = no attention),
    and the mid block. A removed innermost stage is a shorter tuple. Hashable, with a stable id."""

    layers: tuple[int, ...]
    depth: tuple[int, ...]
    mid: str
    up: tuple[tuple[int, ...], ...] = ()  # per down stage, its up stage's depth per layer; (): the down depth's
    family: ClassVar[str] = "unet"  # the denoiser family whose architectures these are (families/base.py)

    def __post_init__(self):
        if len(self.layers) != len(self.depth) or self.mid not in MID_CHOICES:
            raise BlocksearchError(f"malformed genome {self!r}")
        object.__setattr__(self, "up", _normal_up(self.layers, self.depth, self.up))

    @property
    def up_depths(self) -> tuple[tuple[int, ...], ...]:
        """Per down stage, the transformer depth of each layer of its tied up stage (``layers + 1`` of them)."""
        return self.up or uniform_up(self.layers, self.depth)

    @property
    def id(self) -> str:
        """Readable and stable, e.g. ``L1-1-1-1_T1-1-1-0_Mnone`` (BK-SDM-Small on SD-v1); an up path that differs
        from the down path adds its per-layer depths per stage, ``_U0.0.0-2.1.1-4.4.10`` (SSD-1B's)."""
        layers = "-".join(map(str, self.layers))
        depth = "-".join(map(str, self.depth))
        up = "_U" + "-".join(".".join(map(str, stage)) for stage in self.up) if self.up else ""
        return f"L{layers}_T{depth}{up}_M{_MID_CODE[self.mid]}"

    @property
    def attention_free(self) -> bool:
        """No transformer anywhere: every stage's depth 0 and no cross-attention mid block (SnapFusion's
        attention removal taken to the end)."""
        return not any(self.depth) and self.mid != "cross_attn"

    @classmethod
    def from_id(cls, text: str) -> "Genome":
        match = re.fullmatch(r"L([\d-]+)_T([\d-]+)(?:_U([\d.-]+))?_M(attn|res|none)", text)
        if not match:
            raise BlocksearchError(
                f"genome id {text!r} is malformed: expected e.g. 'L1-1-1-1_T1-1-1-0_Mnone'")
        mid = {code: name for name, code in _MID_CODE.items()}[match[4]]
        up = tuple(tuple(map(int, stage.split("."))) for stage in match[3].split("-")) if match[3] else ()
        return cls(tuple(map(int, match[1].split("-"))), tuple(map(int, match[2].split("-"))), mid, up)


def uniform_up(layers: tuple[int, ...], depth: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
    """The up path that mirrors the down path: every layer of up stage i at down stage i's depth."""
    return tuple((d,) * (k + 1) for k, d in zip(layers, depth))


def _normal_up(layers, depth, up) -> tuple[tuple[int, ...], ...]:
    """``up`` as stored: () where it mirrors the down path (one architecture, one id); else checked per stage."""
    up = tuple(tuple(int(d) for d in stage) for stage in up)
    if not up or up == uniform_up(layers, depth):
        return ()
    fits = lambda u, k, d: len(u) == k + 1 and (all(x >= 1 for x in u) if d else not any(u))  # noqa: E731
    if len(up) != len(layers) or not all(fits(u, k, d) for u, k, d in zip(up, layers, depth)):
        raise BlocksearchError(f"malformed up-path depths {up} for layers {layers} and depths {depth}: expected, per "
                               f"stage, layers + 1 depths, all >= 1 where the stage has attention, all 0 where not")
    return up
