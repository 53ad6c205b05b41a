"""``blocksearch bench <what>``: performance figures, each measured side by side in one run.

- ``kd``: KD step cost with a warm teacher cache / without it, against a plain student training step;
- ``latency``: U-Net step latency of the teacher and the named designs (random weights; architecture only).
- ``search``: the search's sampler vs random search, hypervolume ratio (``blocksearch/bench/search.py``).
Verb handlers are ``cmd_bench_<verb>``; their parsers live in commands/bench.py, which imports this module
only when a bench verb runs (``blocksearch --help`` stays free of torch).
"""

from __future__ import annotations

import copy
import math
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from tqdm.auto import tqdm

from blocksearch.cache import measurement_slot
from blocksearch.console import quiet
from blocksearch.families.unet.topology import unet_inputs
from blocksearch.recipe.data import BatchStream
from blocksearch.recipe.distill import DistillConfig, Distiller, resolve_design
from blocksearch.errors import BlocksearchError
from blocksearch.recipe.latency import pick_clock
from blocksearch.space import load_space
from blocksearch.families.unet.surgery import build_student, student_config
from blocksearch.recipe.teacher_cache import open_cache
from blocksearch.families.unet.topology import ARCH_SPACE, ARCHITECTURES, topology_of
from blocksearch.teachers import load_teacher

KD_TARGETS = {"cached": 1.15, "live": 1.10}


def _median_ms(times) -> float:
    return statistics.median(times) * 1000


def cmd_bench_kd(args) -> int:
    """Two throughput ratios of the KD inner loop, timed interleaved so drift hits all alike."""
    if args.threads:
        torch.set_num_threads(args.threads)
    teacher = load_teacher(args.teacher, args.device)
    genome, _ = resolve_design(teacher.unet, args.design)
    student = build_student(teacher.unet, genome)
    plain = copy.deepcopy(student.unet).train().requires_grad_(True)
    plain_opt = torch.optim.AdamW(plain.parameters(), lr=1e-5, weight_decay=1e-2)
    config = DistillConfig(steps=2, batch_size=args.batch_size, lr=1e-5)
    recipe = Distiller(teacher, student, config, args.device)
    with tempfile.TemporaryDirectory() as tmp:
        stream = BatchStream(teacher.pipeline, "toy", args.batch_size, 0, family=teacher.family)
        cache = open_cache(teacher.name, teacher.unet, stream, 1, Path(tmp), device=args.device, family=teacher.family)
    batch = stream[0].to(args.device)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    clock = pick_clock(args.device, args.clock)
    now = time.process_time if clock == "cpu" else time.perf_counter

    def plain_step():
        loss = F.mse_loss(teacher.family.forward(plain, batch.noisy, batch.timesteps, batch.cond), batch.target)
        plain_opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(plain.parameters(), 1.0)
        plain_opt.step()

    def cached_step():
        b, t_out, t_feats = cache[0]
        recipe.step(0, b.to(args.device), t_out.to(args.device), {k: v.to(args.device) for k, v in t_feats.items()})

    def teacher_forward():
        with torch.no_grad():
            teacher.family.forward(teacher.unet, batch.noisy, batch.timesteps, batch.cond)

    def live_step():
        t_out, t_feats = recipe.teacher_targets(batch)
        recipe.step(0, batch, t_out, t_feats)

    ops = {"plain": plain_step, "cached": cached_step, "teacher": teacher_forward, "live": live_step}
    times = {k: [] for k in ops}
    for r in tqdm(range(args.rounds + 2), desc="bench kd", unit="round", disable=quiet()):
        for name, op in ops.items():
            sync()
            t0 = now()
            op()
            sync()
            if r >= 2:
                times[name].append(now() - t0)
    recipe.close()
    ms = {k: _median_ms(v) for k, v in times.items()}
    cached_ratio = ms["cached"] / ms["plain"]
    live_ratio = ms["live"] / (ms["teacher"] + ms["plain"])
    print(f"teacher {args.teacher}, student {genome.id} ({args.design}), batch {args.batch_size}, "
          f"device {args.device}, torch threads {torch.get_num_threads()}, {args.rounds} interleaved rounds, "
          f"{'process CPU time' if clock == 'cpu' else 'wall clock'} (medians; batch inputs prepared beforehand)")
    for name, label in (("plain", "plain student step (task loss)"), ("cached", "KD step, warm teacher cache"),
                        ("teacher", "teacher forward (no_grad)"), ("live", "KD step, no cache")):
        print(f"  {label:34s} {ms[name]:9.1f} ms")
    print(f"KD step with warm cache / plain student step:           {cached_ratio:.3f}  "
          f"(target <= {KD_TARGETS['cached']})  {'ok' if cached_ratio <= KD_TARGETS['cached'] else 'MISSED'}")
    print(f"KD step without cache / (teacher forward + plain step):  {live_ratio:.3f}  "
          f"(target <= {KD_TARGETS['live']})  {'ok' if live_ratio <= KD_TARGETS['live'] else 'MISSED'}")
    return 0


def _bench_models(args):
    """(name, U-Net factory) for the teacher and every named design; real tensors, random weights."""
    if args.teacher in ARCHITECTURES:
        with torch.device("meta"):
            config = dict(UNet2DConditionModel(**ARCHITECTURES[args.teacher]).config)
    else:
        config = dict(load_teacher(args.teacher).unet.config)
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    space = args.space or ARCH_SPACE.get(args.teacher, "unet_blocks")
    bound = load_space(space).bind(topology_of(config))
    configs = [("teacher", bound.teacher_genome.id, config)]
    configs += [(name, g.id, student_config(config, g)) for name, g in bound.named_designs().items()]
    return configs


def cmd_bench_latency(args) -> int:
    """Latency of the teacher and each named design (random weights), as ratios to the teacher.

    The models are timed round-robin (one call of each per round), so load from other processes on a
    shared machine hits all of them alike; the ratios are of medians over rounds.
    """
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise BlocksearchError(f"--device {args.device}: no CUDA device on this machine; allowed here: cpu")
    if args.dtype == "fp16" and not args.device.startswith("cuda"):
        raise BlocksearchError("--dtype fp16 needs --device cuda; on CPU use fp32 or bf16")
    real = args.teacher in ARCHITECTURES
    warmup = args.warmup if args.warmup is not None else (1 if real else 3)
    repeats = args.repeats if args.repeats is not None else (3 if real else 15)
    measurements = args.measurements or (1 if real else 5)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    clock = pick_clock(args.device, args.clock)
    now = time.process_time if clock == "cpu" else time.perf_counter
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    models = []
    for name, gid, config in tqdm(_bench_models(args), desc="build models", unit="model", disable=quiet()):
        torch.manual_seed(0)
        with torch.device(args.device):
            unet = UNet2DConditionModel.from_config(config).eval()
        if dtype != torch.float32:
            unet = unet.to(dtype)
        latent = config["sample_size"]
        inputs = unet_inputs(config, 2, latent, device=args.device, dtype=dtype)
        models.append((name, gid, unet, inputs, sum(p.numel() for p in unet.parameters())))

    def call(unet, inputs, n=1):
        sync()
        t0 = now()
        for _ in range(n):
            unet(**inputs)
        sync()
        return (now() - t0) / n

    times = {m[0]: [[] for _ in range(measurements)] for m in models}
    with torch.no_grad(), measurement_slot():  # the slot trials time in: nothing of ours trains meanwhile
        inner = {}
        for name, _, unet, inputs, _ in tqdm(models, desc="warm up", unit="model", disable=quiet()):
            for _ in range(warmup):
                one = call(unet, inputs)
            inner[name] = 1 if real else max(1, math.ceil(0.2 / max(one, 1e-6)))
        for m in tqdm(range(measurements * repeats), desc="bench latency", unit="round", disable=quiet()):
            for name, _, unet, inputs, _ in models:
                times[name][m // repeats].append(call(unet, inputs, inner[name]) * 1000)
    rows = []
    for name, gid, _, _, params in models:
        medians = [statistics.median(t) for t in times[name]]
        flat = [x for t in times[name] for x in t]
        cv = statistics.pstdev(flat) / statistics.fmean(flat) if len(flat) > 1 else 0.0
        across = statistics.pstdev(medians) / statistics.fmean(medians) if len(medians) > 1 else None
        rows.append((name, gid, params, statistics.median(medians), cv, across))
    base = rows[0][3]
    print(f"teacher {args.teacher}: one U-Net step, batch 2 (CFG), latent {latent}x{latent}, device "
          f"{args.device}, {args.dtype}, torch threads {torch.get_num_threads()}, random weights, "
          f"{'process CPU time' if clock == 'cpu' else 'wall clock'}; {warmup} warm-up, then "
          f"{measurements} measurement(s) x {repeats} round-robin rounds; median")
    print(f"{'model':10s} {'genome':26s} {'params':>8s} {'latency':>10s} {'ratio':>6s} {'lower by':>8s} "
          f"{'cv in':>6s} {'cv across':>9s}")
    for name, gid, params, ms, cv, across in rows:
        across_s = f"{across:9.1%}" if across is not None else f"{'-':>9s}"
        print(f"{name:10s} {gid:26s} {params / 1e6:7.1f}M {ms:8.1f}ms {ms / base:6.3f} {1 - ms / base:8.1%} "
              f"{cv:6.1%} {across_s}")
    print("cv in: std/mean of all timings of a model; cv across: std/mean of its per-measurement medians")
    return 0
