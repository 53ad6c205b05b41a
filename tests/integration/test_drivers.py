"""Scale: several `blocksearch run` drivers on one SQLite study (Optuna heartbeats), a killed driver's trial
re-queued once after the grace period, and a search across a two-node Ray cluster on loopback."""

import os
import socket
import subprocess
import time

import optuna
import pytest

from tests.integration.conftest import (FAST, driver_args, driver_env, evaluated, free_port,
                                        kill_one_driver_midtrial, load_study, ray_cli, run_cli, stop)

pytestmark = pytest.mark.integration


@pytest.mark.slow  # ~3 min; CI runs two drivers on one study through PostgreSQL (test_postgres.py, one of them killed)
def test_two_drivers_share_one_study_without_repeating_work(tiny_teacher, tmp_path, cache):
    db, name = f"sqlite:///{tmp_path / 's.db'}", "shared"
    args = driver_args(tiny_teacher, tmp_path, db, name, 6)
    env = driver_env(cache)
    first = run_cli([*args, "--dashboard-port", str(free_port())], env, start_new_session=True)
    time.sleep(4)
    second = run_cli([*args, "--dashboard-port", str(free_port())], env, start_new_session=True)
    try:
        out1, _ = first.communicate(timeout=600)
        out2, _ = second.communicate(timeout=600)
    finally:
        stop(first)
        stop(second)
    assert first.returncode == 0 and second.returncode == 0, out1 + out2
    assert "Traceback" not in out1 + out2 and "stale" not in out1 + out2  # nobody's trial was taken as dead
    trials = evaluated(load_study(db, name))
    genomes = [t.user_attrs["genome"] for t in trials]
    assert len(trials) == 6 and len(set(genomes)) == 6, genomes
    drivers = {t.user_attrs["driver"] for t in trials}
    assert len(drivers) == 2, drivers  # the work was divided between the two


@pytest.mark.slow  # CI covers it through PostgreSQL (test_postgres.py) and SQLite's heartbeat rule in test_search.py
def test_a_killed_drivers_trial_is_requeued_once_and_the_other_finishes(tiny_teacher, tmp_path, cache):
    kill_one_driver_midtrial(tiny_teacher, tmp_path, cache, f"sqlite:///{tmp_path / 's.db'}", "killed")


@pytest.fixture
def two_node_cluster():
    """`ray start --head` and `ray start --address` (a second node) on this machine, one CPU each."""
    port = free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    common = ["--block", "--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--disable-usage-stats"]
    head = subprocess.Popen([ray_cli(), "start", "--head", "--port", str(port), "--include-dashboard", "false",
                             *common], env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    procs = [head]
    try:
        end = time.time() + 120
        while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
            assert time.time() < end, "ray start --head did not come up"
            time.sleep(1)
        procs.append(subprocess.Popen([ray_cli(), "start", "--address", f"127.0.0.1:{port}", *common], env=env,
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
            stop(p)
            p.wait(30)


@pytest.mark.slow  # CI covers --address with a separately started cluster (test_ray_search.py)
def test_a_search_across_a_two_node_cluster(two_node_cluster, tiny_teacher, tmp_path, cache):
    db, name = f"sqlite:///{tmp_path / 's.db'}", "cluster"
    proc = run_cli(["run", "--address", two_node_cluster, "--teacher", str(tiny_teacher), "--trials", "2", *FAST,
                    "--study", name, "--storage", db, "--runs-dir", str(tmp_path / "runs")], driver_env(cache))
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    assert "2 in parallel" in out  # one CPU on each node
    done = load_study(db, name).get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(done) == 2 and len({t.user_attrs["node"] for t in done}) == 2, [t.user_attrs.get("node") for t in done]
