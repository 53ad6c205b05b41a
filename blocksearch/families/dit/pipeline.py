"""How the stock diffusers pipelines call a transformer denoiser (family ``dit``): one call on a KD batch, the text
encoding, and the call arguments a generation needs. The trial path (distill, probe, teacher cache, evaluation)
calls the transformer through these, so a student is trained and scored as its pipeline will run it.
"""

from __future__ import annotations

import torch

from blocksearch.errors import BlocksearchError
from blocksearch.families.dit.genome import model_class_of

PIPELINES = {"PixArtTransformer2DModel": "PixArtSigmaPipeline", "SD3Transformer2DModel": "StableDiffusion3Pipeline",
             "FluxTransformer2DModel": "FluxPipeline", "DiTTransformer2DModel": "DiTPipeline"}
# Text tokens of one call in the teacher's pipeline: T5 300 (PixArt-Sigma), CLIP 77 + T5 256 (SD3), T5 512 (Flux).
TEXT_LEN = {"PixArtTransformer2DModel": 300, "SD3Transformer2DModel": 333, "FluxTransformer2DModel": 512,
            "DiTTransformer2DModel": 0}
MAX_TEXT = 300  # PixArtSigmaPipeline's max_sequence_length (T5 tokens); a shorter tokenizer (the toy's) caps it
BINNED_SIZES = (32, 64, 128, 256)  # PixArt's resolution binning knows these sample sizes only
FLUX_GUIDANCE = 3.5  # FluxPipeline's default guidance_scale: FLUX.1-dev's distilled guidance input
T5_LEN = {"SD3Transformer2DModel": 256, "FluxTransformer2DModel": 512}  # the pipelines' max_sequence_length


def prediction(config, output: torch.Tensor) -> torch.Tensor:
    """The part of the output that the training target matches: PixArt and DiT also predict the variance
    (learned sigma, ``out_channels = 2 x in_channels``); their pipelines keep the first half."""
    c = dict(config)
    return output.chunk(2, dim=1)[0] if c.get("out_channels") == 2 * c["in_channels"] else output


def forward(denoiser: torch.nn.Module, noisy: torch.Tensor, timesteps: torch.Tensor,
            cond: dict[str, torch.Tensor]) -> torch.Tensor:
    """The prediction of one call on latents ``noisy`` (B, C, H, W) and ``Batch.cond`` (``encoder_hidden_states``,
    PixArt's ``encoder_attention_mask``, SD3's and Flux's ``pooled_projections``), as the stock pipelines call each class:
    PixArt with the text's attention mask (its learned variance dropped, as its pipeline does); SD3 at t in
    [0, 1000]; Flux on 2x2-packed latent tokens with their position ids, t / 1000 and its guidance input."""
    c, model_class = dict(denoiser.config), type(denoiser).__name__
    if model_class == "PixArtTransformer2DModel":
        extra = c.get("use_additional_conditions")
        if extra is None:
            extra = c["sample_size"] == 128
        b, px = len(noisy), noisy.shape[-1] * 8  # PixArt's VAEs downsample 8x
        added = (dict(resolution=noisy.new_full((b, 2), px), aspect_ratio=noisy.new_ones(b, 1)) if extra
                 else dict(resolution=None, aspect_ratio=None))
        out = denoiser(noisy, encoder_hidden_states=cond["encoder_hidden_states"],
                       encoder_attention_mask=cond.get("encoder_attention_mask"), timestep=timesteps,
                       added_cond_kwargs=added).sample
        return prediction(c, out)
    if model_class == "SD3Transformer2DModel":
        return denoiser(hidden_states=noisy, encoder_hidden_states=cond["encoder_hidden_states"],
                        pooled_projections=cond["pooled_projections"],
                        timestep=timesteps).sample
    if model_class == "FluxTransformer2DModel":
        b, ch, h, w = noisy.shape
        packed = noisy.view(b, ch, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, h * w // 4, ch * 4)
        txt_ids, img_ids = flux_ids(cond["encoder_hidden_states"].shape[1], h // 2, w // 2, noisy)
        guidance = None
        if c.get("guidance_embeds"):
            guidance = cond["guidance"] if "guidance" in cond else noisy.new_full((b,), FLUX_GUIDANCE)
        out = denoiser(hidden_states=packed, encoder_hidden_states=cond["encoder_hidden_states"],
                       pooled_projections=cond["pooled_projections"],
                       timestep=timesteps.to(noisy.dtype) / 1000, img_ids=img_ids, txt_ids=txt_ids,
                       guidance=guidance).sample
        return out.view(b, h // 2, w // 2, ch, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, ch, h, w)
    raise BlocksearchError(f"{model_class}: the trial path knows PixArt, SD3 and Flux transformers (text-conditioned); "
                           f"DiT is class-conditioned")


def flux_ids(text_len: int, rows: int, cols: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """FluxPipeline's position ids: ``text_ids`` (encode_prompt: zeros, one row per text token) and the packed
    latents' ``img_ids`` (_prepare_latent_image_ids: 0, row, column per 2x2 patch)."""
    r = torch.arange(rows, device=like.device).repeat_interleave(cols)
    k = torch.arange(cols, device=like.device).repeat(rows)
    img_ids = torch.stack([torch.zeros_like(r), r, k], dim=-1).to(like.dtype)
    return like.new_zeros(text_len, 3), img_ids


def max_text(pipeline) -> int:
    """PixArt's text tokens per call: its pipeline's 300, or fewer where the tokenizer's context is shorter."""
    return min(MAX_TEXT, pipeline.tokenizer.model_max_length)


T5_TOKENIZER = {"SD3Transformer2DModel": "tokenizer_3", "FluxTransformer2DModel": "tokenizer_2"}  # PixArt: tokenizer


def t5_len(pipeline) -> int:
    """T5 tokens of one call: the class's ``max_sequence_length`` default (SD3 256, Flux 512), or fewer where the
    tokenizer's context is shorter (the tiny pipelines' 16; PixArt: ``max_text``)."""
    model_class = type(pipeline.transformer).__name__
    if model_class not in T5_LEN:
        return max_text(pipeline)
    tokenizer = getattr(pipeline, T5_TOKENIZER[model_class], None)
    return T5_LEN[model_class] if tokenizer is None else min(T5_LEN[model_class], tokenizer.model_max_length)


def _tokens(tokenizer, captions: list[str], length: int, device) -> torch.Tensor:
    return tokenizer(captions, padding="max_length", max_length=length, truncation=True, add_special_tokens=True,
                     return_tensors="pt").input_ids.to(device)


def _sd3_cond(pipe, captions: list[str]) -> dict[str, torch.Tensor]:
    """StableDiffusion3Pipeline.encode_prompt (clip_skip None): each CLIP encoder's penultimate hidden states side by
    side, zero-padded to T5's width, then T5's last hidden states after them on the token axis; the pooled
    projection is both CLIP encoders' projected pooled outputs side by side."""
    states, pooled = [], []
    for tokenizer, encoder in ((pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)):
        out = encoder(_tokens(tokenizer, captions, pipe.tokenizer_max_length, encoder.device),
                      output_hidden_states=True)
        states.append(out.hidden_states[-2])
        pooled.append(out[0])
    clip = torch.cat(states, dim=-1)
    if pipe.text_encoder_3 is None:  # SD3 without T5: zeros in its place, as the pipeline does
        t5 = clip.new_zeros(len(captions), t5_len(pipe), pipe.transformer.config.joint_attention_dim)
    else:
        t5 = pipe.text_encoder_3(_tokens(pipe.tokenizer_3, captions, t5_len(pipe), pipe.text_encoder_3.device))[0]
    clip = torch.nn.functional.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
    return {"encoder_hidden_states": torch.cat([clip, t5.to(clip.device)], dim=-2).float().cpu(),
            "pooled_projections": torch.cat(pooled, dim=-1).float().cpu()}


def _flux_cond(pipe, captions: list[str]) -> dict[str, torch.Tensor]:
    """FluxPipeline.encode_prompt: T5's last hidden states (``encoder_hidden_states``) and CLIP's pooled output
    (``pooled_projections``); FLUX.1-dev's distilled guidance input per row (``guidance``, the pipeline's default
    3.5). Its ``text_ids`` (zeros, one row per T5 token) and the latents' ``img_ids`` follow from the shapes:
    ``flux_ids`` makes both in ``forward``."""
    clip = pipe.text_encoder(_tokens(pipe.tokenizer, captions, pipe.tokenizer_max_length, pipe.text_encoder.device),
                             output_hidden_states=False).pooler_output
    t5 = pipe.text_encoder_2(_tokens(pipe.tokenizer_2, captions, t5_len(pipe), pipe.text_encoder_2.device),
                             output_hidden_states=False)[0]
    cond = {"encoder_hidden_states": t5.float().cpu(), "pooled_projections": clip.float().cpu()}
    if pipe.transformer.config.guidance_embeds:
        cond["guidance"] = torch.full((len(captions),), FLUX_GUIDANCE)
    return cond


@torch.no_grad()
def encode_text(pipeline, captions: list[str]) -> dict[str, torch.Tensor]:
    """``Batch.cond`` as the teacher's stock pipeline encodes a prompt (every entry batch-first, fp32 on the CPU):
    PixArt: text embeddings and their attention mask as PixArtSigmaPipeline.encode_prompt makes them (clean_caption
    off: lower-cased and stripped; padded to ``max_text`` tokens; the mask passed to the text encoder); SD3 and
    Flux: ``_sd3_cond`` and ``_flux_cond``. An empty caption is encoded as the pipelines encode their negative
    prompt ""."""
    model_class = model_class_of(pipeline.transformer.config)
    if model_class == "SD3Transformer2DModel":
        return _sd3_cond(pipeline, captions)
    if model_class == "FluxTransformer2DModel":
        return _flux_cond(pipeline, captions)
    if model_class != "PixArtTransformer2DModel":
        raise BlocksearchError(f"KD data for a {model_class} teacher: it is class-conditioned, not text-conditioned; "
                               "allowed: a PixArt, SD3 or Flux teacher")
    tok = pipeline.tokenizer([c.lower().strip() for c in captions], padding="max_length", max_length=max_text(pipeline),
                             truncation=True, add_special_tokens=True, return_tensors="pt")
    device = pipeline.text_encoder.device
    text = pipeline.text_encoder(tok.input_ids.to(device), attention_mask=tok.attention_mask.to(device))[0]
    return {"encoder_hidden_states": text.float().cpu(), "encoder_attention_mask": tok.attention_mask}


def text_tokens(pipeline) -> int:
    """Text tokens of one call as MACs and latency count them: PixArt's ``max_text``; SD3's CLIP context plus its
    T5 tokens; Flux's T5 tokens; none for DiT."""
    model_class = type(pipeline.transformer).__name__
    if model_class == "SD3Transformer2DModel":
        # CLIP's context (77 in the stock pipeline; a denoiser measured alone, bench deploy's, has no tokenizer)
        return getattr(pipeline, "tokenizer_max_length", 77) + t5_len(pipeline)
    if model_class == "DiTTransformer2DModel":
        return 0
    return t5_len(pipeline)


def flux_size(pipeline) -> dict:
    """Flux's image size where it is not FluxPipeline's fixed default (128 latents x the VAE's scale factor: FLUX.1's
    1024 px): the VAE's ``sample_size`` (the tiny Flux pipeline's 64 px), the teacher's native size
    (teachers.py)."""
    size = pipeline.vae.config.sample_size
    return {} if size == pipeline.default_sample_size * pipeline.vae_scale_factor else {"height": size, "width": size}


def call_kwargs(pipeline) -> dict:
    """What a stock pipeline call needs beyond its defaults for this teacher: the T5 text length of
    ``encode_text`` where the tokenizer's context is shorter than the pipeline's default (SD3, Flux, PixArt);
    Flux: its image size where it is not the pipeline's default (``flux_size``);
    PixArt also: no caption cleaning (it needs bs4 and ftfy), and no resolution binning for a sample size its bins
    do not know (the toy's 16)."""
    model_class = type(pipeline.transformer).__name__
    if model_class in ("SD3Transformer2DModel", "FluxTransformer2DModel"):
        length = t5_len(pipeline)
        kwargs = {} if length == T5_LEN[model_class] else {"max_sequence_length": length}
        return kwargs | flux_size(pipeline) if model_class == "FluxTransformer2DModel" else kwargs
    if model_class != "PixArtTransformer2DModel":
        return {}
    kwargs = {"max_sequence_length": max_text(pipeline), "clean_caption": False}
    if pipeline.transformer.config.sample_size not in BINNED_SIZES:
        kwargs["use_resolution_binning"] = False
    return kwargs


def cond_of_inputs(inputs: dict) -> dict:
    """``Batch.cond`` of one call's ``forward_inputs``, as ``encode_text`` makes it: the text embeddings, and
    PixArt's attention mask (int64, one per token) or SD3's and Flux's pooled projections and Flux's guidance."""
    text = inputs["encoder_hidden_states"]
    cond = {"encoder_hidden_states": text}
    if "added_cond_kwargs" in inputs:  # PixArt
        return cond | {"encoder_attention_mask": torch.ones(text.shape[:2], dtype=torch.long, device=text.device)}
    return cond | {k: inputs[k] for k in ("pooled_projections", "guidance") if k in inputs}


def forward_inputs(config, batch: int = 1, latent_size: int | None = None, device="meta", dtype=torch.float32,
                   text_len: int | None = None) -> dict:
    """Keyword inputs of one denoiser call as the class's diffusers pipeline makes them (random latents and text;
    Flux: 2x2-packed latent tokens with their position ids, timestep in [0, 1] and the guidance value)."""
    model_class, c = model_class_of(config), dict(config)
    text_len = TEXT_LEN[model_class] if text_len is None else text_len
    rand = lambda *shape: torch.randn(*shape, device=device, dtype=dtype)  # noqa: E731
    full = lambda value, kind=dtype: torch.full((batch,), value, device=device, dtype=kind)  # noqa: E731
    if model_class == "FluxTransformer2DModel":
        side = (latent_size or 128) // 2  # 1024 px -> 128x128 latents -> 64x64 packed tokens
        rows = torch.arange(side, device=device).repeat_interleave(side)
        cols = torch.arange(side, device=device).repeat(side)
        inputs = dict(hidden_states=rand(batch, side * side, c["in_channels"]),
                      encoder_hidden_states=rand(batch, text_len, c["joint_attention_dim"]),
                      pooled_projections=rand(batch, c["pooled_projection_dim"]), timestep=full(0.5),
                      img_ids=torch.stack([torch.zeros_like(rows), rows, cols], dim=-1).to(dtype),
                      txt_ids=torch.zeros(text_len, 3, device=device, dtype=dtype))
        if c.get("guidance_embeds"):
            inputs["guidance"] = full(3.5)
        return inputs
    size = latent_size or c["sample_size"]
    inputs = dict(hidden_states=rand(batch, c["in_channels"], size, size))
    if model_class == "SD3Transformer2DModel":
        return inputs | dict(encoder_hidden_states=rand(batch, text_len, c["joint_attention_dim"]),
                             pooled_projections=rand(batch, c["pooled_projection_dim"]), timestep=full(500.0))
    if model_class == "DiTTransformer2DModel":
        return inputs | dict(timestep=full(500, torch.long), class_labels=full(0, torch.long))
    extra = c.get("use_additional_conditions")
    extra = c["sample_size"] == 128 if extra is None else extra  # diffusers' own default (PixArt-alpha 1024)
    added = (dict(resolution=rand(batch, 2), aspect_ratio=rand(batch, 1)) if extra
             else dict(resolution=None, aspect_ratio=None))
    return inputs | dict(encoder_hidden_states=rand(batch, text_len, c["caption_channels"]),
                         timestep=full(500, torch.long), added_cond_kwargs=added)
