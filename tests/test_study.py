"""study.py: the one default storage, names, opening storage and studies, preparing a study (reference
designs enqueued once, stale trials failed and re-queued) and counting its trials."""

import optuna
import pytest

from blocksearch.search import driver as search
from blocksearch.errors import BlocksearchError
from blocksearch.space import load_space
from blocksearch.study import (SearchConfig, check_settings, counts, default_storage, default_study_name,
                               existing_study, fail_unclaimed_trials, open_storage, open_study, prepare_study)
from blocksearch.families.unet.topology import topology_of
from tests.conftest import tiny_unet
from tests.conftest import make_study

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(scope="module")
def bound():
    return load_space("unet_blocks").bind(topology_of(tiny_unet("sd-v1").config))


def _cfg(tmp_path, **kw):
    return search.resolve(SearchConfig(runs_dir=str(tmp_path), storage="sqlite:///" + str(tmp_path / "s.db"),
                                       study="t", trials=8, **kw))


def _storage(tmp_path):
    return open_storage("sqlite:///" + str(tmp_path / "s.db"))


ATTRS = {"space": "unet_blocks", "teacher": "toy", "reference_designs": {}}


def test_the_default_storage_and_study_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert default_storage() == f"sqlite:///{tmp_path / 'runs' / 'blocksearch.db'}"
    assert default_storage(tmp_path / "elsewhere") == f"sqlite:///{tmp_path / 'elsewhere' / 'blocksearch.db'}"
    assert default_study_name("unet_blocks", "toy") == "unet_blocks-toy"
    assert default_study_name("spaces/mine.yaml", "org/model") == "mine-org--model"
    (tmp_path / "teachers" / "sd15").mkdir(parents=True)
    assert default_study_name("unet_blocks", str(tmp_path / "teachers" / "sd15")) == "unet_blocks-sd15"


def test_open_storage_creates_the_folder_only_when_asked(tmp_path):
    url = f"sqlite:///{tmp_path / 'runs' / 'blocksearch.db'}"
    with pytest.raises(BlocksearchError, match="cannot open storage"):
        open_storage(url)
    assert not (tmp_path / "runs").exists()
    open_storage(url, create_folder=True)
    assert (tmp_path / "runs").is_dir()
    with pytest.raises(BlocksearchError, match="cannot open storage"):
        open_storage("nosuchdb://x")


def test_unknown_study_lists_studies(tmp_path):
    url = make_study(tmp_path)
    with pytest.raises(BlocksearchError, match=r"unknown study 'nope'.*\['unet_blocks-toy'\]"):
        open_study("nope", url)
    with pytest.raises(BlocksearchError, match="no study storage"):
        open_study("unet_blocks-toy", f"sqlite:///{tmp_path / 'missing.db'}")
    assert not (tmp_path / "missing.db").exists()  # looking never creates a storage


def test_reference_designs_enqueued_once_and_stale_trials_failed(tmp_path, bound, capsys):
    cfg, storage = _cfg(tmp_path), _storage(tmp_path)
    study = prepare_study(storage, cfg, bound, ATTRS)
    prepare_study(storage, cfg, bound, ATTRS)
    waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert sorted(t.user_attrs["design"] for t in waiting) == ["bk_base", "bk_small", "bk_tiny"]
    assert study.metric_names == ["fid", "params", "latency_ms"]
    # a crash leaves a popped trial RUNNING: the next start marks it FAIL (stale) and re-queues it
    trial = study.ask()
    bound.suggest(trial)
    trial.set_user_attr("genome", bound.from_params(trial.params).id)
    assert trial.params and trial.user_attrs["design"] == "bk_base"
    capsys.readouterr()
    prepare_study(storage, cfg, bound, ATTRS)
    assert capsys.readouterr().out == f"stale trial #{trial.number} ({bound.design('bk_base').id}) marked FAIL and re-queued\n"
    old = study.trials[trial.number]
    assert old.state == optuna.trial.TrialState.FAIL and old.user_attrs["stale"] and "stale" in old.user_attrs["error"]
    waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert sorted(t.user_attrs["design"] for t in waiting) == ["bk_base", "bk_small", "bk_tiny"]
    assert counts(study)["done"] == 0  # a stale trial does not count toward --trials


def test_a_trial_no_driver_claimed_is_failed_after_the_grace_period_and_requeued(tmp_path, bound, capsys):
    """A driver killed between Optuna's ask and its first heartbeat leaves a RUNNING trial with no
    heartbeat and no driver: Optuna's stale check cannot see it; counting it as running hung a resume."""
    url = "sqlite:///" + str(tmp_path / "s.db")
    storage = open_storage(url, heartbeat_interval=1, grace_period=2)
    study = prepare_study(storage, _cfg(tmp_path), bound, ATTRS)
    orphan = study.ask()  # bk_base, popped from the queue: parameters, no driver attr, no heartbeat
    bound.suggest(orphan)
    claimed = study.ask()
    bound.suggest(claimed)
    claimed.set_user_attr("driver", "elsewhere:1")  # a live driver's trial: not ours to fail
    assert fail_unclaimed_trials(study, storage, grace_period=3600) == []  # young: its driver may be alive
    assert fail_unclaimed_trials(study, storage, grace_period=0) == [orphan.number]
    assert f"stale trial #{orphan.number}: no driver claimed it" in capsys.readouterr().out
    assert study.trials[orphan.number].state == optuna.trial.TrialState.FAIL
    assert study.trials[claimed.number].state == optuna.trial.TrialState.RUNNING
    c = counts(study)
    assert c["stale"] == 1 and c["done"] == 0 and c["running"] == 1
    waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert sorted(t.user_attrs["design"] for t in waiting) == ["bk_base", "bk_tiny"]  # bk_base back in the queue


def test_existing_study_mismatch_is_refused_untouched(tmp_path, bound):
    cfg, storage = _cfg(tmp_path), _storage(tmp_path)
    assert existing_study(storage, cfg) is None
    study = prepare_study(storage, cfg, bound, ATTRS)
    before = [(t.number, t.state) for t in study.trials]
    assert existing_study(storage, cfg).study_name == "t"
    with pytest.raises(BlocksearchError, match="objectives"):
        existing_study(storage, _cfg(tmp_path, objectives=("fid", "params")))
    with pytest.raises(BlocksearchError, match="teacher"):
        existing_study(storage, _cfg(tmp_path, teacher="other"))
    assert [(t.number, t.state) for t in optuna.load_study(study_name="t", storage=storage).trials] == before


def test_counts_by_state(tmp_path):
    """done = trials evaluated to the end (complete, failed); early-stopped, repeats and stale trials do not count."""
    study = optuna.create_study(storage=_storage(tmp_path), directions=["minimize"] * 2)
    T = optuna.trial.TrialState
    for state, attrs in ((T.COMPLETE, {}), (T.COMPLETE, {}), (T.PRUNED, {}), (T.FAIL, {"error": "x"}),
                         (T.FAIL, {"skipped": True, "cached_from": 0}), (T.FAIL, {"skipped": True, "cached_from": 1}),
                         (T.FAIL, {"stale": True}), (T.RUNNING, {}), (T.WAITING, {})):
        study.add_trial(optuna.trial.create_trial(state=state, values=[1.0, 2.0] if state == T.COMPLETE else None,
                                                  user_attrs=attrs))
    assert counts(study) == dict(done=3, running=1, stale=1, complete=2, pruned=1, failed=1, cached=2)


def test_a_resume_with_incomparable_settings_is_refused_in_one_line(tmp_path, bound):
    """study.check_settings: every differing result-changing key, old -> new; what does not change a trial's
    result (command, device, teacher cache, cache dirs, eval batch size) and keys an older study lacks pass."""
    cfg, storage = _cfg(tmp_path), _storage(tmp_path)
    attrs = dict(ATTRS, teacher_unet_sha256="a" * 64, command="blocksearch run", device="cpu",
                 distill={"steps": 5, "lr": 5e-5, "teacher_cache": "auto", "cache_dir": None},
                 eval={"prompts": 8, "guidance": 7.5, "batch_size": 8}, constraints={"max_params": None})
    study = prepare_study(storage, cfg, bound, attrs)
    check_settings(study, attrs)
    same = dict(attrs, command="blocksearch run --trials 9", device="cuda", new_key="x",
                distill=dict(attrs["distill"], teacher_cache="off", cache_dir="/elsewhere"),
                eval=dict(attrs["eval"], batch_size=64, resolution=512))  # eval.resolution: not recorded before
    check_settings(study, same)
    other = dict(attrs, teacher_unet_sha256="b" * 64, distill=dict(attrs["distill"], steps=6),
                 eval=dict(attrs["eval"], guidance=3.0), constraints={"max_params": 1e6})
    with pytest.raises(BlocksearchError) as err:
        check_settings(study, other)
    message = str(err.value)
    assert "\n" not in message and message.startswith("study 't' was run with other settings (")
    for part in ("distill.steps 5 -> 6", "eval.guidance 7.5 -> 3.0", "constraints.max_params None -> 1000000.0",
                 "teacher_unet_sha256 'aaaa"):
        assert part in message, message
    assert "a new --study" in message and "command" not in message


def test_one_objective_table_feeds_directions_labels_noise_costs_and_formats():
    """objectives.TABLE is the one description of the scores: the others are read from it."""
    from blocksearch.objectives import TABLE, Objective
    from blocksearch.objectives import fmt
    from blocksearch.report.noise import COSTS, NOISY, quality_mask
    from blocksearch.report.render import LABELS
    from blocksearch.study import OBJECTIVES

    assert OBJECTIVES == {o.name: o.direction for o in TABLE if o.searchable}
    assert list(OBJECTIVES)[:3] == ["fid", "params", "latency_ms"] and OBJECTIVES["alignment"] == "maximize"
    assert "kid" in NOISY and "kid" not in OBJECTIVES and set(LABELS) <= set(OBJECTIVES)
    assert quality_mask(("fid", "params", "latency_ms", "alignment")) == (True, False, False, True)
    assert "memory_mb" in COSTS and (fmt("params", 1.5e6), fmt("latency_ms", 1234.0), fmt("fid", 12.3456)) == (
        "1.50M", "1.23 s", "12.35")
    with pytest.raises(ValueError, match="direction 'up'; allowed: 'minimize', 'maximize'"):
        Objective("x", direction="up")
