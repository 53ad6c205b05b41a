"""A tiny random-weight SDXL pipeline (``StableDiffusionXLPipeline``), the size of diffusers' own SDXL pipeline
tests, on the toy vocabulary: two CLIP text encoders (the second with a projection), SDXL's U-Net topology (3
stages, transformer depths 1 / 2 / 10, added text-and-time embeddings) and a small VAE. Nothing touches the network:
both tokenizers are the toy's (``models.make_tokenizer``). Offline tests and ``distill`` dry runs use it."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from blocksearch.toy import models as M

TIME_DIM, POOLED = 4, 12  # addition_time_embed_dim; the second encoder's projection (the pooled embedding)
HIDDEN = (16, 8)  # the two encoders' widths: the U-Net's cross-attention reads both side by side
UNET = dict(
    block_out_channels=(8, 16, 16), norm_num_groups=4, sample_size=16, cross_attention_dim=sum(HIDDEN),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10), attention_head_dim=(2, 4, 4), use_linear_projection=True,
    addition_embed_type="text_time", addition_time_embed_dim=TIME_DIM,
    projection_class_embeddings_input_dim=POOLED + 6 * TIME_DIM)


def _text_config(tokenizer, hidden: int, **extra) -> CLIPTextConfig:
    return CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                          num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=77,
                          bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                          pad_token_id=tokenizer.pad_token_id, **extra)


def tiny_sdxl_pipeline(seed: int = 0) -> StableDiffusionXLPipeline:
    """The pipeline with seeded random weights (every U-Net tensor non-trivial: diffusers zero-initialises some)."""
    torch.manual_seed(seed)
    tok = M.make_tokenizer()
    text = CLIPTextModel(_text_config(tok, HIDDEN[0])).eval()
    text_2 = CLIPTextModelWithProjection(_text_config(tok, HIDDEN[1], projection_dim=POOLED)).eval()
    unet = UNet2DConditionModel(**UNET).eval()
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.02 * torch.randn_like(p))
    vae = AutoencoderKL(block_out_channels=(8, 8, 8), down_block_types=("DownEncoderBlock2D",) * 3,
                        up_block_types=("UpDecoderBlock2D",) * 3, latent_channels=4, norm_num_groups=4,
                        layers_per_block=1, sample_size=64)
    sched = DPMSolverMultistepScheduler(**{**M.SCHEDULE, "rescale_betas_zero_snr": False}, steps_offset=1)
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=text, text_encoder_2=text_2, tokenizer=tok,
                                     tokenizer_2=tok, unet=unet, scheduler=sched)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_tiny_sdxl(folder, seed: int = 0) -> Path:
    """``tiny_sdxl_pipeline`` saved as a diffusers folder (safetensors)."""
    folder = Path(folder)
    tiny_sdxl_pipeline(seed).save_pretrained(folder, safe_serialization=True)
    return folder
