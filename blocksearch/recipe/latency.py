"""Speed and size of an architecture: denoiser (U-Net or transformer) step latency, end-to-end generation
latency, peak memory (measured), params / MACs (counted); all cached by architecture and measurement key.
A denoiser is called with its family's ``forward_inputs`` (families/base.py; default: a U-Net's).

Latency is a property of (architecture, device, dtype, resolution, threads), not of the machine's load
(docs/design.md, "Latency and memory"). So every timing runs in the ``measurement_slot`` of
``blocksearch/cache.py``: it waits until every other blocksearch process on this machine -- trials that
train or generate, ``blocksearch distill``, benchmarks -- has stepped aside at its next checkpoint, and
keeps them out until it is done. On a CPU with one torch thread the clock is the process CPU time;
elsewhere the wall clock. Results are cached under ``<cache_dir>/measurements.json`` by that key (checked on
read: a corrupt table is moved aside and its entries measured again; blocksearch/cache.py), so one
architecture is timed once per machine (SnapFusion, arXiv 2306.00980, and NanoSD, arXiv 2601.09823,
likewise score latency on the target device: params and MACs are poor proxies for speed).

Peak memory of one CFG U-Net step: ``torch.cuda.max_memory_allocated`` on CUDA; on CPU, the peak of
live tensor bytes (weights, inputs and every activation) traced op by op with a ``TorchDispatchMode``:
deterministic, architecture-only, without the allocator's own overhead.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import platform
import statistics
import time
import weakref
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from blocksearch.cache import checked, default_cache_dir, file_lock, lock_path, measurement_slot, write_checked
from blocksearch.families.cost import count_macs, count_params
from blocksearch.families.base import DEFAULT_FAMILY, Family, family_of
from blocksearch.recipe.timers import Clock, ComponentTimer, CudaEventClock, device_clock

_COSTS: dict[str, tuple[int, int]] = {}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
UNET_TEXT = 77  # text tokens of a U-Net call as every measurement counts them (SD's CLIP context)


def _call(family: Family, text_len: int | None) -> tuple[int, dict]:
    """The family's text tokens, and what a measurement key adds beyond the default family's (nothing for it: its
    keys, and so its cached measurements, are earlier versions')."""
    text_len = text_len or UNET_TEXT
    extra = {} if family.name == DEFAULT_FAMILY else {"family": family.name, "text_len": text_len}
    return text_len, extra


@dataclass(frozen=True)
class Latency:
    median_ms: float
    cv: float
    times_ms: tuple[float, ...]
    how: dict

    @classmethod
    def from_dict(cls, d: dict) -> "Latency":
        return cls(d["median_ms"], d["cv"], tuple(d["times_ms"]), d["how"])


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


def device_name(device) -> str:
    """The hardware behind ``device``: the GPU's name, or the CPU's model."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measure_key(what: str, config, **settings) -> str:
    """The cache key of a measurement: what, the architecture and every setting that changes the number."""
    config = {k: v for k, v in dict(config).items() if not k.startswith("_")}
    blob = json.dumps([what, config, settings, torch.__version__], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def _table_path(cache_dir) -> Path:
    return Path(cache_dir or default_cache_dir()) / "measurements.json"


def _read_table(path: Path) -> dict:
    """The table, or {} where there is none or it failed its check (then moved aside, in one line: what it
    held is measured again)."""
    return json.loads(path.read_text()) if checked(path, "json", "measuring again what it held") else {}


def cached(key: str, cache_dir=None) -> dict | None:
    path = _table_path(cache_dir)
    with file_lock(lock_path("latency-table", cache_dir), shared=True):  # a writer's data and checksum, both
        return _read_table(path).get(key)


def store(key: str, value: dict, cache_dir=None) -> None:
    path = _table_path(cache_dir)
    with file_lock(lock_path("latency-table", cache_dir)):
        table = _read_table(path)
        table[key] = value
        blob = json.dumps(table).encode()
        write_checked(path, lambda tmp: tmp.write_bytes(blob), len(blob))


def _timings(call, now, device, warmup: int, repeats: int, min_s: float) -> tuple[list[float], int]:
    """``repeats`` timings (ms per call) of a loop of calls at least ``min_s`` long, after warm-up."""
    for _ in range(warmup):
        call()
    _sync(device)
    t0 = now()
    call()
    _sync(device)
    inner = max(1, math.ceil(min_s / max(now() - t0, 1e-6)))
    times = []
    for _ in range(repeats):
        t0 = now()
        for _ in range(inner):
            call()
        _sync(device)
        times.append((now() - t0) / inner * 1000)
    return times, inner


def _summary(times: list[float], how: dict) -> Latency:
    mean = statistics.fmean(times)
    cv = statistics.pstdev(times) / mean if len(times) > 1 else 0.0
    return Latency(statistics.median(times), cv, tuple(times), how)


@torch.no_grad()
def measure_latency(unet, latent_size: int, warmup: int = 3, repeats: int = 15, min_s: float = 0.05,
                    cache_dir=None, device=None, batch: int = 2, clock: str = "auto",
                    use_cache: bool = True, reference=None, reference_ms: float | None = None, *,
                    family: Family, text_len: int | None = None) -> Latency:
    """Median and CV of one denoiser step (batch 2 = CFG) on the denoiser's own device and dtype, timed in the
    measurement slot and cached by (architecture, device, dtype, resolution, threads, settings); the
    denoiser ``unet`` of ``family`` is called on ``text_len`` text tokens (default 77).

    With a ``reference`` U-Net (the teacher), the two are timed interleaved, repeat by repeat, and the
    latency is the median ratio x the reference's own latency on this machine (``reference_ms``, default:
    its cached measurement): a slow spell of the machine (other tenants, frequency) slows both alike, so
    the ratio -- and with one reference time per machine, the latency -- holds still."""
    param = next(unet.parameters())
    device = param.device
    clock = pick_clock(device, clock)
    settings = dict(latent=latent_size, batch=batch, device=device_name(device), dtype=str(param.dtype),
                    threads=torch.get_num_threads(), clock=clock, warmup=warmup, repeats=repeats, min_s=min_s)
    ref_config = None if reference is None else {k: v for k, v in dict(reference.config).items() if not k.startswith("_")}
    text_len, extra = _call(family, text_len)
    key = measure_key("unet_step", unet.config, reference=ref_config, **settings, **extra,
                      **({"order": "ABBA"} if reference is not None else {}))
    if use_cache and (hit := cached(key, cache_dir)) is not None:
        return Latency.from_dict({**hit, "how": {**hit["how"], "cache": "hit"}})
    if reference is not None and reference_ms is None:
        reference_ms = measure_latency(reference, latent_size, warmup, repeats, min_s, cache_dir, batch=batch,
                                       clock=clock, family=family, text_len=text_len).median_ms
    inputs = family.forward_inputs(unet.config, batch, latent_size, device=device, dtype=param.dtype,
                                   text_len=text_len)
    now = time.process_time if clock == "cpu" else time.perf_counter
    with measurement_slot() as waited:
        if reference is None:
            times, inner = _timings(lambda: unet(**inputs), now, device, warmup, repeats, min_s)
        else:  # the ratios only: timing the U-Net alone as well would double the work of every trial
            ref_inputs = family.forward_inputs(reference.config, batch, latent_size, device=device, dtype=param.dtype,
                                               text_len=text_len)
            ratios, inner = _interleaved_ratios(unet, inputs, reference, ref_inputs, now, device, warmup, repeats,
                                                min_s)
    how = {"what": f"one {family.denoiser_name} forward, batch {batch} (classifier-free guidance), latent "
                   f"{latent_size}x{latent_size}, {text_len} text tokens", "device": str(device),
           "device_name": device_name(device), "dtype": str(param.dtype).replace("torch.", ""),
           "torch_threads": torch.get_num_threads(),
           "clock": "process CPU time" if clock == "cpu" else "wall clock",
           "warmup": warmup, "repeats": repeats, "calls_per_repeat": inner, "statistic": "median; cv = std/mean",
           "isolation": _isolation(waited), "slot_wait_s": round(waited.seconds, 3), "cache": "measured"}
    if reference is not None:
        ratio = statistics.median(ratios)
        how.update(statistic="median ratio to the teacher, timed interleaved, x the teacher's latency on this "
                             "machine; cv = std/mean of the ratios", ratio_to_teacher=round(ratio, 5),
                   teacher_ms=round(reference_ms, 4))
        mean = statistics.fmean(ratios)
        out = Latency(ratio * reference_ms, statistics.pstdev(ratios) / mean if len(ratios) > 1 else 0.0,
                      tuple(r * reference_ms for r in ratios), how)
    else:
        out = _summary(times, how)
    if use_cache and waited.isolated:  # a timing beside work that did not yield is never reused
        store(key, asdict(out), cache_dir)
    return out


def _isolation(waited) -> str:
    if waited.isolated:
        return "measurement slot: no other blocksearch process trained or generated meanwhile"
    return (f"NOT isolated: gave up waiting for the measurement slot after {waited.seconds:.0f} s "
            "(a process held it without yielding); not cached")


def _interleaved_ratios(unet, inputs, reference, ref_inputs, now, device, warmup: int, repeats: int,
                        min_s: float) -> tuple[list[float], int]:
    """Per repeat, in ABBA order -- half a loop of the U-Net, a loop of the reference, half a loop of the
    U-Net -- the ratio of their per-call times: a drift of the machine's speed that is linear over the
    repeat cancels (the ABBA counterbalancing of crossover designs). Returns the ratios and the U-Net's
    calls per repeat."""
    _, ref_inner = _timings(lambda: reference(**ref_inputs), now, device, warmup, 1, min_s)
    _, inner = _timings(lambda: unet(**inputs), now, device, warmup, 1, min_s)
    half, ref_half = max(1, inner // 2), max(1, ref_inner // 2)

    def loop(model, args, n: int) -> float:
        t0 = now()
        for _ in range(n):
            model(**args)
        _sync(device)
        return now() - t0

    ratios = []
    for _ in range(repeats):
        a1 = loop(unet, inputs, half)
        b = loop(reference, ref_inputs, 2 * ref_half)
        a2 = loop(unet, inputs, half)
        ratios.append(((a1 + a2) / (2 * half)) / (b / (2 * ref_half)))
    return ratios, 2 * half


def e2e_components(pipe) -> dict[str, list[torch.nn.Module]]:
    """The parts of one generation whose time ``measure_e2e`` breaks out (diffusers module names: the
    denoiser's is ``unet`` or ``transformer``)."""
    vae, sub = pipe.vae, family_of(pipe).subfolder
    return {"text_encoder": [pipe.text_encoder, getattr(pipe, "text_encoder_2", None)], sub: [getattr(pipe, sub)],
            "vae_decode": [getattr(vae, "post_quant_conv", None), vae.decoder]}


@torch.no_grad()
def measure_e2e(pipe, steps: int, guidance: float, prompt: str, seed: int = 0, warmup: int = 1,
                repeats: int = 3, cache_dir=None, use_cache: bool = True, clock: Clock | None = None) -> Latency:
    """End-to-end latency of one image: text encoder, ``steps`` U-Net steps with CFG, VAE decode (what a
    user ships), wall clock with the device synchronised, in the measurement slot. ``how["share"]``: each
    part's fraction of the time, on the device's clock (``timers.device_clock``: CUDA events on a GPU, so
    GPU time, not kernel launches); "other" is the rest (tokenizer, scheduler, image post-processing)."""
    device, family = pipe.device, family_of(pipe)
    unet = getattr(pipe, family.subfolder)
    dtype = next(unet.parameters()).dtype
    kwargs = family.call_kwargs(pipe)
    key = measure_key("e2e", unet.config, steps=steps, guidance=guidance, device=device_name(device),
                      dtype=str(dtype), threads=torch.get_num_threads(), repeats=repeats,
                      vae=dict(pipe.vae.config), text=pipe.text_encoder.config.to_dict(),
                      scheduler=type(pipe.scheduler).__name__, breakdown="device-clock",
                      **({} if family.name == DEFAULT_FAMILY else {"pipeline": type(pipe).__name__, "call": kwargs}))
    if use_cache and (hit := cached(key, cache_dir)) is not None:
        return Latency.from_dict({**hit, "how": {**hit["how"], "cache": "hit"}})
    parts = ComponentTimer(clock or device_clock(device), e2e_components(pipe))

    def call():
        gen = torch.Generator(device).manual_seed(seed)
        pipe(prompt, num_inference_steps=steps, guidance_scale=guidance, generator=gen, output_type="pt", **kwargs)

    with measurement_slot() as waited:
        for _ in range(warmup):
            call()
        times = []
        with parts.hooks():
            for _ in range(repeats):
                _sync(device)
                t0 = time.perf_counter()
                call()
                _sync(device)
                times.append((time.perf_counter() - t0) * 1000)
                parts.settle()
    total_s = sum(times) / 1000
    share = {k: round(v / total_s, 3) for k, v in parts.seconds.items()}
    share["other"] = round(1 - sum(parts.seconds.values()) / total_s, 3)
    how = {"what": f"one image: text encoder + {steps} {family.denoiser_name} steps "
                   f"({'batch 2, CFG' if guidance > 1 else 'no CFG'}) + VAE decode, guidance {guidance}",
           "device": str(device), "device_name": device_name(device), "dtype": str(dtype).replace("torch.", ""),
           "torch_threads": torch.get_num_threads(), "warmup": warmup,
           "clock": "wall clock" + (", device synchronised" if torch.device(device).type == "cuda" else ""),
           "repeats": repeats, "statistic": "median", "slot_wait_s": round(waited.seconds, 3), "cache": "measured",
           "isolation": _isolation(waited), "share": share,
           "share_clock": "CUDA events (GPU time)" if isinstance(parts.clock, CudaEventClock) else "host clock"}
    out = _summary(times, how)
    if use_cache and waited.isolated:
        store(key, asdict(out), cache_dir)
    return out


class _LiveBytes(TorchDispatchMode):
    """Trace the bytes of live tensor storages op by op; ``peak`` is their maximum."""

    def __init__(self, start: int, seen: set):
        super().__init__()
        self.live, self.peak, self.refs, self.seen = start, start, {}, seen

    def _drop(self, ptr: int) -> None:
        entry = self.refs[ptr]
        entry[1] -= 1
        if entry[1] == 0:
            self.live -= entry[0]
            del self.refs[ptr]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if not isinstance(t, torch.Tensor) or t.device.type == "meta":
                continue
            storage = t.untyped_storage()
            ptr = storage.data_ptr()
            if ptr in self.seen or ptr == 0:  # weights and inputs: counted in ``start``
                continue
            if ptr not in self.refs:
                self.refs[ptr] = [storage.nbytes(), 0]
                self.live += storage.nbytes()
                self.peak = max(self.peak, self.live)
            self.refs[ptr][1] += 1
            weakref.finalize(t, self._drop, ptr)
        return out


def weights_bytes(unet) -> int:
    """Bytes of the denoiser's parameters and buffers in their current dtype."""
    return sum(t.numel() * t.element_size() for t in [*unet.parameters(), *unet.buffers()])


@torch.no_grad()
def peak_memory(unet, latent_size: int, batch: int = 2, cache_dir=None, use_cache: bool = True, *,
                family: Family, text_len: int | None = None) -> dict:
    """Peak memory of one CFG denoiser step at inference, and the weights' bytes, in MB (2**20 bytes)."""
    param = next(unet.parameters())
    device = param.device
    text_len, extra = _call(family, text_len)
    key = measure_key("memory", unet.config, latent=latent_size, batch=batch, device=device.type, dtype=str(param.dtype),
                      **extra)
    if use_cache and (hit := cached(key, cache_dir)) is not None:
        return hit
    inputs = family.forward_inputs(unet.config, batch, latent_size, device=device, dtype=param.dtype, text_len=text_len)
    tensors = [*unet.parameters(), *unet.buffers(), *[v for v in inputs.values() if isinstance(v, torch.Tensor)]]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        unet(**inputs)
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - base + sum(t.numel() * t.element_size() for t in tensors)
        method = "torch.cuda.max_memory_allocated during one forward, plus the weights and inputs"
    else:
        seen = {t.untyped_storage().data_ptr() for t in tensors}
        start = sum(t.untyped_storage().nbytes() for t in tensors)
        tracer = _LiveBytes(start, seen)
        with tracer:
            unet(**inputs)
        peak = tracer.peak
        method = ("peak of live tensor bytes (weights + inputs + activations), traced op by op with a "
                  "TorchDispatchMode; the allocator's own overhead is not included")
    out = {"peak_mb": peak / 2**20, "weights_mb": weights_bytes(unet) / 2**20,
           "how": {"what": f"one {family.denoiser_name} forward at inference, batch {batch} (CFG), latent "
                           f"{latent_size}x{latent_size}",
                   "device": device.type, "dtype": str(param.dtype).replace("torch.", ""), "method": method}}
    if use_cache:
        store(key, out, cache_dir)
    return out


def cost(unet, latent_size: int, cache_dir: Path | None = None, *, family: Family,
         text_len: int | None = None) -> tuple[int, int]:
    """(params, MACs), cached by architecture (the config, i.e. the Genome on a given teacher) on disk."""
    text_len, extra = _call(family, text_len)
    key = measure_key("cost", unet.config, latent=latent_size, **extra)
    if key in _COSTS:
        return _COSTS[key]
    hit = cached(key, cache_dir)
    if hit is None:
        hit = [count_params(unet), count_macs(unet, latent_size, text_len, family=family)]
        store(key, hit, cache_dir)
    _COSTS[key] = tuple(hit)
    return _COSTS[key]


def on_target(module, device, dtype):
    """``module`` on the deployment target: itself when it is there already, else a copy (the
    evaluation's own models -- the teacher's shared VAE and text encoder -- are never cast in place)."""
    param = next(module.parameters())
    if param.device == torch.device(device) and param.dtype == dtype:
        return module
    return copy.deepcopy(module).to(device=device, dtype=dtype)


def speed_and_memory(pipe, latent_size: int, steps: int, guidance: float, prompt: str, device, dtype: str,
                     warmup: int, repeats: int, min_s: float, clock: str, cache_dir=None,
                     e2e_repeats: int = 3, reference=None) -> tuple[dict, dict]:
    """Denoiser step latency, end-to-end latency of one image and peak memory of ``pipe`` (a student
    pipeline) on the deployment target ``device``/``dtype``: (metrics, how each was measured). With the
    teacher's denoiser as ``reference``, the step latency is relative to it (see ``measure_latency``)."""
    torch_dtype = DTYPES[dtype]
    family = family_of(pipe)
    text_len = family.text_tokens(pipe)
    parts = {k: on_target(v, device, torch_dtype) if isinstance(v, torch.nn.Module) else v
             for k, v in pipe.components.items()}
    target = type(pipe)(**parts, **({"requires_safety_checker": False} if "safety_checker" in parts else {}))
    target.set_progress_bar_config(disable=True)
    denoiser = getattr(target, family.subfolder)
    ref = (None if reference is None or reference is getattr(pipe, family.subfolder)
           else on_target(reference, device, torch_dtype))
    lat = measure_latency(denoiser, latent_size, warmup, repeats, min_s, cache_dir, clock=clock, reference=ref,
                          family=family, text_len=text_len)
    e2e = measure_e2e(target, steps, guidance, prompt, repeats=e2e_repeats, cache_dir=cache_dir)
    mem = peak_memory(denoiser, latent_size, cache_dir=cache_dir, family=family, text_len=text_len)
    metrics = {"latency_ms": lat.median_ms, "latency_cv": lat.cv, "e2e_ms": e2e.median_ms,
               "memory_mb": mem["peak_mb"], "weights_mb": mem["weights_mb"]}
    return metrics, {"latency": lat.how, "e2e": e2e.how, "memory": mem["how"]}
