"""The U-Net family's ``layout`` (families/layout.py): each teacher stage, down, mid and up, as a row of its
layers, kept or removed as surgery keeps them (surgery.py's weight map): a down stage keeping k layers keeps the
teacher's first k; the tied up stage keeps its first k and its last (BK-SDM, arXiv 2305.15798); a transformer
keeping depth d keeps its first d blocks (an up path with depths of its own, SSD-1B's, is read per layer); a removed innermost stage removes both its stages."""

from __future__ import annotations

from blocksearch.families.layout import Part, Stage
from blocksearch.families.unet.genome import Genome, Topology

MID_PARTS = {"cross_attn": ("resnet", "attention", "resnet"), "resnet": ("resnet", "resnet"), "none": ()}


def layout(genome: Genome, topo: Topology) -> tuple[Stage, ...]:
    """Down stages, the mid block, then the up stages (``up_blocks.j`` tied to ``down_blocks.{n-1-j}``)."""
    n_t, n = topo.n_stages, len(genome.layers)
    down = [_stage(f"down_blocks.{i}", "down", topo.layers[i], topo.depth[i],
                   range(genome.layers[i]) if i < n else (), genome.depth[i] if i < n else 0) for i in range(n_t)]
    up = []
    for j in range(n_t):
        i = n_t - 1 - j  # the down stage this up stage is tied to by the skip connections
        kept = (*range(genome.layers[i]), topo.layers[i]) if i < n else ()
        student = dict(zip(kept, genome.up_depths[i])) if i < n else {}  # SSD-1B's up path: its own depths
        up.append(Stage(f"up_blocks.{j}", "up", tuple(
            Part("resnet + attention" if depth else "resnet", k in student, k, depth, student.get(k, 0))
            for k, depth in enumerate(topo.up_depths[i]))))
    return (*down, _mid(genome, topo), *up)


def _stage(name: str, role: str, layers: int, depth: int, kept, kept_depth: int) -> Stage:
    """A stage of ``layers`` layers (resnet, plus a transformer of ``depth`` blocks where it attends)."""
    kept = set(kept)
    return Stage(name, role, tuple(Part("resnet + attention" if depth else "resnet", k in kept, k, depth,
                                        kept_depth if k in kept else 0) for k in range(layers)))


def _mid(genome: Genome, topo: Topology) -> Stage:
    """The teacher's mid block; the student keeps all of it, its resnets only, or nothing."""
    parts = []
    for k, label in enumerate(MID_PARTS[topo.mid]):
        attends = label == "attention"
        kept = genome.mid != "none" and (not attends or genome.mid == "cross_attn")
        parts.append(Part(label, kept, k, topo.mid_depth if attends else 0,
                          topo.mid_depth if attends and kept else 0))
    return Stage("mid_block", "mid", tuple(parts))
