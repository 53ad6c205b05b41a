"""The held-out KD probe: a cheap, paired score of a student against its teacher, without generating images.

Every student is scored on the same fixed held-out batches (common random numbers: the same images,
captions, noise and timesteps for every candidate, so that noise common to all cancels in a comparison),
drawn from a stream no KD run trains on, with timesteps stratified over the schedule (evenly spaced
quantiles instead of uniform draws: lower variance for the same cost). The teacher's outputs are computed
once. For each student it returns:

- ``probe_out``: MSE(eps_s, eps_t), the held-out output-KD loss (BK-SDM's L_out on unseen batches);
- ``probe_feat``: sum over the KD pairs of MSE(F_s, F_t), the held-out feature-KD loss;
- ``probe_task``: MSE(eps_s, target), the held-out denoising loss;
- ``probe_guide``: ||(s_c - s_u) - (t_c - t_u)||^2 / ||t_c - t_u||^2, the relative error of the text
  direction of classifier-free guidance (Ho & Salimans, 2022): 1.0 for a student that ignores the text;
- ``probe_cfg``: MSE of the guided prediction u + w (c - u) against the teacher's at the sampling guidance
  w, the quantity a sampler integrates.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from blocksearch.recipe.data import Batch, BatchStream
from blocksearch.families.base import Family, add_noise
from blocksearch.settings import GUIDANCE_SCALE, PROBE_KEYS, Settings
from blocksearch.recipe.teacher_cache import FeatureHooks

PROBE_SEED = 1_000_003  # the held-out stream's seed: KD streams use small seeds (the run's seed + k)


@dataclass(frozen=True)
class ProbeConfig(Settings):
    """The held-out set: ``batches`` x ``batch_size`` samples of the stream seeded ``seed``."""

    batches: int = 8
    batch_size: int = 16
    seed: int = PROBE_SEED
    guidance: float = GUIDANCE_SCALE


def stratified_timesteps(n: int, num_train_timesteps: int, seed: int) -> torch.Tensor:
    """``n`` timesteps at the midpoints of ``n`` equal bins of [0, T), in a seeded random order."""
    t = ((torch.arange(n, dtype=torch.float64) + 0.5) * num_train_timesteps / n).long()
    return t[torch.randperm(n, generator=torch.Generator().manual_seed(seed))]


def probe_batches(stream: BatchStream, config: ProbeConfig) -> list[Batch]:
    """The held-out batches: the stream's images, captions and noise, with stratified timesteps (the noisy
    input and target recomputed for them). Captions are never dropped: the unconditional pass is separate."""
    sched, n = stream.scheduler, config.batches * config.batch_size
    steps = stratified_timesteps(n, sched.config.num_train_timesteps, config.seed).view(config.batches, -1)
    out = []
    for i in range(config.batches):
        latents, cond, noise = stream.clean(i)
        t = steps[i]
        noisy = add_noise(sched, latents, noise, t)
        out.append(Batch(noisy, t, cond, stream.family.training_target(sched, latents, noise, t)))
    return out


@dataclass
class Probe:
    """The held-out batches with the teacher's conditional and unconditional outputs and features."""

    config: ProbeConfig
    batches: list[Batch]
    empty: dict[str, torch.Tensor]  # the empty caption's cond (the family's): the unconditional branch
    teacher_cond: list[torch.Tensor]
    teacher_uncond: list[torch.Tensor]
    teacher_feats: list[dict[str, torch.Tensor]]
    family: Family  # the teacher's denoiser family (families/base.py): how the denoiser is called

    @classmethod
    @torch.no_grad()
    def build(cls, teacher, modules: tuple[str, ...], config: ProbeConfig = ProbeConfig(), device="cpu",
              data: str = "toy", cache_dir=None, resolution: int | None = None) -> "Probe":
        """Run the teacher once on the held-out set of the KD data ``data``, keeping the outputs of ``modules``
        (the KD pairs' teacher side: ``kd_teacher_modules``)."""
        stream = BatchStream(teacher.pipeline, data, config.batch_size, config.seed, cache_dir, resolution,
                             family=teacher.family)
        batches = [b.to(device) for b in probe_batches(stream, config)]
        empty = {k: v.to(device) for k, v in stream.empty_cond().items()}
        family, unet = teacher.family, teacher.denoiser.eval()
        hooks = FeatureHooks(unet, modules, family)
        cond, uncond, feats = [], [], []
        try:
            for b in batches:
                cond.append(family.forward(unet, b.noisy, b.timesteps, b.cond).float())
                feats.append({k: v.float() for k, v in hooks.pop().items()})
                uncond.append(family.forward(unet, b.noisy, b.timesteps, b.unconditional(empty).cond).float())
                hooks.pop()
        finally:
            hooks.remove()
        return cls(config, batches, empty, cond, uncond, feats, family)

    @torch.no_grad()
    def score(self, unet: torch.nn.Module, kd_pairs: tuple[tuple[str, str], ...]) -> dict[str, float]:
        """The probe's scores of a student (see the module docstring), averaged over the held-out batches."""
        t0 = time.perf_counter()
        was_training = unet.training
        unet.eval()
        hooks = FeatureHooks(unet, [s for _, s in kd_pairs], self.family)
        w = self.config.guidance
        sums = dict.fromkeys(("probe_out", "probe_feat", "probe_task", "guide_err", "guide_ref", "probe_cfg"), 0.0)
        try:
            for b, tc, tu, tf in zip(self.batches, self.teacher_cond, self.teacher_uncond, self.teacher_feats):
                sc = self.family.forward(unet, b.noisy, b.timesteps, b.cond).float()
                sf = hooks.pop()
                su = self.family.forward(unet, b.noisy, b.timesteps, b.unconditional(self.empty).cond).float()
                hooks.pop()
                sums["probe_out"] += F.mse_loss(sc, tc).item()
                sums["probe_task"] += F.mse_loss(sc, b.target.float()).item()
                sums["probe_feat"] += sum(F.mse_loss(sf[s].float(), tf[t]).item() for t, s in kd_pairs)
                sums["guide_err"] += F.mse_loss(sc - su, tc - tu).item()
                sums["guide_ref"] += (tc - tu).pow(2).mean().item()
                sums["probe_cfg"] += F.mse_loss(su + w * (sc - su), tu + w * (tc - tu)).item()
        finally:
            hooks.remove()
            unet.train(was_training)
        n = len(self.batches)
        out = {k: sums[k] / n for k in ("probe_out", "probe_feat", "probe_task", "probe_cfg")}
        out["probe_guide"] = sums["guide_err"] / max(sums["guide_ref"], 1e-12)
        out["probe_s"] = time.perf_counter() - t0
        return out


_BUILT: dict = {}  # one probe per process and (teacher, settings): Ray workers are reused across trials and ladders


def teacher_probe(spec: str, teacher, config: ProbeConfig = ProbeConfig(), device="cpu", data: str = "toy",
                  cache_dir: str | Path | None = None, resolution: int | None = None) -> Probe:
    """``Probe.build`` for the teacher loaded from ``spec``, its every KD module kept, once per process."""
    key = (spec, str(device), data, str(cache_dir), resolution, config)
    if key not in _BUILT:
        family = teacher.family
        _BUILT[key] = Probe.build(teacher, family.kd_teacher_modules(family.topology(teacher.denoiser.config)), config,
                                  device, data, cache_dir, resolution)
    return _BUILT[key]
