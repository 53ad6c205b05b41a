"""Speed and size of an architecture: U-Net step latency (measured) and params / MACs (counted, cached).

Latency is one U-Net forward with a classifier-free-guidance batch of 2 at the evaluation
resolution: warm-up calls, then ``repeats`` timings of a loop long enough to dwarf timer noise; the
median and the coefficient of variation (std / mean) over repeats are reported. On a CPU with one
torch thread the clock is the process CPU time, so that other processes on a shared machine do not
inflate it; elsewhere it is the wall clock. Measurements hold an
fcntl file lock so two trials on one machine never time at the same moment (SnapFusion, arXiv
2306.00980, scores blocks by latency measured on the device for the same reason: params are a poor
proxy for speed).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from blocksearch.cache import default_cache_dir, file_lock, lock_path
from blocksearch.cost import count_macs, count_params, unet_inputs

_COSTS: dict[str, tuple[int, int]] = {}


@dataclass(frozen=True)
class Latency:
    median_ms: float
    cv: float
    times_ms: tuple[float, ...]
    how: dict


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def pick_clock(device, clock: str = "auto") -> str:
    """"wall" (perf_counter), or "cpu" (process CPU time): immune to preemption by other processes on a
    shared CPU, and equal to wall time for one uncontended thread. auto: cpu on a 1-thread CPU, else wall."""
    if clock not in ("auto", "wall", "cpu"):
        raise ValueError(f"latency clock {clock!r}; allowed: auto, wall, cpu")
    if clock == "auto":
        return "cpu" if torch.device(device).type == "cpu" and torch.get_num_threads() == 1 else "wall"
    return clock


@torch.no_grad()
def measure_latency(unet, latent_size: int, warmup: int = 3, repeats: int = 15, min_s: float = 0.05,
                    lock_dir: Path | None = None, device="cpu", batch: int = 2, clock: str = "auto") -> Latency:
    """Median and CV of one U-Net step (batch 2 = CFG), serialised across processes by a file lock."""
    param = next(unet.parameters())
    inputs = unet_inputs(unet.config, batch, latent_size, device=param.device, dtype=param.dtype)
    lock = lock_path("latency", lock_dir)
    clock = pick_clock(param.device, clock)
    now = time.process_time if clock == "cpu" else time.perf_counter
    with file_lock(lock) as waited:
        for _ in range(warmup):
            unet(**inputs)
        _sync(device)
        t0 = now()
        unet(**inputs)
        _sync(device)
        inner = max(1, math.ceil(min_s / max(now() - t0, 1e-6)))
        times = []
        for _ in range(repeats):
            t0 = now()
            for _ in range(inner):
                unet(**inputs)
            _sync(device)
            times.append((now() - t0) / inner * 1000)
    mean = statistics.fmean(times)
    cv = statistics.pstdev(times) / mean if len(times) > 1 else 0.0
    how = {"what": f"one U-Net forward, batch {batch} (classifier-free guidance), latent "
                   f"{latent_size}x{latent_size}, 77 text tokens", "device": str(param.device),
           "dtype": str(param.dtype).replace("torch.", ""), "torch_threads": torch.get_num_threads(),
           "clock": "process CPU time" if clock == "cpu" else "wall clock",
           "warmup": warmup, "repeats": repeats, "calls_per_repeat": inner, "statistic": "median; cv = std/mean",
           "lock": str(lock), "lock_wait_s": round(waited, 3)}
    return Latency(statistics.median(times), cv, tuple(times), how)


def cost(unet, latent_size: int, cache_dir: Path | None = None) -> tuple[int, int]:
    """(params, MACs), cached by architecture (the config, i.e. the Genome on a given teacher) on disk."""
    config = {k: v for k, v in dict(unet.config).items() if not k.startswith("_")}
    key = hashlib.sha256(json.dumps([config, latent_size], sort_keys=True, default=str).encode()).hexdigest()[:20]
    if key in _COSTS:
        return _COSTS[key]
    path = Path(cache_dir or default_cache_dir()) / "cost.json"
    table = json.loads(path.read_text()) if path.exists() else {}
    if key not in table:
        table[key] = [count_params(unet), count_macs(unet, latent_size)]
        with file_lock(path.with_suffix(".lock")):
            current = json.loads(path.read_text()) if path.exists() else {}
            current[key] = table[key]
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(current))
            os.replace(tmp, path)
    _COSTS[key] = tuple(table[key])
    return _COSTS[key]
