"""Pareto fronts and hypervolume for minimisation problems (shared by report and bench search).

Hypervolume: the volume dominated by a front and bounded by a reference point (Zitzler & Thiele,
1998), computed exactly by slicing along the last objective (HSO, While et al., IEEE TEC 2006):
hv_d(P) = sum over slices of (slice height) * hv_{d-1}(points below the slice). Exact and fast enough
for the few hundred points of a study. Optuna 5 has no public hypervolume API, hence this module.

Dominance beyond noise: two scores that each carry independent noise of standard deviation sigma differ
by noise of sigma * sqrt(2); a difference counts only beyond z such standard deviations. A claim against a
reference design is "on quality" only when a quality objective (FID, KID, alignment, a probe score) differs
beyond noise; a domination won on cost alone, every quality gap within noise, is "on cost only" (:func:`claim`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

REFERENCE = 1.1  # reference point of normalised hypervolume: 10% beyond the worst value, per objective
# z of dominance beyond noise: a difference of two noisy scores is a claim beyond 2 of its standard deviations
# (the usual "two standard errors", ~95% two-sided for one normal difference); deliberately no larger quantile:
# the sigma itself rests on a few designs x seeds, and the report says so next to every claim
Z_NOISE = 2.0


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """``a`` Pareto-dominates ``b`` (minimisation): no worse in every objective, better in one."""
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def noise_margins(noise: Sequence[float], z: float = Z_NOISE) -> tuple[float, ...]:
    """Per objective, the difference of two scores that is still noise: z * sqrt(2) * sigma."""
    return tuple(z * math.sqrt(2.0) * s for s in noise)


def dominates_beyond_noise(a: Sequence[float], b: Sequence[float], noise: Sequence[float],
                           z: float = Z_NOISE) -> bool:
    """``a`` dominates ``b`` (minimisation) beyond noise ``noise`` (one sigma per objective): no worse than
    ``b`` by more than its margin in any objective, better by more than its margin in one
    (:func:`noise_margins`). With every sigma 0 this is :func:`dominates`."""
    margins = noise_margins(noise, z)
    return (all(x <= y + m for x, y, m in zip(a, b, margins))
            and any(x < y - m for x, y, m in zip(a, b, margins)))


def dominates_despite_noise(a: Sequence[float], b: Sequence[float], noise: Sequence[float],
                            z: float = Z_NOISE) -> bool:
    """``a`` dominates ``b`` (minimisation) even with every score moved by its noise margin against ``a``:
    ``a`` + margin no worse than ``b`` anywhere and better somewhere. Where this fails, ``b`` may still be
    non-dominated once the noise is out: it is *within noise of the front* (rungs.py promotes it). With every
    sigma 0 this is :func:`dominates`."""
    margins = noise_margins(noise, z)
    return (all(x + m <= y for x, y, m in zip(a, b, margins))
            and any(x + m < y for x, y, m in zip(a, b, margins)))


def claim(a: Sequence[float], b: Sequence[float], noise: Sequence[float], quality: Sequence[bool],
          z: float = Z_NOISE) -> str | None:
    """What ``a`` may claim over ``b`` (minimisation), ``quality`` marking the quality objectives (the rest are
    costs): "quality" when ``a`` is better beyond noise in a quality objective and worse beyond noise in none;
    "cost only" when it dominates beyond noise (:func:`dominates_beyond_noise`) but every quality difference is
    within noise, so the gain is in cost alone; None otherwise (worse beyond noise anywhere -- a quality loss
    beyond noise included -- or better beyond noise nowhere)."""
    if not dominates_beyond_noise(a, b, noise, z):
        return None
    margins = noise_margins(noise, z)
    return "quality" if any(q and x < y - m for x, y, m, q in zip(a, b, margins, quality)) else "cost only"


def pareto_mask(values: np.ndarray) -> np.ndarray:
    """Boolean mask of the non-dominated rows of ``values`` (n x d, every column minimised): the one
    front computation of the package, :func:`dominates` applied to every pair at once.

    Duplicates of a non-dominated row are all kept."""
    values = np.asarray(values, dtype=float)
    if values.ndim != 2:
        raise ValueError(f"values must be a 2-D array (points x objectives), got shape {values.shape}")
    mask = np.ones(len(values), dtype=bool)
    for i, row in enumerate(values):
        mask[i] = not np.any(np.all(values <= row, axis=1) & np.any(values < row, axis=1))
    return mask


def non_dominated_sort(points: Sequence[Sequence[float]]) -> list[list[int]]:
    """Fronts of indices, best first (NSGA-II's non-dominated sorting, Deb et al. 2002): the front of
    the points left after removing the better fronts; equal points share a front."""
    if not len(points):
        return []
    left, fronts, values = np.arange(len(points)), [], np.asarray(points, dtype=float)
    while left.size:
        keep = pareto_mask(values[left])
        fronts.append(left[keep].tolist())
        left = left[~keep]
    return fronts


def pareto_front(points: Sequence[Sequence[float]]) -> list[int]:
    """Indices of the non-dominated points (minimisation)."""
    return (non_dominated_sort(points) or [[]])[0]


def hypervolume(points: np.ndarray, reference: Sequence[float]) -> float:
    """Exact hypervolume dominated by ``points`` (minimisation) and bounded by ``reference``.

    Points that do not strictly dominate the reference point contribute nothing."""
    ref = np.asarray(reference, dtype=float)
    pts = np.asarray(points, dtype=float)
    if pts.size == 0:
        return 0.0
    if pts.ndim != 2 or pts.shape[1] != len(ref):
        raise ValueError(f"points have shape {pts.shape} but the reference point has {len(ref)} objectives")
    pts = pts[np.all(pts < ref, axis=1)]
    if len(pts) == 0:
        return 0.0
    pts = pts[pareto_mask(pts)]
    return _hv(np.unique(pts, axis=0), ref)


def _hv(pts: np.ndarray, ref: np.ndarray) -> float:
    if pts.shape[1] == 1:
        return float(ref[0] - pts[:, 0].min())
    if pts.shape[1] == 2:  # sweep: sort by the first objective, add the rectangles
        order = pts[np.argsort(pts[:, 0])]
        volume, best_y = 0.0, ref[1]
        for x, y in order:
            if y < best_y:
                volume += (ref[0] - x) * (best_y - y)
                best_y = y
        return float(volume)
    order = pts[np.argsort(pts[:, -1])]
    volume = 0.0
    for i in range(len(order)):
        top = order[i + 1, -1] if i + 1 < len(order) else ref[-1]
        height = top - order[i, -1]
        if height > 0:
            below = order[: i + 1, :-1]
            volume += height * _hv(below[pareto_mask(below)], ref[:-1])
    return float(volume)


def normalise(values: np.ndarray, lower: Sequence[float], upper: Sequence[float]) -> np.ndarray:
    """Scale each objective to [0, 1] between ``lower`` (best) and ``upper`` (worst)."""
    lower, upper = np.asarray(lower, dtype=float), np.asarray(upper, dtype=float)
    span = np.where(upper > lower, upper - lower, 1.0)
    return (np.asarray(values, dtype=float) - lower) / span


def normalised_hypervolume(values: np.ndarray, lower: Sequence[float], upper: Sequence[float],
                           reference: float = REFERENCE) -> float:
    """Hypervolume of ``values`` scaled to [0, 1] per objective, reference point ``reference``^d."""
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        return 0.0
    scaled = normalise(values, lower, upper)
    return hypervolume(scaled, [reference] * scaled.shape[1])
