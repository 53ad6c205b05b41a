"""How reports and progress lines write numbers: the one formatter (render.py, search.py, export.py)."""

from __future__ import annotations


def fmt(name: str, value, digits: int = 2) -> str:
    """The one number formatter: parameters and MACs with K/M/G (``digits`` decimals), latency in ms,
    other numbers to 4 significant digits."""
    if value is None:
        return "-"
    if not isinstance(value, (int, float)):
        return str(value)
    if name in ("params", "macs"):
        for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
            if abs(value) >= scale:
                return f"{value / scale:.{digits}f}{unit}"
        return f"{value:.0f}"
    if name in ("latency_ms", "e2e_ms"):
        return f"{value:.2f} ms" if value < 1000 else f"{value / 1000:.2f} s"
    if name in ("memory_mb", "weights_mb"):
        return f"{value:.1f} MB"
    return f"{value:.4g}"
