"""search.py and searcher.py without a Ray cluster: flags, the Genome cache, PRUNED/FAIL bookkeeping, the
parameter budget, the front and bad input. The study's own tests are in test_study.py; the Ray runs in
tests/integration/."""

import json
import math
import os
import sys
import time

import optuna
import pytest

from blocksearch.search import driver as search

from blocksearch.search import cluster, console, ray_tune, searcher, teacher_setup
from blocksearch.errors import BlocksearchError
from blocksearch.report.compute import build_report
from blocksearch.search.samplers import SAMPLERS, make_sampler
from blocksearch.families.unet.genome import Genome
from blocksearch.space import load_space
from blocksearch.study import SearchConfig, counts, is_stale, open_storage, prepare_study
from blocksearch.teachers import resolve_teacher
from blocksearch.families.unet.topology import topology_of
from tests.conftest import tiny_unet

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(scope="module")
def bound_and_unet():
    unet = tiny_unet("sd-v1")
    return load_space("unet_blocks").bind(topology_of(unet.config)), unet


def _cfg(tmp_path, **kw):
    return search.resolve(SearchConfig(**{"runs_dir": str(tmp_path), "storage": "sqlite:///" + str(tmp_path / "s.db"),
                                          "study": "t", "trials": 8, **kw}))


def _storage(tmp_path):
    return open_storage("sqlite:///" + str(tmp_path / "s.db"))


def _attrs(bound):
    return {"space": "unet_blocks", "teacher": "toy", "reference_designs": {}}


def test_resolve_defaults_and_bad_flags(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = search.resolve(SearchConfig())
    assert cfg.study == "unet_blocks-toy" and cfg.storage == f"sqlite:///{tmp_path / 'runs' / 'blocksearch.db'}"
    assert cfg.candidate == search.CANDIDATE and cfg.runs_dir == str(tmp_path / "runs")
    for bad, word in ((dict(sampler="cmaes"), "sampler"), (dict(objectives=("fid", "speed")), "objectives"),
                      (dict(trials=0), "--trials"), (dict(max_params=-1), "--max-params")):
        with pytest.raises(BlocksearchError, match=word):
            search.resolve(SearchConfig(**bad))


def test_noise_seeds_reach_the_search_config_the_trials_and_the_study(tmp_path, monkeypatch, bound_and_unet):
    from blocksearch.cli import main

    seen = []
    monkeypatch.setattr(search, "run_search", lambda cfg: seen.append(cfg))
    assert main(["run", "--noise-seeds", "3"]) == 0 and main(["run"]) == 0
    assert [cfg.noise_seeds for cfg in seen] == [3, 2]
    with pytest.raises(BlocksearchError, match="--noise-seeds 0"):
        search.resolve(SearchConfig(noise_seeds=0))
    job, attrs = search.trial_job(_cfg(tmp_path, noise_seeds=3), resolve_teacher("toy"), bound_and_unet[0])
    assert job.noise_seeds == 3 and job.design is None and attrs["noise_seeds"] == 3


def test_noise_source_auto_hands_the_trials_the_studys_seed_scores(tmp_path, monkeypatch, bound_and_unet, capsys):
    from blocksearch.cli import main

    record = {"teacher": "toy", "reference_seed_scores": {"120": {"g": [{"kd_seed": 0, "probe_task": 0.1}]}}}
    monkeypatch.setattr(search, "read_selection", lambda path=None: record)  # the family's file (selection.selection_path)
    job, attrs = search.trial_job(_cfg(tmp_path), resolve_teacher("toy"), bound_and_unet[0])
    assert job.reference_seeds == record["reference_seed_scores"] and attrs["noise_source"] == "auto"
    for off in (dict(noise_source="measure"), dict(noise_seeds=1), dict(teacher="toy-dit", space="dit_blocks")):
        assert search.reference_seeds(_cfg(tmp_path, **off)) == {}, off
    seen = []
    monkeypatch.setattr(search, "run_search", lambda cfg: seen.append(cfg))
    assert main(["run", "--noise-source", "measure"]) == 0 and seen[0].noise_source == "measure"
    with pytest.raises(SystemExit) as err:
        main(["run", "--noise-source", "table"])
    assert err.value.code == 2 and "--noise-source: invalid choice: 'table'" in capsys.readouterr().err
    with pytest.raises(BlocksearchError, match="--noise-source 'x': allowed: auto, measure"):
        search.resolve(SearchConfig(noise_source="x"))


def test_bad_storage_and_address_are_one_line_errors(tmp_path):
    with pytest.raises(BlocksearchError, match="cannot open storage"):
        open_storage("sqlite:////nonexistent-dir/deeper/x.db")
    with pytest.raises(BlocksearchError, match="cannot open storage"):
        open_storage("nosuchdb://x")
    with pytest.raises(BlocksearchError, match="cannot reach Ray"):
        cluster.probe_address("127.0.0.1:1")
    with pytest.raises(BlocksearchError, match="allowed: auto or host:port"):
        cluster.probe_address("nowhere")


def _searcher(tmp_path, bound, unet, changes=None, **kw):
    cfg, storage = _cfg(tmp_path, **kw), _storage(tmp_path)
    prepare_study(storage, cfg, bound, _attrs(bound))
    params_of = teacher_setup.params_table(unet, bound)
    on_change = None if changes is None else (lambda outcome, running: changes.append((outcome, running)))
    return searcher.StudySearch(cfg, storage, bound, params_of, on_change), cfg, params_of


def _final(values, **payload):
    body = {"metrics": {"fid": values[0]}, "timings": {"kd_s": 1.0}, "student_dir": "/x", **payload}
    return {"fid": values[0], "params": values[1], "latency_ms": values[2], "final": 1, "payload": json.dumps(body)}


def test_searcher_records_complete_pruned_failed_and_caches_by_genome(tmp_path, bound_and_unet):
    bound, unet = bound_and_unet
    changes = []
    s, cfg, _ = _searcher(tmp_path, bound, unet, changes)
    configs = {tid: s.suggest(tid) for tid in ("a", "b", "c")}
    assert {c["_design"] for c in configs.values()} == {"bk_base", "bk_small", "bk_tiny"}
    assert len(s.inflight) == 3
    s.on_trial_complete("a", _final([3.0, 100.0, 2.0], seed_scores=[{"seed": 0, "fid": 3.0}, {"seed": 1, "fid": 3.2}]))
    s.on_trial_complete("b", {"fid": math.nan, "params": 5.0, "latency_ms": math.nan, "final": 0,
                              "training_iteration": 2, "kd_out_loss": 0.7, "payload": ""})  # ASHA stop
    s.on_trial_complete("c", {"fid": math.nan, "params": 5.0, "latency_ms": math.nan, "final": 1,
                              "payload": json.dumps({"error": "RuntimeError: injected"})})
    study = optuna.load_study(study_name="t", storage=_storage(tmp_path))
    by = {t.user_attrs["design"]: t for t in study.trials}
    assert by["bk_base"].state.name == "COMPLETE" and by["bk_base"].values == [3.0, 100.0, 2.0]
    assert by["bk_base"].user_attrs["student_dir"] == "/x" and by["bk_base"].user_attrs["timings"] == {"kd_s": 1.0}
    assert [r["fid"] for r in by["bk_base"].user_attrs["seed_scores"]] == [3.0, 3.2]  # the report's seed noise
    assert by["bk_small"].state.name == "PRUNED" and by["bk_small"].values is None
    assert by["bk_small"].user_attrs["pruned_at"]["kd_out_loss"] == 0.7
    assert by["bk_tiny"].state.name == "FAIL" and by["bk_tiny"].user_attrs["error"] == "RuntimeError: injected"
    assert counts(study) == dict(done=2, running=0, stale=0, complete=1, pruned=1, failed=1, cached=0)
    assert build_report(study).front == (by["bk_base"].number,)
    # the progress view heard of every start and end: how each ended, and how many were still running
    assert [(o and (o.number, o.state), running) for o, running in changes] == [
        (None, 1), (None, 2), (None, 3), ((by["bk_base"].number, "COMPLETE"), 2),
        ((by["bk_small"].number, "PRUNED"), 1), ((by["bk_tiny"].number, "FAIL"), 0)]
    assert changes[3][0].info["values"] == [3.0, 100.0, 2.0] and changes[3][0].genome == bound.design("bk_base").id
    # the sampler proposes bk_base again: not retrained, closed as a skipped repeat (samplers ignore
    # FAIL; a COMPLETE copy would make TPE re-propose it), and no Ray trial is started for it
    study.enqueue_trial(bound.to_params(bound.design("bk_base")))
    config = s.suggest("d")
    assert config["_genome"] != bound.design("bk_base").id
    (hit,) = [t for t in study.get_trials() if "cached_from" in t.user_attrs]
    assert hit.state.name == "FAIL" and hit.user_attrs["skipped"] and hit.user_attrs["cached_from"] == by["bk_base"].number
    assert counts(study)["done"] == 2 and counts(study)["cached"] == 1
    assert build_report(study).front == (by["bk_base"].number,)
    # a pruned or failed Genome is not trained again either
    for design in ("bk_small", "bk_tiny"):
        study.enqueue_trial(bound.to_params(bound.design(design)))
    s.suggest("e")
    skipped = {t.user_attrs["cached_from"] for t in study.get_trials() if t.user_attrs.get("skipped")}
    assert skipped == {by[d].number for d in ("bk_base", "bk_small", "bk_tiny")}


def test_a_died_trial_is_failed_with_a_message(tmp_path, bound_and_unet):
    bound, unet = bound_and_unet
    s, _, _ = _searcher(tmp_path, bound, unet)
    s.suggest("a")
    s.on_trial_complete("a", None, error=True)
    (t,) = [t for t in optuna.load_study(study_name="t", storage=_storage(tmp_path)).trials if t.state.name == "FAIL"]
    assert "died" in t.user_attrs["error"]


def test_the_searcher_pickles_as_tune_pickles_it(tmp_path, bound_and_unet):
    """tune.Tuner pickles its search algorithm: a live progress view (its stream, its bar) must not stop it."""
    import io

    import ray.cloudpickle as pickle

    class Stream(io.StringIO):
        def __reduce__(self):
            raise TypeError("a stream cannot be pickled")

    bound, unet = bound_and_unet
    s, _, _ = _searcher(tmp_path, bound, unet)
    s.on_change = console.Progress(3, ("fid",), Stream()).update
    assert pickle.loads(pickle.dumps(s)).cfg.study == "t"


def test_parameter_budget_is_an_optuna_constraint(tmp_path, bound_and_unet):
    bound, unet = bound_and_unet
    params_of = teacher_setup.params_table(unet, bound)
    budget = params_of(bound.design("bk_small"))  # bk_base is above it, bk_small and bk_tiny within
    s, _, _ = _searcher(tmp_path, bound, unet, max_params=budget)
    for tid, values in (("a", [1.0, 3.0, 1.0]), ("b", [2.0, 2.0, 2.0]), ("c", [3.0, 1.0, 3.0])):
        s.suggest(tid)
        s.on_trial_complete(tid, _final(values))
    study = optuna.load_study(study_name="t", storage=_storage(tmp_path))
    feasible = {t.user_attrs["design"]: t.constraints["params_budget"] <= 0 for t in study.trials}
    assert feasible == {"bk_base": False, "bk_small": True, "bk_tiny": True}
    report = build_report(study)
    assert {report.trial(n).design for n in report.front} == {"bk_small", "bk_tiny"}


@pytest.mark.parametrize("name", SAMPLERS)
def test_every_sampler_runs_multi_objective(name):
    study = optuna.create_study(directions=["minimize"] * 3, sampler=make_sampler(name, 0, 6))
    study.optimize(lambda t: (t.suggest_categorical("a", [1, 2]), t.suggest_categorical("b", [1, 2]), 1.0),
                   n_trials=6)
    values = {t.number: tuple(t.values) for t in study.trials if t.state.name == "COMPLETE"}
    assert len(values) == 6
    # the front by hand: the trials whose (a, b) no other trial's (a, b) dominates
    front = {n for n, v in values.items() if not any(w[:2] != v[:2] and w[0] <= v[0] and w[1] <= v[1]
                                                     for w in values.values())}
    assert {t.number for t in study.best_trials} == front


def test_cli_bad_input_exits_2_with_one_line_and_leaves_the_study_alone(tmp_path, capsys, bound_and_unet):
    from blocksearch.cli import main

    bound, unet = bound_and_unet
    teacher = tmp_path / "teacher"
    unet.save_pretrained(teacher, safe_serialization=True)
    db = f"sqlite:///{tmp_path / 's.db'}"
    cfg = search.resolve(SearchConfig(storage=db, runs_dir=str(tmp_path), teacher=str(teacher)))
    study = prepare_study(open_storage(db), cfg, bound, _attrs(bound))
    s = searcher.StudySearch(cfg, open_storage(db), bound, teacher_setup.params_table(unet, bound))
    s.suggest("a")
    s.on_trial_complete("a", _final([1.0, 2.0, 3.0]))
    snapshot = [(t.number, t.state, t.values, t.user_attrs) for t in study.trials]
    base = ["run", "--storage", db, "--runs-dir", str(tmp_path), "--teacher", str(teacher)]
    for argv, word in ((["--space", "nope"], "unknown space"), (["--sampler", "cmaes"], "unknown sampler"),
                       (["--teacher", "nope"], "unknown teacher"), (["--address", "127.0.0.1:1"], "cannot reach Ray"),
                       (["--objectives", "fid,params"], "objectives"),
                       (["--storage", "sqlite:////nonexistent-dir/x/y.db"], "cannot open storage")):
        code = main(base + argv)
        err = capsys.readouterr().err.strip()
        assert code == 2 and word in err and len(err.splitlines()) == 1, err
    study = optuna.load_study(study_name=cfg.study, storage=open_storage(db))
    assert [(t.number, t.state, t.values, t.user_attrs) for t in study.trials] == snapshot


class _StuckSampler(optuna.samplers.RandomSampler):
    """A sampler that always proposes bk_base's params: what multi-objective TPE does on a small
    discrete space once it has a favourite (seen in a real 16-trial run)."""

    def __init__(self, params):
        super().__init__(seed=0)
        self.params = params

    def sample_independent(self, study, trial, name, distribution):
        return self.params[name] if name in self.params else \
            super().sample_independent(study, trial, name, distribution)


def test_a_sampler_stuck_on_a_trained_genome_falls_back_to_untrained_ones(tmp_path, bound_and_unet, monkeypatch):
    bound, unet = bound_and_unet
    stuck = bound.to_params(bound.design("bk_base"))
    monkeypatch.setattr(searcher, "make_sampler", lambda *a, **k: _StuckSampler(stuck))
    s, _, _ = _searcher(tmp_path, bound, unet)
    for tid in ("a", "b", "c"):  # the three enqueued BK designs
        s.suggest(tid)
        s.on_trial_complete(tid, _final([3.0, 100.0, 2.0]))
    genomes = [s.suggest(tid)["_genome"] for tid in ("d", "e", "f")]
    trained = {bound.design(n).id for n in ("bk_base", "bk_small", "bk_tiny")}
    assert len(set(genomes)) == 3 and not set(genomes) & trained
    study = optuna.load_study(study_name="t", storage=_storage(tmp_path))
    assert sum(bool(t.user_attrs.get("explore")) for t in study.trials) == 3


# -- several drivers on one study (Optuna heartbeats) ------------------------------------------------
def _driver(tmp_path, bound, unet, trials=8, interval=1, grace=1):
    """One driver's searcher over the shared SQLite study, with heartbeats (its own storage object)."""
    cfg = _cfg(tmp_path, trials=trials, heartbeat_interval=interval, heartbeat_grace=grace)
    storage = open_storage(cfg.storage, heartbeat_interval=interval, grace_period=grace)
    prepare_study(storage, cfg, bound, _attrs(bound))
    return searcher.StudySearch(cfg, storage, bound, teacher_setup.params_table(unet, bound))


def test_a_genome_running_under_another_driver_is_a_repeat(tmp_path, bound_and_unet):
    bound, unet = bound_and_unet
    one, two = _driver(tmp_path, bound, unet), _driver(tmp_path, bound, unet)
    first, *_ = [one.suggest(tid) for tid in ("a", "a2", "a3")]  # the three designs, running under `one`
    two.study.enqueue_trial(bound.to_params(Genome.from_id(first["_genome"])))
    second = two.suggest("b")
    assert second["_genome"] != first["_genome"]
    (hit,) = [t for t in two.study.get_trials() if t.user_attrs.get("skipped")]
    assert hit.user_attrs["cached_from"] == first["_number"] and hit.user_attrs["genome"] == first["_genome"]


def test_a_dead_drivers_trial_is_failed_after_the_grace_period_and_requeued_once(tmp_path, bound_and_unet, capsys):
    bound, unet = bound_and_unet
    dead, alive = _driver(tmp_path, bound, unet), _driver(tmp_path, bound, unet)
    lost = dead.suggest("a")  # one heartbeat, then the driver "dies": no thread beats for it any more
    dead._beating.set()
    took = alive.suggest("b")
    assert took["_genome"] != lost["_genome"]  # within the grace period: alive, so not taken over
    time.sleep(3.5)
    queued = [alive.suggest(tid) for tid in ("c", "d")]  # past the grace period: failed and re-queued
    (retried,) = [q for q in queued if q["_genome"] == lost["_genome"]]  # (behind bk_tiny): taken here
    study = alive.study
    old = study.trials[lost["_number"]]
    assert old.state.name == "FAIL" and is_stale(old) and counts(study)["stale"] == 1
    assert f"stale trial #{lost['_number']}" in capsys.readouterr().out
    new = study.trials[retried["_number"]]
    assert new.system_attrs["failed_trial"] == lost["_number"] and new.user_attrs["design"] == "bk_base"
    # the dead driver's late result cannot overwrite the FAILed trial, and does not raise
    dead.on_trial_complete("a", _final([1.0, 2.0, 3.0]))
    assert study.trials[lost["_number"]].state.name == "FAIL"


def test_the_study_stops_at_trials_counted_over_every_driver(tmp_path, bound_and_unet):
    bound, unet = bound_and_unet
    one, two = _driver(tmp_path, bound, unet, trials=1), _driver(tmp_path, bound, unet, trials=1)
    one.suggest("a")
    assert two.suggest("b") is None  # the last trial runs elsewhere: it may still finish or die
    one.on_trial_complete("a", _final([1.0, 2.0, 3.0]))
    two._next_look = 0.0
    assert two.suggest("c") == "FINISHED" and one.suggest("d") == "FINISHED"


def test_a_student_that_ignores_the_prompt_is_infeasible_and_never_on_the_front(tmp_path, bound_and_unet):
    """The text-aware default: alignment below --min-alignment x the teacher's is a failed Optuna constraint."""
    bound, unet = bound_and_unet
    cfg, storage = _cfg(tmp_path), _storage(tmp_path)
    prepare_study(storage, cfg, bound, _attrs(bound))
    s = searcher.StudySearch(cfg, storage, bound, teacher_setup.params_table(unet, bound), alignment_floor=0.2)
    blind, reads = s.suggest("a"), s.suggest("b")

    def done(values, alignment):
        body = {"metrics": {"fid": values[0], "alignment": alignment}, "timings": {}, "student_dir": "/x"}
        return {"fid": values[0], "params": values[1], "latency_ms": values[2], "final": 1, "payload": json.dumps(body)}

    s.on_trial_complete("a", done([1.0, 1.0, 1.0], 0.0))  # best on every objective, but text-blind
    s.on_trial_complete("b", done([5.0, 5.0, 5.0], 0.5))
    study = optuna.load_study(study_name="t", storage=_storage(tmp_path))
    assert study.trials[blind["_number"]].constraints == {"alignment_floor": pytest.approx(0.2)}
    assert study.trials[reads["_number"]].constraints == {"alignment_floor": pytest.approx(-0.3)}
    r = build_report(study)
    assert r.front == (reads["_number"],) and not r.trial(blind["_number"]).feasible


def test_a_probe_ranked_first_stage_keeps_text_blind_students_off_its_front(tmp_path, bound_and_unet):
    """No images in a probe-ranked first stage: the text rule is the probe's text direction, probe_guide <= the
    ceiling bench fidelity measured (selection.py); the objective is the probe score itself."""
    bound, unet = bound_and_unet
    cfg = _cfg(tmp_path, objectives=("probe_cfg", "params", "latency_ms"), score="probe_cfg")
    storage = _storage(tmp_path)
    prepare_study(storage, cfg, bound, _attrs(bound))
    s = searcher.StudySearch(cfg, storage, bound, teacher_setup.params_table(unet, bound), guide_ceiling=0.95)
    blind, reads = s.suggest("a"), s.suggest("b")

    def done(values, guide):
        body = {"metrics": {"probe_cfg": values[0], "probe_guide": guide, "fid": None, "alignment": None},
                "timings": {}, "student_dir": "/x"}
        return {"probe_cfg": values[0], "params": values[1], "latency_ms": values[2], "final": 1,
                "payload": json.dumps(body)}

    s.on_trial_complete("a", done([0.1, 1.0, 1.0], 1.0))  # best on every objective, but no text direction at all
    s.on_trial_complete("b", done([0.5, 5.0, 5.0], 0.4))
    study = optuna.load_study(study_name="t", storage=_storage(tmp_path))
    assert study.trials[blind["_number"]].constraints == {"guide_ceiling": pytest.approx(0.05)}
    assert study.trials[reads["_number"]].constraints == {"guide_ceiling": pytest.approx(-0.55)}
    r = build_report(study)
    assert r.objectives == ("probe_cfg", "params", "latency_ms")
    assert r.front == (reads["_number"],) and not r.trial(blind["_number"]).feasible
    # a text rule on another probe score (bench fidelity's text_rule key): that score is the constraint
    by_cfg = searcher.StudySearch(cfg, storage, bound, teacher_setup.params_table(unet, bound), guide_ceiling=0.3,
                                  text_key="probe_cfg")
    third = by_cfg.suggest("c")
    by_cfg.on_trial_complete("c", done([0.5, 2.0, 2.0], 1.0))
    study = optuna.load_study(study_name="t", storage=_storage(tmp_path))
    assert study.trials[third["_number"]].constraints == {"cfg_ceiling": pytest.approx(0.2)}


def test_trial_retries_reach_ray_tunes_failure_config(tmp_path, monkeypatch, bound_and_unet):
    """``--trial-retries N`` (default 1) is Ray Tune's FailureConfig(max_failures=N): a trial whose worker died
    runs again under the same Tune trial id, so the searcher keeps its one Optuna trial."""
    from ray import tune

    from blocksearch.cli import main

    seen = []
    monkeypatch.setattr(search, "run_search", lambda cfg: seen.append(cfg))
    assert main(["run", "--trial-retries", "3"]) == 0 and main(["run"]) == 0
    assert [cfg.trial_retries for cfg in seen] == [3, 1]
    with pytest.raises(BlocksearchError, match="--trial-retries -1: allowed: an integer >= 0"):
        search.resolve(SearchConfig(trial_retries=-1))
    built = {}

    class Tuner:
        def __init__(self, fn, tune_config, run_config):
            built["failure"] = run_config.failure_config

        def fit(self):
            return None

    monkeypatch.setattr(tune, "Tuner", Tuner)
    bound, unet = bound_and_unet
    cfg, storage = _cfg(tmp_path, trial_retries=2), _storage(tmp_path)
    prepare_study(storage, cfg, bound, _attrs(bound))
    job, _ = search.trial_job(cfg, resolve_teacher(cfg.teacher), bound)
    with open(os.devnull, "w") as out:
        ray_tune.run_trials(cfg, job, cluster.Tuning(storage, bound, teacher_setup.params_table(unet, bound),
                                                      {"CPU": 1}, out), 1, 1)
    assert built["failure"].max_failures == 2


def _failed(study, error, **attrs):
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL,
                                              user_attrs={"genome": f"g{len(study.trials)}", "error": error, **attrs}))


def test_a_search_with_no_completed_trial_is_summed_up_in_one_line(tmp_path):
    """Every trial FAIL: the most common error, how many trials it hit, and the log of one of them; repeats of a
    Genome (skipped) and a dead driver's trials (stale) are not trials that failed."""
    study = optuna.create_study(storage=_storage(tmp_path), study_name="t", directions=["minimize"])
    long = "SafetensorError: Error while deserializing header: incomplete metadata, file not fully covered " * 2
    _failed(study, long, log="/runs/t/tune/x/0_g0/error.txt")
    _failed(study, long)
    _failed(study, "out of memory: CUDA out of memory")
    _failed(study, "", skipped=True, cached_from=0)
    _failed(study, "")  # stale: a dead driver's
    line = console.no_trial_completed(study, tmp_path / "tune")
    assert line == ('no trial completed: 3 of 3 failed, 2 of them with "SafetensorError: Error while deserializing '
                    'header: incomplete metadata, file not fully covered ..."; see '
                    '/runs/t/tune/x/0_g0/error.txt')
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL, user_attrs={"error": "x"}))
    assert console.no_trial_completed(study, tmp_path / "tune").startswith("no trial completed: 4 of 4 failed, ")
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.COMPLETE, values=[1.0]))
    assert console.no_trial_completed(study, tmp_path / "tune") is None


def test_a_search_whose_every_trial_failed_exits_1_with_the_summary_last(tmp_path, monkeypatch, capsys,
                                                                            bound_and_unet):
    from blocksearch.cli import main

    bound, _ = bound_and_unet
    cfg, storage = _cfg(tmp_path, runs_dir=str(tmp_path / "runs"), rungs=()), _storage(tmp_path)
    study = prepare_study(storage, cfg, bound, _attrs(bound))
    for _ in range(2):
        _failed(study, "SafetensorError: incomplete metadata")
    monkeypatch.setattr(search, "run_search", lambda cfg_: search.finish(cfg, storage, sys.stdout))
    assert main(["run"]) == 1
    out, err = capsys.readouterr()
    assert "2 failed; Pareto front (0)" in out
    assert err.splitlines()[-1] == (f'blocksearch: no trial completed: 2 of 2 failed with "SafetensorError: '
                                    f'incomplete metadata"; see {tmp_path / "runs" / "t" / "tune"}')
