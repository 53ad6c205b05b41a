"""Configs of the toy teachers' parts: VAE, tokenizer + text encoder, U-Net (SD-v1 topology), the toy
transformer (PixArt's block topology), scheduler.

The U-Net keeps SD-v1's exact block layout (diffusers `UNet2DConditionModel` defaults) with channels
scaled 320 -> 32 (ratio 1:2:4:4) and sample_size 64 -> 16, so every SD / BK-SDM block move applies.
The transformer is PixArt-Sigma's `PixArtTransformer2DModel` (28 blocks of width 1152) scaled to 16 blocks of
width 128 on the same 16x16 latents (patch 2: 64 tokens): about the U-Net's MACs per call, and enough blocks
for every pattern of search_spaces/dit_blocks.yaml (first:16 and last:16 keep all of them).
"""

from __future__ import annotations

from diffusers import (AutoencoderKL, DDPMScheduler, DPMSolverMultistepScheduler, PixArtTransformer2DModel,
                       UNet2DConditionModel)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from blocksearch.toy.world import VOCABULARY

TEXT_DIM = 64
MAX_TOKENS = 16  # the longest caption is 10 tokens with BOS/EOS; SD pads to 77, which here only dilutes attention
PREDICTION_TYPE = "v_prediction"  # as SD-v2 (Salimans & Ho, arXiv 2202.00512); zero terminal SNR needs it
BOS, EOS = "<|startoftext|>", "<|endoftext|>"

# SD-v1 noise schedule (CompVis v1-inference.yaml): scaled_linear betas 0.00085 -> 0.012 over 1000 steps,
# rescaled to zero terminal SNR (Lin et al., arXiv 2305.08891). Without it the last training step still
# shows the model ~7% of the image, from which it learns to read the layout; sampling starts from pure
# noise, so the layout then came from the noise, not the caption. Pays off together with the high-noise
# emphasis of build.train_timesteps (see there for the measurements).
SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                rescale_betas_zero_snr=True)

UNET = dict(
    sample_size=16,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    mid_block_type="UNetMidBlock2DCrossAttn",
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(32, 64, 128, 128),
    layers_per_block=2,
    norm_num_groups=8,
    cross_attention_dim=TEXT_DIM,
    attention_head_dim=4,  # diffusers' legacy name: the number of heads (SD-v1 uses 8)
)

TRANSFORMER = dict(  # PixArt-Sigma's config fields (families/configs/pixart-sigma.json), scaled down
    sample_size=16,
    patch_size=2,
    in_channels=4,
    out_channels=4,  # no learned variance: the toy is trained on v with a fixed schedule
    num_layers=16,
    num_attention_heads=4,
    attention_head_dim=32,
    cross_attention_dim=128,
    caption_channels=TEXT_DIM,  # the toy CLIP encoder's width where PixArt reads T5's 4096
    norm_type="ada_norm_single",
    norm_elementwise_affine=False,
    norm_eps=1e-6,
    use_additional_conditions=False,
    interpolation_scale=1,
)

VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 3,  # 3 stages -> 2 downsamples: 64x64 -> 16x16
    up_block_types=("UpDecoderBlock2D",) * 3,
    block_out_channels=(32, 64, 64),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=8,
    sample_size=64,
)

TEXT = dict(
    hidden_size=TEXT_DIM,
    intermediate_size=4 * TEXT_DIM,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=MAX_TOKENS,
)


def make_tokenizer() -> CLIPTokenizer:
    """A CLIP BPE tokenizer whose merges spell each grammar word as one token (vocab: chars, prefixes, words)."""
    words = sorted(set(VOCABULARY))
    vocab: dict[str, int] = {BOS: 0, EOS: 1}
    merges: list[tuple[str, str]] = []

    def add(tok: str) -> None:
        vocab.setdefault(tok, len(vocab))

    for w in words:  # every single character, both mid-word and word-final, so nothing maps to unk
        for ch in w:
            add(ch)
            add(ch + "</w>")
    for w in words:  # left-to-right merge chain: ((w0 w1) w2) ... w_n</w>
        pieces = list(w[:-1]) + [w[-1] + "</w>"]
        left = pieces[0]
        for p in pieces[1:]:
            if (left, p) not in merges:
                merges.append((left, p))
            left = left + p
            add(left)
    tok = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=MAX_TOKENS)
    for w in words:
        ids = tok(w, add_special_tokens=False).input_ids
        assert len(ids) == 1, f"toy tokenizer splits {w!r} into {tok.convert_ids_to_tokens(ids)}"
    return tok


def make_text_encoder(tokenizer: CLIPTokenizer) -> CLIPTextModel:
    """A 2-layer, 64-wide CLIP text transformer over the toy vocabulary."""
    cfg = CLIPTextConfig(
        vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, **TEXT,
    )
    return CLIPTextModel(cfg)


def make_unet() -> UNet2DConditionModel:
    return UNet2DConditionModel(**UNET)


def make_transformer() -> PixArtTransformer2DModel:
    return PixArtTransformer2DModel(**TRANSFORMER)


def make_vae() -> AutoencoderKL:
    return AutoencoderKL(**VAE)


def make_train_scheduler() -> DDPMScheduler:
    return DDPMScheduler(**SCHEDULE, prediction_type=PREDICTION_TYPE, clip_sample=False)


def make_sample_scheduler() -> DPMSolverMultistepScheduler:
    """DPM-Solver++ (Lu et al., arXiv 2211.01095), 2nd order, with "trailing" steps so that sampling starts
    at the last (zero-SNR) timestep (Lin et al., arXiv 2305.08891)."""
    return DPMSolverMultistepScheduler(
        **SCHEDULE, prediction_type=PREDICTION_TYPE, algorithm_type="dpmsolver++", timestep_spacing="trailing",
        steps_offset=1,  # unused by "trailing"; StableDiffusionPipeline warns without it
    )
