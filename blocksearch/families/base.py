"""The denoiser-family interface: everything that knows what a denoiser looks like, behind one object.

The search side (searcher, study, samplers, rungs, pareto, report) knows an architecture only by its id
(``Genome.id``); a family turns ids into models, and the trial path (distill, probe, teacher cache, evaluate,
latency, export, model card) calls, reads and describes a denoiser only through its family. ``unet`` is SD's U-Net (BK-SDM, arXiv 2305.15798);
``dit`` keeps a subset of a transformer denoiser's blocks (TinyFusion, arXiv 2412.01199; Flux.1-Lite).
A new family is one module that provides a ``Family``, one space YAML that names it, and its tests.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, fields
from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Protocol

from blocksearch.errors import BlocksearchError

if TYPE_CHECKING:
    import torch


class Family(Protocol):
    """One denoiser family. One trial calls its members in this order:

    1. ``load_space`` (space.py, from the YAML's ``family:``) -> a space; ``space.bind(topology(teacher config))``
       -> a ``BoundSpace`` whose ``suggest`` / ``from_id`` give the trial's ``arch`` (hashable, with a string ``id``);
    2. ``student_config(teacher config, arch)`` and ``build_student(teacher denoiser, arch)``: surgery, a Student
       (denoiser, weight map, fresh tensors, KD pairs) whose ``kd_pairs(arch, topology)`` name real modules;
    3. ``encode_text(pipeline, captions)`` -> ``Batch.cond`` (its empty caption: the unconditional branch);
    4. ``forward(denoiser, noisy, timesteps, cond)``, read by ``kd_feature`` at the KD pairs, matched to
       ``training_target(scheduler, latents, noise, timesteps)``;
    5. ``forward_inputs`` (MACs, latency, cache size) and ``describe`` / ``architecture_diff`` /
       ``architecture_table`` / ``removed``: the report's and model card's words; ``subfolder`` and
       ``pipeline_class``: the exported pipeline.

    Everything below ``# -- hooks`` has a default (``DenoiserFamily``'s)."""

    name: str  # the space YAML's ``family:``
    subfolder: str  # the denoiser's folder in a diffusers pipeline ("unet", "transformer")
    denoiser_name: str  # the report's and model card's word for the denoiser ("U-Net", "transformer")

    def load_space(self, path, raw: dict) -> Any:
        """A space file's mapping -> the family's space (``bind(topology)`` gives an ``ArchSpace``)."""

    def topology(self, denoiser_config) -> Any:
        """What surgery needs to know of the teacher, read from its diffusers config."""

    def arch_from_id(self, text: str) -> Any:
        """The arch of an id (``arch.id``): the search side stores ids only."""

    def student_config(self, teacher_config, arch) -> dict:
        """The student's diffusers config: the teacher's with plain changes."""

    def build_student(self, teacher_denoiser: torch.nn.Module, arch) -> Any:
        """Surgery: the student initialised by the weight map derived from ``arch`` (a ``Student``)."""

    def kd_pairs(self, arch, topology) -> tuple[tuple[str, str], ...]:
        """(teacher module, student module) pairs whose outputs feature KD matches."""

    def kd_teacher_modules(self, topology) -> tuple[str, ...]:
        """Every teacher module ``kd_pairs`` names for some arch that fits ``topology`` (the teacher cache's)."""

    def encode_text(self, pipeline, captions: list[str]) -> dict[str, torch.Tensor]:
        """``Batch.cond`` of ``captions`` as the family's pipeline makes it (U-Net: ``encoder_hidden_states``;
        PixArt: and ``encoder_attention_mask``), every entry batch-first."""

    def forward(self, denoiser: torch.nn.Module, noisy: torch.Tensor, timesteps: torch.Tensor,
                cond: dict[str, torch.Tensor]) -> torch.Tensor:
        """One denoiser call as the stock pipeline makes it: the prediction ``training_target`` matches."""

    def forward_inputs(self, config, batch: int = 1, latent_size: int | None = None, device="meta",
                       dtype=None, text_len: int | None = None) -> dict:
        """Keyword inputs of one denoiser call (for MACs, latency and shape checks)."""

    def describe(self, arch, teacher_config) -> list[tuple[str, str]]:
        """(student block, the teacher block it came from): the weight map in module names."""

    def architecture_diff(self, arch, topology) -> str:
        """What ``arch`` removes from the teacher, in one line of diffusers module names (the report)."""

    def architecture_table(self, arch, topology) -> list[tuple[str, str, str]]:
        """(teacher module, the teacher's, the student's) rows: the model card's table."""

    def removed(self, arch, topology) -> dict[str, str]:
        """What the student removed, per teacher module; modules kept whole are absent."""

    def weight_map(self, teacher_config, arch) -> dict[str, str]:
        """Student tensor -> the teacher tensor surgery initialises it from, for every student tensor (the
        ``block_map.json`` of every student folder and export: adapt/blockmap.py)."""

    # -- hooks: defaulted members (``DenoiserFamily``) ---------------------------------------------------
    pipeline_class: str | None  # the stock diffusers pipeline a student drops into (None: follows the teacher)
    model_class: str | None  # the denoiser's diffusers class where the family has several (None: one)
    id_example: str  # an arch id, as an error message shows one
    id_prefix: str  # what every arch id starts with ("": nothing fixed)
    trains: bool  # ``blocksearch train`` continues this family's students
    text_len: int | None  # text tokens of a measured call (None: the family's own per class)
    card_tags: tuple[str, ...]  # the model card's tags beyond the shared ones
    card_summary: str  # the model card's first line ("{denoiser} ({model class})" filled in)
    toy_teacher: str  # the bundled toy teacher of the family: ``--teacher toy`` for a space of it
    load_student: Callable | None  # (folder, teacher denoiser) -> Student to go on from (None: ``--init`` unsupported)
    layout: Callable | None  # (arch, topology) -> tuple of ``layout.Stage``: the report's block diagram (None: none)

    def cond_of_inputs(self, inputs: dict) -> dict[str, torch.Tensor]:
        """The ``Batch.cond`` entries (as ``encode_text`` makes them: their shapes and dtypes) of one call's
        ``forward_inputs``: what the teacher cache stores of the text per KD step (``cache_bytes_per_step``)."""

    def load_student_denoiser(self, folder, teacher_denoiser) -> torch.nn.Module:
        """The denoiser of a student folder (``distill``'s or ``export``'s, or a bare denoiser folder)."""

    def show_space(self, space, teacher: str, latent: int | None, resolve, toy_folders) -> int:
        """``space show``: print ``space`` bound to ``teacher`` (``resolve``: ``teachers.resolve_teacher``;
        ``toy_folders``: the bundled toy teachers' folders); the exit code."""

    def training_target(self, scheduler, latents, noise, timesteps) -> torch.Tensor:
        """What the denoiser is trained to predict (noise, velocity or flow): ``scheduler_target``."""

    def kd_feature(self, output) -> torch.Tensor:
        """The feature that feature KD matches, from the output of one of ``kd_pairs``' modules."""

    def text_tokens(self, pipeline) -> int:
        """Text tokens of one denoiser call, as MACs and latency count them."""

    def call_kwargs(self, pipeline) -> dict:
        """Keyword arguments a generation call of the stock pipeline needs beyond prompt, steps and guidance."""

    def for_teacher(self, denoiser_config) -> "Family":
        """The family object of one teacher (a transformer family's pipeline follows the teacher's class)."""

    def load_pipeline(self, source: str, device: str) -> Any:
        """The teacher's stock pipeline from a local folder or cached hub id (local files only)."""


Arch = Any  # a family's architecture (``Genome``, ``DitGenome``): hashable, with a string ``id``


class ArchSpace(Protocol):
    """What the search side (search/searcher.py, search/driver.py, bench/search.py, study.py) asks of a bound
    space: suggest and replay an arch through Optuna's define-by-run API, enumerate, name designs."""

    space: Any  # the loaded space: ``name``, ``path``, ``family``, ``designs``
    topology: Any

    @property
    def teacher_genome(self) -> Any:
        """The teacher itself, as an arch of this space."""

    def suggest(self, trial) -> Any:
        """Sample an arch by ``trial.suggest_*`` calls only (no work)."""

    def to_params(self, arch) -> dict[str, Any]:
        """The params ``suggest`` returns for ``arch`` (``enqueue_trial``)."""

    def from_params(self, params: dict[str, Any]) -> Any:
        """The arch of a finished trial's params."""

    def from_id(self, text: str) -> Any:
        """The arch of an id."""

    def check(self, arch) -> None:
        """Raise ``BlocksearchError`` naming the file where ``arch`` is outside the space."""

    def design(self, name: str) -> Any:
        """The arch of a named design (``bk_small``, ``tinyfusion_14``)."""

    def named_designs(self) -> dict[str, Any]:
        """Every named design's arch."""

    def __iter__(self) -> Iterator[Any]: ...

    def __len__(self) -> int: ...

    def __contains__(self, arch) -> bool: ...


def no_call_kwargs(pipeline) -> dict:
    """The default ``call_kwargs``: the stock pipeline's own defaults."""
    return {}


def text_cond(inputs: dict) -> dict:
    """The default ``cond_of_inputs``: the text embeddings only (SD's U-Net)."""
    return {"encoder_hidden_states": inputs["encoder_hidden_states"]}


def stage_output(output) -> torch.Tensor:
    """The default ``kd_feature``: a module's tensor output, the first of a tuple, or a diffusers output's sample."""
    if isinstance(output, tuple):
        return output[0]
    return output.sample if hasattr(output, "sample") else output


@dataclass(frozen=True)
class DenoiserFamily:
    """A family as data: its members are its modules' functions (no forwarding methods), hooks defaulted."""

    name: str
    subfolder: str
    denoiser_name: str
    load_space: Callable
    topology: Callable
    arch_from_id: Callable
    student_config: Callable
    build_student: Callable
    kd_pairs: Callable
    kd_teacher_modules: Callable
    encode_text: Callable
    forward: Callable
    forward_inputs: Callable
    describe: Callable
    architecture_diff: Callable
    architecture_table: Callable
    removed: Callable
    load_pipeline: Callable
    weight_map: Callable
    # -- hooks
    stock_pipeline: str | None = None  # ``pipeline_class``; None where it follows the teacher's class (``specialise``)
    model_class: str | None = None
    id_example: str = ""
    id_prefix: str = ""  # every id of the family starts with it ("": no fixed prefix): a bad id of that form says why
    trains: bool = False
    text_len: int | None = None
    card_tags: tuple[str, ...] = ()
    card_summary: str = ""
    training_target: Callable = None  # type: ignore[assignment]  (set in __post_init__: scheduler_target)
    kd_feature: Callable = stage_output
    text_tokens: Callable = None  # type: ignore[assignment]  (default: ``text_len``)
    call_kwargs: Callable = no_call_kwargs
    cond_of_inputs: Callable = text_cond
    specialise: Callable | None = None  # (family, denoiser config) -> the family of one teacher
    load_student: Callable | None = None  # (folder, teacher denoiser) -> Student: a saved student to go on from
    load_student_denoiser: Callable = None  # type: ignore[assignment]  (folder, teacher denoiser) -> its denoiser
    show_space: Callable = None  # type: ignore[assignment]  ``space show``'s table of a space of this family
    toy_teacher: str = ""  # the bundled toy teacher of this family (``--teacher toy`` for its spaces)
    layout: Callable | None = None  # (arch, topology) -> tuple of ``families.layout.Stage``: the block diagram
    one_shot: Any = None  # a module with ``MEASURES``, ``block_importance``, ``picks``, ``scores``, ``standin``
    mix_cells: tuple = ()  # bench fidelity's balanced-mix cells past its spread, in order (``mix_cell``'s values)
    mix_cell: Callable | None = None  # (arch, bound) -> its cell; None: random archs spread over size fill the study
    selection_file: str = "selection-score.json"  # bench fidelity's choice of first-stage score for this family

    def __post_init__(self):
        if self.training_target is None:
            object.__setattr__(self, "training_target", scheduler_target)
        if self.text_tokens is None:
            object.__setattr__(self, "text_tokens", lambda pipeline: self.text_len)

    @property
    def pipeline_class(self) -> str:
        """The stock diffusers pipeline a student drops into."""
        if self.stock_pipeline is None:
            raise BlocksearchError(f"the {self.name} family's pipeline follows the teacher's class; use "
                                   f"FAMILY.for_teacher(config).pipeline_class")
        return self.stock_pipeline

    def for_teacher(self, denoiser_config) -> "DenoiserFamily":
        """This family for one teacher's denoiser config (``specialise``'s; itself where the family has one class)."""
        return self if self.specialise is None else self.specialise(self, denoiser_config)

    def __reduce__(self):
        """Pickled by name (its members are its modules' functions) and the data ``specialise`` changed: a
        ``TeacherRef`` travels in a Ray trial job."""
        base = get_family(self.name)
        changed = {f.name: getattr(self, f.name) for f in fields(self) if not callable(getattr(self, f.name))
                   and getattr(self, f.name) != getattr(base, f.name)}
        return _restore_family, (self.name, changed)


def _restore_family(name: str, changed: dict) -> "DenoiserFamily":
    """The registry's family ``name`` with ``changed`` data fields (``DenoiserFamily.__reduce__``)."""
    family = get_family(name)
    return dataclasses.replace(family, **changed) if changed else family


@dataclass(frozen=True)
class FamilyRef:
    """A family by name, resolved lazily so that parsers and the search side stay free of torch models: ``module``
    holds its ``FAMILY``, ``space_module`` (torch-free) its space file loader ``load(path, raw)``."""

    name: str
    module: str
    space_module: str
    subfolder: str  # the denoiser's folder in a pipeline: what tells the families apart (``family_name_of``)
    also: tuple[str, ...] = ()  # other parts a pipeline of this family has, where the subfolder alone is shared


# In the order ``family_name_of`` tries them: a U-Net pipeline with a second text encoder is SDXL's; any other
# pipeline with a U-Net is a U-Net teacher (SD's layout).
FAMILIES = {"sdxl": FamilyRef("sdxl", "blocksearch.families.sdxl.family", "blocksearch.families.sdxl.space", "unet",
                              also=("text_encoder_2",)),
            "unet": FamilyRef("unet", "blocksearch.families.unet.family", "blocksearch.families.unet.space", "unet"),
            "dit": FamilyRef("dit", "blocksearch.families.dit.family", "blocksearch.families.dit.space", "transformer")}
DEFAULT_FAMILY = "unet"  # a space file without ``family:`` (written before there were families)


def space_loader(name: str):
    """The space-file loader of family ``name`` (torch-free: ``space list`` and the parsers use it)."""
    if name not in FAMILIES:
        raise BlocksearchError(f"unknown denoiser family {name!r}; allowed: {', '.join(FAMILIES)}")
    return import_module(FAMILIES[name].space_module).load


def get_family(name: str) -> Family:
    """The family object of ``name`` (the module's ``FAMILY``); unknown names are one-line errors."""
    if name not in FAMILIES:
        raise BlocksearchError(f"unknown denoiser family {name!r}; allowed: {', '.join(FAMILIES)}")
    return import_module(FAMILIES[name].module).FAMILY


def family_name_of(parts) -> str:
    """THE rule that tells families apart from a teacher's files or loaded pipeline: the first family (``FAMILIES``
    order) whose denoiser subfolder and ``also`` parts are among ``parts`` (a folder's subfolders,
    ``model_index.json``'s keys, a pipeline's components); none of them: ``DEFAULT_FAMILY``. A teacher with no parts
    (an architecture, a bare denoiser folder) is told by its config: ``DEFAULT_FAMILY``'s ``specialise``."""
    parts = set(parts)
    return next((ref.name for ref in FAMILIES.values() if {ref.subfolder, *ref.also} <= parts), DEFAULT_FAMILY)


def family_of_config(denoiser_config) -> Family:
    """The family of a bare denoiser config (no pipeline around it): the first whose ``topology`` reads it, for that
    teacher. Callers that hold a ``TeacherRef`` or a ``Teacher`` pass its ``family`` instead."""
    for name in FAMILIES:
        family = get_family(name)
        try:
            family.topology(denoiser_config)
        except (BlocksearchError, KeyError):
            continue
        return family.for_teacher(denoiser_config)
    raise BlocksearchError(f"no denoiser family reads this config (class {dict(denoiser_config).get('_class_name')!r}); "
                           f"allowed: a denoiser of {', '.join(FAMILIES)}")


def family_of_arch(arch) -> Family:
    """The family of an architecture, which its genome class names (``Genome.family``, ``DitGenome.family``)."""
    return get_family(arch.family)


def family_of(pipeline) -> Family:
    """The family of a loaded diffusers pipeline (``family_name_of`` its non-empty components), for its denoiser."""
    family = get_family(family_name_of(k for k, v in pipeline.components.items() if v is not None))
    return family.for_teacher(getattr(pipeline, family.subfolder).config)


BLOCK_MAP_FILE = "block_map.json"  # a student folder's cut: its arch and weight map (adapt/blockmap.py writes it)


def student_from_block_map(family: Family, folder, teacher_denoiser: torch.nn.Module) -> Any:
    """A saved student (``distill --init``, ``train --init``) whose config does not say which teacher blocks it kept
    (a transformer keeps any k of n): its arch is the ``arch`` of the ``block_map.json`` that distill, train and
    export write beside the denoiser folder; surgery on ``teacher_denoiser`` gives the weight map and KD pairs, and
    the saved weights replace the cut's (every tensor, shapes checked)."""
    folder = Path(folder)
    found = next((f / BLOCK_MAP_FILE for f in (folder, folder.parent) if (f / BLOCK_MAP_FILE).is_file()), None)
    if found is None:
        raise BlocksearchError(f"--init {folder}: no {BLOCK_MAP_FILE} beside it, so which teacher blocks it kept is "
                               f"unknown; allowed: a folder written by blocksearch distill, train or export")
    doc = json.loads(found.read_text())
    if doc.get("family") != family.name:
        raise BlocksearchError(f"--init {folder}: a {doc.get('family')} student ({found}); allowed: a student of "
                               f"the teacher's family, {family.name}")
    student = family.build_student(teacher_denoiser, family.arch_from_id(doc["arch"]))
    saved = family.load_student_denoiser(found.parent, teacher_denoiser).state_dict()
    mine = student.denoiser.state_dict()
    wrong = sorted(set(mine) ^ set(saved)) or [k for k in mine if mine[k].shape != saved[k].shape]
    if wrong:
        raise BlocksearchError(f"--init {folder}: tensor {wrong[0]} does not match a cut of arch {doc['arch']} from "
                               f"this teacher; distil it from the teacher it came from")
    student.denoiser.load_state_dict(saved)
    return student


def is_flow(scheduler) -> bool:
    """A flow-matching scheduler (SD3, Flux): x_t = (1 - sigma) x_0 + sigma noise, sigma = t / T."""
    return getattr(scheduler.config, "prediction_type", None) is None and type(scheduler).__name__.startswith(
        "FlowMatch")


def add_noise(scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """The forward process of the teacher's training: DDPM's (Ho et al., 2020) or rectified flow's straight line
    (Liu et al., 2022; SD3, Esser et al., arXiv 2403.03206) at sigma = t / num_train_timesteps."""
    if not is_flow(scheduler):
        return scheduler.add_noise(latents, noise, timesteps)
    sigma = (timesteps.float() / scheduler.config.num_train_timesteps).view(-1, *[1] * (latents.dim() - 1))
    return (1 - sigma) * latents + sigma * noise


def scheduler_target(scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """The DDPM-family target the scheduler's ``prediction_type`` asks for: noise or velocity (Salimans & Ho,
    2022); flow-matching schedulers (SD3, Flux) train on ``noise - latents`` (Lipman et al., 2023)."""
    kind = getattr(scheduler.config, "prediction_type", None)
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    if is_flow(scheduler):
        return noise - latents
    raise BlocksearchError(f"scheduler {type(scheduler).__name__} prediction_type {kind!r}; allowed: epsilon, "
                           "v_prediction, or a flow-matching scheduler")
