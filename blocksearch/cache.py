"""Where blocksearch keeps its caches, and the one file lock that guards them.

Every cache (teacher outputs, params/MACs, latency, torch-fidelity statistics, the benchmark's
stand-in tables) lives under ``default_cache_dir()``: ``$BLOCKSEARCH_CACHE`` or ``~/.cache/blocksearch``.
Locks are fcntl ``flock`` locks on files in that folder, so every process on one machine -- trials,
benchmarks, a second driver -- excludes the others through the same file.
"""

from __future__ import annotations

import fcntl
import os
import time
from contextlib import contextmanager
from pathlib import Path


def default_cache_dir() -> Path:
    """``$BLOCKSEARCH_CACHE`` or ``~/.cache/blocksearch``."""
    return Path(os.environ.get("BLOCKSEARCH_CACHE", Path.home() / ".cache" / "blocksearch"))


def lock_path(name: str, cache_dir: Path | str | None = None) -> Path:
    """The lock file ``<cache_dir>/locks/<name>.lock`` (one name, one lock, for every process)."""
    return Path(cache_dir or default_cache_dir()) / "locks" / f"{name}.lock"


@contextmanager
def file_lock(path: Path, shared: bool = False):
    """An fcntl lock on ``path`` (created if missing), exclusive unless ``shared``; yields the seconds
    spent waiting for it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        t0 = time.perf_counter()
        fcntl.flock(f, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        try:
            yield time.perf_counter() - t0
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
