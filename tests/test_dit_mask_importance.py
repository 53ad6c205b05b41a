"""One-shot block importance (families/dit/importance.py) against a hand computation on tiny transformers: the
skip score is the output MSE of the student that drops the block (surgery), the block influence is ShortGPT's
1 - cos(input, output) computed by its formula from each block's recorded hidden states."""

import pytest
import torch

from blocksearch.errors import BlocksearchError
from blocksearch.families.dit.genome import DitGenome
from blocksearch.families.dit.importance import block_importance, one_shot_genome, removed_importance
from blocksearch.families.dit.pipeline import forward
from blocksearch.families.dit.surgery import build_student, model_topology
from blocksearch.recipe.data import Batch
from tests.test_families_dit import TINY


def _teacher(name):
    torch.manual_seed(0)
    model = TINY[name]().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def _batches(model, n=2):
    c, gen = model.config, torch.Generator().manual_seed(3)
    text_dim = c.get("caption_channels") or c["joint_attention_dim"]
    out = []
    for _ in range(n):
        channels = c["in_channels"] // 4 if "num_single_layers" in c else c["in_channels"]  # Flux: packed 2x2
        noisy = torch.randn(2, channels, 8, 8, generator=gen)
        cond = {"encoder_hidden_states": torch.randn(2, 5, text_dim, generator=gen)}
        if "pooled_projection_dim" in c:
            cond["pooled_projections"] = torch.randn(2, c["pooled_projection_dim"], generator=gen)
        out.append(Batch(noisy, torch.tensor([100, 700]), cond, torch.zeros_like(noisy)))
    return out


def _cos(a, b):
    """ShortGPT's term, by its formula: x_i . x_{i+1} / (|x_i| |x_{i+1}|), averaged over every token."""
    return ((a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))).mean().item()


def test_pixart_scores_equal_the_hand_computation():
    teacher = _teacher("pixart")
    batches = _batches(teacher)
    table = block_importance(teacher, batches)
    by_block = {r.index: r for r in table}
    n = model_topology(teacher).depth("transformer_blocks")
    stream = {}  # the hidden states entering block 0 (the patch embedding's output) and leaving each block
    teacher.pos_embed.register_forward_hook(lambda m, a, out: stream.setdefault(-1, []).append(out))
    for i in range(n):
        teacher.transformer_blocks[i].register_forward_hook(lambda m, a, out, i=i: stream.setdefault(i, []).append(out))
    with torch.no_grad():
        reference = [forward(teacher, b.noisy, b.timesteps, b.cond) for b in batches]
    for i in range(n):
        student = build_student(teacher, DitGenome.from_id("D" + ".".join(str(j) for j in range(n) if j != i)))
        with torch.no_grad():
            mse = [torch.mean((forward(student.denoiser, b.noisy, b.timesteps, b.cond) - r) ** 2).item()
                   for b, r in zip(batches, reference)]
        assert by_block[i].skip_mse == pytest.approx(sum(mse) / len(mse), rel=1e-5)
        cos = [_cos(stream[i - 1][k], stream[i][k]) for k in range(len(batches))]
        assert by_block[i].influence == pytest.approx(1 - sum(cos) / len(cos), rel=1e-5, abs=1e-7)
    assert [r.skip_rank for r in table] == list(range(1, n + 1))  # ranked, most important first
    assert sorted(r.influence_rank for r in table) == list(range(1, n + 1))
    assert all(r.skip_mse > 0 and 0 < r.influence < 2 for r in table)


def test_flux_joint_and_single_blocks_are_skipped_as_surgery_drops_them():
    teacher = _teacher("flux")
    batches = _batches(teacher, n=1)
    table = block_importance(teacher, batches)
    topo = model_topology(teacher)
    assert {(r.group, r.index) for r in table} == {(g, i) for g, n in topo.depths for i in range(n)}
    with torch.no_grad():
        reference = forward(teacher, batches[0].noisy, batches[0].timesteps, batches[0].cond)
    for row in table:
        kept = tuple((g, tuple(i for i in range(n) if (g, i) != (row.group, row.index))) for g, n in topo.depths)
        student = build_student(teacher, DitGenome(kept)).denoiser
        with torch.no_grad():
            out = forward(student, batches[0].noisy, batches[0].timesteps, batches[0].cond)
        assert row.skip_mse == pytest.approx(torch.mean((out - reference) ** 2).item(), rel=1e-5), row.module


def test_one_shot_pick_and_removed_importance():
    teacher = _teacher("pixart")
    table = block_importance(teacher, _batches(teacher, n=1))
    topo = model_topology(teacher)
    pick = one_shot_genome(table, topo, {"transformer_blocks": 2})
    top2 = sorted(r.index for r in table[:2])
    assert pick.blocks("transformer_blocks") == tuple(top2)
    dropped = [r for r in table if r.index not in top2]
    assert removed_importance(table, pick) == pytest.approx(sum(r.skip_mse for r in dropped))
    with pytest.raises(BlocksearchError, match="allowed: skip_mse, influence"):
        one_shot_genome(table, topo, {}, measure="cosine")
    with pytest.raises(BlocksearchError, match="keep 9 of transformer_blocks's 4 blocks; allowed 1..4"):
        one_shot_genome(table, topo, {"transformer_blocks": 9})
