"""Several machines: one study in a PostgreSQL server (``--storage postgresql+psycopg://...``), shared by
drivers that beat Optuna heartbeats into it; a server restart mid-search; and Optuna's journal file, refused because
it cannot beat."""

import os
import threading
import time

import optuna
import pytest
import sqlalchemy.exc

from blocksearch.cli import main
from blocksearch.errors import BlocksearchError
from blocksearch.study import heartbeats, open_storage
from tests.integration.conftest import (driver_args, driver_env, free_port, kill_one_driver_midtrial, load_study,
                                        restart_postgres, run_cli, stop)

pytestmark = pytest.mark.integration


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_a_postgres_storage_records_heartbeats(postgres_url):
    storage = open_storage(postgres_url, heartbeat_interval=1, grace_period=2)
    assert heartbeats(storage)
    study = optuna.create_study(storage=storage, study_name="beats", directions=["minimize", "minimize"])
    trial = study.ask()
    storage.record_heartbeat(trial._trial_id)  # as searcher.py does for its running trials
    assert storage._get_stale_trial_ids(study._study_id) == []  # beating: alive
    time.sleep(3)
    assert storage._get_stale_trial_ids(study._study_id) == [trial._trial_id]  # silent past the grace period
    study.tell(trial, [1.0, 2.0])
    assert optuna.load_study(study_name="beats", storage=postgres_url).best_trials[0].values == [1.0, 2.0]


def test_a_killed_drivers_trial_is_requeued_once_through_postgres(tiny_teacher, tmp_path, cache, postgres_url):
    kill_one_driver_midtrial(tiny_teacher, tmp_path, cache, postgres_url, "killed-pg")


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_a_server_restart_costs_optunas_own_storage_one_call_and_blocksearchs_none(postgres_url):
    """What Optuna's RDB storage does when the server restarts between two calls: its pooled connection is dead, and
    the next call fails (StorageInternalError from SQLAlchemy's OperationalError; SQLAlchemy then drops the pool, so
    the call after works). Optuna pre-pings pooled connections for MySQL only; ``open_storage`` turns it on for every
    server (``pool_pre_ping``): the restart costs a reconnect and no call fails."""
    plain = optuna.storages.RDBStorage(postgres_url)
    study = optuna.create_study(storage=plain, study_name="plain", directions=["minimize"])
    trial = study.ask()
    ours = open_storage(postgres_url, heartbeat_interval=1, grace_period=30)
    mine = optuna.create_study(storage=ours, study_name="ours", directions=["minimize"])
    beating = mine.ask()
    restart_postgres()
    with pytest.raises((optuna.exceptions.StorageInternalError, sqlalchemy.exc.OperationalError)):
        study.tell(trial, [1.0])
    study.tell(trial, [1.0])  # the next call reconnects
    ours.record_heartbeat(beating._trial_id)  # as searcher.py does, first call after the restart
    mine.tell(beating, [2.0])
    assert [t.values for t in optuna.load_study(study_name="ours", storage=postgres_url).trials] == [[2.0]]


def release(marker, done: threading.Event) -> None:
    """Let every trial that holds at the marker go on (tests/integration/faulty.py: a trial holds while it exists)."""
    while not done.wait(0.1):
        try:
            os.unlink(marker)
        except FileNotFoundError:
            pass


@pytest.mark.slow  # a whole search around the restart (~3 min); CI runs the restart itself (the test above)
def test_a_server_restart_mid_search_loses_nothing(tiny_teacher, tmp_path, cache, postgres_url):
    """The database server restarted (``pg_ctl restart -m fast``: every connection cut) while a trial of
    ``blocksearch run --storage postgresql+psycopg://...`` holds mid-KD: its heartbeats in the outage are missed (the
    grace period covers them), its result is recorded after, and the search ends as it would have (exit 0, every
    trial COMPLETE)."""
    marker = tmp_path / "held.json"
    env = driver_env(cache) | {"BLOCKSEARCH_TEST_HOLD": f"{marker}:1"}
    run = run_cli([*driver_args(tiny_teacher, tmp_path, postgres_url, "restart-pg", 2), "--dashboard-port",
                   str(free_port())], env, start_new_session=True)
    done = threading.Event()
    try:
        end = time.time() + 300
        while run.poll() is None and time.time() < end and not marker.is_file():
            time.sleep(0.2)
        assert marker.is_file(), run.communicate(timeout=60)[0][-3000:]
        time.sleep(2)  # a heartbeat or two on the old connection first
        restart_postgres()
        time.sleep(3)
        threading.Thread(target=release, args=(marker, done), daemon=True).start()
        out, _ = run.communicate(timeout=600)
    finally:
        done.set()
        stop(run)
    assert run.returncode == 0 and "Traceback" not in out, out[-4000:]
    trials = load_study(postgres_url, "restart-pg").get_trials()
    ended = [t for t in trials if t.state.name != "WAITING"]
    assert [t.state.name for t in ended] == ["COMPLETE", "COMPLETE"], [(t.number, t.state.name) for t in trials]
    assert len({t.user_attrs["genome"] for t in ended}) == 2


@pytest.mark.parametrize("url", ["journal:///shared/study.log", "/shared/study.log"])
def test_a_journal_file_is_refused_in_one_line(url):
    with pytest.raises(BlocksearchError, match=r"journal file, which records no heartbeats.*postgresql\+psycopg://"):
        open_storage(url, heartbeat_interval=10, grace_period=60)


def test_blocksearch_run_refuses_a_journal_storage_before_anything_starts(tmp_path, capsys):
    assert main(["run", "--storage", f"journal:///{tmp_path / 'study.log'}", "--runs-dir", str(tmp_path / "runs"),
                 "--trials", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "records no heartbeats" in err[0], err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "study.log").exists()
