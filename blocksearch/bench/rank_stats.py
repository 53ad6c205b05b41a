"""Rank agreement of short and long KD runs, computed from ``bench fidelity``'s rows (pure functions).

A row is one scored student: genome, budget (KD steps), seed (generation), fid, kid, alignment, params,
macs, kd_s (cumulative KD seconds to reach the budget), eval_s. Scores are averaged over seeds first; the
ranking of the architectures at each short budget is compared with their ranking at the longest budget by
Kendall's tau-b (Kendall 1945; ties corrected) with a percentile bootstrap interval over architectures
(Efron & Tibshirani 1993, ch. 13). Baselines: the cost proxies' ranking against the longest budget's scores,
signed so that +1 means "more parameters (MACs) predicts a better score".
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

import numpy as np
from scipy.stats import kendalltau

OBJECTIVES = ("fid", "kid", "alignment")
LOWER_IS_BETTER = {"fid": True, "kid": True, "alignment": False}
PREDICTORS = ("params", "macs")


def kendall_tau_ci(x: Sequence[float], y: Sequence[float], n_boot: int = 2000, seed: int = 0,
                   level: float = 0.95) -> tuple[float, float, float]:
    """Kendall's tau-b of (x, y) and a percentile bootstrap interval at ``level``: the pairs (architectures)
    resampled with replacement ``n_boot`` times; resamples whose tau is undefined (all tied) are skipped."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) != len(y) or len(x) < 2:
        return float("nan"), float("nan"), float("nan")
    tau = float(kendalltau(x, y).statistic)
    rng = np.random.default_rng(seed)
    taus = [kendalltau(x[i], y[i]).statistic for i in rng.integers(0, len(x), size=(n_boot, len(x)))]
    taus = np.array([t for t in taus if np.isfinite(t)])
    if not len(taus):
        return tau, float("nan"), float("nan")
    lo, hi = np.quantile(taus, [(1 - level) / 2, (1 + level) / 2])
    return tau, float(lo), float(hi)


def kendall_tau_gap(x1: Sequence[float], x2: Sequence[float], y: Sequence[float], n_boot: int = 2000,
                    seed: int = 0) -> tuple[float, float]:
    """tau-b(x1, y) - tau-b(x2, y) and its paired bootstrap standard error: the architectures resampled together
    for both predictors (Efron & Tibshirani 1993, ch. 6), so the gap's error excludes what the two share."""
    x1, x2, y = (np.asarray(v, dtype=float) for v in (x1, x2, y))
    if not len(x1) == len(x2) == len(y) or len(y) < 3:
        return float("nan"), float("nan")
    gap = float(kendalltau(x1, y).statistic - kendalltau(x2, y).statistic)
    rng = np.random.default_rng(seed)
    gaps = [kendalltau(x1[i], y[i]).statistic - kendalltau(x2[i], y[i]).statistic
            for i in rng.integers(0, len(y), size=(n_boot, len(y)))]
    gaps = np.array([g for g in gaps if np.isfinite(g)])
    return gap, float(np.std(gaps, ddof=1)) if len(gaps) > 1 else float("nan")


def reaches(tau: float, lo: float, target: float, lower: float) -> bool:
    """tau >= ``target`` and the interval's low end >= ``lower``, to within 1e-9: tau is a ratio of pair counts,
    and scipy's 0.7999999999999999 for 152 / 190 is 0.8."""
    return tau >= target - 1e-9 and lo >= lower - 1e-9


def seed_means(rows: list[dict]) -> dict[tuple[str, int], dict]:
    """(genome, budget) -> the seed-mean of each objective (None where an objective was not measured),
    params, macs, kd_s (cumulative) and eval_s (per evaluation): the mean over generation seeds within each KD
    seed, then over the KD seeds (rows without ``kd_seed`` are KD seed 0's)."""
    groups: dict[tuple[str, int], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["genome"], r["budget"]), []).append(r)
    out = {}
    for key, group in groups.items():
        mean = {k: kd_mean(group, k) for k in (*OBJECTIVES, "kd_s", "eval_s")}
        out[key] = mean | {"params": group[0]["params"], "macs": group[0]["macs"], "seeds": len(group)}
    return out


def kd_mean(group: list[dict], key: str) -> float | None:
    """``key`` over ``group`` (one architecture and budget): the mean over generation seeds within each KD seed,
    then over the KD seeds, so a KD seed scored at one generation seed weighs as much as one scored at two;
    None where a row lacks it."""
    per: dict[int, list] = {}
    for r in group:
        per.setdefault(r.get("kd_seed", 0), []).append(r.get(key))
    return _mean([_mean(v) for v in per.values()])


def _mean(values: list) -> float | None:
    return None if any(v is None for v in values) else statistics.fmean(values)


def _paired(means: dict, budget: int, longest: int, objective: str, predictor: str | None = None):
    """(x, y) over the architectures scored at both budgets: x the score at ``budget`` (or the predictor),
    y the score at ``longest``."""
    xs, ys = [], []
    for (genome, b), m in sorted(means.items()):
        long = means.get((genome, longest))
        if b != budget or long is None or long[objective] is None:
            continue
        x = m[predictor] if predictor else m[objective]
        if x is not None:
            xs.append(x)
            ys.append(long[objective])
    return xs, ys


def rank_table(rows: list[dict], n_boot: int = 2000, seed: int = 0) -> list[dict]:
    """Per short budget and objective: tau of the seed-mean score against the longest budget's, its
    interval, the architectures compared (n) and the mean cumulative KD seconds (cost_s) and eval seconds."""
    means = seed_means(rows)
    budgets = sorted({b for _, b in means})
    cost = {c["budget"]: c for c in cost_per_budget(rows)}
    out = []
    for budget in budgets[:-1]:
        for objective in OBJECTIVES:
            x, y = _paired(means, budget, budgets[-1], objective)
            if len(x) < 2:
                continue
            tau, lo, hi = kendall_tau_ci(x, y, n_boot, seed)
            out.append(dict(budget=budget, objective=objective, tau=tau, lo=lo, hi=hi, n=len(x),
                            cost_s=cost[budget]["kd_s"], eval_s=cost[budget]["eval_s"]))
    return out


def baselines(rows: list[dict], n_boot: int = 2000, seed: int = 0) -> list[dict]:
    """Tau of each cost proxy against the longest budget's seed-mean scores, signed so that +1 means "the
    larger the architecture, the better its score": -params predicts FID and KID (lower is better),
    +params predicts alignment."""
    means = seed_means(rows)
    longest = max(b for _, b in means)
    out = []
    for predictor in PREDICTORS:
        for objective in OBJECTIVES:
            x, y = _paired(means, longest, longest, objective, predictor)
            if len(x) < 2:
                continue
            sign = -1 if LOWER_IS_BETTER[objective] else 1
            tau, lo, hi = kendall_tau_ci([sign * v for v in x], y, n_boot, seed)
            out.append(dict(predictor=f"{'-' if sign < 0 else '+'}{predictor}", objective=objective, budget=longest,
                            tau=tau, lo=lo, hi=hi, n=len(x)))
    return out


def seed_spread(rows: list[dict]) -> list[dict]:
    """Per budget and objective, over architectures scored at >= 2 seeds: the median and max of the seed
    spread, |score(seed a) - score(seed b)| for two seeds, else the sample standard deviation over seeds."""
    per: dict[tuple[int, str, str], list[float]] = {}
    for r in rows:
        for objective in OBJECTIVES:
            if r.get(objective) is not None:
                per.setdefault((r["budget"], objective, r["genome"]), []).append(r[objective])
    spreads: dict[tuple[int, str], list[float]] = {}
    sizes: dict[tuple[int, str], set[int]] = {}
    for (budget, objective, _), values in per.items():
        if len(values) >= 2:
            spread = abs(values[0] - values[1]) if len(values) == 2 else statistics.stdev(values)
            spreads.setdefault((budget, objective), []).append(spread)
            sizes.setdefault((budget, objective), set()).add(len(values))
    order = sorted(spreads, key=lambda k: (k[0], OBJECTIVES.index(k[1])))
    return [dict(budget=b, objective=o, median=statistics.median(spreads[b, o]), max=max(spreads[b, o]),
                 n=len(spreads[b, o]), measure="|a - b|" if sizes[b, o] == {2} else "std") for b, o in order]


def cost_per_budget(rows: list[dict]) -> list[dict]:
    """Per budget: the mean over architectures of the cumulative KD seconds, and the mean seconds of one
    evaluation (one seed)."""
    out = []
    for budget in sorted({r["budget"] for r in rows}):
        here = [r for r in rows if r["budget"] == budget]
        kd = {r["genome"]: r["kd_s"] for r in here}  # one value per architecture (the same for every seed)
        out.append(dict(budget=budget, kd_s=statistics.fmean(kd.values()),
                        eval_s=statistics.fmean(r["eval_s"] for r in here), n=len(kd)))
    return out


def recommend_budget(rows: list[dict], target: float = 0.8, lower: float = 0.6,
                     max_budget: int | None = None) -> int | None:
    """The cheapest budget whose FID ranking matches the longest budget's: tau >= ``target`` and the
    interval's low end >= ``lower``, at no more than ``max_budget`` KD steps; None when no budget does.
    ``rows``: ``rank_table``'s."""
    good = [r for r in rows if r["objective"] == "fid" and reaches(r["tau"], r["lo"], target, lower)
            and (max_budget is None or r["budget"] <= max_budget)]
    return min(good, key=lambda r: (r["cost_s"], r["budget"]))["budget"] if good else None
