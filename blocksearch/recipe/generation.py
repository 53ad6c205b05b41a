"""Images to score: the seeded generate loop and the image dataset torch-fidelity reads.
Shared by ``evaluate.py`` and the toy world (``toy/sample.py``, ``toy/judge.py``)."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

import torch
from tqdm.auto import tqdm

from blocksearch.cache import yield_to_measurement
from blocksearch.console import quiet
from blocksearch.families.base import family_of
from blocksearch.settings import GUIDANCE_SCALE, NUM_STEPS


@torch.no_grad()
def generate(
    pipe,
    prompts: Sequence[str],
    seeds: Sequence[int],
    num_steps: int = NUM_STEPS,
    guidance_scale: float = GUIDANCE_SCALE,
    batch_size: int = 64,
    progress: bool = False,
    resolution: int | None = None,
) -> torch.Tensor:
    """uint8 (N,3,H,W) images; image i depends only on (prompts[i], seeds[i]), not on batching; at
    ``resolution`` px (None: the pipeline's default, the denoiser's sample_size x the VAE scale factor). The
    pipeline is called as its denoiser's family says (``call_kwargs``: PixArt's text length, for one)."""
    if len(prompts) != len(seeds):
        raise ValueError(f"generate got {len(prompts)} prompts but {len(seeds)} seeds")
    kwargs = family_of(pipe).call_kwargs(pipe)  # (a size there, Flux's: ``resolution`` overrides it)
    kwargs |= {"height": resolution, "width": resolution} if resolution else {}
    if "callback_on_step_end" in inspect.signature(pipe.__call__).parameters:
        kwargs["callback_on_step_end"] = _yield_each_step
    else:  # PixArt's pipelines take the older per-step callback
        kwargs |= {"callback": lambda step, timestep, latents: yield_to_measurement(), "callback_steps": 1}
    out = []
    for i in tqdm(range(0, len(prompts), batch_size), desc="generate", unit="batch", disable=not progress or quiet()):
        gens = [torch.Generator(pipe.device).manual_seed(int(s)) for s in seeds[i : i + batch_size]]
        imgs = pipe(
            list(prompts[i : i + batch_size]), num_inference_steps=num_steps, guidance_scale=guidance_scale,
            generator=gens, output_type="pt", **kwargs,
        ).images
        out.append((imgs.clamp(0, 1) * 255).round().to(torch.uint8).cpu())
    return torch.cat(out)


def _yield_each_step(pipe, step: int, timestep, callback_kwargs: dict) -> dict:
    """A checkpoint per denoising step: a latency measurement of another process waits one step at most."""
    yield_to_measurement()
    return callback_kwargs


class ImageSet(torch.utils.data.Dataset):
    """uint8 (3,H,W) images as the Dataset torch-fidelity reads: ``n`` items made on demand by ``make(i)``,
    or ``ImageSet.of(images)`` for a uint8 (N,3,H,W) tensor."""

    def __init__(self, n: int, make: Callable[[int], torch.Tensor]):
        self.n, self.make = n, make

    @classmethod
    def of(cls, images: torch.Tensor) -> "ImageSet":
        return cls(len(images), images.__getitem__)

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return self.make(i)
