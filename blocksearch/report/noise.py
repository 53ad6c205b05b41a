"""The noise of a study's scores, estimated on its reference designs: what a difference must exceed to count.

FID, KID and text alignment are scores of a fixed prompt set generated at fixed seeds (evaluate.py) by a
student trained with one KD seed; at other seeds the same architecture scores differently. ``blocksearch
run`` trains and scores each reference design at ``--noise-seeds`` (KD seed, generation seed) pairs
(trial.py: ``seed_scores``), and the spread of such
a score is the pooled within-design standard deviation (the pooled SD of a one-way layout, e.g. Cohen,
*Statistical Power Analysis*, 1988): sigma^2 = sum_i (n_i - 1) s_i^2 / sum_i (n_i - 1), s_i^2 the sample
variance of design i's n_i scores -- with as many seeds per design, the mean of the per-design variances.

The other objectives do not depend on the seeds. params and macs are exact (sigma 0).
latency_ms is one measurement per architecture whose repeat-to-repeat spread is recorded (``latency_cv``,
std/mean of the timed repeats): its sigma is the standard error of that median, sqrt(pi/2) * cv * latency /
sqrt(repeats) (the median of normal repeats), pooled over the reference designs as above. e2e_ms and
memory_mb record no spread (e2e: the median of at most 3 runs; memory: a peak allocation) and are taken as
exact (sigma 0): a claim on them is a claim on the raw values. An objective of none of these kinds has
unknown noise (sigma None).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from blocksearch.objectives import TABLE

# each score's noise and kind, from objectives.py:
# scores of generated images and of the held-out probe: they change with the KD (and generation) seeds
NOISY = tuple(o.name for o in TABLE if o.noise == "seeds")
EXACT = tuple(o.name for o in TABLE if o.noise == "exact")
UNSPREAD = tuple(o.name for o in TABLE if o.noise == "no spread recorded")  # no spread recorded: taken as exact
# what a student costs to run; every other objective (fid, kid, alignment, probe_*, ...) is a quality objective
COSTS = tuple(o.name for o in TABLE if o.cost)


def quality_mask(objectives: Sequence[str]) -> tuple[bool, ...]:
    """Per objective, is it a quality objective (not one of :data:`COSTS`)? A claim against a reference design
    rests on these (``pareto.claim``); a rung promotes by the first of them (``rungs.promoted``)."""
    return tuple(o not in COSTS for o in objectives)


@dataclass(frozen=True)
class Spread:
    """The standard deviation of one score of one objective, and what it rests on."""

    sigma: float | None  # None: not measured
    source: str  # seeds | latency_cv | exact | no spread recorded | not measured
    seeds: tuple[int, ...] = ()  # scores behind it, per reference design (seeds, or latency repeats)

    @property
    def designs(self) -> int:
        return len(self.seeds)


def pooled_std(groups: Iterable[Sequence[float]]) -> float | None:
    """sqrt(sum (n_i - 1) s_i^2 / sum (n_i - 1)) over the groups of at least 2 values; None without any."""
    groups = [list(map(float, g)) for g in groups if len(g) >= 2]
    if not groups:
        return None
    dof = sum(len(g) - 1 for g in groups)
    return math.sqrt(sum((len(g) - 1) * statistics.variance(g) for g in groups) / dof)


def seed_spread(seed_scores: Mapping[str, Sequence[dict]], name: str) -> Spread:
    """The pooled seed-to-seed spread of ``name`` over designs' seed scores (rows ``{seed, fid, ...}``)."""
    groups = [[r[name] for r in rows if r.get(name) is not None] for rows in seed_scores.values()]
    groups = [g for g in groups if len(g) >= 2]
    sigma = pooled_std(groups)
    return Spread(None, "not measured") if sigma is None else Spread(sigma, "seeds", tuple(map(len, groups)))


def latency_spread(metrics: Mapping[str, dict]) -> Spread:
    """The pooled standard error of the designs' median latencies, from their ``latency_cv``."""
    errors, repeats = [], []
    for m in metrics.values():
        if m.get("latency_ms") is None or m.get("latency_cv") is None:
            continue
        how = (m.get("measured") or {}).get("latency")
        n = int((how.get("repeats") if isinstance(how, dict) else None) or 1)  # unknown: one, the widest
        errors.append(math.sqrt(math.pi / 2) * m["latency_cv"] * m["latency_ms"] / math.sqrt(n))
        repeats.append(n)
    if not errors:
        return Spread(None, "not measured")
    return Spread(math.sqrt(statistics.fmean(e * e for e in errors)), "latency_cv", tuple(repeats))


def estimate_noise(metrics: Mapping[str, dict], seed_scores: Mapping[str, Sequence[dict]],
                   names: Iterable[str]) -> dict[str, Spread]:
    """The spread of each of ``names``, from the reference designs' ``metrics`` and ``seed_scores`` (by design)."""
    out = {}
    for name in names:
        if name in NOISY:
            out[name] = seed_spread(seed_scores, name)
        elif name == "latency_ms":
            out[name] = latency_spread(metrics)
        elif name in EXACT or name in UNSPREAD:
            out[name] = Spread(0.0, "exact" if name in EXACT else "no spread recorded")
        else:
            out[name] = Spread(None, "not measured")
    return out
