"""SDXL's ``UNet2DConditionModel`` as a denoiser family (families/base.py): the U-Net family's space, surgery, KD
pairs and words (families/unet/), with SDXL's conditioning (Podell et al., arXiv 2307.01952): two CLIP text
encoders, the pooled embedding of the second and six size-and-crop ``time_ids``, in ``Batch.cond``, and the stock
``StableDiffusionXLPipeline``. The published students (SSD-1B, Segmind-Vega, KOALA) are designs of its space."""

from __future__ import annotations

import dataclasses

import torch
from diffusers import StableDiffusionXLPipeline

from blocksearch.errors import BlocksearchError
from blocksearch.families.sdxl.space import SdxlGenome, load
from blocksearch.families.unet.family import FAMILY as UNET
from blocksearch.families.unet.surgery import build_student as unet_build_student, load_student as unet_load_student
from blocksearch.families.unet.topology import topology_of

TEXT_LEN = 77  # both CLIP tokenizers' context


def is_sdxl(config) -> bool:
    """A U-Net conditioned as SDXL's: added text-and-time embeddings (``addition_embed_type: text_time``)."""
    return dict(config).get("addition_embed_type") == "text_time"


def topology(config):
    """The U-Net family's topology of an SDXL U-Net; any other U-Net is not of this family."""
    if not is_sdxl(config):
        raise BlocksearchError("not an SDXL U-Net: its config has no addition_embed_type 'text_time'; allowed: an "
                               "SDXL-conditioned UNet2DConditionModel")
    return topology_of(config)


def time_ids(pipe, batch: int) -> torch.Tensor:
    """SDXL's six micro-conditions as the stock pipeline's default call makes them: original size, crop top-left
    (0, 0) and target size, all the default image size (``default_sample_size`` x ``vae_scale_factor``)."""
    size = pipe.default_sample_size * pipe.vae_scale_factor
    return torch.tensor([[size, size, 0, 0, size, size]], dtype=torch.float32).expand(batch, 6).contiguous()


@torch.no_grad()
def encode_text(pipe, captions: list[str]) -> dict[str, torch.Tensor]:
    """``Batch.cond`` as ``StableDiffusionXLPipeline.encode_prompt`` makes it: both encoders' penultimate hidden
    states side by side (``encoder_hidden_states``), the second encoder's projected pooled output (``text_embeds``)
    and ``time_ids``. An empty caption is zeros where the pipeline zeroes its unconditional branch
    (``force_zeros_for_empty_prompt``): caption dropout trains the branch that guidance uses."""
    states, pooled = [], None
    for tokenizer, encoder in ((pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)):
        ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids.to(encoder.device)
        out = encoder(ids, output_hidden_states=True)
        if pooled is None and out[0].ndim == 2:  # the projection model's text_embeds (diffusers' rule)
            pooled = out[0]
        states.append(out.hidden_states[-2])
    cond = {"encoder_hidden_states": torch.cat(states, dim=-1).float().cpu(), "text_embeds": pooled.float().cpu(),
            "time_ids": time_ids(pipe, len(captions))}
    if pipe.config.force_zeros_for_empty_prompt:
        empty = torch.tensor([c == "" for c in captions])
        for key in ("encoder_hidden_states", "text_embeds"):
            cond[key][empty] = 0
    return cond


def forward(denoiser, noisy: torch.Tensor, timesteps: torch.Tensor, cond: dict[str, torch.Tensor]) -> torch.Tensor:
    """One SDXL U-Net call: ``unet(sample, t, encoder_hidden_states, added_cond_kwargs={text_embeds, time_ids})``."""
    added = {"text_embeds": cond["text_embeds"], "time_ids": cond["time_ids"]}
    return denoiser(noisy, timesteps, cond["encoder_hidden_states"], added_cond_kwargs=added).sample


def forward_inputs(config, batch: int = 1, latent_size: int | None = None, device="meta", dtype=None,
                   text_len: int | None = None) -> dict:
    """The U-Net family's inputs of one call (they carry SDXL's ``added_cond_kwargs``)."""
    return UNET.forward_inputs(config, batch, latent_size, device, dtype or torch.float32, text_len or TEXT_LEN)


def cond_of_inputs(inputs: dict) -> dict:
    """``Batch.cond`` of one call's inputs: the text embeddings and the ``added_cond_kwargs``."""
    return {"encoder_hidden_states": inputs["encoder_hidden_states"], **inputs["added_cond_kwargs"]}


def load_pipeline(source: str, device: str) -> StableDiffusionXLPipeline:
    """The teacher's StableDiffusionXLPipeline (local files, safetensors)."""
    pipe = StableDiffusionXLPipeline.from_pretrained(source, local_files_only=True, use_safetensors=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def _as_sdxl(student):
    """A U-Net ``Student`` whose genome is this family's (``SdxlGenome``: its ``family`` names this family)."""
    genome = SdxlGenome(*(getattr(student.genome, f.name) for f in dataclasses.fields(student.genome)))
    return dataclasses.replace(student, genome=genome)


def build_student(teacher, genome):
    """The U-Net family's surgery (families/unet/surgery.py), the student's genome this family's."""
    return _as_sdxl(unet_build_student(teacher, genome))


def load_student(folder, teacher):
    """A saved SDXL student to continue distilling (the U-Net family's ``load_student``)."""
    return _as_sdxl(unet_load_student(folder, teacher))


FAMILY = dataclasses.replace(
    UNET, name="sdxl", load_space=load, topology=topology, arch_from_id=SdxlGenome.from_id, build_student=build_student,
    encode_text=encode_text, forward=forward, forward_inputs=forward_inputs, load_pipeline=load_pipeline,
    stock_pipeline="StableDiffusionXLPipeline", id_example="'L1-1-1_T0-2-6_Mattn'", text_len=TEXT_LEN,
    text_tokens=None, card_tags=("bk-sdm", "stable-diffusion-xl"),
    card_summary="A block-removed SDXL U-Net found by blocksearch (BK-SDM, arXiv 2305.15798, and KOALA, arXiv "
                 "2312.04005, as a multi-objective search)",
    load_student=load_student, specialise=None, toy_teacher="", cond_of_inputs=cond_of_inputs)
