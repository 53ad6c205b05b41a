"""Several machines: one study in a PostgreSQL server (``--storage postgresql+psycopg://...``), shared by
drivers that beat Optuna heartbeats into it; and Optuna's journal file, refused because it cannot beat."""

import time

import optuna
import pytest

from blocksearch.cli import main
from blocksearch.errors import BlocksearchError
from blocksearch.study import heartbeats, open_storage
from tests.integration.conftest import kill_one_driver_midtrial

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
