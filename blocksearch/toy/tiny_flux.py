"""A tiny random-weight Flux pipeline (``FluxPipeline``, FLUX.1-dev's layout), the width of diffusers' own Flux
pipeline tests, on the toy vocabulary: a CLIP text encoder (its pooled output), a T5 encoder, a Flux transformer of
FLUX.1-dev's 19 double-stream and 38 single-stream blocks (so that every design of dit_blocks fits) with the
guidance embedding (FLUX.1-dev's distilled guidance), a flow-matching scheduler with Flux's resolution-dependent
shift, and a small VAE with Flux's shift and scale whose ``sample_size`` (64 px, the toy world's images) is the
teacher's native resolution. Nothing touches the network: the tokenizers are built from the toy vocabulary
(toy/tiny_text.py)."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

from blocksearch.toy import models as M
from blocksearch.toy.tiny_text import clip_encoder, make_t5_tokenizer, t5_encoder

CLIP, T5 = 16, 32  # the CLIP encoder's width (Flux's pooled projection); T5's d_model (Flux's joint attention)
TRANSFORMER = dict(patch_size=1, in_channels=16, num_layers=19, num_single_layers=38,
                   attention_head_dim=16, num_attention_heads=2, joint_attention_dim=T5, pooled_projection_dim=CLIP,
                   guidance_embeds=True, axes_dims_rope=(4, 4, 8))  # in_channels: 4 latent channels x 2x2 packing
VAE = dict(block_out_channels=(8, 8, 8), down_block_types=("DownEncoderBlock2D",) * 3,
           up_block_types=("UpDecoderBlock2D",) * 3, latent_channels=4, norm_num_groups=4, layers_per_block=1,
           sample_size=64, use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.1159,
           scaling_factor=0.3611)  # FLUX.1's VAE shift and scale
SCHEDULER = dict(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
                 max_image_seq_len=4096)  # FLUX.1-dev's scheduler_config.json


def tiny_flux_pipeline(seed: int = 0) -> FluxPipeline:
    """The pipeline with seeded random weights (every transformer tensor non-trivial: diffusers zero-initialises
    some)."""
    torch.manual_seed(seed)
    tok, tok_2 = M.make_tokenizer(), make_t5_tokenizer()
    transformer = FluxTransformer2DModel(**TRANSFORMER).eval()
    with torch.no_grad():
        for p in transformer.parameters():
            p.add_(0.02 * torch.randn_like(p))
    pipe = FluxPipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER),
                        vae=AutoencoderKL(**VAE), text_encoder=clip_encoder(tok, CLIP), tokenizer=tok,
                        text_encoder_2=t5_encoder(tok_2, T5), tokenizer_2=tok_2)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_tiny_flux(folder, seed: int = 0) -> Path:
    """``tiny_flux_pipeline`` saved as a diffusers folder (safetensors)."""
    folder = Path(folder)
    tiny_flux_pipeline(seed).save_pretrained(folder, safe_serialization=True)
    return folder
