"""Search space of transformer block masks (family ``dit``): YAML -> DitSearchSpace -> (bound) -> DitGenome.

A transformer denoiser is a stack of same-shaped blocks; a student keeps a subset of them per block group
(TinyFusion, arXiv 2412.01199, keeps 14 of DiT-XL/2's 28 blocks; Freepik's Flux.1-Lite keeps 8 of FLUX.1-dev's
19 double-stream blocks). A group's row says which masks are allowed (mask.py): a kept-count range, optional
windows (keep k of every n consecutive blocks) and pinned blocks. Named designs are patterns (``all``,
``first:K``, ``last:K``, ``drop_span:A-B``, ``every:k``) resolved on the teacher. Torch-free: space.py and the CLI
import it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from blocksearch.errors import BlocksearchError
from blocksearch.families.dit.genome import GROUPS, TEACHERS, DitGenome, DitTopology
from blocksearch.families.dit.mask import GroupMask, lazy_product

PATTERNS = ("all", "first", "last", "drop_span", "every")
_PATTERN = re.compile(r"all|(first|last|every):[1-9]\d*|drop_span:\d+-\d+")
_ROW_KEYS = {"kept", "window", "pin", "optional"}
_TOP_KEYS = {"name", "family", "teacher", "groups", "designs"}
_PUBLISHED_KEYS = {"teacher", "params", "source"}
_COUNT = re.compile(r"([1-9]\d*)|(\d+(?:\.\d+)?)%")


# -- patterns (named designs) ------------------------------------------------------------------------
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
    if a > b or b >= n or (a == 0 and b == n - 1):
        raise BlocksearchError(f"{choice}: the group has blocks 0..{n - 1}; allowed drop_span:A-B with "
                               f"0 <= A <= B <= {n - 1}, not the whole group")
    return tuple(i for i in range(n) if not a <= i <= b)


# -- the space file ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class MaskRow:
    """One row of the space: a block group's mask constraints as the file states them (teacher-independent:
    counts may be percentages of the group's blocks, pins may be 'first' / 'last')."""

    name: str
    kept: tuple[str, str]  # (min, max): "4", "25%"
    window: tuple[int, int] | None  # (keep, size)
    pin: tuple[Any, ...]  # "first", "last" or block indices
    optional: bool  # a teacher without this group skips the row (Flux's single blocks on PixArt)

    def bind(self, n: int) -> GroupMask:
        """The row on a group of ``n`` blocks: percentages rounded inward (min up, max down)."""
        low, high = (_count(v, n, up) for v, up in zip(self.kept, (True, False)))
        pins = tuple(sorted({0 if p == "first" else n - 1 if p == "last" else p for p in self.pin}))
        return GroupMask(self.name, n, low, high, self.window, pins)

    def describe(self) -> str:
        """The row in words, as ``space show`` prints it."""
        parts = [f"keep {self.kept[0]}..{self.kept[1]}"]
        if self.window:
            parts.append(f"{self.window[0]} of every {self.window[1]} consecutive")
        if self.pin:
            parts.append("pin " + ", ".join(map(str, self.pin)))
        return "; ".join(parts)


def _count(value: str, n: int, up: bool) -> int:
    match = _COUNT.fullmatch(value)
    if match[1]:
        return int(match[1])
    exact = float(match[2]) * n / 100
    return math.ceil(exact - 1e-9) if up else math.floor(exact + 1e-9)


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
    groups: tuple[MaskRow, ...]
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
        raise BlocksearchError(f"{path}: groups: expected a mapping 'transformer_blocks: {{kept: [25%, 100%]}}'")
    groups = tuple(_parse_row(name, row, f"{path}: groups.{name}") for name, row in rows.items())
    if [g.name for g in groups] != [g for g in GROUPS if g in rows]:
        raise BlocksearchError(f"{path}: groups: rows in the order {[g for g in GROUPS if g in rows]}")
    designs, published = {}, {}
    raw_designs = raw.get("designs") or {}
    if not isinstance(raw_designs, dict):
        raise BlocksearchError(f"{path}: designs: expected a mapping of name -> {{group: pattern}}")
    for name, spec in raw_designs.items():
        key = f"{path}: designs.{name}"
        allowed = set(GROUPS) | {"published"}
        if not isinstance(spec, dict):
            raise BlocksearchError(f"{key}: expected a mapping with keys {sorted(allowed)}")
        _no_unknown(spec, allowed, key)
        for group, pattern in spec.items():
            if group != "published" and not (isinstance(pattern, str) and _PATTERN.fullmatch(pattern)):
                raise BlocksearchError(f"{key}.{group}: {pattern!r}; allowed: a pattern all, first:K, last:K, "
                                       "drop_span:A-B or every:K")
        designs[name] = {g: str(v) for g, v in spec.items() if g != "published"}
        if "published" in spec:
            published[name] = _parse_published(spec["published"], f"{key}.published")
    return DitSearchSpace(str(raw["name"]), path, teacher, groups, designs, published)


def _parse_row(name: str, row: Any, key: str) -> MaskRow:
    if name not in GROUPS:
        raise BlocksearchError(f"{key}: unknown block group {name!r}; allowed: {list(GROUPS)}")
    if not isinstance(row, dict):
        raise BlocksearchError(f"{key}: expected a mapping with keys {sorted(_ROW_KEYS)}")
    _no_unknown(row, _ROW_KEYS, key)
    kept = row.get("kept", [1, "100%"])
    if not (isinstance(kept, list) and len(kept) == 2 and all(
            not isinstance(v, bool) and _COUNT.fullmatch(str(v)) and (str(v)[-1] != "%" or 0 < float(str(v)[:-1]) <= 100)
            for v in kept)):
        raise BlocksearchError(f"{key}.kept: {kept!r}; allowed: [min, max], each a block count >= 1 or a "
                               "percentage of the group's blocks ('25%')")
    window = row.get("window")
    if window is not None:
        if not (isinstance(window, dict) and set(window) == {"keep", "size"} and all(
                isinstance(v, int) and not isinstance(v, bool) for v in window.values())
                and 1 <= window["keep"] < window["size"]):
            raise BlocksearchError(f"{key}.window: {window!r}; allowed: {{keep: k, size: n}} with 1 <= k < n "
                                   "(keep k of every n consecutive blocks)")
        window = (window["keep"], window["size"])
    pin = row.get("pin", [])
    if not isinstance(pin, list) or not all(p in ("first", "last") or (
            isinstance(p, int) and not isinstance(p, bool) and p >= 0) for p in pin):
        raise BlocksearchError(f"{key}.pin: {pin!r}; allowed: a list of 'first', 'last' or block indices >= 0")
    optional = row.get("optional", False)
    if not isinstance(optional, bool):
        raise BlocksearchError(f"{key}.optional: {optional!r}; allowed: true or false")
    return MaskRow(name, (str(kept[0]), str(kept[1])), window, tuple(dict.fromkeys(pin)), optional)


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
    masks: tuple[GroupMask, ...]  # per searched group; a group the file does not name keeps every block

    @classmethod
    def create(cls, space: DitSearchSpace, topology: DitTopology) -> "DitBoundSpace":
        masks = []
        for row in space.groups:
            key = f"{space.path}: groups.{row.name}"
            if row.name not in topology.groups:
                if row.optional:
                    continue
                raise BlocksearchError(f"{key}: the teacher ({topology.model_class}) has no {row.name}; allowed "
                                       f"groups: {list(topology.groups)} (or mark the row 'optional: true')")
            try:
                masks.append(row.bind(topology.depth(row.name)))
            except BlocksearchError as err:
                raise BlocksearchError(f"{key}: {err} (the teacher's {row.name})") from None
        bound = cls(space, topology, tuple(masks))
        for name in space.designs:
            bound.design(name)  # a design outside the space fails here, naming the design
        return bound

    @property
    def teacher_genome(self) -> DitGenome:
        return DitGenome(tuple((g, tuple(range(n))) for g, n in self.topology.depths))

    def mask(self, group: str) -> GroupMask | None:
        """The searched group's mask rules (None: the file does not name it; it keeps every block)."""
        return next((m for m in self.masks if m.group == group), None)

    # -- define-by-run: only trial.suggest_* calls, no work --------------------------------------
    def suggest(self, trial) -> DitGenome:
        """Sample a DitGenome: one boolean categorical per block of each searched group (``<group>.<i>``: kept?),
        repaired to the group's constraints (mask.py's rule)."""
        chosen = {m.group: m.repair([trial.suggest_categorical(f"{m.group}.{i}", (True, False)) for i in range(m.n)])
                  for m in self.masks}
        return DitGenome(tuple((g, chosen.get(g, tuple(range(n)))) for g, n in self.topology.depths))

    def to_params(self, genome: DitGenome) -> dict[str, Any]:
        """The Optuna params that :meth:`suggest` would return for ``genome`` (for enqueue_trial)."""
        self.check(genome)
        return {f"{m.group}.{i}": i in genome.blocks(m.group) for m in self.masks for i in range(m.n)}

    def from_params(self, params: dict[str, Any]) -> DitGenome:
        return self.suggest(_FixedTrial(params))

    def from_id(self, text: str) -> DitGenome:
        """The DitGenome of an id (the search side stores ids: ``DitGenome.id``)."""
        return DitGenome.from_id(text)

    # -- enumeration ------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[DitGenome]:
        """Every valid genome, lazily (a group's masks are enumerated in ``GroupMask``'s order)."""
        groups = self.topology.groups
        factories = [(lambda m=self.mask(g), n=self.topology.depth(g): iter(m) if m else iter([tuple(range(n))]))
                     for g in groups]
        for kept in lazy_product(factories):
            yield DitGenome(tuple(zip(groups, kept)))

    @property
    def size(self) -> int:
        """The exact number of valid genomes (Python ints: 2^57 on FLUX.1-dev is exact)."""
        return math.prod(m.count() for m in self.masks)

    def __len__(self) -> int:
        return self.size

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
        for g, n in self.topology.depths:
            mask = self.mask(g)
            why = mask.reason(genome.blocks(g)) if mask else (
                None if genome.blocks(g) == tuple(range(n)) else "the space keeps every block")
            if why:
                raise BlocksearchError(f"genome {genome.id}: {g} is outside {self.space.path}: {why}")

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
        """Every named design's genome on this teacher, in file order; a design that keeps the same blocks as
        the teacher or an earlier design counts once (Flux-only rows keep every block elsewhere)."""
        out, seen = {}, {self.teacher_genome}
        for name in self.space.designs:
            genome = self.design(name)
            if genome not in seen:
                out[name] = genome
                seen.add(genome)
        return out


class _FixedTrial:
    """Replays stored params through :meth:`DitBoundSpace.suggest` (like ``optuna.trial.FixedTrial``)."""

    def __init__(self, params: dict[str, Any]):
        self.params = params

    def suggest_categorical(self, name, choices):
        if self.params.get(name) not in choices:
            raise BlocksearchError(f"trial param {name}={self.params.get(name)!r}; allowed: {list(choices)}")
        return self.params[name]
