"""Learning-rate schedules and weight averaging shared by short KD runs (distill.py) and long ones (train).

- Schedule: linear warm-up (Goyal et al. 2017, "Accurate, Large Minibatch SGD"), then constant, linear decay or
  cosine decay (Loshchilov & Hutter 2017, SGDR) towards 0 at the last step. The rate depends on the step only,
  so a resumed run needs no scheduler state.
- EMA: ema <- d * ema + (1 - d) * w after every optimizer step (Polyak averaging, as DDPM and LDM train); d is
  the decay, or with warm-up min(decay, (1 + n) / (10 + n)) after n updates.
"""

from __future__ import annotations

import copy
import math

import torch

from blocksearch.errors import BlocksearchError

SCHEDULES = ("constant", "linear", "cosine")
EMA_FILE = "ema.safetensors"  # a checkpoint's EMA weights, beside the raw ones


def lr_at(step: int, base: float, warmup: int, total: int, schedule: str) -> float:
    """The learning rate of optimizer update ``step`` (0-based) of ``total``: ``base * (step + 1) / warmup``
    during warm-up, then constant, or decayed linearly / along a half cosine with progress
    p = (step - warmup) / (total - warmup) from ``base`` at p = 0 towards 0 at p = 1."""
    if schedule not in SCHEDULES:
        raise BlocksearchError(f"--schedule {schedule!r}; allowed: {', '.join(SCHEDULES)}")
    if step < warmup:
        return base * (step + 1) / warmup
    p = (step - warmup) / max(1, total - warmup)
    if schedule == "cosine":
        return base * 0.5 * (1.0 + math.cos(math.pi * p))
    return base * (1.0 - p) if schedule == "linear" else base


class Ema:
    """An exponential moving average of a model's weights, kept in fp32 beside it."""

    def __init__(self, model: torch.nn.Module, decay: float, warmup: bool = False):
        if not 0.0 < decay < 1.0:
            raise BlocksearchError(f"--ema {decay}: allowed: 0 (off) or a decay in (0, 1), e.g. 0.999")
        self.decay, self.warmup, self.updates = decay, warmup, 0
        self.model = copy.deepcopy(model).float().eval().requires_grad_(False)

    def decay_now(self) -> float:
        """The decay of the next update: ``decay``, or with ``warmup`` min(decay, (1 + n) / (10 + n)) after n
        updates (TensorFlow's ExponentialMovingAverage num_updates rule), so that a short run's average is not
        dominated by its starting weights."""
        n = self.updates
        return min(self.decay, (1 + n) / (10 + n)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """ema <- d * ema + (1 - d) * w, for every parameter (d = ``decay_now()``); buffers are copied."""
        d = self.decay_now()
        self.updates += 1
        for e, p in zip(self.model.parameters(), model.parameters()):
            e.mul_(d).add_(p.detach().float(), alpha=1.0 - d)
        for e, b in zip(self.model.buffers(), model.buffers()):
            e.copy_(b)
