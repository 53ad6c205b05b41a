"""``blocksearch train`` on Ray Train (TorchTrainer, DDP over gloo on CPU): 2 workers train the same student as one
process from the same global batch (the killed run against a straight one); a run whose CLI driver is SIGKILLed
after its first checkpoint continues from its last checkpoint when the same command runs again, and ends with the
student of a straight run; a worker's error is one line. A Ray start costs 10-20 s on a busy 2-core machine, so the in-process runs and the killed driver share one
local Ray (``--address``); one CLI run starts its own, as a user's does."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray
from ray.util.state import list_actors

from blocksearch.cli import main
from blocksearch.train.learning_curve import read_log
from tests.conftest import save_tiny_teacher
from tests.integration.conftest import ROOT, free_port
from tests.test_train import assert_same_student, initial_student, train_args, weights

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("one_thread")]
TRAIN_WORKER = "RayTrainWorker"  # the actor class of a Ray Train (v2) worker (ray.train.v2 ... worker_group/worker.py)


def on_ray(teacher: str, out: Path, steps: int, workers: int, *extra: str) -> list[str]:
    """``train_args`` on ``workers`` Ray Train workers of a new local Ray (its dashboard on a free port)."""
    args = train_args(teacher, out, steps, *extra)
    at = args.index("--workers")
    return args[:at] + ["--workers", str(workers), "--dashboard-port", str(free_port())] + args[at + 2:]


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for this module's in-process runs (``run_train`` uses a Ray the process has started), token
    auth off on purpose (tests/conftest.py: no token files in the user's home)."""
    os.environ["RAY_AUTH_MODE"] = "disabled"  # as tests/conftest.py sets it for every test
    ray.init(address="local", num_cpus=2, include_dashboard=True, dashboard_port=free_port(),
             logging_level="WARNING")
    yield
    ray.shutdown()


def test_more_workers_than_the_cluster_has_cpus_is_a_one_line_error(local_ray, tmp_path, capsys):
    """4 workers x 1 CPU asked of this module's 2-CPU Ray: exit code 2 before any training, naming the CPUs.
    (That 2 workers train the same student as 1 -- DDP's all-reduce over the same global batch -- is checked by
    the killed run below: 2 Ray workers, resumed, against a straight in-process run.)"""
    teacher = save_tiny_teacher(tmp_path)
    assert main(on_ray(teacher, tmp_path / "big", 3, 4)) == 2
    assert "the Ray cluster has 2 CPU" in capsys.readouterr().err
    assert not (tmp_path / "big" / "train_log.jsonl").exists()


@pytest.mark.slow  # 45-60 s of Ray start-up; kept out of CI for suite time (run with --runslow)
def test_a_workers_error_is_one_line_and_the_cli_starts_its_own_ray(tmp_path):
    """The CLI as a user runs it, starting (and stopping) its own local Ray: a worker's BlocksearchError (a
    non-finite loss) ends the run with exit code 2 and the error's one line last on stderr."""
    teacher = save_tiny_teacher(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "RAY_AUTH_MODE": "disabled"}
    run = subprocess.run([sys.executable, "-m", "blocksearch.cli", *on_ray(teacher, tmp_path / "nan", 3, 2, "--lr",
                                                                            "1e30")],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    last = run.stderr.strip().splitlines()[-1]  # after Ray's own log of the worker's traceback
    assert run.returncode == 2 and last.startswith("blocksearch: error: non-finite loss at step 2 (loss=nan"), last


@pytest.mark.slow  # ~3 min of Ray Train; CI resumes a killed local run (test_train.py::test_a_killed_run_resumes_from_its_last_checkpoint)
def test_a_killed_ray_run_resumes_from_its_last_checkpoint(local_ray, tmp_path):
    """The CLI driver on this module's Ray (``--address``) SIGKILLed after Ray Train registered its first
    checkpoint; the same command again continues from the last registered checkpoint."""
    teacher = save_tiny_teacher(tmp_path)
    out = tmp_path / "killed"
    args = on_ray(teacher, out, 12, 2, "--checkpoint-every", "2")
    args[args.index("--dashboard-port"):args.index("--dashboard-port") + 2] = [
        "--address", ray.get_runtime_context().gcs_address]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "RAY_AUTH_MODE": "disabled"}
    command = [sys.executable, "-m", "blocksearch.cli", *args]
    doomed = subprocess.Popen(command, cwd=ROOT, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    snapshot = out / "ray" / "train" / "checkpoint_manager_snapshot.json"  # Ray Train's record of checkpoints
    try:
        end = time.time() + 300
        while doomed.poll() is None and time.time() < end and not (
                snapshot.is_file() and "step-0000002" in snapshot.read_text()):
            time.sleep(0.05)
        os.killpg(doomed.pid, signal.SIGKILL)  # the driver: Ray ends its job's Train controller and workers
    finally:
        doomed.wait(30)
    assert doomed.returncode == -signal.SIGKILL and not (out / "model_index.json").exists()
    logged_before = max(r["step"] for r in read_log(out / "train_log.jsonl"))
    rerun = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    start = int(rerun.stdout.split(" from step ")[1].split()[0])
    assert 2 <= start <= logged_before and start % 2 == 0, (start, logged_before)
    assert [r["step"] for r in read_log(out / "train_log.jsonl")] == list(range(1, 13))
    assert main(train_args(teacher, tmp_path / "straight", 12, "--checkpoint-every", "2")) == 0
    for a, b in zip(read_log(out / "train_log.jsonl"), read_log(tmp_path / "straight" / "train_log.jsonl")):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
    assert_same_student(weights(out), weights(tmp_path / "straight"), initial_student(teacher))
    assert (out / "ray" / "train" / "step-0000012" / "checkpoint.json").is_file()  # Ray Train's last checkpoint


@pytest.mark.slow  # ~2.5 min of Ray Train on the 2-core machine; kept out of CI for the suite's time (--runslow)
def test_a_killed_train_worker_is_restarted_from_the_last_checkpoint(local_ray, tmp_path):
    """One of 2 Ray Train workers SIGKILLed (an OOM kill, a pre-empted node) after the first checkpoint, found through
    Ray's state API: Ray Train (FailureConfig, train/job.py WORKER_RETRIES) restarts the worker group from the last
    registered checkpoint, in the same command; the run ends (exit 0) with the student of a straight run, every step
    logged once."""
    teacher = save_tiny_teacher(tmp_path)
    out = tmp_path / "worker"
    args = on_ray(teacher, out, 12, 2, "--checkpoint-every", "2")
    args[args.index("--dashboard-port"):args.index("--dashboard-port") + 2] = [
        "--address", ray.get_runtime_context().gcs_address]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "RAY_AUTH_MODE": "disabled"}
    run = subprocess.Popen([sys.executable, "-m", "blocksearch.cli", *args], cwd=ROOT, env=env, text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    snapshot = out / "ray" / "train" / "checkpoint_manager_snapshot.json"
    killed = None
    try:
        end = time.time() + 300
        while run.poll() is None and time.time() < end and not (snapshot.is_file() and
                                                                "step-0000002" in snapshot.read_text()):
            time.sleep(0.05)
        workers = list_actors(address=ray.get_runtime_context().gcs_address,
                              filters=[("state", "=", "ALIVE"), ("class_name", "=", TRAIN_WORKER)])
        assert len(workers) == 2, workers
        killed = workers[-1].pid
        os.kill(killed, signal.SIGKILL)
        printed, _ = run.communicate(timeout=600)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait(30)
    assert run.returncode == 0, printed[-4000:]
    starts = [int(x.split(" from step ")[1].split()[0]) for x in printed.splitlines() if " from step " in x]
    assert starts[0] == 0 and len(starts) == 2 and 2 <= starts[1] < 12 and starts[1] % 2 == 0, (starts, printed[-3000:])
    assert [r["step"] for r in read_log(out / "train_log.jsonl")] == list(range(1, 13))
    assert main(train_args(teacher, tmp_path / "straight", 12, "--checkpoint-every", "2")) == 0
    for a, b in zip(read_log(out / "train_log.jsonl"), read_log(tmp_path / "straight" / "train_log.jsonl")):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
    assert_same_student(weights(out), weights(tmp_path / "straight"), initial_student(teacher))
