"""``bench deploy --teacher sdxl | sd3-medium | flux-dev``: the teachers whose pipelines are not built here (SDXL's
two CLIP encoders, SD3's three encoders and Flux's T5-XXL are downloads), measured at the denoiser: random weights
(seed 0) on the shipped configs (families/unet/topology.py's published U-Net configs, families/dit/configs), the
cost, not the quality.

1. The denoiser step latency (one CFG call, batch 2, at the teacher's latent size and text length, interleaved with
   the teacher's as a trial times it: ``latency.measure_latency``) and the peak memory of that call
   (``latency.peak_memory``) of the teacher and of each named design of its space; one student alive beside the
   teacher at a time, freed before the next is built.
2. ``--kd-steps N``: one trial's KD step at that size: the space's first named design (or ``--kd-design``) cut from
   the teacher and trained by the trial's own ``Distiller`` (BK-SDM's loss, AdamW, live teacher under no_grad) on a
   synthetic batch in the family's conditioning; and the teacher cache's decision for a trial of the search's
   length: its bytes per step (``cache_bytes_per_step``, computed on the meta device) against the cap.

``--scale`` (hidden) shrinks every width, never a depth: the same code path in seconds (tests only).
"""

from __future__ import annotations

import dataclasses
import gc
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import diffusers
import torch

from blocksearch.cache import default_cache_dir
from blocksearch.errors import BlocksearchError
from blocksearch.families.base import family_of_config
from blocksearch.families.dit.genome import load_teacher_config
from blocksearch.families.unet.topology import ARCH_SPACE, ARCHITECTURES
from blocksearch.recipe.data import Batch
from blocksearch.recipe.distill import DistillConfig, Distiller
from blocksearch.recipe.latency import DTYPES, measure_latency, peak_memory
from blocksearch.recipe.teacher_cache import cache_bytes_per_step, cache_cap, cache_plan
from blocksearch.settings import LATENCY_MIN_S
from blocksearch.space import load_space
from blocksearch.teachers import Teacher

# --teacher -> the space whose named designs are measured; SD-v1 / SD-v2 build their whole pipeline (deploy.py)
TEACHERS = {name: ARCH_SPACE[name] for name in ARCHITECTURES if ARCHITECTURES[name].get("addition_embed_type")}
TEACHERS |= {"sd3-medium": "dit_blocks", "flux-dev": "dit_blocks"}
NOT_COND = ("sample", "hidden_states", "timestep", "img_ids", "txt_ids", "guidance")  # call inputs, not Batch.cond


def memory_line(phase: str) -> str:
    """This process's resident memory after ``phase``: now (Linux's /proc) and its peak so far (ru_maxrss)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    try:
        now = next(int(line.split()[1]) * 1024 for line in Path("/proc/self/status").read_text().splitlines()
                   if line.startswith("VmRSS:"))
        now_text = f"{now / 2**30:.2f} GiB now, "
    except (OSError, StopIteration, ValueError, IndexError):
        now_text = ""
    return f"memory after the {phase} phase: resident {now_text}peak {peak / 2**30:.2f} GiB so far (ru_maxrss)"


def scaled(config: dict, scale: float) -> dict:
    """``config`` with every width x ``scale`` (channels to multiples of 32, text widths of 64, attention heads
    counted down, head widths kept: Flux's rotary axes fix its head width); depths unchanged."""
    c, r = dict(config), lambda v, m: max(m, int(v * scale) // m * m)  # noqa: E731
    if "block_out_channels" in c:  # a U-Net: per-stage channels, 32-wide heads, the text and added embeddings
        c["block_out_channels"] = tuple(r(v, 32) for v in c["block_out_channels"])
        c["attention_head_dim"] = tuple(v // 32 for v in c["block_out_channels"])
        c["cross_attention_dim"] = r(c["cross_attention_dim"], 64)
        if c.get("addition_embed_type"):
            time_dim, text_dim = r(c["addition_time_embed_dim"], 8), r(
                c["projection_class_embeddings_input_dim"] - 6 * c["addition_time_embed_dim"], 64)
            c.update(addition_time_embed_dim=time_dim, projection_class_embeddings_input_dim=text_dim + 6 * time_dim)
        return c
    c["num_attention_heads"] = max(1, round(c["num_attention_heads"] * scale))
    for key in ("joint_attention_dim", "pooled_projection_dim", "caption_channels"):
        if key in c:
            c[key] = r(c[key], 64)
    for key in ("caption_projection_dim", "cross_attention_dim"):
        if key in c:
            c[key] = c["num_attention_heads"] * c["attention_head_dim"]
    return c


def random_denoiser(name: str, scale: float = 1.0) -> torch.nn.Module:
    """The teacher denoiser of ``name`` with random weights (seed 0), widths x ``scale``."""
    if name not in TEACHERS:
        raise BlocksearchError(f"bench deploy --teacher {name}: the denoiser-only teachers are {', '.join(TEACHERS)}")
    if name in ARCHITECTURES:
        with torch.device("meta"):
            config = {**dict(diffusers.UNet2DConditionModel(**ARCHITECTURES[name]).config),
                      "_class_name": "UNet2DConditionModel"}
    else:
        config = load_teacher_config(name)
    config = scaled(config, scale) if scale != 1.0 else config
    torch.manual_seed(0)
    model_class = getattr(diffusers, config["_class_name"])
    return model_class.from_config({k: v for k, v in config.items() if k != "_class_name"}).eval()


def synthetic_batch(denoiser, family, batch: int, latent: int, text_len: int) -> Batch:
    """A KD batch of random tensors in the family's conditioning (``Batch.cond``: the call inputs of
    ``forward_inputs`` that are not the latent, the timestep or position ids), the latent as (B, C, H, W): a token
    sequence (Flux's) is the latent packed 2x2."""
    inputs = family.forward_inputs(denoiser.config, batch, latent, device="cpu", dtype=torch.float32,
                                   text_len=text_len)
    flat = {**inputs, **(inputs.get("added_cond_kwargs") or {})}
    cond = {k: v for k, v in flat.items() if isinstance(v, torch.Tensor) and k not in NOT_COND}
    noisy = flat.get("sample", flat.get("hidden_states"))
    if noisy.dim() == 3:  # (B, tokens, 4C) -> (B, C, H, W)
        side = 2 * int(round((noisy.shape[1]) ** 0.5))
        noisy = torch.randn(batch, noisy.shape[2] // 4, side, side)
    timesteps = torch.full((batch,), 500, dtype=torch.long)
    return Batch(noisy, timesteps, cond, torch.randn_like(noisy))


def cmd_deploy_denoiser(args, dtype: str) -> int:
    """Build the teacher's denoiser, measure it and each named design, then (``--kd-steps``) one KD step."""
    t0 = time.perf_counter()
    teacher = random_denoiser(args.teacher, args.scale).to(args.device, DTYPES[dtype])
    config = {**dict(teacher.config), "_class_name": type(teacher).__name__}
    family = family_of_config(config)
    bound = load_space(args.space or TEACHERS[args.teacher]).bind(family.topology(config))
    latent = args.latent or teacher.config.get("sample_size") or 128  # Flux's config has none: 1024 px
    text_len = family.text_tokens(SimpleNamespace(**{family.subfolder: teacher}))  # a pipeline of the denoiser
    print(f"built the {args.teacher} {family.denoiser_name} ({sum(p.numel() for p in teacher.parameters()) / 1e6:.1f}M "
          f"parameters, random weights, width scale {args.scale:g}) in {time.perf_counter() - t0:.0f} s; "
          f"{memory_line('build')}")
    rows = denoiser_phase(teacher, family, bound, args, latent, text_len, dtype)
    print(table(rows))
    print(memory_line("latency"), flush=True)
    if args.kd_steps:
        kd_step(teacher, family, bound, args, latent, text_len)
        gc.collect()
        print(memory_line("KD check"))
    return 0


def denoiser_phase(teacher, family, bound, args, latent: int, text_len: int, dtype: str) -> list[tuple]:
    """(name, id, params, step ms, peak MB, weights MB) of the teacher and each named design, one student alive at
    a time."""
    designs = [("teacher", bound.teacher_genome)] + list(bound.named_designs().items())
    print(f"measuring {len(designs)} {family.denoiser_name}s on {args.device}, {dtype}: one step at latent "
          f"{latent}x{latent}, {text_len} text tokens (batch 2, CFG), and its peak memory")
    rows = []
    with tempfile.TemporaryDirectory() as fresh:  # measured now, not read from an earlier run's cache
        for name, genome in designs:
            model = teacher if name == "teacher" else family.build_student(teacher, genome).denoiser.eval()
            lat = measure_latency(model, latent, args.warmup, args.repeats, LATENCY_MIN_S, fresh, clock="auto",
                                  reference=None if model is teacher else teacher, family=family, text_len=text_len)
            mem = peak_memory(model, latent, cache_dir=fresh, use_cache=False, family=family, text_len=text_len)
            rows.append((name, genome.id, sum(p.numel() for p in model.parameters()), lat.median_ms, mem["peak_mb"],
                         mem["weights_mb"]))
            del model  # the student's weights go before the next one is built
            gc.collect()
            print(f"  {name}: step {lat.median_ms:.2f} ms, peak {mem['peak_mb']:.0f} MB", flush=True)
    return rows


def kd_step(teacher, family, bound, args, latent: int, text_len: int) -> dict:
    """One trial's KD steps (the trial's ``Distiller``, a live teacher) and the teacher cache's decision."""
    designs = bound.named_designs()
    name = args.kd_design or next(iter(designs))
    if name not in designs:
        raise BlocksearchError(f"--kd-design {name!r}; allowed: {', '.join(designs)}")
    trial = DistillConfig(batch_size=args.kd_batch, precision=args.kd_precision, lr=5e-5)
    per_step = cache_bytes_per_step(teacher.config, trial.batch_size, latent, 2, text_tokens=text_len,
                                    model_class=type(teacher), family=family)
    cap, what = cache_cap(default_cache_dir() / "teacher", trial.cache_gb)
    mode, why = cache_plan(per_step, trial.steps, cap, what)
    print(f"teacher cache of a {trial.steps}-step trial at batch {trial.batch_size}: {per_step / 2**20:.1f} MiB per "
          f"step; {'on disk' if mode == 'disk' else 'live teacher'}: {why}")
    teacher32 = teacher.float()
    student = family.build_student(teacher32, designs[name])
    recipe = Distiller(Teacher(args.teacher, SimpleNamespace(**{family.subfolder: teacher32}), family),
                       student, dataclasses.replace(trial, steps=args.kd_steps), args.device)
    batch = synthetic_batch(teacher32, family, trial.batch_size, latent, text_len).to(args.device)
    cuda = str(args.device).startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats(args.device)
    stamps = [time.perf_counter()]
    for step in range(args.kd_steps):
        t_out, t_feats = recipe.teacher_targets(batch)
        recipe.step(step + 1, batch, t_out, t_feats)
        if cuda:
            torch.cuda.synchronize(args.device)
        stamps.append(time.perf_counter())
    recipe.close()
    times = [b - a for a, b in zip(stamps, stamps[1:])][max(0, args.kd_steps // 5):]  # warm steps only
    peak = torch.cuda.max_memory_allocated(args.device) / 2**20 if cuda else None
    out = {"design": name, "step_s": statistics.median(times), "peak_mb": peak, "cache_bytes_per_step": per_step,
           "teacher_cache": mode}
    print(f"KD step of {name} ({designs[name].id}; batch {trial.batch_size}, {trial.precision}, live teacher): "
          f"{out['step_s'] * 1000:.0f} ms (median of the warm steps); peak GPU memory "
          f"{f'{peak:.0f} MB' if peak is not None else 'n/a (not CUDA)'}")
    del recipe, student
    return out


def table(rows: list[tuple]) -> str:
    """The figures side by side, each with how much lower than the teacher's."""
    base = rows[0]
    lines = [f"{'model':14s} {'genome':30s} {'params':>9s} {'step ms':>9s} {'lower':>6s} {'peak MB':>9s} "
             f"{'lower':>6s} {'weights MB':>10s}"]
    for name, gid, params, ms, peak, weights in rows:
        lines.append(f"{name:14s} {gid:30s} {params / 1e6:8.1f}M {ms:9.2f} {1 - ms / base[3]:6.1%} {peak:9.0f} "
                     f"{1 - peak / base[4]:6.1%} {weights:10.0f}")
    return "\n".join(lines)
