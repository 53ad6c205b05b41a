"""The U-Net family's architectures: the teacher's block topology and the Genome (kept layers, transformer depth and
mid block per stage) with its stable id. BK-SDM (arXiv 2305.15798), SnapFusion (arXiv 2306.00980), KOALA
(arXiv 2312.04005). Torch-free: the space loader and the CLI import it.
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

    @property
    def n_stages(self) -> int:
        return len(self.layers)


@dataclass(frozen=True, order=True)
class Genome:
    """One architecture: kept layers per down stage, transformer depth per stage (0 = no attention),
    and the mid block. A removed innermost stage is a shorter tuple. Hashable, with a stable id."""

    layers: tuple[int, ...]
    depth: tuple[int, ...]
    mid: str
    family: ClassVar[str] = "unet"  # the denoiser family whose architectures these are (families/base.py)

    def __post_init__(self):
        if len(self.layers) != len(self.depth) or self.mid not in MID_CHOICES:
            raise BlocksearchError(f"malformed genome {self!r}")

    @property
    def id(self) -> str:
        """Readable and stable, e.g. ``L1-1-1-1_T1-1-1-0_Mnone`` (BK-SDM-Small on SD-v1)."""
        layers = "-".join(map(str, self.layers))
        depth = "-".join(map(str, self.depth))
        return f"L{layers}_T{depth}_M{_MID_CODE[self.mid]}"

    @property
    def attention_free(self) -> bool:
        """No transformer anywhere: every stage's depth 0 and no cross-attention mid block (SnapFusion's
        attention removal taken to the end)."""
        return not any(self.depth) and self.mid != "cross_attn"

    @classmethod
    def from_id(cls, text: str) -> "Genome":
        match = re.fullmatch(r"L([\d-]+)_T([\d-]+)_M(attn|res|none)", text)
        if not match:
            raise BlocksearchError(
                f"genome id {text!r} is malformed: expected e.g. 'L1-1-1-1_T1-1-1-0_Mnone'")
        mid = {code: name for name, code in _MID_CODE.items()}[match[3]]
        return cls(tuple(map(int, match[1].split("-"))), tuple(map(int, match[2].split("-"))), mid)
