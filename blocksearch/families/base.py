"""The denoiser-family interface: everything that knows what a denoiser looks like, behind one object.

The search side (searcher, study, samplers, rungs, pareto, report) knows an architecture only by its id
(``Genome.id``); a family turns ids into models. ``unet`` is SD's U-Net (BK-SDM, arXiv 2305.15798);
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


@dataclass(frozen=True)
class FamilyRef:
    """A family by name, resolved lazily so that parsers and the search side stay free of torch models."""

    name: str
    module: str


FAMILIES = {"unet": FamilyRef("unet", "blocksearch.families.unet"),
            "dit": FamilyRef("dit", "blocksearch.families.dit")}


def get_family(name: str) -> Family:
    """The family object of ``name`` (the module's ``FAMILY``); unknown names are one-line errors."""
    if name not in FAMILIES:
        raise BlocksearchError(f"unknown denoiser family {name!r}; allowed: {', '.join(FAMILIES)}")
    return import_module(FAMILIES[name].module).FAMILY


def scheduler_target(scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """The DDPM-family target the scheduler's ``prediction_type`` asks for: noise or velocity (Salimans & Ho,
    2022); flow-matching schedulers (SD3, Flux) train on ``noise - latents`` (Lipman et al., 2023)."""
    kind = getattr(scheduler.config, "prediction_type", None)
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    if kind is None and type(scheduler).__name__.startswith("FlowMatch"):
        return noise - latents
    raise BlocksearchError(f"scheduler {type(scheduler).__name__} prediction_type {kind!r}; allowed: epsilon, "
                           "v_prediction, or a flow-matching scheduler")
