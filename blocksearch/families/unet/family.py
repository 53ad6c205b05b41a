"""SD's ``UNet2DConditionModel`` as a denoiser family (families/base.py): BK-SDM's block removal (arXiv 2305.15798).
``FAMILY``'s members are this folder's functions; the two below are the U-Net's conditioning and call."""

from __future__ import annotations

import torch
from diffusers import StableDiffusionPipeline

from blocksearch.families.base import DenoiserFamily, get_family
from blocksearch.families.unet.mixes import MIX_CELLS, mix_cell
from blocksearch.families.unet.blockmap import weight_map
from blocksearch.families.unet.describe import layout
from blocksearch.families.unet.genome import Genome
from blocksearch.families.unet.show import show_space
from blocksearch.families.unet.space import load
from blocksearch.families.unet.surgery import (build_student, describe, kd_pairs, kd_teacher_modules, load_student,
                                               student_config)
from blocksearch.families.unet.topology import load_unet, topology_of, unet_inputs
from blocksearch.families.unet.words import architecture_diff, architecture_table, removed

SDXL = "sdxl"  # the family of U-Nets with SDXL's conditioning (families/sdxl/)
TEXT_LEN = 77  # SD's CLIP context, as cost.py and latency.py count every U-Net (the toy's 16 included)


@torch.no_grad()
def encode_text(pipe, captions: list[str]) -> dict[str, torch.Tensor]:
    """``Batch.cond`` as StableDiffusionPipeline.encode_prompt makes it: CLIP's last hidden states, padded to the
    tokenizer's context (room for SDXL's pooled ``text_embeds`` and ``time_ids``, as ``added_cond_kwargs``)."""
    tok = pipe.tokenizer(captions, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         truncation=True, return_tensors="pt")
    return {"encoder_hidden_states": pipe.text_encoder(tok.input_ids.to(pipe.text_encoder.device))[0].float().cpu()}


def forward(denoiser, noisy: torch.Tensor, timesteps: torch.Tensor, cond: dict[str, torch.Tensor]) -> torch.Tensor:
    """One U-Net call: ``unet(sample, timestep, encoder_hidden_states, **rest of cond).sample`` (the prediction)."""
    extra = {k: v for k, v in cond.items() if k != "encoder_hidden_states"}
    return denoiser(noisy, timesteps, cond["encoder_hidden_states"], **extra).sample


def load_pipeline(source: str, device: str) -> StableDiffusionPipeline:
    """The teacher's StableDiffusionPipeline (local files, safetensors; no safety checker: students are scored)."""
    pipe = StableDiffusionPipeline.from_pretrained(source, local_files_only=True, use_safetensors=True,
                                                   safety_checker=None, feature_extractor=None,
                                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def specialise(family, config):
    """The family of one U-Net teacher told by its config alone (an architecture, a bare U-Net folder): SDXL's
    conditioning (``addition_embed_type: text_time``) makes it an SDXL teacher (families/sdxl/), else this family."""
    return get_family(SDXL) if dict(config).get("addition_embed_type") == "text_time" else family


def load_student_denoiser(folder, teacher_denoiser) -> torch.nn.Module:
    """A student folder's U-Net: ``DIR/unet`` (distill's, export's) or a diffusers U-Net folder."""
    return load_unet(folder, what="student folder",
                     expected="a folder written by `blocksearch distill` or a diffusers U-Net folder")


FAMILY = DenoiserFamily(
    name="unet", subfolder="unet", denoiser_name="U-Net", load_space=load, topology=topology_of,
    arch_from_id=Genome.from_id, student_config=student_config, build_student=build_student, kd_pairs=kd_pairs,
    kd_teacher_modules=kd_teacher_modules, encode_text=encode_text, forward=forward, forward_inputs=unet_inputs,
    describe=describe, architecture_diff=architecture_diff, architecture_table=architecture_table, removed=removed,
    load_pipeline=load_pipeline, weight_map=weight_map, stock_pipeline="StableDiffusionPipeline",
    id_example="'L1-1-1-1_T1-1-1-0_Mnone'", id_prefix="L",
    trains=True, text_len=TEXT_LEN, card_tags=("bk-sdm", "stable-diffusion"),
    card_summary="A block-removed Stable Diffusion U-Net found by blocksearch (BK-SDM, arXiv 2305.15798, as a "
                 "multi-objective search)",
    load_student=load_student, load_student_denoiser=load_student_denoiser, show_space=show_space, toy_teacher="toy",
    layout=layout, specialise=specialise, mix_cells=MIX_CELLS, mix_cell=mix_cell)
