"""The teacher cache: teacher outputs and stage features for a fixed batch stream, computed once.

Teacher outputs depend only on the batch (noisy latent, timestep, text), never on the student, so one
file per (teacher, data, seed, batch size, steps) serves every candidate of a study. It stores the
batch inputs (fp32; a transformer's text mask too) and the teacher's output and *every* feature any
architecture may pair with (the family's ``kd_teacher_modules``), so all students share it.
Files live under ``<cache_dir>/teacher/``; the folder is capped in size with least-recently-used
eviction; writers take a per-key file lock and write a temp file, then rename it atomically, with its
SHA-256 beside it (``<key>.safetensors.sha256``); a file that fails its check on open is moved aside and
computed again (blocksearch/cache.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from blocksearch.cache import CHECKSUM, CORRUPT, checked, file_lock, write_checked, yield_to_measurement
from blocksearch.console import quiet
from blocksearch.errors import BlocksearchError
from blocksearch.families.base import Family
from blocksearch.recipe.data import Batch, BatchStream, cond_key, fingerprint, stored_name

log = logging.getLogger(__name__)

FORMAT = 1
DEFAULT_CAP_GB = float(os.environ.get("BLOCKSEARCH_CACHE_GB", 4.0))
DISK_RESERVE = 2**30  # bytes the teacher cache always leaves free on its disk
_INPUTS = ("noisy", "timesteps", "target")  # and the batch's cond, each entry under ``stored_name``


class FeatureHooks:
    """Forward hooks that keep the outputs of named modules (BK-SDM feature KD), each as the family's feature
    (``kd_feature``)."""

    def __init__(self, model: torch.nn.Module, names, family: Family):
        modules = dict(model.named_modules())
        missing = [n for n in names if n not in modules]
        if missing:
            raise BlocksearchError(f"KD layer {missing[0]} is not a module of the {type(model).__name__}")
        self.feature = family.kd_feature
        self.features: dict[str, torch.Tensor] = {}
        self._handles = [modules[n].register_forward_hook(self._keep(n)) for n in names]

    def _keep(self, name):
        def hook(module, args, out):
            self.features[name] = self.feature(out)
        return hook

    def pop(self) -> dict[str, torch.Tensor]:
        out, self.features = self.features, {}
        return out

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


@torch.no_grad()
def teacher_forward(denoiser, hooks: FeatureHooks, batch: Batch, family: Family):
    """Teacher output and features for one batch, under no_grad."""
    out = family.forward(denoiser, batch.noisy, batch.timesteps, batch.cond)
    return out, hooks.pop()


class TeacherCache:
    """A view of one cache file: ``cache[i]`` -> (Batch, teacher output, teacher features).

    Batches are read from the memory-mapped file on demand (~0.3 ms for a toy batch of 16, a KD step takes
    ~500 ms), so every process reading the file shares the OS page cache instead of holding its own fp32
    copy (a 1920-step toy cache: ~5 GB per process). Each read is copied into fresh, aligned memory: CPU
    kernels round differently on unaligned tensors, and batch i must train the same from any file."""

    def __init__(self, path: Path, batch_size: int, steps: int):
        self.path, self.batch_size, self.steps = path, batch_size, steps
        self._file = safe_open(str(path), framework="pt")
        self._keys = list(self._file.keys())
        os.utime(path)  # least-recently-used order is the files' mtime

    def __len__(self):
        return self.steps

    def _rows(self, key: str, rows: slice) -> torch.Tensor:
        part = self._file.get_slice(key)[rows]
        return part.to(torch.float32 if part.is_floating_point() else part.dtype, copy=True)

    def __getitem__(self, i: int):
        s = slice(i * self.batch_size, (i + 1) * self.batch_size)
        cond = {cond_key(k): self._rows(k, s) for k in self._keys if cond_key(k)}
        batch = Batch(self._rows("noisy", s), self._rows("timesteps", s), cond, self._rows("target", s))
        feats = {k[5:]: self._rows(k, s) for k in self._keys if k.startswith("feat.")}
        return batch, self._rows("out", s), feats


def cache_key(teacher_name: str, unet, stream: BatchStream, steps: int, dtype: str) -> str:
    identity = {"format": FORMAT, "teacher": teacher_name, "unet": fingerprint(unet), "steps": steps,
                "dtype": dtype, "stream": stream.identity}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20]


def open_cache(teacher_name: str, unet, stream: BatchStream, steps: int, cache_dir: Path,
               cap_gb: float = DEFAULT_CAP_GB, dtype: str = "fp16", device="cpu", *, family: Family) -> TeacherCache:
    """Load the cache file for this run, computing it first (once, under a lock) if missing. ``unet``: the
    teacher's denoiser, of ``family``."""
    folder = Path(cache_dir) / "teacher"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{cache_key(teacher_name, unet, stream, steps, dtype)}.safetensors"
    with file_lock(path.with_suffix(".lock")):
        if not checked(path):  # missing, or corrupt: moved aside (one line) and computed again
            tensors = _compute(unet, stream, steps, dtype, device, family)
            size = sum(t.numel() * t.element_size() for t in tensors.values())
            cap = int(cap_gb * 2**30)
            if size > cap:
                raise BlocksearchError(
                    f"the teacher cache of this run needs {size / 2**20:.0f} MB but the cap is "
                    f"{cap_gb:g} GB; raise BLOCKSEARCH_CACHE_GB or lower steps / batch size")
            _evict(folder, cap - size)
            meta = {"steps": str(steps), "batch_size": str(stream.batch_size)}
            write_checked(path, lambda tmp: save_file(tensors, tmp, metadata=meta), size)
            log.info("teacher cache written: %s (%.0f MB)", path, size / 2**20)
    return TeacherCache(path, stream.batch_size, steps)


def _compute(unet, stream: BatchStream, steps: int, dtype: str, device, family: Family) -> dict[str, torch.Tensor]:
    store = {"fp16": torch.float16, "fp32": torch.float32}[dtype]
    hooks = FeatureHooks(unet, family.kd_teacher_modules(family.topology(unet.config)), family)
    parts: dict[str, list] = {}
    try:
        for i in tqdm(range(steps), desc="teacher cache", unit="batch", disable=quiet()):
            yield_to_measurement()
            batch = stream[i]
            out, feats = teacher_forward(unet, hooks, batch.to(device), family)
            row = {k: getattr(batch, k) for k in _INPUTS} | {stored_name(k): v for k, v in batch.cond.items()}
            row |= {"out": out.to("cpu", store)}
            row |= {f"feat.{k}": v.to("cpu", store) for k, v in feats.items()}
            for k, v in row.items():
                parts.setdefault(k, []).append(v)
    finally:
        hooks.remove()
    return {k: torch.cat(v).contiguous() for k, v in parts.items()}


def _evict(folder: Path, budget: int) -> None:
    """Delete files until the others fit in ``budget`` bytes: those set aside as corrupt first (nothing reads
    them), then the least recently used cache files."""
    aside = sorted(folder.glob(f"*{CORRUPT}"), key=lambda p: p.stat().st_mtime)
    files = aside + sorted(folder.glob("*.safetensors"), key=lambda p: p.stat().st_mtime)
    total = sum(p.stat().st_size for p in files)
    for p in files:
        if total <= budget:
            break
        size = p.stat().st_size
        if p not in aside:
            log.warning("teacher cache over its cap: evicting least recently used %s (%.0f MB)", p.name,
                        size / 2**20)
        p.unlink(missing_ok=True)
        p.with_name(p.name + CHECKSUM).unlink(missing_ok=True)
        total -= size


# -- the cache at real size (issue 11): bytes per step, and disk or live ---------------------------
_INPUT_BYTES = {"noisy": 4, "timesteps": 8, "target": 4}  # as BatchStream makes them: fp32, int64


def cache_bytes_parts(unet_config, batch_size: int, latent_size: int, dtype_bytes: int = 4, text_tokens: int = 77,
                      model_class=UNet2DConditionModel, *, family: Family) -> dict[str, int]:
    """Bytes one cached KD step takes in the cache file, by part: ``inputs`` (noisy, timesteps, target),
    ``cond`` (the batch's conditioning as the family's ``encode_text`` makes it, fp32: text embeddings, masks,
    pooled projections, ...: ``cond_of_inputs``) and ``teacher`` (its output and every feature of the family's
    ``kd_teacher_modules``, stored at ``dtype_bytes``). ``unet_config``: the teacher denoiser's config, of
    ``model_class`` and ``family``.

    Shapes come from forward hooks on the denoiser built from the config on the meta device: no weights,
    no memory, no download."""
    with torch.device("meta"):
        model = model_class.from_config(dict(unet_config)).eval()
        args = family.forward_inputs(model.config, batch_size, latent_size, device="meta", text_len=text_tokens)
        hooks = FeatureHooks(model, family.kd_teacher_modules(family.topology(model.config)), family)
        try:
            with torch.no_grad():
                out, feats = model(**args).sample, hooks.pop()
        finally:
            hooks.remove()
    noisy = args.get("sample", args.get("hidden_states"))  # Flux's packed tokens: the latents' numel
    inputs = {"noisy": noisy.numel(), "timesteps": batch_size, "target": noisy.numel()}  # target: eps, v or flow
    return {"inputs": sum(n * _INPUT_BYTES[k] for k, n in inputs.items()),
            "cond": sum(t.numel() * t.element_size() for t in family.cond_of_inputs(args).values()),
            "teacher": sum(t.numel() for t in [out, *feats.values()]) * dtype_bytes}


def cache_bytes_per_step(unet_config, batch_size: int, latent_size: int, dtype_bytes: int = 4,
                         text_tokens: int = 77, model_class=UNet2DConditionModel, *, family: Family) -> int:
    """Bytes one cached KD step takes in the cache file: the sum of ``cache_bytes_parts``."""
    return sum(cache_bytes_parts(unet_config, batch_size, latent_size, dtype_bytes, text_tokens, model_class,
                                 family=family).values())


def cache_cap(folder: Path, cap_gb: float) -> tuple[int, str]:
    """The bytes the cache may hold, and what bounds them: ``cap_gb`` or, where less, what the disk has free
    (the cache's own files count as free: they are evicted first) less ``DISK_RESERVE``: the disk never fills."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ours = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    disk = shutil.disk_usage(folder).free + ours - DISK_RESERVE
    cap = int(cap_gb * 2**30)
    if disk < cap:
        return max(0, disk), f"the disk's free space less {DISK_RESERVE / 2**30:g} GiB"
    return cap, "BLOCKSEARCH_CACHE_GB"


def cache_figures(bytes_per_step: int, steps: int, cap_bytes: int, cap_what: str = "BLOCKSEARCH_CACHE_GB",
                  cond_bytes: int | None = None) -> str:
    """The cache's size in one line; ``cond_bytes``: the conditioning's share of a step (``cache_bytes_parts``)."""
    cond = "" if cond_bytes is None else f" ({cond_bytes / 2**20:,.2f} MiB of it conditioning)"
    return (f"teacher cache {steps} steps x {bytes_per_step / 2**20:,.1f} MiB{cond} = "
            f"{bytes_per_step * steps / 2**30:,.2f} GiB, cap {cap_bytes / 2**30:,.2f} GiB ({cap_what})")


def cache_plan(bytes_per_step: int, steps: int, cap_bytes: int, cap_what: str = "BLOCKSEARCH_CACHE_GB",
               cond_bytes: int | None = None) -> tuple[str, str]:
    """("disk", why) when ``steps`` cached steps fit under the cap, else ("live", why): the teacher then
    runs alongside the student in every trial instead of being read from the cache (docs/design.md)."""
    figures = cache_figures(bytes_per_step, steps, cap_bytes, cap_what, cond_bytes)
    if bytes_per_step * steps <= cap_bytes:
        return "disk", f"{figures}: fits, computed once and shared by every trial"
    return "live", f"{figures}: over the cap, so the teacher runs live in each trial"
