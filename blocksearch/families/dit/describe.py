"""The dit family's ``layout`` (families/layout.py): each block group of the teacher as its row of blocks,
each kept or removed; a kept block is the teacher block the student's block is initialised from (surgery.py:
student block i <- teacher block ``genome.blocks(group)[i]``; TinyFusion, arXiv 2412.01199). Every block
attends."""

from __future__ import annotations

from blocksearch.families.dit.genome import DitGenome, DitTopology
from blocksearch.families.layout import Part, Stage


def layout(genome: DitGenome, topo: DitTopology) -> tuple[Stage, ...]:
    """One stage per block group, in the teacher's order; a part per teacher block."""
    stages = []
    for group, n in topo.depths:
        kept = set(genome.blocks(group)) if group in genome.groups else set()
        stages.append(Stage(group, "blocks", tuple(Part(f"block {t}", t in kept, t, 1, int(t in kept))
                                                   for t in range(n))))
    return tuple(stages)
