"""Scale: several `blocksearch run` drivers on one SQLite study (Optuna heartbeats), a killed driver's trial
re-queued once after the grace period, and a search across a two-node Ray cluster on loopback."""

import os
import signal
import socket
import subprocess
import time

import optuna
import pytest

from blocksearch.study import is_stale
from tests.integration.conftest import FAST, free_port, run_cli

pytestmark = pytest.mark.integration
BEATS = ["--heartbeat-interval", "1", "--grace-period", "8"]


def _study(db: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=db)


def _evaluated(study: optuna.Study) -> list:
    return [t for t in study.get_trials() if t.state.name in ("COMPLETE", "FAIL", "PRUNED")
            and not t.user_attrs.get("skipped") and not is_stale(t)]


def _args(tiny_teacher, tmp_path, db, study, trials):
    return ["run", "--teacher", str(tiny_teacher), "--trials", str(trials), *FAST, "--study", study,
            "--storage", db, "--runs-dir", str(tmp_path / "runs"), "--max-concurrent", "1", *BEATS]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One cache folder for this module's runs: the teacher cache, reference statistics and latencies of an
    architecture are computed once, as on a user's machine."""
    return tmp_path_factory.mktemp("cache")


def _env(cache):
    return {**os.environ, "RAY_AUTH_MODE": "disabled", "BLOCKSEARCH_CACHE": str(cache)}


def _stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def test_two_drivers_share_one_study_without_repeating_work(tiny_teacher, tmp_path, cache):
    db, name = f"sqlite:///{tmp_path / 's.db'}", "shared"
    args = _args(tiny_teacher, tmp_path, db, name, 6)
    env = _env(cache)
    first = run_cli([*args, "--dashboard-port", str(free_port())], env, start_new_session=True)
    time.sleep(4)
    second = run_cli([*args, "--dashboard-port", str(free_port())], env, start_new_session=True)
    try:
        out1, _ = first.communicate(timeout=600)
        out2, _ = second.communicate(timeout=600)
    finally:
        _stop(first)
        _stop(second)
    assert first.returncode == 0 and second.returncode == 0, out1 + out2
    assert "Traceback" not in out1 + out2 and "stale" not in out1 + out2  # nobody's trial was taken as dead
    trials = _evaluated(_study(db, name))
    genomes = [t.user_attrs["genome"] for t in trials]
    assert len(trials) == 6 and len(set(genomes)) == 6, genomes
    drivers = {t.user_attrs["driver"] for t in trials}
    assert len(drivers) == 2, drivers  # the work was divided between the two


def test_a_killed_drivers_trial_is_requeued_once_and_the_other_finishes(tiny_teacher, tmp_path, cache):
    db, name = f"sqlite:///{tmp_path / 's.db'}", "killed"
    args = _args(tiny_teacher, tmp_path, db, name, 4)
    env = _env(cache)
    doomed = run_cli([*args, "--dashboard-port", str(free_port())], env, start_new_session=True)
    survivor = None
    try:
        end = time.time() + 300
        mine = []
        while time.time() < end and not mine:
            time.sleep(1)
            try:
                running = _study(db, name).get_trials(states=(optuna.trial.TrialState.RUNNING,))
            except KeyError:
                continue
            mine = [t for t in running if t.user_attrs.get("driver", "").endswith(f":{doomed.pid}")
                    and t.user_attrs.get("genome")]
        assert mine, "the first driver never ran a trial"
        survivor = run_cli([*args, "--dashboard-port", str(free_port())], env, start_new_session=True)
        time.sleep(2)
        os.killpg(doomed.pid, signal.SIGKILL)  # the driver and its local Ray, mid-trial
        doomed.wait(30)
        out, _ = survivor.communicate(timeout=600)
    finally:
        _stop(doomed)
        if survivor is not None:
            _stop(survivor)
    assert survivor.returncode == 0 and "Traceback" not in out, out
    study = _study(db, name)
    lost = study.trials[mine[0].number]
    assert lost.state.name == "FAIL" and is_stale(lost), lost
    retries = [t for t in study.get_trials() if t.system_attrs.get("failed_trial") == lost.number]
    assert len(retries) == 1 and retries[0].state.name == "COMPLETE", retries  # re-queued once, then trained
    assert f"stale trial #{lost.number}" in out
    trials = _evaluated(study)
    genomes = [t.user_attrs["genome"] for t in trials]
    assert len(trials) == 4 and len(set(genomes)) == 4, genomes


@pytest.fixture
def two_node_cluster():
    """`ray start --head` and `ray start --address` (a second node) on this machine, one CPU each."""
    port = free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    common = ["--block", "--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--disable-usage-stats"]
    head = subprocess.Popen(["ray", "start", "--head", "--port", str(port), "--include-dashboard", "false",
                             *common], env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    procs = [head]
    try:
        end = time.time() + 120
        while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
            assert time.time() < end, "ray start --head did not come up"
            time.sleep(1)
        procs.append(subprocess.Popen(["ray", "start", "--address", f"127.0.0.1:{port}", *common], env=env,
                                      start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        import ray

        ray.init(address=f"127.0.0.1:{port}")
        try:
            while len([n for n in ray.nodes() if n["Alive"]]) < 2:
                assert time.time() < end, "the second node did not join"
                time.sleep(1)
        finally:
            ray.shutdown()
        yield f"127.0.0.1:{port}"
    finally:
        for p in procs:  # their process groups (raylet, gcs, workers); never `ray stop` (other clusters)
            _stop(p)
            p.wait(30)


def test_a_search_across_a_two_node_cluster(two_node_cluster, tiny_teacher, tmp_path, cache):
    db, name = f"sqlite:///{tmp_path / 's.db'}", "cluster"
    proc = run_cli(["run", "--address", two_node_cluster, "--teacher", str(tiny_teacher), "--trials", "2", *FAST,
                    "--study", name, "--storage", db, "--runs-dir", str(tmp_path / "runs")], _env(cache))
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    assert "2 in parallel" in out  # one CPU on each node
    done = _study(db, name).get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(done) == 2 and len({t.user_attrs["node"] for t in done}) == 2, [t.user_attrs.get("node") for t in done]
