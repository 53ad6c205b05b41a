"""One-shot block importance as the search side uses it (the family's ``one_shot`` hook, families/base.py):

- ``picks``: the students that keep each group's most important blocks by a measure, at a few sizes (the
  one-shot baseline that TinyFusion, arXiv 2412.01199, compares a learned choice with), repaired into the space;
  ``bench fidelity`` trains them beside the named designs, ``--init one-shot`` enqueues them as a warm start;
- ``scores``: a genome's one-shot predictors, the summed importance of the blocks it removes, per measure;
- ``standin``: ``bench search``'s stand-in table over a whole space -- the removed skip-MSE for FID, params and
  MACs exact and additive over the removed blocks (every block of a group has the same cost at a fixed input).

Importance itself: importance.py (skip MSE as Flux.1-Lite ranked blocks; ShortGPT's block influence).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from blocksearch.errors import BlocksearchError
from blocksearch.families.dit.genome import DitGenome
from blocksearch.families.dit.importance import MEASURES, BlockScore, block_importance, removed_importance

__all__ = ("MEASURES", "FRACTIONS", "block_importance", "picks", "scores", "standin", "to_rows", "from_rows")

FRACTIONS = (0.375, 0.5, 0.625, 0.75)  # kept fraction of each searched group: 6, 8, 10, 12 of toy-dit's 16 blocks
STANDIN_LIMIT = 2_000_000  # a stand-in table enumerates the space: larger spaces are refused


def picks(table: list[BlockScore], bound, fractions: Iterable[float] = FRACTIONS,
          measures: Iterable[str] = MEASURES) -> list[tuple[str, DitGenome]]:
    """(label, genome) per measure and kept fraction -- each searched group keeps its ``round(f * n)`` most
    important blocks, then the space's repair rule (mask.py) makes the mask valid --, distinct, named designs
    left in (the caller drops what it has); by fraction, then measure: a warm start's first trials span sizes."""
    out, seen = [], set()
    for f in fractions:
        if not 0 < f <= 1:
            raise BlocksearchError(f"one-shot kept fraction {f}; allowed: 0 < f <= 1")
        for measure in measures:
            if measure not in MEASURES:
                raise BlocksearchError(f"one-shot measure {measure!r}; allowed: {', '.join(MEASURES)}")
            params = {}
            for m in bound.masks:
                ranked = sorted((r for r in table if r.group == m.group), key=lambda r: (-getattr(r, measure), r.index))
                keep = {r.index for r in ranked[:max(1, round(f * m.n))]}
                params |= {f"{m.group}.{i}": i in keep for i in range(m.n)}
            genome = bound.from_params(params)
            if genome not in seen:
                seen.add(genome)
                out.append((f"{measure}@{f:.0%}", genome))
    return out


def scores(table: list[BlockScore], genome: DitGenome) -> dict[str, float]:
    """``oneshot_<measure>``: the summed importance of the blocks ``genome`` removes (lower: better, one-shot)."""
    return {f"oneshot_{m}": removed_importance(table, genome, m) for m in MEASURES}


def standin(table: list[BlockScore], bound, costs: Callable[[DitGenome], tuple[int, int]],
            ) -> dict[str, tuple[float, float, float]]:
    """genome id -> (removed skip-MSE, params, MACs) over every genome of ``bound``. ``costs(genome)`` -> (params,
    MACs) is called for the teacher and each one-block-removed genome only; a genome's cost is the teacher's less
    its removed blocks' (exact: a block's cost does not depend on the others)."""
    if len(bound) > STANDIN_LIMIT:
        raise BlocksearchError(f"stand-in table: the space has {len(bound):.3e} architectures on this teacher; "
                               f"allowed: at most {STANDIN_LIMIT} (a toy teacher's space)")
    teacher = bound.teacher_genome
    base = costs(teacher)
    delta = {}
    for g, n in bound.topology.depths:
        for i in range(n):
            one = DitGenome(tuple((h, tuple(b for b in kept if not (h == g and b == i))) for h, kept in teacher.kept))
            delta[(g, i)] = tuple(a - b for a, b in zip(base, costs(one)))
    skip = {(r.group, r.index): r.skip_mse for r in table}
    out = {}
    for genome in bound:
        gone = [(g, i) for g, n in bound.topology.depths for i in range(n) if i not in genome.blocks(g)]
        out[genome.id] = (sum(skip[k] for k in gone), float(base[0] - sum(delta[k][0] for k in gone)),
                          float(base[1] - sum(delta[k][1] for k in gone)))
    return out


def to_rows(table: list[BlockScore]) -> list[dict]:
    """The table as JSON rows (``bench fidelity``'s ``oneshot.json``)."""
    return [dict(group=r.group, index=r.index, skip_mse=r.skip_mse, influence=r.influence, skip_rank=r.skip_rank,
                 influence_rank=r.influence_rank) for r in table]


def from_rows(rows: list[dict]) -> list[BlockScore]:
    try:
        return [BlockScore(**r) for r in rows]
    except TypeError as err:
        raise BlocksearchError(f"one-shot table: malformed rows ({err}); allowed: bench fidelity's oneshot.json") from None
