"""The scores a study records, one row each: the one table that every place needing a fact about an objective reads.

Optuna's direction (``study.OBJECTIVES``, ``run --objectives``), the report's axis label (``render.LABELS``), how a
value is written (``fmt`` below), where its noise comes from (``noise.NOISY``, ``EXACT``, ``UNSPREAD``) and whether
it is a cost or a quality score (``noise.COSTS``). Light on purpose: the command line's help reads it.
"""

from __future__ import annotations

from dataclasses import dataclass

from blocksearch.settings import PROBE_KEYS

DIRECTIONS = ("minimize", "maximize")  # Optuna's words
UNITS = ("", "count", "ms", "MB")  # "": 4 significant digits; count: K / M / G
NOISE = ("seeds", "latency_cv", "exact", "no spread recorded", "not measured")  # noise.Spread.source


@dataclass(frozen=True)
class Objective:
    """One score, by the name metrics and studies store it under, and how the package treats it."""

    name: str
    direction: str = "minimize"
    label: str | None = None  # the report's axis title ("U-Net" reads as the study's denoiser); None: the name
    unit: str = ""  # how fmt writes a value: count (K/M/G), ms (s from 1000 ms), MB; "": 4 significant digits
    noise: str = "not measured"  # what its spread rests on (noise.py): seeds = moves with the KD / generation seeds
    cost: bool = False  # what a student costs to run; else a quality score, on which claims rest (pareto.claim)
    searchable: bool = True  # may be a `run --objectives` name (kid, weights_mb: recorded and reported only)

    def __post_init__(self):
        for field, value, allowed in (("direction", self.direction, DIRECTIONS), ("unit", self.unit, UNITS),
                                      ("noise", self.noise, NOISE)):
            if value not in allowed:
                raise ValueError(f"objective {self.name}: {field} {value!r}; allowed: {', '.join(map(repr, allowed))}")


# the order is the help's and the report's: the searchable ones as `run --help` lists them
TABLE = (
    Objective("fid", label="FID (lower is better)", noise="seeds"),
    Objective("kid", noise="seeds", searchable=False),
    Objective("params", label="U-Net parameters", unit="count", noise="exact", cost=True),
    Objective("latency_ms", label="U-Net latency (ms)", unit="ms", noise="latency_cv", cost=True),
    Objective("macs", label="MACs per U-Net forward", unit="count", noise="exact", cost=True),
    Objective("e2e_ms", label="end-to-end latency of one image (ms)", unit="ms", noise="no spread recorded",
              cost=True),
    Objective("memory_mb", label="peak memory of a U-Net step (MB)", unit="MB", noise="no spread recorded", cost=True),
    Objective("alignment", direction="maximize", label="text alignment", noise="seeds"),
    # the held-out KD probe's scores (probe.py): first-stage scores of the search (selection.py)
    *(Objective(key, noise="seeds") for key in PROBE_KEYS),
    Objective("weights_mb", unit="MB", cost=True, searchable=False),
)
BY_NAME = {o.name: o for o in TABLE}


# -- how reports and progress lines write numbers: the one formatter -----------------------------------
UNIT = {o.name: o.unit for o in BY_NAME.values()}  # name -> Objective.unit


def fmt(name: str, value, digits: int = 2, sig: int | None = None) -> str:
    """The one number formatter, by the score's unit (objectives.py): counts such as parameters and MACs with
    K/M/G (``digits`` decimals, or ``sig`` significant figures: 2.567G, 859.5M), latency in ms, memory in MB,
    other numbers to 4 significant digits."""
    if value is None:
        return "-"
    if not isinstance(value, (int, float)):
        return str(value)
    unit = UNIT.get(name, "")
    if unit == "count":
        for suffix, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
            if abs(value) >= scale:
                places = digits if sig is None else max(0, sig - len(str(int(abs(value) // scale))))
                return f"{value / scale:.{places}f}{suffix}"
        return f"{value:.0f}"
    if unit == "ms":
        return f"{value:.2f} ms" if value < 1000 else f"{value / 1000:.2f} s"
    if unit == "MB":
        return f"{value:.1f} MB"
    return f"{value:.4g}"
