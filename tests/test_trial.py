"""trial.py: a reference design's student is scored again at more generation seeds (the report's seed noise),
with the main seed's FID reference set and without measuring latency again; other candidates are not."""

from pathlib import Path
from types import SimpleNamespace

import pytest

from blocksearch.recipe import evaluate as evaluate_module
from blocksearch.recipe import latency
from blocksearch.search import trial
from blocksearch.recipe.probe import ProbeConfig
from blocksearch.settings import PROBE_KEYS
from blocksearch.space import load_space
from blocksearch.families.unet.topology import topology_of
from blocksearch.recipe.evaluate import EvalConfig
from blocksearch.search.study_reuse import reused_or_trained
from blocksearch.search.trial import TrialJob, seed_scores
from blocksearch.families.base import get_family
from blocksearch.teachers import TeacherRef, resolve_teacher
from tests.conftest import make_tiny_teacher

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = TeacherRef("tiny", "folder", None, get_family("unet"))  # names make_tiny_teacher's (cached_teacher is patched)

FAST = dict(prompts=12, steps=2, reference_images=24)


def _no_timing(*args, **kwargs):
    raise AssertionError("latency or memory measured again at another seed")


def test_scores_at_more_generation_seeds(tmp_path, monkeypatch):
    for module, name in ((evaluate_module, "speed_and_memory"), (latency, "measure_latency"),
                         (evaluate_module, "cost")):
        monkeypatch.setattr(module, name, _no_timing)
    teacher = make_tiny_teacher(tmp_path)
    config = EvalConfig(**FAST, seed=5, cache_dir=str(tmp_path / "cache"))
    main = {"fid": 1.0, "alignment": 0.5, "kid": 0.01, "latency_ms": 3.0}
    rows = seed_scores(teacher, teacher.unet, config, main, 3, "cpu")
    assert [r["seed"] for r in rows] == [5, 17, 29]  # strides of the 12 prompts: every prompt's seed is new
    assert rows[0] == {"seed": 5, "kd_seed": 0, "fid": 1.0, "alignment": 0.5, "kid": 0.01}  # not measured again
    assert rows[1]["fid"] > 0 and rows[1]["fid"] != rows[2]["fid"] and 0 <= rows[1]["alignment"] <= 1
    assert set(rows[1]) == {"seed", "kd_seed", "fid", "kid", "alignment"} and rows[1]["kid"] != rows[2]["kid"]
    assert [r["kd_seed"] for r in rows] == [0, 0, 0]  # no retrain given: the same student
    # one FID reference set (the toy's depends on the seed): only the generation seed changed
    refs = {p.name[:32] for p in (tmp_path / "cache" / "fidelity").glob("blocksearch-ref-*")}  # by key
    assert len(refs) == 1


def test_with_retrain_each_extra_seed_scores_a_student_trained_again(tmp_path):
    import copy

    import torch

    teacher = make_tiny_teacher(tmp_path)
    config = EvalConfig(**FAST, seed=0, cache_dir=str(tmp_path / "cache"))
    asked = []

    def retrain(k):
        asked.append(k)
        other = copy.deepcopy(teacher.unet)
        with torch.no_grad():
            for p in other.parameters():
                p.mul_(1 + 0.05 * k)  # another KD seed: other weights
        return SimpleNamespace(unet=other, kd_pairs=())

    same = seed_scores(teacher, teacher.unet, config, {"fid": 1.0, "alignment": 0.5}, 2, "cpu")
    again = seed_scores(teacher, teacher.unet, config, {"fid": 1.0, "alignment": 0.5}, 3, "cpu", retrain)
    assert asked == [1, 2] and [r["kd_seed"] for r in again] == [0, 1, 2]
    assert again[1]["seed"] == same[1]["seed"] and again[1]["fid"] != same[1]["fid"]  # the retrained student's


def _fake_stages(monkeypatch, tmp_path, calls):
    student = SimpleNamespace(unet=SimpleNamespace(save_pretrained=lambda path, **k: Path(path).mkdir(parents=True)))
    metrics = SimpleNamespace(timings={"generate_s": 1.0, "score_s": 1.0, "latency_s": 1.0},
                              to_dict=lambda: {"fid": 9.0, "alignment": 0.4})
    monkeypatch.setattr(trial, "cached_teacher", lambda spec, device: SimpleNamespace(unet=None))
    monkeypatch.setattr(trial, "build_student", lambda unet, genome: student)
    monkeypatch.setattr(trial, "block_map", lambda *a: {})  # no real teacher to map from
    monkeypatch.setattr(trial, "distill", lambda teacher, student, config, **k: calls.append(("kd", config.seed))
                        or SimpleNamespace(wall_s=2.0, extra={"start_step": 0}))
    monkeypatch.setattr(trial, "evaluate", lambda *a, **k: metrics)

    def scores(teacher, unet, config, m, n, device, retrain, probe=None):
        calls.append(n)
        retrain(1)  # a second student of the same architecture, KD seed + 1
        return [{"seed": 0}]

    monkeypatch.setattr(trial, "seed_scores", scores)


def test_only_reference_designs_are_scored_at_more_seeds(tmp_path, monkeypatch):
    calls = []
    _fake_stages(monkeypatch, tmp_path, calls)
    genome = SimpleNamespace(id="g")
    job = TrialJob(resolve_teacher("toy"), "cpu", {}, {}, str(tmp_path), 1, 1, noise_seeds=3)
    searched = trial._train_candidate(genome, job, lambda step, losses: None)
    assert calls == [("kd", 0)] and searched.seed_scores == [] and "noise_s" not in searched.timings
    calls.clear()
    design = trial._train_candidate(genome, TrialJob(**{**vars(job), "design": "bk_base"}), lambda s, l: None)
    assert calls == [("kd", 0), 3, ("kd", 1)]  # the extra seed retrains with KD seed 0 + 1
    assert design.seed_scores == [{"seed": 0}] and design.timings["noise_s"] >= 0
    calls.clear()
    trial._train_candidate(genome, TrialJob(**{**vars(job), "design": "bk_base", "noise_seeds": 1}),
                           lambda s, l: None)
    assert calls == [("kd", 0)]  # --noise-seeds 1: off


def test_a_probe_scored_trial_keeps_the_probe_at_every_kd_seed(tmp_path, monkeypatch):
    """--score probe_cfg: the trial's metrics carry the held-out probe's scores (its objective), and a reference
    design's extra KD seed is probed too (the score's KD-seed noise)."""
    teacher = make_tiny_teacher(tmp_path)
    monkeypatch.setattr(trial, "cached_teacher", lambda spec, device: teacher)
    monkeypatch.setattr(trial, "ProbeConfig", lambda: ProbeConfig(batches=1, batch_size=2))
    for module, name in ((evaluate_module, "speed_and_memory"), (latency, "measure_latency")):
        monkeypatch.setattr(module, name, lambda *a, **k: ({"latency_ms": 1.0, "latency_cv": 0.0, "e2e_ms": None,
                                                            "memory_mb": None, "weights_mb": None}, {}))
    genome = load_space("unet_blocks").bind(topology_of(teacher.unet.config)).design("bk_tiny")
    job = TrialJob(TINY, "cpu", {"steps": 1, "batch_size": 2, "cache_dir": str(tmp_path / "c")},
                   {**FAST, "cache_dir": str(tmp_path / "c")}, str(tmp_path / "s"), 1, 1, noise_seeds=2,
                   design="bk_tiny", score="probe_cfg")
    out = trial._train_candidate(genome, job, lambda step, losses: None)
    assert out.metrics["probe_cfg"] > 0 and out.metrics["fid"] > 0 and set(PROBE_KEYS) <= set(out.metrics)
    assert [r["kd_seed"] for r in out.seed_scores] == [0, 1]
    assert out.seed_scores[0]["probe_cfg"] == out.metrics["probe_cfg"]
    assert out.seed_scores[1]["probe_cfg"] > 0 and out.seed_scores[1]["probe_cfg"] != out.metrics["probe_cfg"]


def test_a_reference_design_the_study_reproduces_trains_no_other_seed(tmp_path, monkeypatch):
    """--noise-source auto: a reference design whose own scores (fid 9.0, alignment 0.4 at KD seed 0, generation
    seed 0) equal bench fidelity's takes the study's other seeds (reference_noise.py); nothing is trained again.
    A study that does not reproduce them (or none at this budget) leaves the trial to train them."""
    calls = []
    _fake_stages(monkeypatch, tmp_path, calls)
    genome = SimpleNamespace(id="g")
    study = {"120": {"g": [{"kd_seed": 0, "seed": 0, "fid": 9.0, "alignment": 0.4},
                           {"kd_seed": 1, "seed": 0, "fid": 11.0, "alignment": 0.45}]}}
    job = TrialJob(resolve_teacher("toy"), "cpu", {}, {}, str(tmp_path), 1, 1, noise_seeds=2, design="bk_base",
                   reference_seeds=study)
    out = trial._train_candidate(genome, job, lambda step, losses: None)
    assert calls == [("kd", 0)]  # the main student only
    assert out.seed_scores == [{"seed": 0, "kd_seed": 0, "fid": 9.0, "alignment": 0.4},
                               {"seed": 0, "kd_seed": 1, "fid": 11.0, "alignment": 0.45, "from": "bench fidelity"}]
    for other in ({"120": {"g": [dict(study["120"]["g"][0], fid=9.5), study["120"]["g"][1]]}},  # not reproduced
                  {"480": study["120"]},  # another budget
                  {}):  # no study (another teacher, or --noise-source measure)
        calls.clear()
        trial._train_candidate(genome, TrialJob(**{**vars(job), "reference_seeds": other}), lambda s, l: None)
        assert calls == [("kd", 0), 2, ("kd", 1)]
    calls.clear()  # --noise-seeds 3: the study's 2 KD seeds are too few
    trial._train_candidate(genome, TrialJob(**{**vars(job), "noise_seeds": 3}), lambda s, l: None)
    assert calls == [("kd", 0), 3, ("kd", 1)]


def test_a_reference_design_the_study_reproduces_at_a_shorter_budget_is_taken_from_it(tmp_path, monkeypatch):
    """study_reuse.reuse, before the trial: bk_tiny's KD to the study's budget below (1 of 2 steps) and its probe there equal the
    study's, so its scores at 2 steps are the study's: one KD step instead of two, no student written, the
    check's checkpoint gone. A study that disagrees at the check leaves the trial to go on from the check's
    checkpoint: the same student as a straight run. A rung (3 steps) takes the design from the study again
    without any KD where the stage below did."""
    teacher = make_tiny_teacher(tmp_path)
    monkeypatch.setattr(trial, "cached_teacher", lambda spec, device: teacher)
    monkeypatch.setattr(trial, "ProbeConfig", lambda: ProbeConfig(batches=1, batch_size=2))
    monkeypatch.setattr(evaluate_module, "speed_and_memory", lambda *a, **k: (
        {"latency_ms": 1.0, "latency_cv": 0.0, "e2e_ms": None, "memory_mb": None, "weights_mb": None}, {}))
    genome = load_space("unet_blocks").bind(topology_of(teacher.unet.config)).design("bk_tiny")
    cache = str(tmp_path / "c")

    def job(steps, folder, table, **kw):
        return TrialJob(TINY, "cpu", {"steps": steps, "batch_size": 2, "cache_dir": cache},
                        {**FAST, "cache_dir": cache, "images": False}, str(tmp_path / folder), 1, 1, noise_seeds=2,
                        design="bk_tiny", score="probe_cfg", checkpoint=True, cache_steps=3, reference_seeds=table,
                        **kw)

    def run(j):
        steps = []
        out = reused_or_trained(genome, j, lambda step, losses: steps.append(step), trial._train_candidate)
        return out, steps

    probe = lambda out: {k: out.metrics[k] for k in PROBE_KEYS}  # noqa: E731
    at1, _ = run(job(1, "s1", {}))
    at2, steps = run(job(2, "s2", {}))
    assert steps == [1, 2] and at2.seed_scores[1]["kd_seed"] == 1  # the straight run, and its KD seed 1
    study = {"1": {genome.id: [{"kd_seed": 0, **probe(at1)}]},
             "2": {genome.id: [{"kd_seed": 0, **probe(at2)}, {"kd_seed": 1, "probe_cfg": 0.5}]}}
    taken, steps = run(job(2, "s3", study))
    assert steps == [1] and taken.extra["from_study"] == {"checked_at": 1, "steps": 2}
    assert probe(taken) == probe(at2) and "bench fidelity" in taken.metrics["measured"]["probe_cfg"]
    assert taken.seed_scores == [{"seed": 0, "kd_seed": 0, **probe(at2)},
                                 {"seed": 0, "kd_seed": 1, "probe_cfg": 0.5, "from": "bench fidelity"}]
    folder = tmp_path / "s3" / genome.id
    assert sorted(p.name for p in folder.iterdir()) == ["from-study.json", "losses.jsonl"]  # nothing else kept
    assert taken.metrics["latency_ms"] == 1.0 and taken.metrics["params"] == at2.metrics["params"]

    three, steps = run(TrialJob(**{**vars(job(2, "s5", study)), "noise_seeds": 3}))  # the study has 2 KD seeds
    assert steps == [1, 2] and "from_study" not in three.extra and len(three.seed_scores) == 3  # trained as before

    off = {**study, "1": {genome.id: [{"kd_seed": 0, **probe(at1), "probe_cfg": probe(at1)["probe_cfg"] * 1.01}]}}
    again, steps = run(job(2, "s4", off))
    assert steps == [1, 2] and "from_study" not in again.extra  # one KD run 0 -> 1 -> 2, the check's step kept
    assert probe(again) == probe(at2) and not any((tmp_path / "s4" / genome.id).glob("*-check1"))

    images = {"kid": 0.2, "fid": 50.0, "alignment": 0.5}
    rung_table = {**study, "3": {genome.id: [{"kd_seed": 0, "seed": 0, **images},
                                             {"kd_seed": 1, "seed": 0, "fid": 60.0, "kid": 0.3, "alignment": 0.4}]}}
    rung = TrialJob(**{**vars(job(3, "r", rung_table)), "resume_dir": str(tmp_path / "s3"), "score": "fid",
                       "eval": {**FAST, "cache_dir": cache}})
    out, steps = run(rung)
    assert steps == [] and {k: out.metrics[k] for k in images} == images
    assert out.extra["from_study"] == {"checked_at": 1, "steps": 3} and len(out.seed_scores) == 2


def test_a_trial_job_carries_the_resolved_teacher_to_the_ray_workers_by_pickle():
    """The job Tune hands each worker (tune.with_parameters pickles it) holds the TeacherRef the driver resolved:
    it comes back equal, its family by name, with the data its teacher's class set (toy-dit: PixArt's pipeline)."""
    import pickle

    for spec, family in (("toy", "unet"), ("toy-dit", "dit")):
        ref = resolve_teacher(spec)
        job = TrialJob(ref, "cpu", {}, {}, "/students", 1, 1)
        back = pickle.loads(pickle.dumps(job))
        assert back == job and back.teacher.family.name == family == back.family
        assert back.teacher.family.pipeline_class == ref.family.pipeline_class
