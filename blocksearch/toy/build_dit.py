"""`blocksearch toy build --family dit`: the toy transformer teacher, a small PixArt-style DiT on the toy world.

PixArt (Chen et al., arXiv 2310.00426 / 2403.04692) is a DiT (Peebles & Xie, arXiv 2212.09748) with
cross-attention to the text and one shared adaLN-single timestep modulation. The toy keeps its diffusers class,
``PixArtTransformer2DModel`` (toy/models.py: 16 blocks of width 128, patch 2 on the toy VAE's 16x16 latents),
and reuses the toy U-Net teacher's VAE, tokenizer and CLIP text encoder (frozen) and its judge, so the two toy
teachers are scored alike. Only the transformer trains, on the U-Net's recipe (build.py): v-prediction with the
Min-SNR weight, half the timesteps from the noisier half, zero terminal SNR, 10% caption dropout, an EMA.

Text is encoded as ``PixArtSigmaPipeline.encode_prompt`` encodes it (families/dit/pipeline.py ``encode_text``: padded to
the tokenizer's 16 tokens, the attention mask passed to the text encoder and, as ``encoder_attention_mask``, to
the transformer). PixArt's stock pipelines expect a T5 encoder; they take the toy's CLIP encoder as it is (the
loader logs that it expected T5), but a call needs ``max_sequence_length=16`` (the default 300 overruns CLIP's
16 positions), ``use_resolution_binning=False`` (its bins know sample sizes 32..256, not 16) and
``clean_caption=False`` (it needs bs4 and ftfy): ``families.dit.pipeline.call_kwargs``. PixArtAlphaPipeline has the same
three needs; PixArtSigmaPipeline is the one the dit family ships students in.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from diffusers import PixArtSigmaPipeline
from tqdm.auto import tqdm

from blocksearch.console import quiet
from blocksearch.errors import BlocksearchError
from blocksearch.families.dit import pipeline as dit
from blocksearch.settings import CAPTION_DROPOUT
from blocksearch.toy import models as M
from blocksearch.toy.assets import ASSETS, JUDGE_FILE, load_toy_teacher
from blocksearch.toy.build import _lr, _recast, load_ema, min_snr_v_loss, noised_latents, step_with_ema
from blocksearch.toy.world import all_captions, sample_batch


@dataclass(frozen=True)
class DitBudget:
    """Steps, batch size and optimiser of the transformer's training (the VAE, text encoder and judge are reused)."""

    steps: int
    batch: int
    lr: float = 1e-3
    ema_decay: float = 0.997
    warmup: int = 100


BUDGETS = {
    "tiny": DitBudget(steps=4, batch=4, warmup=2),
    # fixed steps, no wall-clock cap: the build reproduces from its seed. ~0.7 s a step at 1 thread on the 2-core
    # machine beside other work, so ~45 min in all (the U-Net teacher's transformer-free parts are reused)
    "full": DitBudget(steps=4000, batch=32),
}


def text_table(pipe, captions: list[str]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Each caption's (embeddings, attention mask), encoded once: the text encoder is frozen."""
    cond = dit.encode_text(pipe, captions)
    text, mask = cond["encoder_hidden_states"], cond["encoder_attention_mask"]
    return {c: (t, m) for c, t, m in zip(captions, text, mask)}


def train_transformer(pipe, b: DitBudget, seed: int) -> None:
    """Train ``pipe.transformer`` in place on the v loss with caption dropout; it ends with the EMA weights."""
    torch.manual_seed(seed)
    vae, model, noise_sched = pipe.vae, pipe.transformer.train(), M.make_train_scheduler()
    table = text_table(pipe, all_captions() + [""])
    params = list(model.parameters())
    ema = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=b.lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(seed)
    bar = tqdm(range(b.steps), desc="transformer", unit="step", disable=quiet())
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = _lr(step, b.steps, b.lr, warmup=b.warmup)
        x, captions, _ = sample_batch(b.batch, seed * 10 + 5, step)
        drop = torch.rand(len(captions), generator=gen) < CAPTION_DROPOUT
        text, mask = (torch.stack(v) for v in zip(*(table["" if d else c] for c, d in zip(captions, drop))))
        latents, noise, t, noisy = noised_latents(vae, noise_sched, x, gen)
        pred = dit.forward(model, noisy, t, {"encoder_hidden_states": text, "encoder_attention_mask": mask})
        loss = min_snr_v_loss(noise_sched, pred, latents, noise, t)
        step_with_ema(opt, loss, params, ema, min(b.ema_decay, (1 + step) / (10 + step)))
        bar.set_postfix(loss=f"{loss.item():.4f}")
    load_ema(params, ema)
    model.eval().requires_grad_(False)


def _portable(folder: Path) -> str:
    """The reused teacher as the committed build.json may say it: the bundled one's package path, else its name."""
    if folder.resolve() == ASSETS.resolve():
        return "blocksearch/toy/assets"
    return folder.name


def build_dit(out: str | Path, seed: int = 0, budget: str = "full", weights_dtype: str = "fp16", threads: int = 2,
              source: str | Path | None = None) -> Path:
    """Train the toy transformer on the parts of the toy U-Net teacher at ``source`` (default: the bundled one);
    write a PixArtSigmaPipeline folder, its judge.safetensors and build.json into ``out``."""
    if budget not in BUDGETS:
        raise BlocksearchError(f"unknown toy build budget {budget!r}; allowed: {', '.join(BUDGETS)}")
    if weights_dtype not in ("fp16", "fp32"):
        raise BlocksearchError(f"unknown weights dtype {weights_dtype!r}; allowed: fp16, fp32")
    torch.set_num_threads(threads)
    b, out, source = BUDGETS[budget], Path(out), Path(source) if source is not None else ASSETS
    t0 = time.perf_counter()
    parts = load_toy_teacher(path=source)
    torch.manual_seed(seed)
    pipe = PixArtSigmaPipeline(tokenizer=parts.tokenizer, text_encoder=parts.text_encoder.requires_grad_(False),
                               vae=parts.vae.requires_grad_(False), transformer=M.make_transformer(),
                               scheduler=M.make_sample_scheduler())
    train_transformer(pipe, b, seed)
    train_s = time.perf_counter() - t0
    out.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(out, safe_serialization=True)
    shutil.copyfile(source / JUDGE_FILE, out / JUDGE_FILE)
    if weights_dtype == "fp16":  # stored in fp16; loaders upcast to fp32 (the reused parts were fp16 already)
        for f in out.rglob("*.safetensors"):
            _recast(f, torch.float16)
    info = {"family": "dit", "seed": seed, "budget": budget, "weights_dtype": weights_dtype,
            "budget_steps": asdict(b), "transformer": M.TRANSFORMER, "reused_from": _portable(source),
            "wall_seconds": {"transformer_s": round(train_s, 1), "total_s": round(time.perf_counter() - t0, 1)},
            "torch_threads": torch.get_num_threads()}
    (out / "build.json").write_text(json.dumps(info, indent=2) + "\n")
    return out
