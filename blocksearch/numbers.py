"""How reports and progress lines write numbers: the one formatter (render.py, search.py, export.py)."""

from __future__ import annotations

from blocksearch.objectives import BY_NAME

UNIT = {o.name: o.unit for o in BY_NAME.values()}  # name -> objectives.Objective.unit


def fmt(name: str, value, digits: int = 2) -> str:
    """The one number formatter, by the score's unit (objectives.py): counts such as parameters and MACs with
    K/M/G (``digits`` decimals), latency in ms, memory in MB, other numbers to 4 significant digits."""
    if value is None:
        return "-"
    if not isinstance(value, (int, float)):
        return str(value)
    unit = UNIT.get(name, "")
    if unit == "count":
        for suffix, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
            if abs(value) >= scale:
                return f"{value / scale:.{digits}f}{suffix}"
        return f"{value:.0f}"
    if unit == "ms":
        return f"{value:.2f} ms" if value < 1000 else f"{value / 1000:.2f} s"
    if unit == "MB":
        return f"{value:.1f} MB"
    return f"{value:.4g}"
