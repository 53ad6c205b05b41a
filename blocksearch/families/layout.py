"""A student's architecture as a picture sees it: the teacher's stages (or block groups) in data-flow order,
each a row of parts, every part kept or removed. A family's ``layout`` hook builds it (families/unet/describe.py,
families/dit/describe.py); report/diagram.py draws it. Torch-free data, no drawing here."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Part:
    """One teacher layer or block: ``label`` (what it is: "resnet", "block 7"), whether the student keeps it,
    its attention (0: none; else the teacher's transformer depth and the depth the student keeps), and the
    teacher index it is (a transformer block: the teacher block a kept student block came from)."""

    label: str
    kept: bool
    source: int
    attention: int = 0  # the teacher's transformer depth in this layer (0: no attention)
    kept_attention: int = 0  # the student's (0: attention removed or never there)


@dataclass(frozen=True)
class Stage:
    """One teacher stage or block group: its diffusers path (``down_blocks.1``, ``mid_block``,
    ``transformer_blocks``), its role in the data flow (down, mid, up; a transformer's group) and its parts."""

    name: str
    role: str  # "down", "mid", "up" (a U-Net) or "blocks" (a transformer's block group)
    parts: tuple[Part, ...]

    @property
    def removed(self) -> bool:
        """Every part of the stage removed (a U-Net's innermost stage, a removed mid block)."""
        return not any(p.kept for p in self.parts)
