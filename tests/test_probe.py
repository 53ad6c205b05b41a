"""The held-out KD probe (probe.py) and common random numbers: every candidate sees the same tensors."""

import pytest
import torch

from blocksearch.recipe.data import BatchStream
from blocksearch.recipe.distill import DistillConfig, Distiller, distill, resolve_design
from blocksearch.families.unet.surgery import build_student, kd_teacher_modules
from blocksearch.recipe.probe import Probe, ProbeConfig, probe_batches, stratified_timesteps
from blocksearch.families.unet.topology import topology_of
from tests.conftest import make_tiny_teacher

pytestmark = pytest.mark.usefixtures("one_thread")
SMALL = ProbeConfig(batches=2, batch_size=4)


def _probe(teacher):
    return Probe.build(teacher, kd_teacher_modules(topology_of(teacher.unet.config)), SMALL)


def _student(teacher, design):
    genome, _ = resolve_design(teacher.unet, design)
    return build_student(teacher.unet, genome)


def test_stratified_timesteps_cover_the_schedule_once_each_bin():
    t = stratified_timesteps(8, 1000, seed=3)
    assert sorted(t.tolist()) == [62, 187, 312, 437, 562, 687, 812, 937]  # midpoints of 8 bins of 125
    assert not torch.equal(t, torch.sort(t).values)  # shuffled, seeded
    assert torch.equal(t, stratified_timesteps(8, 1000, seed=3))


def test_two_candidates_are_scored_on_identical_tensors(tmp_path, monkeypatch):
    """Common random numbers: the probe's batches (noisy latents, timesteps, text, targets) do not depend on
    the candidate, are rebuilt identically, and each candidate's KD run reads the same batches."""
    teacher = make_tiny_teacher(tmp_path)
    a, b = _probe(teacher), _probe(teacher)
    for x, y in zip(a.batches, b.batches):
        for field in ("noisy", "timesteps", "target"):
            assert torch.equal(getattr(x, field), getattr(y, field))
        assert torch.equal(x.cond["encoder_hidden_states"], y.cond["encoder_hidden_states"])
    assert torch.equal(a.teacher_cond[0], b.teacher_cond[0])
    stream = BatchStream(teacher.pipeline, "toy", 4, SMALL.seed, family=teacher.family)
    assert torch.equal(probe_batches(stream, SMALL)[1].noisy, a.batches[1].noisy)
    # the KD data of two candidates at one KD seed: each KD run is handed the same batches and teacher targets
    seen, real_step = {}, Distiller.step

    def spy(recipe, step, batch, t_out, t_feats):
        seen.setdefault(recipe.student.genome.id, []).append((batch, t_out))
        return real_step(recipe, step, batch, t_out, t_feats)

    monkeypatch.setattr(Distiller, "step", spy)
    config = DistillConfig(steps=2, batch_size=2, cache_dir=str(tmp_path / "cache"))
    for design in ("bk_small", "bk_tiny"):
        distill(teacher, _student(teacher, design), config, progress=False)
    small, tiny = seen.values()
    assert len(seen) == 2 and len(small) == len(tiny) == 2
    for (x, tx), (y, ty) in zip(small, tiny):
        assert torch.equal(tx, ty)
        for field in ("noisy", "timesteps", "target"):
            assert torch.equal(getattr(x, field), getattr(y, field))
        assert torch.equal(x.cond["encoder_hidden_states"], y.cond["encoder_hidden_states"])
    # ...and the held-out set is not a KD batch
    assert not torch.equal(stream.clean(0)[2][:2], BatchStream(teacher.pipeline, "toy", 2, 0, family=teacher.family).clean(0)[2])


def test_probe_scores_the_teacher_zero_and_a_text_blind_student_one(tmp_path):
    teacher = make_tiny_teacher(tmp_path)
    probe = _probe(teacher)
    kd = tuple((m, m) for m in kd_teacher_modules(topology_of(teacher.unet.config)))
    own = probe.score(teacher.unet, kd)
    assert own["probe_out"] == own["probe_feat"] == own["probe_guide"] == own["probe_cfg"] == 0.0
    assert own["probe_task"] > 0

    class TextBlind(torch.nn.Module):  # the teacher, fed the empty prompt whatever the text: ignores the prompt
        def __init__(self, unet, empty):
            super().__init__()
            self.unet, self.empty = unet, empty

        def forward(self, x, t, text):
            return self.unet(x, t, self.empty.expand_as(text))

    blind = probe.score(TextBlind(teacher.unet, probe.empty["encoder_hidden_states"]), ())
    assert blind["probe_guide"] == pytest.approx(1.0)  # no text direction at all: the whole of the teacher's is error
    student = _student(teacher, "bk_tiny")
    cut = probe.score(student.unet, student.kd_pairs)
    assert cut["probe_out"] > 0 and cut["probe_feat"] > 0 and cut["probe_cfg"] > 0 and 0 < cut["probe_guide"]
