"""Where blocksearch keeps its caches, and the one file lock that guards them.

Every cache (teacher outputs, params/MACs, latency, torch-fidelity statistics, the benchmark's
stand-in tables) lives under ``default_cache_dir()``: ``$BLOCKSEARCH_CACHE`` or ``~/.cache/blocksearch``.
Locks are fcntl ``flock`` locks on files in that folder, so every process on one machine -- trials,
benchmarks, a second driver -- excludes the others through the same file.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from blocksearch.errors import BlocksearchError


class _NoFcntl:
    """Stands in for ``fcntl`` where the platform has none (Windows): importing blocksearch, ``--help`` and
    argument parsing still work; the first lock taken raises a one-line error. blocksearch is POSIX only."""

    def __getattr__(self, name: str):
        raise BlocksearchError(f"blocksearch needs a POSIX system (Linux or macOS): file locks use fcntl, not "
                               f"available on {sys.platform}")


try:
    import fcntl
except ImportError:  # not POSIX
    fcntl = _NoFcntl()


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


# -- the measurement slot: latency is timed while no blocksearch process on this machine does heavy work --
# A writer-preferring readers-writer lock over two lock files (Courtois et al., CACM 1971, "Concurrent
# control with readers and writers", the writer-priority solution): heavy work (KD steps, generation,
# scoring) holds ``room`` shared and passes through ``turnstile``; a latency measurement closes the
# turnstile (exclusive), then waits for ``room`` exclusively. Work yields at its checkpoints
# (``yield_to_measurement``: one non-blocking flock call when nobody is waiting), so a measurement waits
# for one step of each other process at most, and then runs on a machine where nothing of ours trains.
# Every wait is bounded (``slot_timeout``): a process that holds the slot and never yields -- a stuck or
# orphaned Ray worker -- delays the others by the timeout, never forever; what then runs says so.
_SLOT = {"room": None, "depth": 0}
POLL_S = 0.05
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SlotWait:
    """How a measurement got the slot: seconds waited, and whether it ran alone (False: it gave up waiting
    after ``slot_timeout`` and ran beside work that did not yield)."""

    seconds: float
    isolated: bool = True


def slot_timeout() -> float:
    """Seconds any wait for the slot may last: ``$BLOCKSEARCH_SLOT_TIMEOUT`` or 600."""
    return float(os.environ.get("BLOCKSEARCH_SLOT_TIMEOUT", 600))


def _slot_files(cache_dir=None) -> tuple[Path, Path]:
    return lock_path("slot-turnstile", cache_dir), lock_path("slot-room", cache_dir)


def _flock(path: Path, mode: int, timeout: float | None = None):
    """The open lock file once ``flock(mode)`` holds, or None when ``timeout`` seconds passed first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "a")
    limit = slot_timeout() if timeout is None else timeout
    deadline = time.monotonic() + limit
    while True:
        try:
            fcntl.flock(f, mode | fcntl.LOCK_NB)
            return f
        except BlockingIOError:
            if time.monotonic() >= deadline:
                f.close()
                log.warning("blocksearch: gave up waiting for %s after %.0f s (a process holds it without "
                            "yielding); going on without it", path, limit)
                return None
            time.sleep(POLL_S)


def _enter_room() -> None:
    turnstile, room = _slot_files()
    gate = _flock(turnstile, fcntl.LOCK_SH)  # waits while a measurement holds the turnstile
    try:
        _SLOT["room"] = _flock(room, fcntl.LOCK_SH)
    finally:
        if gate is not None:
            gate.close()  # closing the file releases its flock


def _leave_room() -> None:
    if _SLOT["room"] is not None:
        _SLOT["room"].close()
        _SLOT["room"] = None


@contextmanager
def work_slot():
    """Mark heavy work of this process (re-entrant): latency measurements wait until it yields."""
    if _SLOT["depth"] == 0:
        _enter_room()
    _SLOT["depth"] += 1
    try:
        yield
    finally:
        _SLOT["depth"] -= 1
        if _SLOT["depth"] == 0:
            _leave_room()


@contextmanager
def outside_work_slot():
    """Step out of the work slot while this process waits on someone else (a Ray Tune report blocks
    until the driver takes it; a killed driver never does): a lock is never held across such a wait."""
    held = _SLOT["room"] is not None
    _leave_room()
    try:
        yield
    finally:
        if held:
            _enter_room()


def yield_to_measurement() -> float:
    """A checkpoint of heavy work: if a measurement waits, step aside until it is done. Returns the
    seconds spent waiting (0.0 in the common case: one non-blocking flock call)."""
    if _SLOT["room"] is None:
        return 0.0
    turnstile, _ = _slot_files()
    with open(turnstile, "a") as gate:
        try:
            fcntl.flock(gate, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return 0.0  # nobody is measuring
        except BlockingIOError:
            pass
    t0 = time.perf_counter()
    _leave_room()
    _enter_room()
    return time.perf_counter() - t0


@contextmanager
def measurement_slot(timeout: float | None = None):
    """Exclusive use of the machine among blocksearch processes: waits until every process in a
    ``work_slot`` has yielded, keeps new work out, and yields a ``SlotWait``. After ``timeout`` seconds
    (default ``slot_timeout()``) it stops waiting and yields ``isolated=False``."""
    held = _SLOT["room"] is not None
    _leave_room()  # our own work steps aside too
    turnstile, room = _slot_files()
    t0 = time.perf_counter()
    deadline = time.monotonic() + (slot_timeout() if timeout is None else timeout)
    gate = _flock(turnstile, fcntl.LOCK_EX, timeout)
    excl = None
    try:
        if gate is not None:
            excl = _flock(room, fcntl.LOCK_EX, max(0.0, deadline - time.monotonic()))
        yield SlotWait(time.perf_counter() - t0, isolated=excl is not None)
    finally:
        for f in (excl, gate):
            if f is not None:
                f.close()
        if held:
            _enter_room()
