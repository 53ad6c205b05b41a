"""One-shot block importance of a teacher transformer, without training, on held-out batches (the probe's):

- ``skip_mse``: the mean squared change of the prediction when the block alone is skipped (its output replaced by
  its input), as Flux.1-Lite ranked FLUX.1-dev's blocks (Freepik, huggingface.co/Freepik/flux.1-lite-8B);
- ``influence``: ShortGPT's block influence (Men et al., arXiv 2403.03853, eq. 2), 1 - the mean over tokens of
  the cosine similarity between the block's input and output hidden states (the image stream of joint blocks).

Higher means more important on both. ``block_importance`` returns the ranked table; ``one_shot_genome`` keeps the
top blocks of a group, ``removed_importance`` scores a genome by what it removes (a one-shot predictor).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from blocksearch.errors import BlocksearchError
from blocksearch.families.dit.genome import DitGenome, DitTopology
from blocksearch.families.dit.pipeline import forward as family_forward
from blocksearch.families.dit.surgery import block_feature, model_topology

MEASURES = ("skip_mse", "influence")


@dataclass(frozen=True)
class BlockScore:
    """One teacher block's one-shot importance and its rank per measure (1 = most important)."""

    group: str
    index: int
    skip_mse: float
    influence: float
    skip_rank: int
    influence_rank: int

    @property
    def module(self) -> str:
        return f"{self.group}.{self.index}"


def _block_inputs(args, kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(hidden_states, encoder_hidden_states) a block was called with (diffusers passes them by keyword, PixArt
    its hidden states by position)."""
    hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
    return hidden, kwargs.get("encoder_hidden_states", args[1] if len(args) > 1 else None)


def _skip(module, args, kwargs, output):
    """A forward hook that makes the block the identity: joint blocks (SD3, Flux) return (text, image) streams,
    SD3's last block None for the text; PixArt / DiT blocks the hidden states."""
    hidden, context = _block_inputs(args, kwargs)
    if isinstance(output, tuple):
        return (None if output[0] is None else context, hidden)
    return hidden


def _blocks(denoiser) -> list[tuple[str, int, torch.nn.Module]]:
    topo = model_topology(denoiser)
    return [(g, i, getattr(denoiser, g)[i]) for g, n in topo.depths for i in range(n)]


@torch.no_grad()
def block_importance(denoiser: torch.nn.Module, batches, forward=family_forward) -> list[BlockScore]:
    """Both measures for every block of ``denoiser`` on ``batches`` (each with ``noisy``, ``timesteps``, ``cond``:
    the probe's ``Batch``), averaged over batches; rows ranked by ``skip_mse``, most important first. One pass
    records every block's input and output; then one pass per block with that block skipped."""
    batches = list(batches)
    if not batches:
        raise BlocksearchError("block_importance: no batches; allowed: one or more held-out batches")
    blocks, was_training = _blocks(denoiser), denoiser.training
    denoiser.eval()
    cosines: dict[tuple[str, int], list[float]] = {(g, i): [] for g, i, _ in blocks}
    mse: dict[tuple[str, int], list[float]] = {(g, i): [] for g, i, _ in blocks}
    try:
        for batch in batches:
            handles = [block.register_forward_hook(_influence_hook(cosines[(g, i)]), with_kwargs=True)
                       for g, i, block in blocks]
            try:
                reference = forward(denoiser, batch.noisy, batch.timesteps, batch.cond).float()
            finally:
                for h in handles:
                    h.remove()
            for g, i, block in blocks:
                handle = block.register_forward_hook(_skip, with_kwargs=True)
                try:
                    out = forward(denoiser, batch.noisy, batch.timesteps, batch.cond).float()
                finally:
                    handle.remove()
                mse[(g, i)].append(F.mse_loss(out, reference).item())
    finally:
        denoiser.train(was_training)
    skip = {k: sum(v) / len(v) for k, v in mse.items()}
    influence = {k: 1 - sum(v) / len(v) for k, v in cosines.items()}
    rank = lambda score: {k: r for r, k in enumerate(sorted(score, key=lambda k: (-score[k], k)), 1)}  # noqa: E731
    skip_rank, influence_rank = rank(skip), rank(influence)
    rows = [BlockScore(g, i, skip[(g, i)], influence[(g, i)], skip_rank[(g, i)], influence_rank[(g, i)])
            for g, i, _ in blocks]
    return sorted(rows, key=lambda r: r.skip_rank)


def _influence_hook(sink: list[float]):
    """Record 1 - BI's term: the mean over tokens of cos(block input, block output), image stream."""
    def hook(module, args, kwargs, output):
        hidden, _ = _block_inputs(args, kwargs)
        sink.append(F.cosine_similarity(hidden.float(), block_feature(output).float(), dim=-1).mean().item())
    return hook


def one_shot_genome(table: list[BlockScore], topology: DitTopology, keep: dict[str, int],
                    measure: str = "skip_mse") -> DitGenome:
    """The genome keeping the ``keep[group]`` most important blocks of each group by ``measure`` (a group not in
    ``keep`` keeps all): the one-shot pick that a trained search is measured against."""
    if measure not in MEASURES:
        raise BlocksearchError(f"one-shot measure {measure!r}; allowed: {', '.join(MEASURES)}")
    kept = []
    for g, n in topology.depths:
        k = keep.get(g, n)
        if not 1 <= k <= n:
            raise BlocksearchError(f"one-shot pick: keep {k} of {g}'s {n} blocks; allowed 1..{n}")
        ranked = sorted((r for r in table if r.group == g), key=lambda r: -getattr(r, measure))
        kept.append((g, tuple(sorted(r.index for r in ranked[:k]))))
    return DitGenome(tuple(kept))


def removed_importance(table: list[BlockScore], genome: DitGenome, measure: str = "skip_mse") -> float:
    """The summed importance of the blocks ``genome`` removes (lower: a better student, one-shot)."""
    return sum(getattr(r, measure) for r in table if r.index not in genome.blocks(r.group))
