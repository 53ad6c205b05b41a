"""Surgery for random block masks on tiny PixArt, SD3 and Flux transformers (diffusers' own test sizes): every
student tensor is accounted for (copied from the teacher block it keeps, or derived: SD3's last text norm), every
teacher tensor of a kept block is used, and the student runs."""

import random

import optuna
import pytest
import torch

from blocksearch.families.dit.surgery import build_student, model_topology, teacher_key
from blocksearch.families.dit.space import load
from tests.test_families_dit import TINY, _inputs, _out

SPACE = {"name": "m", "family": "dit", "groups": {"transformer_blocks": {"kept": [1, "100%"]},
                                                   "single_transformer_blocks": {"optional": True, "kept": [1, "100%"]}}}


@pytest.mark.parametrize("name", ["pixart", "sd3", "flux"])
def test_surgery_on_random_masks_accounts_for_every_tensor(name):
    torch.manual_seed(0)
    teacher = TINY[name]().eval()
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(0.02 * torch.randn_like(p))
    bound = load("m.yaml", SPACE).bind(model_topology(teacher))
    t_state = teacher.state_dict()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=random.Random(name).randrange(10**6)))
    draws = [bound.suggest(study.ask()) for _ in range(6)]
    inner_last = [g for g in draws if max(g.blocks("transformer_blocks")) < 3]  # SD3: the derived text norm
    seen = set()
    for genome in draws + ([] if inner_last else [bound.from_id("D1.2" if name != "flux" else "D1.2_S0.3")]):
        seen.add(genome)
        student = build_student(teacher, genome)
        s_state, derived = student.denoiser.state_dict(), set(student.derived)
        used = set()
        for key, tensor in s_state.items():
            source = teacher_key(key, genome)
            used.add(source)
            value = t_state[source]
            if key in derived:  # SD3's last block: (scale, shift) of the teacher block's AdaLayerNormZero rows
                shift, scale = value.chunk(6)[:2]
                value = torch.cat([scale, shift])
            assert torch.equal(tensor, value), key
        kept = {f"{g}.{t}." for g in genome.groups for t in genome.blocks(g)}
        in_blocks = lambda k: k.split(".")[0] in genome.groups  # noqa: E731
        expected = {k for k in t_state if not in_blocks(k) or any(k.startswith(p) for p in kept)}
        last = max(genome.blocks("transformer_blocks"))
        if name == "sd3" and last < model_topology(teacher).depth("transformer_blocks") - 1:
            # the student's last block writes no text stream: the teacher block's text output layers go unused
            expected -= {f"transformer_blocks.{last}.{m}.{w}" for w in ("weight", "bias")
                         for m in ("attn.to_add_out", "ff_context.net.0.proj", "ff_context.net.2")}
        assert used == expected and student.fresh == ()
        assert bool(derived) == (name == "sd3" and last < model_topology(teacher).depth("transformer_blocks") - 1)
        inputs = _inputs(teacher)
        out = _out(student.denoiser, inputs)
        assert out.shape == _out(teacher, inputs).shape and torch.isfinite(out).all()
    assert len(seen) >= 4
