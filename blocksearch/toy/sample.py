"""Generate toy-world images from a pipeline: one seed per prompt, batched, uint8 out."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from blocksearch.toy.world import validate_prompt

NUM_STEPS = 10  # DPM-Solver++ steps, as the default evaluation settings (evaluate.EvalConfig.steps)
GUIDANCE_SCALE = 3.0  # classifier-free guidance weight, as evaluate.EvalConfig.guidance (see there)
N_PROMPTS = 128  # held-out prompts for `toy check`, as evaluate.EvalConfig.prompts


@torch.no_grad()
def generate(
    pipe,
    prompts: Sequence[str],
    seeds: Sequence[int],
    num_steps: int = NUM_STEPS,
    guidance_scale: float = GUIDANCE_SCALE,
    batch_size: int = 64,
    progress: bool = False,
) -> torch.Tensor:
    """uint8 (N,3,64,64) images; image i depends only on (prompts[i], seeds[i]), not on batching."""
    if len(prompts) != len(seeds):
        raise ValueError(f"generate got {len(prompts)} prompts but {len(seeds)} seeds")
    for p in prompts:
        validate_prompt(p)
    out = []
    for i in tqdm(range(0, len(prompts), batch_size), desc="sample", unit="batch", disable=not progress):
        gens = [torch.Generator(pipe.device).manual_seed(int(s)) for s in seeds[i : i + batch_size]]
        imgs = pipe(
            list(prompts[i : i + batch_size]), num_inference_steps=num_steps, guidance_scale=guidance_scale,
            generator=gens, output_type="pt",
        ).images
        out.append((imgs.clamp(0, 1) * 255).round().to(torch.uint8).cpu())
    return torch.cat(out)
