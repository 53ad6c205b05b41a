"""rungs.py: which students go on to a longer KD budget, the rung's study and queue, the flags, the checkpoints."""

import optuna
import pytest

from blocksearch import search, trial
from blocksearch.cli import main
from blocksearch.distill import CHECKPOINT_FILE
from blocksearch.errors import BlocksearchError
from blocksearch.report import build_report, teacher_topology
from blocksearch.rungs import check_rungs, default_rungs, drop_checkpoints, prepare_rung, promoted, rung_plan
from blocksearch.space import Genome, load_space
from blocksearch.study import SearchConfig, open_study, rung_name
from blocksearch.teachers import topology_of
from blocksearch.trial import TrialJob, checkpoint_dir
from tests.conftest import BK, CASE, NOISE_CASE, SEED_SCORES, make_study, tiny_unet

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _report(tmp_path, case, seed_scores=None):
    url = make_study(tmp_path, case=case, seed_scores=seed_scores)
    return build_report(open_study("unet_blocks-toy", url), url)


def test_without_noise_the_front_and_the_reference_designs_go_on(tmp_path):
    # CASE: front 2, 3, 1; bk_base (trial 0) is dominated by trial 2 but is a reference design; trial 4 stops
    infeasible = ("COMPLETE", (1.0, 10.0, 1.0), "L2-2-1-1_T1-1-0-0_Mres", None, {"constraints": {"alignment_floor": 0.5}})
    r = _report(tmp_path, CASE + [infeasible])
    assert not r.noise_measured
    # the infeasible trial 7 would dominate all: it stops
    assert [t.number for t in promoted(r, max_fraction=1.0)] == [0, 1, 2, 3]
    # at most half of the 5 feasible students (2), reference designs first: they take both places
    assert [t.number for t in promoted(r)] == [0, 1]


def test_with_noise_students_within_noise_of_the_front_go_on_too(tmp_path):
    # NOISE_CASE: FID margin 2.0, latency ~0.32 ms, params exact. On raw values the front is 1, 3, 5 (5 dominates
    # 0 and 2). Trial 2 (FID 9.0) is within the FID margin of trial 5 (7.5): it may be on the front once the
    # noise is out, so it goes on; trial 4 (13, 120, 11) is dominated by bk_base even with the margins: it stops.
    r = _report(tmp_path, NOISE_CASE, SEED_SCORES)
    assert r.noise_measured and r.front == (5, 3, 1)
    assert [t.number for t in promoted(r, max_fraction=1.0)] == [0, 1, 2, 3, 5]
    # at most half of the 6 feasible (3): bk_base, bk_small, then by non-dominated rank among 2, 3, 5 (5 dominates
    # 2: rank 0 is {3, 5}) and within the rank the better FID (5: 7.5 before 3: 11)
    assert [t.number for t in promoted(r)] == [0, 1, 5]
    assert [t.number for t in promoted(r, max_fraction=4 / 6)] == [0, 1, 3, 5]


def test_rung_flags_defaults_and_one_line_errors(tmp_path, monkeypatch, capsys):
    assert default_rungs(120) == (480,) and default_rungs(0) == ()
    assert check_rungs((480, 1920), 120) == (480, 1920)
    for bad in ((120,), (480, 240), (60,)):
        with pytest.raises(BlocksearchError, match="--rungs .*: allowed: increasing KD step counts, each above"):
            check_rungs(bad, 120)
    seen = []
    monkeypatch.setattr(search, "run_search", lambda cfg: seen.append(cfg))
    for args in (["--rungs", "480,1920"], ["--rungs", "none"], ["--rungs", "0"], []):
        assert main(["run", *args]) == 0
    assert [cfg.rungs for cfg in seen] == [(480, 1920), (), (), None]
    with pytest.raises(SystemExit) as exit_info:  # argparse's own error: usage, then one line
        main(["run", "--rungs", "lots"])
    assert exit_info.value.code == 2
    assert "--rungs: 'lots': allowed: comma-separated KD step counts, or none" in capsys.readouterr().err
    config = tmp_path / "study.yaml"
    config.write_text("rungs: [480, 1920]\nsteps: 120\n")
    assert main(["run", "--config", str(config)]) == 0 and seen[-1].rungs == (480, 1920)


def test_the_plan_continues_each_rung_from_the_one_below(tmp_path):
    unet = tiny_unet("sd-v1")
    bound = load_space("unet_blocks").bind(topology_of(unet.config))
    cfg = search.resolve(SearchConfig(runs_dir=str(tmp_path), storage=f"sqlite:///{tmp_path / 's.db'}", study="s",
                                      steps=10, rungs=(40, 160)))
    job, attrs = search.trial_job(cfg, bound)
    assert job.checkpoint and job.cache_steps == 160 and attrs["rungs"] == [40, 160]
    plan = rung_plan(cfg, job, attrs)
    assert [(name, below) for name, below, _, _ in plan] == [("s@40", "s"), ("s@160", "s@40")]
    (_, _, j40, a40), (_, _, j160, a160) = plan
    assert j40.distill["steps"] == 40 and j40.resume_dir == job.students_dir and j40.checkpoint
    assert j160.resume_dir == j40.students_dir and not j160.checkpoint  # nothing continues the last rung
    assert a160["rung"] == {"of": "s", "from": "s@40", "steps": 160} and a160["distill"]["steps"] == 160
    with pytest.raises(BlocksearchError, match="--rungs 5"):
        search.trial_job(search.resolve(SearchConfig(runs_dir=str(tmp_path), steps=10, rungs=(5,))), bound)
    job0, attrs0 = search.trial_job(search.resolve(SearchConfig(runs_dir=str(tmp_path), steps=10, rungs=())), bound)
    assert not job0.checkpoint and attrs0["rungs"] == [] and rung_plan(cfg, job0, attrs0) == []


def test_a_rung_queues_each_promoted_student_once(tmp_path):
    r = _report(tmp_path, CASE)
    chosen = promoted(r, max_fraction=1.0)
    bound = load_space("unet_blocks").bind(teacher_topology("toy"))
    storage = optuna.storages.get_storage(f"sqlite:///{tmp_path / 'blocksearch.db'}")
    for _ in range(2):  # a resume queues nothing twice
        study = prepare_rung(storage, rung_name("unet_blocks-toy", 800), ("fid", "params", "latency_ms"),
                             ["minimize"] * 3, {"rung": {"steps": 800}}, chosen, bound)
    waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert sorted(t.user_attrs["promoted_from"] for t in waiting) == [0, 1, 2, 3]
    assert {t.user_attrs.get("design") for t in waiting} == {"bk_base", "bk_small", None}
    assert study.study_name == "unet_blocks-toy@800" and study.metric_names == ["fid", "params", "latency_ms"]
    assert sorted(bound.from_params(t.system_attrs["fixed_params"]).id for t in waiting) == sorted(r.trial(n).genome for n in (0, 1, 2, 3))


def test_checkpoints_of_students_that_stop_are_deleted(tmp_path):
    for genome in ("a", "b"):
        for seed in (0, 1):
            folder = checkpoint_dir(tmp_path, genome, seed)
            folder.mkdir(parents=True)
            (folder / "w.bin").write_bytes(b"x" * 100)
        (tmp_path / genome / "unet").mkdir()
    assert checkpoint_dir(tmp_path, "a", 1).name == "kd-checkpoint-seed1"
    assert drop_checkpoints(tmp_path, keep={"a"}) == (1, 200)
    assert checkpoint_dir(tmp_path, "a", 0).is_dir() and checkpoint_dir(tmp_path, "a", 1).is_dir()
    assert not checkpoint_dir(tmp_path, "b", 0).exists() and (tmp_path / "b" / "unet").is_dir()  # the student stays


def test_a_rung_trial_continues_the_checkpoint_below_where_there_is_one(tmp_path):
    genome = Genome.from_id(BK["bk_small"])
    below, here = tmp_path / "below", tmp_path / "here"
    job = TrialJob("toy", "cpu", {}, {}, str(here), 1, 1, checkpoint=True, resume_dir=str(below), cache_steps=480)
    assert trial.kd_checkpoints(job, genome, 0) == {"cache_steps": 480, "save_to": checkpoint_dir(here, genome.id)}
    checkpoint_dir(below, genome.id, 1).mkdir(parents=True)
    (checkpoint_dir(below, genome.id, 1) / CHECKPOINT_FILE).write_text("{}")
    assert trial.kd_checkpoints(job, genome, 1)["resume_from"] == checkpoint_dir(below, genome.id, 1)
    plain = TrialJob("toy", "cpu", {}, {}, str(here), 1, 1)
    assert trial.kd_checkpoints(plain, genome, 0) == {"cache_steps": None}
