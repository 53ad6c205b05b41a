"""The teacher's own scores, measured once per (teacher, evaluation settings, device, threads), and the
text-aware alignment floor derived from them."""

import pytest

from blocksearch.recipe import baseline
from blocksearch.recipe.evaluate import EvalConfig
from tests.conftest import make_tiny_teacher

pytestmark = pytest.mark.usefixtures("one_thread")
FAST = dict(prompts=4, steps=2, reference_images=8, latency_warmup=1, latency_repeats=2, latency_min_s=0.0,
            e2e_repeats=1)


def test_teacher_reference_is_measured_once_and_cached(tmp_path, monkeypatch):
    teacher = make_tiny_teacher(tmp_path)
    config = EvalConfig(**FAST, cache_dir=str(tmp_path / "cache"))
    first = baseline.teacher_reference(teacher, config, progress=False)
    assert first["e2e_ms"] > first["latency_ms"] > 0 and first["memory_mb"] > first["weights_mb"] > 0
    monkeypatch.setattr(baseline, "evaluate", lambda *a, **k: pytest.fail("the teacher was scored twice"))
    assert baseline.teacher_reference(teacher, config, progress=False) == first
    other = EvalConfig(**{**FAST, "prompts": 3}, cache_dir=str(tmp_path / "cache"))
    assert baseline.reference_key(teacher, other, "cpu") != baseline.reference_key(teacher, config, "cpu")


def test_alignment_floor():
    assert baseline.alignment_bound(0.8, 0.25) == pytest.approx(0.2)
    assert baseline.alignment_bound(None, 0.25) is None  # a teacher without an alignment score: no rule
    assert baseline.alignment_bound(0.8, 0.0) is None  # --min-alignment 0: off
