"""SD's ``UNet2DConditionModel`` as a denoiser family (families/base.py)."""

from __future__ import annotations

import torch
from diffusers import UNet2DConditionModel

from blocksearch.families.base import scheduler_target
from blocksearch.families.unet.genome import Genome, Topology
from blocksearch.families.unet.surgery import (Student, _module, build_student, kd_pairs, kd_teacher_modules,
                                               student_config, teacher_key)
from blocksearch.families.unet.topology import topology_of, unet_inputs
from blocksearch.families.unet.words import architecture_diff, architecture_table, removed


@torch.no_grad()
def encode_text(pipe, captions: list[str]) -> torch.Tensor:
    tok = pipe.tokenizer(captions, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         truncation=True, return_tensors="pt")
    return pipe.text_encoder(tok.input_ids.to(pipe.text_encoder.device))[0].float().cpu()



class UNetFamily:
    """SD's ``UNet2DConditionModel`` as a family (families/base.py): the functions above behind one object."""

    name = "unet"
    subfolder = "unet"
    pipeline_class = "StableDiffusionPipeline"
    denoiser_name = "U-Net"

    def topology(self, denoiser_config) -> Topology:
        return topology_of(denoiser_config)

    def student_config(self, teacher_config, arch: Genome) -> dict:
        return student_config(teacher_config, arch)

    def build_student(self, teacher_denoiser: UNet2DConditionModel, arch: Genome) -> Student:
        return build_student(teacher_denoiser, arch)

    def kd_pairs(self, arch: Genome, topology: Topology) -> tuple[tuple[str, str], ...]:
        return kd_pairs(arch, topology)

    def forward_inputs(self, config, batch: int = 1, latent_size: int | None = None, device="meta",
                       dtype=torch.float32, text_len: int = 77) -> dict:
        return unet_inputs(config, batch, latent_size, device, dtype, text_len)

    def describe(self, arch: Genome, teacher_config) -> list[tuple[str, str]]:
        topo = topology_of(teacher_config)
        with torch.device("meta"):
            keys = UNet2DConditionModel.from_config(student_config(teacher_config, arch)).state_dict()
        return list({_module(k): _module(teacher_key(k, arch, topo)) for k in keys}.items())

    def training_target(self, scheduler, latents, noise, timesteps):
        return scheduler_target(scheduler, latents, noise, timesteps)

    def arch_from_id(self, text: str) -> Genome:
        return Genome.from_id(text)

    def forward(self, denoiser, noisy, timesteps, batch) -> torch.Tensor:
        return denoiser(noisy, timesteps, batch.text).sample

    def kd_feature(self, output) -> torch.Tensor:
        """A stage's output: down blocks return (hidden states, skips), the U-Net an output object."""
        if isinstance(output, tuple):
            return output[0]
        return output.sample if hasattr(output, "sample") else output

    def kd_teacher_modules(self, topology: Topology) -> tuple[str, ...]:
        return kd_teacher_modules(topology)

    def encode_text(self, pipeline, captions):
        return encode_text(pipeline, captions), None

    def text_tokens(self, pipeline) -> int:
        return 77  # SD's CLIP context, as cost.py and latency.py count every U-Net (the toy's 16 included)

    def call_kwargs(self, pipeline) -> dict:
        return {}

    def architecture_diff(self, arch: Genome, topology: Topology) -> str:
        return architecture_diff(arch, topology)

    def architecture_table(self, arch: Genome, topology: Topology) -> list[tuple[str, str, str]]:
        return architecture_table(arch, topology)

    def removed(self, arch: Genome, topology: Topology) -> dict[str, str]:
        return removed(arch, topology)


FAMILY = UNetFamily()
