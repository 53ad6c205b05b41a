"""Search space of transformer block removals (family ``dit``): YAML -> DitSearchSpace -> (bound) -> DitGenome.

A transformer denoiser is a stack of same-shaped blocks; a student keeps a subset of them per block group
(TinyFusion, arXiv 2412.01199, keeps 14 of DiT-XL/2's 28 blocks; Freepik's Flux.1-Lite keeps 8 of FLUX.1-dev's
19 double-stream blocks). A group's choices are patterns, not 2^N masks: ``all``, ``first:K``, ``last:K``,
``drop_span:A-B`` and ``every:k``. Torch-free: space.py and the CLI import it.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from blocksearch.errors import BlocksearchError
from blocksearch.families.dit.genome import GROUPS, TEACHERS, DitGenome, DitTopology

PATTERNS = ("all", "first", "last", "drop_span", "every")
_ROW_KEYS = set(PATTERNS) | {"optional"}
_TOP_KEYS = {"name", "family", "teacher", "groups", "designs"}
_PUBLISHED_KEYS = {"teacher", "params", "source"}


# -- patterns --------------------------------------------------------------------------------------
def resolve(choice: str, n: int) -> tuple[int, ...]:
    """The kept blocks of a pattern on a group of ``n`` blocks; an impossible pattern says what is allowed."""
    kind, _, arg = choice.partition(":")
    if kind == "all":
        return tuple(range(n))
    if kind in ("first", "last"):
        k = int(arg)
        if not 1 <= k <= n:
            raise BlocksearchError(f"{choice}: keeps {k} of {n} blocks; allowed {kind}:1..{n}")
        return tuple(range(k)) if kind == "first" else tuple(range(n - k, n))
    if kind == "every":
        k = int(arg)
        if not 2 <= k < n:
            raise BlocksearchError(f"{choice}: allowed every:2..{n - 1} on {n} blocks")
        return tuple(range(0, n, k))
    a, b = (int(v) for v in arg.split("-"))
    if b >= n or (a == 0 and b == n - 1):
        raise BlocksearchError(f"{choice}: the group has blocks 0..{n - 1}; allowed drop_span:A-B with "
                               f"0 <= A <= B <= {n - 1}, not the whole group")
    return tuple(i for i in range(n) if not a <= i <= b)


# -- the space file ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class GroupSpec:
    """One row of the space: a block group and its pattern choices, in file order."""

    name: str
    choices: tuple[str, ...]  # "all", "first:8", "last:12", "drop_span:2-5", "every:2"
    optional: bool  # a teacher without this group skips the row (Flux's single blocks on PixArt)


@dataclass(frozen=True)
class Published:
    """A named design's published size, for the table of ``space show``."""

    teacher: str
    params: float
    source: str


@dataclass(frozen=True)
class DitSearchSpace:
    """A validated dit space file."""

    name: str
    path: Path
    teacher: str  # the teacher the file was written for (a name in TEACHERS)
    groups: tuple[GroupSpec, ...]
    designs: dict[str, dict[str, str]]  # name -> {group: pattern}
    published: dict[str, Published]  # design name -> its published size
    family: str = "dit"

    def bind(self, topology: DitTopology) -> "DitBoundSpace":
        return DitBoundSpace.create(self, topology)


def load(path: Path, raw: dict) -> DitSearchSpace:
    """Validate a parsed ``family: dit`` file; every error names the file, the key and the allowed values."""
    _no_unknown(raw, _TOP_KEYS, f"{path}")
    for key in ("name", "groups"):
        if key not in raw:
            raise BlocksearchError(f"{path}: missing key '{key}'")
    teacher = str(raw.get("teacher", "flux-dev"))
    if teacher not in TEACHERS:
        raise BlocksearchError(f"{path}: teacher: {teacher!r}; allowed: {', '.join(TEACHERS)}")
    rows = raw["groups"]
    if not isinstance(rows, dict) or not rows:
        raise BlocksearchError(f"{path}: groups: expected a mapping 'transformer_blocks: {{...}}'")
    groups = tuple(_parse_group(name, row, f"{path}: groups.{name}") for name, row in rows.items())
    if [g.name for g in groups] != [g for g in GROUPS if g in rows]:
        raise BlocksearchError(f"{path}: groups: rows in the order {[g for g in GROUPS if g in rows]}")
    designs, published = {}, {}
    raw_designs = raw.get("designs") or {}
    if not isinstance(raw_designs, dict):
        raise BlocksearchError(f"{path}: designs: expected a mapping of name -> {{group: pattern}}")
    for name, spec in raw_designs.items():
        key = f"{path}: designs.{name}"
        allowed = {g.name for g in groups} | {"published"}
        if not isinstance(spec, dict):
            raise BlocksearchError(f"{key}: expected a mapping with keys {sorted(allowed)}")
        _no_unknown(spec, allowed, key)
        for group in groups:
            if group.name in spec and spec[group.name] not in group.choices:
                raise BlocksearchError(f"{key}.{group.name}: {spec[group.name]!r} is outside the space; allowed: "
                                       f"{list(group.choices)}")
        designs[name] = {g: str(v) for g, v in spec.items() if g != "published"}
        if "published" in spec:
            published[name] = _parse_published(spec["published"], f"{key}.published")
    return DitSearchSpace(str(raw["name"]), path, teacher, groups, designs, published)


def _parse_group(name: str, row: Any, key: str) -> GroupSpec:
    if name not in GROUPS:
        raise BlocksearchError(f"{key}: unknown block group {name!r}; allowed: {list(GROUPS)}")
    if not isinstance(row, dict):
        raise BlocksearchError(f"{key}: expected a mapping with keys {sorted(_ROW_KEYS)}")
    _no_unknown(row, _ROW_KEYS, key)
    choices = []
    for kind in PATTERNS:
        value = row.get(kind)
        if value is None or value is False:
            continue
        if kind == "all":
            if value is not True:
                raise BlocksearchError(f"{key}.all: {value!r}; allowed: true or false")
            choices.append("all")
        elif kind == "drop_span":
            if not isinstance(value, list) or not value or not all(
                    isinstance(v, str) and re.fullmatch(r"\d+-\d+", v) and int(v.split("-")[0]) <= int(v.split("-")[1])
                    for v in value):
                raise BlocksearchError(f"{key}.drop_span: {value!r}; allowed: a non-empty list of spans 'A-B' "
                                       "(blocks A..B dropped, A <= B)")
            choices += [f"drop_span:{v}" for v in value]
        else:
            low = 2 if kind == "every" else 1
            if not isinstance(value, list) or not value or not all(
                    isinstance(v, int) and not isinstance(v, bool) and v >= low for v in value):
                raise BlocksearchError(f"{key}.{kind}: {value!r}; allowed: a non-empty list of integers >= {low}")
            choices += [f"{kind}:{v}" for v in value]
    if not choices:
        raise BlocksearchError(f"{key}: no choices; allowed: one or more of {list(PATTERNS)}")
    optional = row.get("optional", False)
    if not isinstance(optional, bool):
        raise BlocksearchError(f"{key}.optional: {optional!r}; allowed: true or false")
    return GroupSpec(name, tuple(dict.fromkeys(choices)), optional)


def _parse_published(value: Any, key: str) -> Published:
    if not isinstance(value, dict) or set(value) != _PUBLISHED_KEYS or value["teacher"] not in TEACHERS or not (
            isinstance(value["params"], (int, float)) and value["params"] > 0):
        raise BlocksearchError(f"{key}: {value!r}; allowed: {{teacher: one of {list(TEACHERS)}, params: a number "
                               "> 0, source: text}")
    return Published(value["teacher"], float(value["params"]), str(value["source"]))


def _no_unknown(raw: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(set(raw) - allowed, key=str)
    if unknown:
        raise BlocksearchError(f"{where}: unknown key '{unknown[0]}'; allowed: {sorted(allowed)}")


# -- the space bound to a teacher --------------------------------------------------------------------
@dataclass(frozen=True)
class DitBoundSpace:
    """A DitSearchSpace checked against one teacher: suggest, enumerate and name DitGenomes."""

    space: DitSearchSpace
    topology: DitTopology
    options: tuple[tuple[str, tuple[tuple[str, tuple[int, ...]], ...]], ...]  # per searched group: (pattern, kept)

    @classmethod
    def create(cls, space: DitSearchSpace, topology: DitTopology) -> "DitBoundSpace":
        options = []
        for group in space.groups:
            key = f"{space.path}: groups.{group.name}"
            if group.name not in topology.groups:
                if group.optional:
                    continue
                raise BlocksearchError(f"{key}: the teacher ({topology.model_class}) has no {group.name}; allowed "
                                       f"groups: {list(topology.groups)} (or mark the row 'optional: true')")
            distinct: dict[tuple[int, ...], str] = {}
            for choice in group.choices:
                try:
                    kept = resolve(choice, topology.depth(group.name))
                except BlocksearchError as err:
                    raise BlocksearchError(f"{key}: {err} (the teacher's {group.name})") from None
                distinct.setdefault(kept, choice)  # an alias (first:N = all) is one architecture
            options.append((group.name, tuple((c, k) for k, c in distinct.items())))
        bound = cls(space, topology, tuple(options))
        for name in space.designs:
            bound.design(name)  # a design outside the space fails here, naming the design
        return bound

    @property
    def teacher_genome(self) -> DitGenome:
        return DitGenome(tuple((g, tuple(range(n))) for g, n in self.topology.depths))

    def _kept_choices(self, group: str) -> tuple[tuple[int, ...], ...]:
        searched = dict(self.options)
        if group in searched:
            return tuple(k for _, k in searched[group])
        return (tuple(range(self.topology.depth(group))),)  # a group the space does not name keeps all blocks

    # -- define-by-run: only trial.suggest_* calls, no work --------------------------------------
    def suggest(self, trial) -> DitGenome:
        """Sample a DitGenome: one categorical per searched group (``<group>.keep``, its pattern strings)."""
        chosen = {g: dict(opts)[trial.suggest_categorical(f"{g}.keep", [c for c, _ in opts])]
                  for g, opts in self.options}
        return DitGenome(tuple((g, chosen.get(g, tuple(range(n)))) for g, n in self.topology.depths))

    def to_params(self, genome: DitGenome) -> dict[str, Any]:
        """The Optuna params that :meth:`suggest` would return for ``genome`` (for enqueue_trial)."""
        self.check(genome)
        return {f"{g}.keep": next(c for c, k in opts if k == genome.blocks(g)) for g, opts in self.options}

    def from_params(self, params: dict[str, Any]) -> DitGenome:
        return self.suggest(_FixedTrial(params))

    def from_id(self, text: str) -> DitGenome:
        """The DitGenome of an id (the search side stores ids: ``DitGenome.id``)."""
        return DitGenome.from_id(text)

    # -- enumeration ------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[DitGenome]:
        groups = self.topology.groups
        for kept in itertools.product(*(self._kept_choices(g) for g in groups)):
            yield DitGenome(tuple(zip(groups, kept)))

    def __len__(self) -> int:
        size = 1
        for g in self.topology.groups:
            size *= len(self._kept_choices(g))
        return size

    def __contains__(self, genome) -> bool:
        try:
            self.check(genome)
        except BlocksearchError:
            return False
        return True

    def check(self, genome: DitGenome) -> None:
        if not isinstance(genome, DitGenome) or genome.groups != self.topology.groups:
            raise BlocksearchError(f"genome {getattr(genome, 'id', genome)}: groups do not match the teacher's "
                                   f"{list(self.topology.groups)} ({self.space.path})")
        for g in genome.groups:
            if genome.blocks(g) not in self._kept_choices(g):
                patterns = [c for c, _ in dict(self.options).get(g, (("all", None),))]
                raise BlocksearchError(f"genome {genome.id}: {g} is outside {self.space.path}: allowed {patterns}")

    # -- named designs ----------------------------------------------------------------------------
    def design(self, name: str) -> DitGenome:
        """The DitGenome of a named design; a group it does not name keeps all its blocks."""
        if name not in self.space.designs:
            raise BlocksearchError(f"{self.space.path}: designs: unknown design {name!r}; allowed: "
                                   f"{sorted(self.space.designs)}")
        spec = self.space.designs[name]
        try:
            genome = DitGenome(tuple((g, resolve(spec.get(g, "all"), n)) for g, n in self.topology.depths))
            self.check(genome)
        except BlocksearchError as err:
            raise BlocksearchError(f"{self.space.path}: designs.{name}: design is outside the space: {err}") from None
        return genome

    def named_designs(self) -> dict[str, DitGenome]:
        return {name: self.design(name) for name in self.space.designs}


class _FixedTrial:
    """Replays stored params through :meth:`DitBoundSpace.suggest` (like ``optuna.trial.FixedTrial``)."""

    def __init__(self, params: dict[str, Any]):
        self.params = params

    def suggest_categorical(self, name, choices):
        if self.params.get(name) not in choices:
            raise BlocksearchError(f"trial param {name}={self.params.get(name)!r}; allowed: {choices}")
        return self.params[name]
