"""The Ray head lost under a running search (``ray stop`` on the head node, the node killed or gone) while the driver
runs on it through ``--address``: one line from blocksearch and exit code 1 (not Ray's C++ log line 60 s later),
nothing finished lost, and the same command on a new head resumes: the trial the head took down is re-queued once
and no design is trained twice."""

import contextlib
import os
import signal
import subprocess
import time

import pytest

from blocksearch.study import is_stale
from tests.integration.conftest import (ROOT, driver_args, driver_env, evaluated, free_port, load_study, ray_cli,
                                        run_cli, stop)

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # two Ray heads and two runs: 3-6 min on a busy machine


@contextlib.contextmanager
def ray_head(env: dict, log_path):
    """A separately started local Ray head (``ray start --head --block``, its own process group); yields its address
    once it is up. Its workers get ``env`` (the held-trial marker, this checkout on PYTHONPATH)."""
    port, log = free_port(), open(log_path, "w")
    head = subprocess.Popen([ray_cli(), "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port",
                             str(port), "--num-cpus", "1", "--include-dashboard", "false", "--disable-usage-stats"],
                            env=env, start_new_session=True, stdout=log, stderr=subprocess.STDOUT)
    try:
        end = time.time() + 180
        while head.poll() is None and time.time() < end and "Ray runtime started" not in log_path.read_text():
            time.sleep(0.5)
        assert head.poll() is None and "Ray runtime started" in log_path.read_text(), log_path.read_text()[-2000:]
        yield f"127.0.0.1:{port}", head
    finally:
        stop(head)
        head.wait(30)
        log.close()


def test_a_lost_ray_head_is_one_line_and_the_same_command_resumes(tiny_teacher, tmp_path, cache):
    marker = tmp_path / "held.json"  # tests/integration/faulty.py: the first trial holds at KD step 1 while it exists
    env = driver_env(cache) | {"PYTHONPATH": str(ROOT), "BLOCKSEARCH_TEST_HOLD": f"{marker}:1"}
    db, name = f"sqlite:///{tmp_path / 's.db'}", "lost-head"
    args = driver_args(tiny_teacher, tmp_path, db, name, 3)
    with ray_head(env, tmp_path / "head1.log") as (address, head):
        run = run_cli([*args, "--address", address], env, start_new_session=True)
        try:
            end = time.time() + 400
            while run.poll() is None and time.time() < end and not marker.is_file():
                time.sleep(0.2)
            assert marker.is_file(), run.communicate(timeout=60)[0][-3000:]
            os.killpg(head.pid, signal.SIGKILL)  # the head node: its GCS, raylet and workers
            t0 = time.time()
            out, _ = run.communicate(timeout=300)
            took = time.time() - t0
        finally:
            stop(run)
    [last] = [x for x in out.splitlines() if x.startswith("blocksearch: lost the Ray head")] or [out[-3000:]]
    assert run.returncode == 1 and last.startswith(f"blocksearch: lost the Ray head at {address} ("), out[-3000:]
    assert last == out.strip().splitlines()[-1], out[-3000:]  # the last line printed
    assert f"study {name!r} in {db}" in last and "rerun the same command to resume" in last and took < 60, took
    study = load_study(db, name)
    held = [t for t in study.get_trials() if t.state.name == "RUNNING"]
    assert len(held) == 1, [(t.number, t.state.name) for t in study.get_trials()]
    before = {t.number: t.user_attrs["genome"] for t in evaluated(study) if t.state.name == "COMPLETE"}

    with ray_head(env, tmp_path / "head2.log") as (address, _):
        time.sleep(8)  # past --heartbeat-grace: the lost run's trial is stale
        rerun = subprocess.run([*run.args[:2], *args, "--address", address], env=env, cwd=ROOT, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-4000:]
    study = load_study(db, name)
    lost = study.trials[held[0].number]
    assert lost.state.name == "FAIL" and is_stale(lost), lost
    retries = [t for t in study.get_trials() if t.system_attrs.get("failed_trial") == lost.number]
    assert len(retries) == 1 and retries[0].state.name == "COMPLETE", retries
    trials = evaluated(study)
    genomes = [t.user_attrs["genome"] for t in trials]
    assert len(trials) == 3 and len(set(genomes)) == 3, genomes
    assert all(study.trials[n].user_attrs["genome"] == g for n, g in before.items())  # nothing finished was lost
