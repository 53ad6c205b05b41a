"""Search space of U-Net block removals: YAML file -> SearchSpace -> (bound to a teacher) -> Genome.

The moves are BK-SDM's (arXiv 2305.15798): fewer layers per stage, no mid block, no innermost stage;
plus attention removal per stage (SnapFusion, arXiv 2306.00980), transformer depth (KOALA, arXiv 2312.04005) and
an up path whose depths differ from the down path's, per layer (SSD-1B, arXiv 2401.02677). Every Genome maps to a
plain diffusers ``UNet2DConditionModel`` config. Torch-free.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from blocksearch.errors import BlocksearchError
from blocksearch.families.unet.genome import MID_CHOICES, Genome, Topology

ATTENTION_CHOICES = ("keep", "drop")
REMOVED = "removed"
FOLLOW = "down"  # the up-path choice that mirrors the down path (always allowed)
_STAGE_KEYS = {"up", "layers", "attention", "transformer_depth", "up_transformer_depth", "removable"}
_TOP_KEYS = {"name", "family", "teacher", "stages", "mid_block", "designs"}
_DESIGN_KEYS = {"layers", "attention", "transformer_depth", "up_transformer_depth", "mid_block", "published"}


@dataclass(frozen=True)
class StageSpec:
    """One row of the space: a down stage (and its tied up stage) and its choices."""

    name: str  # diffusers path, e.g. "down_blocks.0"
    up: str  # the tied up stage, e.g. "up_blocks.3"
    layers: tuple[int, ...]
    attention: tuple[str, ...] | None  # None: the row says nothing (keep what the teacher has)
    transformer_depth: tuple[int, ...] | None  # None: keep the teacher's depth
    removable: bool
    up_depth: tuple[str, ...] = ()  # the up stage's depth choices beyond FOLLOW: "4" (every layer) or "4.4.10"


@dataclass(frozen=True)
class SearchSpace:
    """A validated space file."""

    name: str
    path: Path
    teacher: str  # reference architecture the file was written for (sd-v1, sdxl, ...)
    stages: tuple[StageSpec, ...]
    mid_block: tuple[str, ...]
    designs: dict[str, dict[str, Any]]
    family: str = "unet"  # the denoiser family (families/base.py); this loader reads the U-Net's rows
    genome: type = Genome  # the family's genome class (its ``family`` names the family)

    def bind(self, topology: "Topology") -> "BoundSpace":
        """Check the space against a teacher's topology; return the space of concrete Genomes."""
        return BoundSpace.create(self, topology)


@dataclass(frozen=True)
class BoundSpace:
    """A SearchSpace checked against one teacher topology: suggest, enumerate and name Genomes."""

    space: SearchSpace
    topology: Topology
    layer_choices: tuple[tuple[int, ...], ...]  # per stage
    depth_choices: tuple[tuple[int, ...], ...]  # per stage; 0 = attention dropped
    removable: bool
    up_choices: tuple[tuple[str, ...], ...] = ()  # per stage: FOLLOW, then the row's up-path choices

    @classmethod
    def create(cls, space: SearchSpace, topology: Topology) -> "BoundSpace":
        where = f"{space.path}"
        if len(space.stages) != topology.n_stages:
            raise BlocksearchError(
                f"{where}: stages: the space has {len(space.stages)} stages but the teacher has "
                f"{topology.n_stages} (down_blocks.0..{topology.n_stages - 1}); use a space written "
                f"for this teacher's topology")
        layer_choices, depth_choices, up_choices = [], [], []
        for stage, n_layers, depth, up in zip(space.stages, topology.layers, topology.depth, topology.up_depths):
            key = f"{where}: stages.{stage.name}"
            bad = [k for k in stage.layers if k > n_layers]
            if bad:
                raise BlocksearchError(
                    f"{key}.layers: keep {bad[0]} of {n_layers} is impossible; the teacher's "
                    f"{stage.name} has {n_layers} layers, allowed 1..{n_layers}")
            layer_choices.append(stage.layers)
            depth_choices.append(_depth_choices(stage, depth, key))
            up_choices.append((FOLLOW,) + _up_choices(stage, up, key))
        if space.mid_block != ("none",) and topology.mid == "none":
            raise BlocksearchError(f"{where}: mid_block: the teacher has no mid block; allowed: [none]")
        if "cross_attn" in space.mid_block and topology.mid != "cross_attn":
            raise BlocksearchError(
                f"{where}: mid_block: the teacher's mid block has no attention; allowed: [resnet, none]")
        bound = cls(space, topology, tuple(layer_choices), tuple(depth_choices),
                    space.stages[-1].removable, tuple(up_choices))
        for name in space.designs:
            bound.design(name)  # a named design outside the space fails here, naming the design
        return bound

    @property
    def teacher_genome(self) -> Genome:
        t = self.topology
        return self.space.genome(t.layers, t.depth, t.mid, t.up)

    def up_of(self, i: int, choice: str, layers: int, depth: int) -> tuple[int, ...]:
        """Stage ``i``'s up-path depths per student layer for ``choice`` (a list is per teacher layer: a student
        keeping fewer layers keeps the depths of the teacher layers its weights come from)."""
        if not depth:
            return (0,) * (layers + 1)
        if choice == FOLLOW:
            return (depth,) * (layers + 1)
        per = tuple(map(int, choice.split(".")))
        if len(per) == 1:
            return per * (layers + 1)
        n = len(per)
        return tuple(per[j if j < layers else n - 1] for j in range(layers + 1))

    def genome_of(self, layers, depth, mid, ups) -> Genome:
        """The Genome of kept ``layers``, ``depth`` and ``mid`` per stage, and ``ups``: each stage's up-path choice."""
        up = tuple(self.up_of(i, c, k, d) for i, (c, k, d) in enumerate(zip(ups, layers, depth)))
        return self.space.genome(tuple(layers), tuple(depth), mid, up)

    # -- define-by-run: only trial.suggest_* calls, no work -------------------------------------
    def suggest(self, trial) -> Genome:
        """Sample a Genome with Optuna's define-by-run API (categorical choices per row)."""
        n = self.topology.n_stages
        last = self.space.stages[-1].name
        if self.removable and trial.suggest_categorical(f"{last}.removed", [False, True]):
            n -= 1
        layers, depth, ups = [], [], []
        for stage, lc, dc, uc in zip(self.space.stages[:n], self.layer_choices, self.depth_choices, self.up_choices):
            layers.append(trial.suggest_categorical(f"{stage.name}.layers", list(lc)))
            depth.append(trial.suggest_categorical(f"{stage.name}.depth", list(dc)))
            searched = len(uc) > 1 and depth[-1]  # the up path is a choice only where the row gives one
            ups.append(trial.suggest_categorical(f"{stage.name}.up_depth", list(uc)) if searched else FOLLOW)
        mid = trial.suggest_categorical("mid_block", list(self.space.mid_block))
        return self.genome_of(layers, depth, mid, ups)

    def to_params(self, genome: Genome) -> dict[str, Any]:
        """The Optuna params that :meth:`suggest` would return for ``genome`` (for enqueue_trial)."""
        self.check(genome)
        params: dict[str, Any] = {}
        if self.removable:
            params[f"{self.space.stages[-1].name}.removed"] = len(genome.layers) < self.topology.n_stages
        for i, (stage, k, d) in enumerate(zip(self.space.stages, genome.layers, genome.depth)):
            params[f"{stage.name}.layers"] = k
            params[f"{stage.name}.depth"] = d
            if len(self.up_choices[i]) > 1 and d:
                params[f"{stage.name}.up_depth"] = next(c for c in self.up_choices[i]
                                                        if self.up_of(i, c, k, d) == genome.up_depths[i])
        params["mid_block"] = genome.mid
        return params

    def from_params(self, params: dict[str, Any]) -> Genome:
        """Rebuild the Genome of a finished trial from its params."""
        fixed = _FixedTrial(params)
        return self.suggest(fixed)

    def from_id(self, text: str) -> Genome:
        """The Genome of an id (the search side stores ids: ``Genome.id``)."""
        return Genome.from_id(text)

    # -- enumeration --------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Genome]:
        """Every distinct Genome (up-path choices that give the same depths count once)."""
        seen: set[Genome] = set()
        n = self.topology.n_stages
        for n_kept in ([n, n - 1] if self.removable else [n]):
            for layers in itertools.product(*self.layer_choices[:n_kept]):
                for depth in itertools.product(*self.depth_choices[:n_kept]):
                    up_sets = [uc if d else (FOLLOW,) for uc, d in zip(self.up_choices, depth)]
                    for ups in itertools.product(*up_sets):
                        for mid in self.space.mid_block:
                            genome = self.genome_of(layers, depth, mid, ups)
                            if genome not in seen:
                                seen.add(genome)
                                yield genome

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __contains__(self, genome: Genome) -> bool:
        try:
            self.check(genome)
        except BlocksearchError:
            return False
        return True

    def check(self, genome: Genome) -> None:
        n = len(genome.layers)
        if not (n == self.topology.n_stages or (self.removable and n == self.topology.n_stages - 1)):
            raise BlocksearchError(f"genome {genome.id}: {n} stages is outside {self.space.path}")
        for i, (k, d) in enumerate(zip(genome.layers, genome.depth)):
            if k not in self.layer_choices[i] or d not in self.depth_choices[i]:
                raise BlocksearchError(
                    f"genome {genome.id}: down_blocks.{i} (layers {k}, depth {d}) is outside "
                    f"{self.space.path}: layers {list(self.layer_choices[i])}, "
                    f"depth {list(self.depth_choices[i])}")
            if genome.up_depths[i] not in {self.up_of(i, c, k, d) for c in self.up_choices[i]}:
                raise BlocksearchError(
                    f"genome {genome.id}: the up stage tied to down_blocks.{i} (depths "
                    f"{list(genome.up_depths[i])}) is outside {self.space.path}: up_transformer_depth "
                    f"{list(self.up_choices[i])}")
        if genome.mid not in self.space.mid_block:
            raise BlocksearchError(
                f"genome {genome.id}: mid_block {genome.mid} is outside {self.space.path}: "
                f"{list(self.space.mid_block)}")

    # -- named designs ------------------------------------------------------------------------
    def design(self, name: str) -> Genome:
        """The Genome of a named design (e.g. ``bk_small``); unnamed fields keep the teacher's."""
        if name not in self.space.designs:
            raise BlocksearchError(
                f"{self.space.path}: designs: unknown design {name!r}; allowed: "
                f"{sorted(self.space.designs)}")
        spec, key = self.space.designs[name], f"{self.space.path}: designs.{name}"
        t, n = self.topology, self.topology.n_stages
        layers = list(spec.get("layers", t.layers))
        removed = len(layers) == n and layers[-1] == REMOVED
        if removed:
            layers = layers[:-1]
        if len(layers) != (n - 1 if removed else n):
            raise BlocksearchError(f"{key}.layers: expected {n} entries (the last may be '{REMOVED}')")
        attention = _design_list(spec, "attention", ["keep" if d else "-" for d in t.depth], n, key)
        depth_spec = _design_list(spec, "transformer_depth", [d or "-" for d in t.depth], n, key)
        up_spec = _design_list(spec, "up_transformer_depth", ["-"] * n, n, key)
        depth, ups = [], []
        for i in range(len(layers)):
            if attention[i] not in ("keep", "drop", "-") or (attention[i] == "-") != (t.depth[i] == 0):
                raise BlocksearchError(
                    f"{key}.attention[{i}]: {attention[i]!r}; allowed: "
                    f"{['-'] if not t.depth[i] else ['keep', 'drop']}")
            depth.append(int(depth_spec[i]) if attention[i] == "keep" else 0)
            ups.append(FOLLOW if up_spec[i] == "-" else _up_choice(up_spec[i], f"{key}.up_transformer_depth[{i}]"))
        genome = self.genome_of([int(k) for k in layers], depth, spec.get("mid_block", t.mid), ups)
        try:
            self.check(genome)
        except BlocksearchError as err:
            raise BlocksearchError(f"{key}: design is outside the space: {err}") from None
        return genome

    def named_designs(self) -> dict[str, Genome]:
        return {name: self.design(name) for name in self.space.designs}


def _design_list(spec: dict, field: str, default: list, n: int, key: str) -> list:
    value = spec.get(field, default)
    if not isinstance(value, list) or len(value) != n:
        raise BlocksearchError(
            f"{key}.{field}: {value!r}; expected a list of {n} entries, one per stage ('-' where the "
            f"teacher's stage has no attention)")
    return value


class _FixedTrial:
    """Replays stored params through :meth:`BoundSpace.suggest` (like ``optuna.trial.FixedTrial``)."""

    def __init__(self, params: dict[str, Any]):
        self.params = params

    def suggest_categorical(self, name, choices):
        if name not in self.params:
            raise BlocksearchError(f"trial params lack {name!r}; have {sorted(self.params)}")
        return self.params[name]


def _up_choice(value: Any, key: str) -> str:
    """One up-path choice as the space stores it: an int (every layer) or a list (per teacher layer), as text."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return str(value)
    if isinstance(value, list) and value and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1
                                                 for v in value):
        return ".".join(map(str, value))
    raise BlocksearchError(f"{key}: {value!r}; allowed: an integer >= 1 (every layer of the up stage) or a list of "
                           f"them, one per layer of the teacher's up stage")


def _up_choices(stage: StageSpec, teacher_up: tuple[int, ...], key: str) -> tuple[str, ...]:
    """A row's up-path choices checked against the teacher's up stage (its depth per layer)."""
    if stage.up_depth and not any(teacher_up):
        raise BlocksearchError(f"{key}.up_transformer_depth: the teacher's {stage.up} has no attention; remove it")
    for choice in stage.up_depth:
        per = tuple(map(int, choice.split(".")))
        if len(per) > 1 and len(per) != len(teacher_up):
            raise BlocksearchError(f"{key}.up_transformer_depth: {list(per)} has {len(per)} entries; the teacher's "
                                   f"{stage.up} has {len(teacher_up)} layers")
        wide = per * len(teacher_up) if len(per) == 1 else per
        if any(d > t for d, t in zip(wide, teacher_up)):
            raise BlocksearchError(f"{key}.up_transformer_depth: {list(per)} is impossible; the teacher's {stage.up} "
                                   f"has depths {list(teacher_up)} per layer")
    return stage.up_depth


def _depth_choices(stage: StageSpec, teacher_depth: int, key: str) -> tuple[int, ...]:
    if not teacher_depth:
        if stage.attention is not None or stage.transformer_depth is not None:
            raise BlocksearchError(
                f"{key}.attention: the teacher's {stage.name} has no attention; remove "
                f"'attention'/'transformer_depth' from this row")
        return (0,)
    depths = stage.transformer_depth or (teacher_depth,)
    bad = [d for d in depths if d > teacher_depth]
    if bad:
        raise BlocksearchError(
            f"{key}.transformer_depth: {bad[0]} is impossible; the teacher's {stage.name} has "
            f"depth {teacher_depth}, allowed 1..{teacher_depth}")
    attention = stage.attention or ("keep",)
    return tuple(sorted((depths if "keep" in attention else ()) + ((0,) if "drop" in attention else ())))


# -- loading and validation ---------------------------------------------------------------------
def load(path: Path, raw: dict, family: str = "unet", genome: type = Genome) -> SearchSpace:
    """Validate a ``family: unet`` space file's mapping (space.py reads the YAML and its ``family:``); every
    error names the file, the key and the allowed values. Another U-Net family (SDXL's) passes its name and genome."""
    _no_unknown(raw, _TOP_KEYS, f"{path}")
    for key in ("name", "stages", "mid_block"):
        if key not in raw:
            raise BlocksearchError(f"{path}: missing key '{key}'")
    stages = _parse_stages(raw["stages"], path)
    mid = _choice_list(raw["mid_block"], MID_CHOICES, f"{path}: mid_block")
    designs = raw.get("designs") or {}
    if not isinstance(designs, dict):
        raise BlocksearchError(f"{path}: designs: expected a mapping of name -> design")
    for name, spec in designs.items():
        if not isinstance(spec, dict):
            raise BlocksearchError(f"{path}: designs.{name}: expected a mapping with keys {sorted(_DESIGN_KEYS)}")
        _no_unknown(spec, _DESIGN_KEYS, f"{path}: designs.{name}")
        published = spec.get("published", 1)
        if not isinstance(published, int) or isinstance(published, bool) or published < 1:
            raise BlocksearchError(f"{path}: designs.{name}.published: {published!r}; allowed: the published "
                                   f"U-Net's parameter count, an integer >= 1")
        if "mid_block" in spec and spec["mid_block"] not in MID_CHOICES:
            raise BlocksearchError(
                f"{path}: designs.{name}.mid_block: {spec['mid_block']!r}; allowed: {list(MID_CHOICES)}")
    return SearchSpace(str(raw["name"]), path, str(raw.get("teacher", "sd-v1")), stages, mid, designs, family, genome)


def _parse_stages(raw: Any, path: Path) -> tuple[StageSpec, ...]:
    if not isinstance(raw, dict) or not raw:
        raise BlocksearchError(f"{path}: stages: expected a mapping 'down_blocks.<i>: {{...}}'")
    n, out = len(raw), []
    for i, (name, row) in enumerate(raw.items()):
        key = f"{path}: stages.{name}"
        if name != f"down_blocks.{i}":
            raise BlocksearchError(
                f"{path}: stages: unknown stage {name!r}; allowed here: 'down_blocks.{i}' "
                f"(rows are down_blocks.0..{n - 1} in order)")
        if not isinstance(row, dict):
            raise BlocksearchError(f"{key}: expected a mapping with keys {sorted(_STAGE_KEYS)}")
        _no_unknown(row, _STAGE_KEYS, key)
        if row.get("up") != f"up_blocks.{n - 1 - i}":
            raise BlocksearchError(
                f"{key}.up: {row.get('up')!r}; the skip connections tie it to 'up_blocks.{n - 1 - i}'")
        layers = _int_list(row.get("layers"), f"{key}.layers")
        attention = row.get("attention")
        attention = None if attention is None else _choice_list(attention, ATTENTION_CHOICES, f"{key}.attention")
        depth = row.get("transformer_depth")
        depth = None if depth is None else _int_list(depth, f"{key}.transformer_depth")
        up_raw = row.get("up_transformer_depth", [])
        if not isinstance(up_raw, list):
            raise BlocksearchError(f"{key}.up_transformer_depth: {up_raw!r}; allowed: a list of choices")
        up = tuple(dict.fromkeys(_up_choice(v, f"{key}.up_transformer_depth") for v in up_raw))
        removable = row.get("removable", False)
        if not isinstance(removable, bool) or (removable and i != n - 1):
            raise BlocksearchError(
                f"{key}.removable: {removable!r}; allowed: true only on the innermost stage down_blocks.{n - 1}")
        out.append(StageSpec(name, row["up"], layers, attention, depth, removable, up))
    return tuple(out)


def _int_list(value: Any, key: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(v, int) and not isinstance(v, bool)
                                                           and v >= 1 for v in value):
        raise BlocksearchError(f"{key}: {value!r}; allowed: a non-empty list of integers >= 1")
    return tuple(sorted(set(value)))


def _choice_list(value: Any, allowed: tuple[str, ...], key: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or any(v not in allowed for v in value):
        raise BlocksearchError(f"{key}: {value!r}; allowed: a non-empty list of {list(allowed)}")
    return tuple(v for v in allowed if v in value)


def _no_unknown(raw: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise BlocksearchError(f"{where}: unknown key '{unknown[0]}'; allowed: {sorted(allowed)}")
