"""A tiny random-weight SD3 pipeline (``StableDiffusion3Pipeline``, Esser et al., arXiv 2403.03206), the width of
diffusers' own SD3 pipeline tests, on the toy vocabulary: two CLIP text encoders with projections (CLIP-L and
CLIP-G's places), a T5 encoder, an MMDiT of SD3-medium's 24 joint blocks (so that every design of dit_blocks fits;
the last ``context_pre_only``, as SD3's), a flow-matching scheduler and a small VAE with SD3's shift and scale.
``dual_attention_layers`` makes it SD3.5-shaped (MMDiT-X). Nothing touches the network: the tokenizers are built
from the toy vocabulary (toy/tiny_text.py)."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

from blocksearch.toy import models as M
from blocksearch.toy.tiny_text import clip_encoder, make_t5_tokenizer, t5_encoder

CLIP, T5 = 16, 32  # each CLIP encoder's width (and projection); T5's d_model: SD3 pads CLIP's 2 x 16 to T5's 32
TRANSFORMER = dict(sample_size=16, patch_size=2, in_channels=4, out_channels=4, num_layers=24,
                   attention_head_dim=8, num_attention_heads=4, caption_projection_dim=32, joint_attention_dim=T5,
                   pooled_projection_dim=2 * CLIP, pos_embed_max_size=16)
VAE = dict(block_out_channels=(8, 8, 8), down_block_types=("DownEncoderBlock2D",) * 3,
           up_block_types=("UpDecoderBlock2D",) * 3, latent_channels=4, norm_num_groups=4, layers_per_block=1,
           sample_size=64, use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609,
           scaling_factor=1.5035)  # SD3's VAE shift and scale, as diffusers' tests set them


def tiny_sd3_pipeline(seed: int = 0, dual_attention_layers: tuple[int, ...] = ()) -> StableDiffusion3Pipeline:
    """The pipeline with seeded random weights (every transformer tensor non-trivial: diffusers zero-initialises
    some); ``dual_attention_layers``: SD3.5's MMDiT-X blocks, by absolute index."""
    torch.manual_seed(seed)
    tok, tok_3 = M.make_tokenizer(), make_t5_tokenizer()
    transformer = SD3Transformer2DModel(**TRANSFORMER, dual_attention_layers=dual_attention_layers).eval()
    with torch.no_grad():
        for p in transformer.parameters():
            p.add_(0.02 * torch.randn_like(p))
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=AutoencoderKL(**VAE),
        text_encoder=clip_encoder(tok, CLIP, CLIP), tokenizer=tok, text_encoder_2=clip_encoder(tok, CLIP, CLIP),
        tokenizer_2=tok, text_encoder_3=t5_encoder(tok_3, T5), tokenizer_3=tok_3)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_tiny_sd3(folder, seed: int = 0, dual_attention_layers: tuple[int, ...] = ()) -> Path:
    """``tiny_sd3_pipeline`` saved as a diffusers folder (safetensors)."""
    folder = Path(folder)
    tiny_sd3_pipeline(seed, dual_attention_layers).save_pretrained(folder, safe_serialization=True)
    return folder
