"""Search spaces: a YAML file's name or path -> the file -> its family's loader (``family:``; families/base.py).

Each family parses its own rows and designs (the U-Net's: families/unet/space.py; transformers':
families/dit/space.py) into a space whose ``bind(topology)`` gives the bound space the search side drives.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import yaml

from blocksearch.errors import BlocksearchError
from blocksearch.families.base import DEFAULT_FAMILY, FAMILIES, space_loader

_TOP_KEYS = {"name", "family", "teacher"}  # every family's file; the family's loader names the rest


def _shipped_spaces_dir() -> Path:
    """The shipped space files: package data ``blocksearch.search_spaces`` (pyproject.toml maps the repository's
    top-level search_spaces/ onto it, in a wheel and in an editable install); a checkout that is only on
    PYTHONPATH, not installed, has no such package and reads search_spaces/ beside the package folder."""
    try:
        return Path(resources.files("blocksearch.search_spaces"))
    except ModuleNotFoundError:
        return Path(__file__).resolve().parent.parent / "search_spaces"


SPACES_DIR = _shipped_spaces_dir()


def resolve_space_path(name_or_path: str) -> Path:
    """``unet_blocks`` -> ``search_spaces/unet_blocks.yaml``; a path is taken as is."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.exists():
            raise BlocksearchError(f"space file {path} does not exist")
        return path
    candidate = SPACES_DIR / f"{name_or_path}.yaml"
    if not candidate.exists():
        known = [p.stem for p in space_files()]
        raise BlocksearchError(f"unknown space {name_or_path!r}; allowed: {known} or a .yaml path")
    return candidate


def space_files() -> list[Path]:
    """The shipped space files (every ``*.yaml`` in ``SPACES_DIR``), by name: what ``space list`` shows."""
    return sorted(SPACES_DIR.glob("*.yaml"))


def load_space(name_or_path: str):
    """Load and validate a space file; every error names the file, the key and the allowed values.
    The file's ``family:`` (families/base.py ``FAMILIES``; default ``DEFAULT_FAMILY``) names the loader that parses it."""
    path = resolve_space_path(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise BlocksearchError(f"{path}:{where}: malformed YAML: {getattr(err, 'problem', err)}") from None
    if not isinstance(raw, dict):
        raise BlocksearchError(f"{path}: expected a mapping with keys {sorted(_TOP_KEYS)}")
    family = raw.get("family", DEFAULT_FAMILY)
    if family not in FAMILIES:
        raise BlocksearchError(f"{path}: family: {family!r}; allowed: {', '.join(FAMILIES)}")
    return space_loader(family)(path, raw)
