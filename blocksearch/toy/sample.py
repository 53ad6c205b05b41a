"""Generate toy-world images from a pipeline: the shared generate loop, with prompts checked against the grammar."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from blocksearch import generation
from blocksearch.settings import GUIDANCE_SCALE, NUM_STEPS
from blocksearch.toy.world import validate_prompt


def generate(
    pipe,
    prompts: Sequence[str],
    seeds: Sequence[int],
    num_steps: int = NUM_STEPS,
    guidance_scale: float = GUIDANCE_SCALE,
    batch_size: int = 64,
    progress: bool = False,
) -> torch.Tensor:
    """uint8 (N,3,64,64) images (``generation.generate``) of prompts of the toy grammar; a one-line error otherwise."""
    for p in prompts:
        validate_prompt(p)
    return generation.generate(pipe, prompts, seeds, num_steps, guidance_scale, batch_size, progress)
