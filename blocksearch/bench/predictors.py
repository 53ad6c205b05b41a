"""Cheap predictors of a student's quality after long KD, and the combined one (pure functions).

- The training-loss curve (per-step output-KD loss): its area (mean), its last tenth, its log-log slope over
  the second half, and a learning-curve extrapolation to the long budget: a saturating power law
  L(t) = a + b t^-c fitted with log-uniform weights (Domhan et al., 2015, extrapolate such parametric curves).
- The combined predictor: ridge regression of log FID at the long budget on standardised log features (the
  probe's scores, params, MACs), validated leave-one-architecture-out: an architecture's prediction comes
  from a model fitted without it (never on the architecture it predicts).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy.optimize import curve_fit

CURVE_KEYS = ("train_area", "train_last", "train_slope", "train_extrap")
RIDGE = 1.0  # ridge penalty on standardised features: 24 architectures or fewer, a handful of features


def curve_features(losses: list[float], target_step: int) -> dict[str, float | None]:
    """The training-loss curve's features (``losses[i]`` is step i + 1's); None where there are < 8 steps."""
    n = len(losses)
    if n < 8 or not all(v > 0 and math.isfinite(v) for v in losses):
        return dict.fromkeys(CURVE_KEYS)
    y = np.asarray(losses, dtype=float)
    steps = np.arange(1, n + 1, dtype=float)
    half = slice(n // 2, n)
    slope = float(np.polyfit(np.log(steps[half]), np.log(y[half]), 1)[0])
    return dict(train_area=float(y.mean()), train_last=float(y[-max(1, n // 10):].mean()), train_slope=slope,
                train_extrap=extrapolate(steps, y, target_step))


def _saturating(t, a, b, c):
    return a + b * np.power(t, -c)


def extrapolate(steps: np.ndarray, losses: np.ndarray, target: int) -> float:
    """L(target) of a + b t^-c fitted to the curve with each point weighted by 1/t (so that every log-spaced
    stretch of the curve counts alike, not the many late steps); a pure power law (a = 0, a straight line in
    log-log) where the saturating fit fails."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            (a, b, c), _ = curve_fit(_saturating, steps, losses, p0=(losses[-1] / 2, losses[0], 0.5),
                                     sigma=np.sqrt(steps), bounds=([0, 0, 0.01], [np.inf, np.inf, 3.0]), maxfev=5000)
        value = float(_saturating(target, a, b, c))
        if math.isfinite(value) and value > 0:
            return value
    except (RuntimeError, ValueError):
        pass
    k, m = np.polyfit(np.log(steps), np.log(losses), 1, w=1 / np.sqrt(steps))
    return float(math.exp(m + k * math.log(target)))


def loao_ridge(features: dict[str, list[float]], target: dict[str, float], ridge: float = RIDGE) -> dict[str, float]:
    """Leave-one-architecture-out predictions of ``target`` (genome -> log FID at the long budget) from
    ``features`` (genome -> feature vector, already on a log scale): for each genome a ridge regression on
    the others' standardised features (their own mean and standard deviation), applied to it."""
    genomes = [g for g in features if g in target]
    out = {}
    for held in genomes:
        train = [g for g in genomes if g != held]
        if len(train) < 3:
            continue
        x = np.array([features[g] for g in train], dtype=float)
        y = np.array([target[g] for g in train], dtype=float)
        mu, sd = x.mean(0), x.std(0)
        sd[sd == 0] = 1.0
        z = (x - mu) / sd
        w = np.linalg.solve(z.T @ z + ridge * np.eye(z.shape[1]), z.T @ (y - y.mean()))
        out[held] = float(((np.asarray(features[held], dtype=float) - mu) / sd) @ w + y.mean())
    return out
