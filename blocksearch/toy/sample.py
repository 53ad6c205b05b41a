"""Generate toy-world images from a pipeline: the shared generate loop, with prompts checked against the grammar."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from blocksearch.recipe import generation
from blocksearch.toy.world import validate_prompt


def generate(pipe, prompts: Sequence[str], seeds: Sequence[int], **options) -> torch.Tensor:
    """uint8 (N,3,64,64) images of prompts of the toy grammar, a one-line error otherwise; ``options`` are
    ``generation.generate``'s (num_steps, guidance_scale, batch_size, progress, resolution)."""
    for p in prompts:
        validate_prompt(p)
    return generation.generate(pipe, prompts, seeds, **options)
