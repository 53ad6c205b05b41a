"""A saved student's weights checked against the hashes recorded when they were written (issue 35), before any
reader trusts them: a search trial's student folder, ``blocksearch distill``'s and ``train``'s output, an export.

The writers record each safetensors file's size and SHA-256 (``cache.record_folder``: ``<name>.sha256`` beside it;
``distill.json``'s ``files`` too). A file that fails -- cut short, a flipped bit, gone -- is reported in one line,
moved aside to ``<name>.corrupt`` (no later reader trusts it either) and the reader refuses it (``CorruptFile``),
saying what to do instead. A folder written by another tool, with no records, has its header and size checked.
"""

from __future__ import annotations

import json
from pathlib import Path

from blocksearch.cache import CorruptFile, folder_problem, set_aside
from blocksearch.families.base import FAMILIES

INFO = "distill.json"  # blocksearch distill's record of its student, ``files`` among it (recipe/distill.py)


def weights_folder(folder: Path | str) -> Path:
    """The denoiser folder of a student ``folder``: ``folder`` itself (a denoiser folder, such as a trial's
    ``student_dir``) or its family's subfolder (``unet/``, ``transformer/``: a distill, train or export output)."""
    folder = Path(folder)
    if (folder / "config.json").is_file():
        return folder
    return next((folder / ref.subfolder for ref in FAMILIES.values() if (folder / ref.subfolder).is_dir()), folder)


def recorded(weights: Path) -> dict:
    """The records ``distill.json`` beside ``weights``' folder keeps for its files ({file name: record}), if any."""
    info = weights.parent / INFO
    if not info.is_file():
        return {}
    try:
        files = json.loads(info.read_text()).get("files") or {}
    except (ValueError, AttributeError):
        return {}
    prefix = weights.name + "/"
    return {k.removeprefix(prefix): v for k, v in files.items() if k.startswith(prefix)}


def check_student(folder: Path | str, then: str) -> Path:
    """``folder``'s denoiser folder once each of its weight files passes its check; else the bad file is set aside
    and ``CorruptFile`` says, in one line, which file, what was wrong and ``then`` (what the user can do)."""
    weights = weights_folder(folder)
    found = folder_problem(weights, recorded(weights))
    if found is None:
        return weights
    path, problem = found
    if path.is_file() and path.suffix == ".safetensors":  # not one set aside before
        aside = set_aside(path, problem, report=False)
        problem += f"; moved aside to {aside.name}"
    raise CorruptFile(f"student {path} is corrupt: {problem}; {then}")
