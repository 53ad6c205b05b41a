"""The denoiser-family interface: everything that knows what a denoiser looks like, behind one object.

The search side (searcher, study, samplers, rungs, pareto, report) knows an architecture only by its id
(``Genome.id``); a family turns ids into models, and the trial path (distill, probe, teacher cache, evaluate,
latency, export, model card) calls, reads and describes a denoiser only through its family. ``unet`` is SD's U-Net (BK-SDM, arXiv 2305.15798);
``dit`` keeps a subset of a transformer denoiser's blocks (TinyFusion, arXiv 2412.01199; Flux.1-Lite).
A new family is one module that provides a ``Family``, one space YAML that names it, and its tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module
from typing import Any, Protocol

import torch

from blocksearch.errors import BlocksearchError


class Family(Protocol):
    """One denoiser family. ``arch`` is the family's genome (hashable, with a string ``id``)."""

    name: str  # the space YAML's ``family:``
    subfolder: str  # the denoiser's folder in a diffusers pipeline ("unet", "transformer")
    pipeline_class: str  # the stock diffusers pipeline a student drops into

    def topology(self, denoiser_config) -> Any:
        """What surgery needs to know of the teacher, read from its diffusers config."""

    def student_config(self, teacher_config, arch) -> dict:
        """The student's diffusers config: the teacher's with plain changes."""

    def build_student(self, teacher_denoiser: torch.nn.Module, arch) -> Any:
        """Surgery: the student initialised by the weight map derived from ``arch`` (a ``Student``)."""

    def kd_pairs(self, arch, topology) -> tuple[tuple[str, str], ...]:
        """(teacher module, student module) pairs whose outputs feature KD matches."""

    def forward_inputs(self, config, batch: int = 1, latent_size: int | None = None, device="meta",
                       dtype=torch.float32, text_len: int = 77) -> dict:
        """Keyword inputs of one denoiser call (for MACs, latency and shape checks)."""

    def describe(self, arch, teacher_config) -> list[tuple[str, str]]:
        """The report's and model card's words: (student block, the teacher block it came from)."""

    def training_target(self, scheduler, latents: torch.Tensor, noise: torch.Tensor,
                        timesteps: torch.Tensor) -> torch.Tensor:
        """What the denoiser is trained to predict (noise, velocity or flow)."""

    # -- the trial path: distillation, probe, teacher cache, evaluation, export --------------------
    denoiser_name: str  # the report's and model card's word for the denoiser ("U-Net", "transformer")

    def arch_from_id(self, text: str) -> Any:
        """The arch of an id (``arch.id``): the search side stores ids only."""

    def forward(self, denoiser: torch.nn.Module, noisy: torch.Tensor, timesteps: torch.Tensor, batch) -> torch.Tensor:
        """One denoiser call on ``noisy`` with a KD batch's text conditioning (``batch.text``, ``batch.mask``,
        ``batch.pooled``): the prediction that ``training_target`` matches, in the latents' layout."""

    def kd_feature(self, output) -> torch.Tensor:
        """The feature that feature KD matches, from the output of one of ``kd_pairs``' modules."""

    def kd_teacher_modules(self, topology) -> tuple[str, ...]:
        """Every teacher module ``kd_pairs`` names for some arch that fits ``topology`` (the teacher cache's)."""

    def encode_text(self, pipeline, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Text embeddings of ``captions`` as the family's pipeline makes them, and their attention mask (None:
        every token is attended)."""

    def text_tokens(self, pipeline) -> int:
        """Text tokens of one denoiser call, as MACs and latency count them."""

    def call_kwargs(self, pipeline) -> dict:
        """Keyword arguments a generation call of the stock pipeline needs beyond prompt, steps and guidance."""

    def architecture_diff(self, arch, topology) -> str:
        """What ``arch`` removes from the teacher, in one line of diffusers module names (the report)."""

    def architecture_table(self, arch, topology) -> list[tuple[str, str, str]]:
        """(teacher module, the teacher's, the student's) rows: the model card's table."""

    def removed(self, arch, topology) -> dict[str, str]:
        """What the student removed, per teacher module; modules kept whole are absent."""


@dataclass(frozen=True)
class FamilyRef:
    """A family by name, resolved lazily so that parsers and the search side stay free of torch models: ``module``
    holds its ``FAMILY``, ``space_module`` (torch-free) its space file loader ``load(path, raw)``."""

    name: str
    module: str
    space_module: str


FAMILIES = {"unet": FamilyRef("unet", "blocksearch.families.unet.family", "blocksearch.families.unet.space"),
            "dit": FamilyRef("dit", "blocksearch.families.dit.family", "blocksearch.families.dit.space")}
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


def family_of_arch(arch) -> Family:
    """The family of an architecture, which its genome class names (``Genome.family``, ``DitGenome.family``)."""
    return get_family(getattr(arch, "family", "unet"))


def family_of(pipeline) -> Family:
    """The family of a loaded diffusers pipeline: ``unet`` where it has a U-Net, else ``dit`` for its transformer."""
    if getattr(pipeline, "unet", None) is not None:
        return get_family("unet")
    return get_family("dit").for_teacher(pipeline.transformer.config)


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
