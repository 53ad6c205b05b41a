"""``block_map.json``: which teacher module every student module came from, and what the cut removed or renamed.

It is the family's weight map (``family.weight_map``: student tensor -> teacher tensor, derived from the arch as
surgery derives it) at module granularity, so that a runtime or an adapter loader can follow the cut without
blocksearch (format: docs/export.md). A module is a tensor name without its last dotted part (``conv1.weight``
-> ``conv1``); parameters directly on the root are kept by name and not listed.
"""

from __future__ import annotations

import json
from pathlib import Path

from blocksearch.cache import write_text
from blocksearch.errors import BlocksearchError
from blocksearch.families.base import BLOCK_MAP_FILE  # the layer reads a saved student's arch from it

FORMAT = "blocksearch-block-map"
VERSION = 1


def teacher_name(spec: str) -> str:
    """The teacher as the map names it: a hub id or shipped name as given, a local folder by its name only (never
    a path of this machine)."""
    path = Path(spec).expanduser()
    return path.resolve().name if path.is_absolute() or path.exists() else spec


def block_map(family, teacher_denoiser, arch, teacher: str, space: str | None) -> dict:
    """The block map of ``arch`` cut from ``teacher_denoiser`` (a loaded denoiser: its class, config and tensor
    names); ``teacher`` is ``--teacher`` as given, ``space`` the space file's name."""
    config = {**dict(teacher_denoiser.config), "_class_name": type(teacher_denoiser).__name__}
    tensors = family.weight_map(config, arch)
    teacher_modules = {_module(k) for k in teacher_denoiser.state_dict()} - {""}
    modules, new = {}, []
    for student_key, teacher_key in tensors.items():
        s, t = _module(student_key), _module(teacher_key)
        if not s or s in new:
            continue
        if t not in teacher_modules:
            new.append(s)
            modules.pop(s, None)
        elif modules.setdefault(s, t) != t or student_key[len(s):] != teacher_key[len(t):]:
            raise BlocksearchError(f"{arch.id}: student module {s} maps to teacher {modules[s]} and {t}; the weight "
                                   f"map must follow modules")
    kept = set(modules.values())
    return {"format": FORMAT, "version": VERSION, "family": family.name, "subfolder": family.subfolder,
            "model_class": type(teacher_denoiser).__name__, "teacher": teacher_name(teacher), "space": space,
            "arch": arch.id, "modules": modules, "renamed": _renamed(modules, teacher_modules),
            "removed": _collapse(teacher_modules - kept, teacher_modules), "new": new}


def write_block_map(folder: Path, doc: dict) -> Path:
    """Write ``folder/block_map.json``."""
    return write_text(Path(folder) / BLOCK_MAP_FILE, json.dumps(doc, indent=1) + "\n")  # atomic: never half-written


def read_block_map(folder) -> dict:
    """The block map of a student folder (``distill``'s or ``export``'s), checked for its format and version."""
    path = Path(folder) / BLOCK_MAP_FILE
    if not path.is_file():
        raise BlocksearchError(f"{folder}: no {BLOCK_MAP_FILE}; allowed: a student folder written by blocksearch "
                               f"distill or export (re-export students written before block maps existed)")
    doc = json.loads(path.read_text())
    if doc.get("format") != FORMAT or doc.get("version") != VERSION:
        raise BlocksearchError(f"{path}: format {doc.get('format')!r} version {doc.get('version')!r}; allowed: "
                               f"{FORMAT!r} version {VERSION}")
    return doc


def _module(key: str) -> str:
    return key.rpartition(".")[0]


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _prefixes(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:k]) for k in range(1, len(parts) + 1)]


def _collapse(removed: set[str], every: set[str]) -> list[str]:
    """The shortest prefixes under which every teacher module is removed (a whole stage, not its 40 tensors)."""
    total, gone = {}, {}
    for name in every:
        for p in _prefixes(name):
            total[p] = total.get(p, 0) + 1
            gone[p] = gone.get(p, 0) + (name in removed)
    out = {next(p for p in _prefixes(name) if gone[p] == total[p]) for name in removed}
    return sorted(out, key=_natural)


def _renamed(modules: dict[str, str], teacher_modules: set[str]) -> dict[str, str]:
    """Teacher prefix -> student prefix, as short as holds for every module under both (``up_blocks.2`` ->
    ``up_blocks.1`` where a whole stage moved, ``up_blocks.1.resnets.2`` -> ``up_blocks.1.resnets.1`` where not)."""
    inverse = {t: s for s, t in modules.items()}
    out = {}
    for s, t in modules.items():
        if s == t or any(_under(t, p) for p in out):
            continue
        ts, ss = t.split("."), s.split(".")
        for k in range(1, len(ts) + 1):
            tp, sp = ".".join(ts[:k]), ".".join(ss[:k])
            if len(ts) == len(ss) and ts[k:] == ss[k:] and tp != sp and _holds(tp, sp, modules, inverse,
                                                                               teacher_modules):
                out[tp] = sp
                break
        else:
            out[t] = s
    return dict(sorted(out.items(), key=lambda kv: _natural(kv[0])))


def _holds(tp: str, sp: str, modules: dict[str, str], inverse: dict[str, str], teacher_modules: set[str]) -> bool:
    """Every teacher module under ``tp`` is kept as ``sp`` + the same rest, and every student module under ``sp``
    came from ``tp`` + the same rest."""
    return (all(inverse.get(t) == sp + t[len(tp):] for t in teacher_modules if _under(t, tp))
            and all(t == tp + s[len(sp):] for s, t in modules.items() if _under(s, sp)))


def _natural(name: str) -> list:
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in name.split(".")]
