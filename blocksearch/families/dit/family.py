"""Transformer denoisers (PixArt, SD3, Flux, DiT) as a denoiser family (families/base.py)."""

from __future__ import annotations

import torch

from blocksearch.errors import BlocksearchError
from blocksearch.families.base import scheduler_target
from blocksearch.families.dit.genome import (DitGenome, DitTopology, architecture_diff, architecture_table,
                                             model_class_of, removed, topology_of)
from blocksearch.families.dit.pipeline import (PIPELINES, TEXT_LEN, call_kwargs, encode_text, forward, forward_inputs,
                                               max_text, prediction)
from blocksearch.families.dit.surgery import (DitStudent, block_feature, build_student, describe, kd_pairs,
                                              kd_teacher_modules, student_config)


class DitFamily:
    """Transformer denoisers as a family (families/base.py). The pipeline class follows the teacher's class:
    ``FAMILY.for_teacher(config)`` gives the family object of one class."""

    name = "dit"
    subfolder = "transformer"
    denoiser_name = "transformer"

    def __init__(self, model_class: str | None = None):
        self.model_class = model_class

    def for_teacher(self, config) -> "DitFamily":
        return DitFamily(model_class_of(config))

    @property
    def pipeline_class(self) -> str:
        if self.model_class is None:
            raise BlocksearchError("the dit family's pipeline follows the teacher's class; use FAMILY.for_teacher("
                                   f"config).pipeline_class (one of {', '.join(PIPELINES.values())})")
        return PIPELINES[self.model_class]

    def topology(self, denoiser_config) -> DitTopology:
        return topology_of(denoiser_config)

    def student_config(self, teacher_config, arch: DitGenome) -> dict:
        return student_config(teacher_config, arch)

    def build_student(self, teacher_denoiser: torch.nn.Module, arch: DitGenome) -> DitStudent:
        return build_student(teacher_denoiser, arch)

    def kd_pairs(self, arch: DitGenome, topology: DitTopology) -> tuple[tuple[str, str], ...]:
        return kd_pairs(arch, topology)

    def forward_inputs(self, config, batch: int = 1, latent_size: int | None = None, device="meta",
                       dtype=torch.float32, text_len: int | None = None) -> dict:
        return forward_inputs(config, batch, latent_size, device, dtype, text_len)

    def describe(self, arch: DitGenome, teacher_config) -> list[tuple[str, str]]:
        return describe(arch, teacher_config)

    def training_target(self, scheduler, latents, noise, timesteps):
        return scheduler_target(scheduler, latents, noise, timesteps)

    def arch_from_id(self, text: str) -> DitGenome:
        return DitGenome.from_id(text)

    def forward(self, denoiser, noisy, timesteps, batch) -> torch.Tensor:
        return forward(denoiser, noisy, timesteps, batch)

    def kd_feature(self, output) -> torch.Tensor:
        return block_feature(output)

    def kd_teacher_modules(self, topology: DitTopology) -> tuple[str, ...]:
        return kd_teacher_modules(topology)

    def encode_text(self, pipeline, captions):
        return encode_text(pipeline, captions)

    def text_tokens(self, pipeline) -> int:
        model_class = type(pipeline.transformer).__name__
        return max_text(pipeline) if model_class == "PixArtTransformer2DModel" else TEXT_LEN[model_class]

    def call_kwargs(self, pipeline) -> dict:
        return call_kwargs(pipeline)

    def architecture_diff(self, arch: DitGenome, topology: DitTopology) -> str:
        return architecture_diff(arch, topology)

    def architecture_table(self, arch: DitGenome, topology: DitTopology) -> list[tuple[str, str, str]]:
        return architecture_table(arch, topology)

    def removed(self, arch: DitGenome, topology: DitTopology) -> dict[str, str]:
        return removed(arch, topology)

    def prediction(self, config, output: torch.Tensor) -> torch.Tensor:
        return prediction(config, output)


FAMILY = DitFamily()
