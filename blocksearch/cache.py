"""Where blocksearch keeps its caches, and the one file lock that guards them.

Every cache (teacher outputs, params/MACs, latency, torch-fidelity statistics, the benchmark's
stand-in tables) lives under ``default_cache_dir()``: ``$BLOCKSEARCH_CACHE`` or ``~/.cache/blocksearch``.
Locks are fcntl ``flock`` locks on files in that folder, so every process on one machine -- trials,
benchmarks, a second driver -- excludes the others through the same file.

Every file blocksearch writes goes through ``atomic_write`` (a temp file in the same folder, renamed; a full
disk is one line, ``DiskFull``), and every cache file is checked on read (``checked``: size, header, SHA-256;
a bad one is moved aside and rebuilt).
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import sys
import time
import zipfile
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


# -- files checked on read, written atomically (issue 35) -------------------------------------------------
# Every cache file, checkpoint and student is written to a temp file in its own folder and renamed (POSIX
# rename is atomic: a reader sees the old file or the new one, never half of one), and checked on read: its
# size, its header, and its SHA-256 against a record written after the data (SQLite's "How SQLite is
# tested" injects exactly these faults: a torn write, a flipped bit, a full disk). A file that fails is
# reported in one line, moved aside to ``<name>.corrupt`` and rebuilt by its owner; never trusted.
CHECKSUM = ".sha256"  # the record beside a cache file: ``<name>.sha256`` = {"bytes": n, "sha256": hex}
CORRUPT = ".corrupt"
_VERIFIED: set[tuple] = set()  # (path, inode, size) hashed in this process: a file is hashed once per process


class CorruptFile(BlocksearchError):
    """A cache file or checkpoint that failed its check on read (its message: which file, what was wrong)."""


class DiskFull(BlocksearchError):
    """A write that ran out of space (its message: the folder, the bytes it needed, the bytes free there)."""


def _mb(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


def atomic_write(path: Path | str, write, nbytes: int | None = None, keep_suffix: bool = False) -> Path:
    """Write ``path`` by ``write(tmp)`` on a temp file in the same folder, then rename it over ``path``. On any
    error the temp file is removed (no half-written file is left for a later run); a full disk (ENOSPC,
    EDQUOT) is a ``DiskFull`` naming the folder, the bytes being written (``nbytes``, else what the temp
    file had reached) and what the disk has free. ``keep_suffix``: the temp name ends as ``path`` does, for a
    writer that picks its format by the suffix (matplotlib's ``savefig``)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp" + (path.suffix if keep_suffix else ""))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        os.replace(tmp, path)
    except BaseException as err:
        written = tmp.stat().st_size if tmp.exists() else 0
        tmp.unlink(missing_ok=True)
        if is_disk_full(err):
            raise DiskFull(disk_full_message(path, nbytes if nbytes is not None else written)) from None
        raise
    return path


_FULL = (errno.ENOSPC, errno.EDQUOT)


def is_disk_full(err: BaseException) -> bool:
    """ENOSPC or EDQUOT: an OSError's errno, or the OS error a library's own exception carries in its text
    (safetensors' writer raises ``SafetensorError("... No space left on device (os error 28)")``)."""
    if isinstance(err, OSError):
        return err.errno in _FULL
    return isinstance(err, Exception) and any(f"os error {code})" in str(err) for code in _FULL)


def disk_full_message(path: Path, nbytes: int) -> str:
    """The one line of a write that found the disk full: the folder, the space it needed, the space free."""
    folder = Path(path).parent
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        free = None
    has = f"{_mb(free)} ({free} bytes) free there" if free is not None else "its free space unknown"
    return (f"no space left in {folder}: writing {Path(path).name} needs {_mb(nbytes)} ({nbytes} bytes), "
            f"{has}; free some space (or point BLOCKSEARCH_CACHE / -o at another disk) and run it again; "
            f"nothing complete was lost")


def write_bytes(path: Path | str, data: bytes) -> Path:
    """``atomic_write`` of ``data``."""
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data), len(data))


def write_text(path: Path | str, text: str) -> Path:
    """``atomic_write`` of ``text`` (UTF-8)."""
    return write_bytes(path, text.encode())


def file_record(path: Path | str) -> dict:
    """{"bytes", "sha256"} of a file: what ``check_file`` later compares it with."""
    path = Path(path)
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    return {"bytes": path.stat().st_size, "sha256": digest}


def write_checked(path: Path | str, write, nbytes: int | None = None) -> Path:
    """``atomic_write`` of a cache file, then its checksum record ``<name>.sha256`` (also atomic). The old
    record goes once the new data is complete, just before the rename: a record never vouches for other data,
    and a write that fails leaves the old file with its record."""
    path = Path(path)
    sidecar = path.with_name(path.name + CHECKSUM)

    def data_then_drop_record(tmp: Path) -> None:
        write(tmp)
        sidecar.unlink(missing_ok=True)

    atomic_write(path, data_then_drop_record, nbytes)
    write_text(sidecar, json.dumps(file_record(path)) + "\n")
    return path


def safetensors_problem(path: Path) -> str | None:
    """What is wrong with a safetensors file's header and size, or None: the header must parse and the file
    must end where its last tensor does (a truncated or padded file does not)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if n < 2 or 8 + n > size:
            return f"its safetensors header is cut off ({size} bytes, header {n} bytes)"
        try:
            header = json.loads(f.read(n))
            end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            return "its safetensors header does not parse"
    if size != 8 + n + end:
        return f"it is {size} bytes, its header says {8 + n + end}"
    return None


def json_problem(path: Path) -> str | None:
    """What is wrong with a JSON file, or None: it must parse."""
    try:
        json.loads(path.read_bytes())
    except ValueError as err:
        return f"it is not JSON ({str(err).splitlines()[0]})"
    return None


HEADER_CHECKS = {"safetensors": safetensors_problem, "json": json_problem, None: lambda path: None}


def file_problem(path: Path | str, kind: str | None = "safetensors", record: dict | None = None) -> str | None:
    """What is wrong with ``path``, or None when it is sound: missing, its header (``kind``: safetensors, json or
    None), then its size and SHA-256 against ``record`` (default: its ``.sha256`` file; a file written before
    the records existed has only its header checked)."""
    path = Path(path)
    if not path.is_file():
        return "it is missing"
    if record is None:
        sidecar = path.with_name(path.name + CHECKSUM)
        if sidecar.is_file():
            try:
                record = json.loads(sidecar.read_text())
                record["bytes"], record["sha256"]
            except (ValueError, TypeError, KeyError):
                return f"its checksum record {sidecar.name} is unreadable"
    size = path.stat().st_size
    if record is not None and size != record["bytes"]:
        return f"it is {size} bytes, {record['bytes']} were written"
    problem = HEADER_CHECKS[kind](path)
    if problem or record is None:
        return problem
    memo = (str(path.resolve()), path.stat().st_ino, size, record["sha256"])
    if memo not in _VERIFIED:
        if file_record(path)["sha256"] != record["sha256"]:
            return "its SHA-256 differs from the one recorded when it was written"
        _VERIFIED.add(memo)
    return None


def set_aside(path: Path | str, problem: str, then: str = "rebuilding it", report: bool = True) -> Path:
    """Report a bad file in one line and move it aside to ``<name>.corrupt`` (its checksum record is
    deleted): no later run trusts it. ``then``: what happens instead; ``report=False``: the caller says it."""
    path = Path(path)
    aside = path.with_name(path.name + CORRUPT)
    try:
        os.replace(path, aside)
    except FileNotFoundError:
        pass  # another process moved it first
    path.with_name(path.name + CHECKSUM).unlink(missing_ok=True)
    if report:
        log.warning("blocksearch: %s is corrupt: %s; moved aside to %s, %s", path, problem, aside.name, then)
    return aside


def checked(path: Path | str, kind: str | None = "safetensors", then: str = "rebuilding it") -> bool:
    """True when ``path`` exists and passes ``file_problem``; a bad file is ``set_aside`` (False), a missing
    one is just False. Call it under the lock that guards the file's writers."""
    path = Path(path)
    if not path.exists():
        return False
    problem = file_problem(path, kind)
    if problem is None:
        sidecar = path.with_name(path.name + CHECKSUM)
        if not sidecar.exists():  # written before the records: its header passed, its hash is recorded now
            try:
                write_text(sidecar, json.dumps(file_record(path)) + "\n")
            except (OSError, DiskFull):  # a read does not fail for want of its record
                pass
        return True
    set_aside(path, problem, then)
    return False


def record_folder(folder: Path | str) -> None:
    """Write ``<name>.sha256`` beside every safetensors file of ``folder`` (a saved model's weights). Call it inside
    ``atomic_dir``'s ``write``: the records appear with the weights, or neither does."""
    for path in sorted(Path(folder).glob("*.safetensors")):
        write_text(path.with_name(path.name + CHECKSUM), json.dumps(file_record(path)) + "\n")


def folder_problem(folder: Path | str, records: dict | None = None) -> tuple[Path, str] | None:
    """(file, what is wrong) for the first safetensors file of a saved model's ``folder`` that fails
    ``file_problem`` -- against ``records`` ({name: {"bytes", "sha256"}}) where given, else its ``.sha256`` (a file
    with neither has its header and size checked) -- or None when all pass. A recorded file that is gone fails, and
    so does a folder whose only weights were set aside (``.corrupt``); one that never had any is its loader's to say."""
    folder = Path(folder)
    records = {k: v for k, v in (records or {}).items() if k.endswith(".safetensors")}
    names = sorted({p.name for p in folder.glob("*.safetensors")} | set(records))
    aside = sorted(folder.glob(f"*.safetensors{CORRUPT}"))
    if not names and aside:
        return aside[0], f"its weights were set aside as corrupt ({aside[0].name}) by an earlier check"
    for name in names:
        if not (folder / name).exists() and (folder / f"{name}{CORRUPT}").exists():
            return folder / f"{name}{CORRUPT}", f"it was set aside as corrupt ({name}{CORRUPT}) by an earlier check"
        problem = file_problem(folder / name, "safetensors", records.get(name))
        if problem is not None:
            return folder / name, problem
    return None


def atomic_dir(path: Path | str, write, nbytes: int | None = None) -> Path:
    """``atomic_write`` for a folder (a diffusers ``save_pretrained``): ``write(tmp)`` fills a temp folder
    beside ``path``, which then replaces it (an old folder is renamed away first and deleted last: ``path`` is
    never a half-written folder; a crash between the two renames leaves the old one as ``.<name>.<pid>.old``).
    A failed write puts the old folder back."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    old = path.with_name(f".{path.name}.{os.getpid()}.old")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        write(tmp)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
    except BaseException as err:
        written = sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file()) if tmp.exists() else 0
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not path.exists():
            os.replace(old, path)
        if is_disk_full(err):
            raise DiskFull(disk_full_message(path, nbytes if nbytes is not None else written)) from None
        raise
    shutil.rmtree(old, ignore_errors=True)
    return path


def checked_archives(folder: Path | str, prefix: str, then: str = "computing it again") -> None:
    """Check every ``torch.save`` file ``<folder>/<prefix>*.pt`` (a zip archive: a CRC-32 per member, so a cut
    or a flipped bit shows without unpickling) and set aside the bad ones: their owner (torch-fidelity's
    statistics cache) then finds them missing and computes them again."""
    for path in sorted(Path(folder).glob(f"{prefix}*.pt")) if Path(folder).is_dir() else ():
        try:
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()
            problem = None if bad is None else f"member {bad} fails its CRC-32"
        except (zipfile.BadZipFile, OSError, EOFError) as err:
            problem = f"it is not a whole torch.save archive ({err})"
        if problem is not None:
            set_aside(path, problem, then)
