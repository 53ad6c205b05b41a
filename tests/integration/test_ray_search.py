"""``blocksearch run`` on real Ray Tune trials with the real stages on an untrained toy-topology teacher:
resume after SIGKILL, failure isolation, the dashboard on loopback only, and --address."""

import os
import re
import signal
import subprocess
import time
import urllib.request

import optuna
import pytest

from blocksearch.cli import main
from blocksearch.study import is_stale
from tests.integration.conftest import FAST, free_port, non_loopback_ip, ray_cli, run_cli

pytestmark = pytest.mark.integration
BK_TINY = "L1-1-1_T1-1-1_Mnone"


def _trials(db: str, study: str):
    return optuna.load_study(study_name=study, storage=db).get_trials()


def _finished(db: str, study: str) -> int:
    try:
        return sum(t.state.name in ("COMPLETE", "FAIL") and not is_stale(t) for t in _trials(db, study))
    except KeyError:  # the study does not exist yet
        return 0


def _http_status(url: str) -> int | str:
    try:
        with urllib.request.urlopen(url, timeout=3) as r:
            return r.status
    except Exception as err:  # refused / timed out: what "not reachable" means here
        return type(err).__name__


def _wait(cond, timeout: float, what: str):
    end = time.time() + timeout
    while time.time() < end:
        value = cond()
        if value:
            return value
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def test_sigkill_resume_failure_isolation_and_dashboard(tiny_teacher, tmp_path):
    port, db, study = free_port(), f"sqlite:///{tmp_path / 's.db'}", "resume"
    args = ["run", "--teacher", str(tiny_teacher), "--trials", "5", *FAST, "--study", study, "--storage", db,
            "--runs-dir", str(tmp_path / "runs"), "--dashboard-port", str(port), "--seed", "3",
            "--heartbeat-interval", "1", "--heartbeat-grace", "8"]  # the restart takes over the killed trials after 8 s
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "BLOCKSEARCH_TEST_FAIL_GENOME": BK_TINY}
    first = run_cli(args, env, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}/api/version"
        assert _wait(lambda: _http_status(url) == 200, 120, "the dashboard API on localhost")
        ip = non_loopback_ip()
        if ip:  # bound to 127.0.0.1 only: the same port on the machine's network address refuses
            assert _http_status(f"http://{ip}:{port}/api/version") != 200
        _wait(lambda: _finished(db, study) >= 2 or first.poll() is not None, 240, "two finished trials")
        assert first.poll() is None, first.stdout.read()
        first.send_signal(signal.SIGKILL)  # the driver only, mid-search
        first.wait(30)
        before = {t.number: (t.state.name, t.values) for t in _trials(db, study) if t.state.name != "RUNNING"}
        interrupted = [t.number for t in _trials(db, study) if t.state.name == "RUNNING"]
        assert interrupted, "the kill should land mid-search, with trials running"
    finally:
        _kill_group(first)
    second = run_cli(args, env, start_new_session=True)
    try:
        out, _ = second.communicate(timeout=400)
    except subprocess.TimeoutExpired:
        _kill_group(second)
        pytest.fail(f"the resumed run did not finish in 400 s; it printed:\n{second.communicate()[0]}")
    finally:
        _kill_group(second)
    assert second.returncode == 0, out
    trials = _trials(db, study)
    after = {t.number: (t.state.name, t.values) for t in trials}
    assert all(after[n] == v for n, v in before.items()), "a finished trial was lost or changed"
    evaluated = [t for t in trials if t.state.name in ("COMPLETE", "FAIL", "PRUNED")
                 and not {"cached_from", "skipped"} & set(t.user_attrs) and not is_stale(t)]
    assert len(evaluated) == 5, out  # the study reached --trials
    genomes = [t.user_attrs["genome"] for t in evaluated]
    assert len(set(genomes)) == len(genomes), f"a Genome was evaluated twice: {genomes}"
    (failed,) = [t for t in evaluated if t.state.name == "FAIL"]
    assert failed.user_attrs["genome"] == BK_TINY and "injected failure" in failed.user_attrs["error"]
    assert {t.user_attrs.get("design") for t in evaluated} >= {"bk_base", "bk_small", "bk_tiny"}
    for t in evaluated:
        if t.state.name == "COMPLETE":
            assert os.path.isfile(os.path.join(t.user_attrs["student_dir"], "config.json"))
            assert set(t.user_attrs["timings"]) >= {"kd_s", "generate_s", "score_s", "overhead_s", "total_s"}
    assert all(f"stale trial #{n}" in out for n in interrupted), out  # cleaned up and re-queued
    assert "Pareto front" in out and "results: study 'resume'" in out
    first_trial = re.search(r"^#\d+ ", out, re.M)  # the teacher cache is warmed by the driver before any trial
    assert first_trial and 0 <= out.find("teacher cache ready: ") < first_trial.start(), out


def _kill_group(proc: subprocess.Popen) -> None:
    """Stop what this test started: the driver's process group (its local Ray, if it outlived it)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.fixture
def ray_head():
    """A separately started local Ray cluster on loopback (``ray start --head --block``), stopped after."""
    port = free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    proc = subprocess.Popen([ray_cli(), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
                             "--port", str(port), "--num-cpus", "1", "--include-dashboard", "false",
                             "--disable-usage-stats"], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import socket

        _wait(lambda: socket.socket().connect_ex(("127.0.0.1", port)) == 0, 120, "ray start --head")
        yield f"127.0.0.1:{port}"
    finally:  # its whole process group (ray start, gcs, raylet, workers); never `ray stop` (other clusters)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)


def test_address_connects_to_a_separately_started_cluster(ray_head, tiny_teacher, tmp_path, capsys):
    db = f"sqlite:///{tmp_path / 's.db'}"
    code = main(["run", "--address", ray_head, "--teacher", str(tiny_teacher), "--trials", "1", *FAST,
                 "--study", "remote", "--storage", db, "--runs-dir", str(tmp_path / "runs")])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "1 in parallel" in out  # the separate cluster's single CPU, not a new local Ray
    (t,) = optuna.load_study(study_name="remote", storage=db).get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert t.user_attrs["design"] == "bk_base"


@pytest.mark.slow
def test_asha_stopped_trials_are_pruned_and_never_on_the_front(tiny_teacher, tmp_path, capsys):
    from blocksearch.report.compute import build_report

    db = f"sqlite:///{tmp_path / 's.db'}"
    code = main(["run", "--teacher", str(tiny_teacher), "--trials", "5", "--steps", "12", "--eval-prompts", "4",
                 "--asha", "--study", "asha", "--storage", db, "--runs-dir", str(tmp_path / "runs"),
                 "--dashboard-port", str(free_port())])
    assert code == 0, capsys.readouterr().out
    study = optuna.load_study(study_name="asha", storage=db)
    pruned = study.get_trials(states=(optuna.trial.TrialState.PRUNED,))
    assert pruned and all(t.values is None and "pruned_at" in t.user_attrs for t in pruned)
    assert not {t.number for t in pruned} & set(build_report(study).front)
    # a reference design is never stopped early, and a stopped candidate does not count toward --trials
    assert not [t.user_attrs["design"] for t in pruned if t.user_attrs.get("design")]
    finished = study.get_trials(states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL))
    assert len([t for t in finished if not t.user_attrs.get("skipped")]) == 5


def test_run_starts_its_local_ray_with_token_auth_when_the_user_set_none(tiny_teacher, tmp_path):
    """``RAY_AUTH_MODE`` unset, as a user runs ``blocksearch run``: the driver's new local Ray uses token auth and
    the search completes. Ray reads the variable when it is imported; set after that (as it was), the GCS wanted a
    token the driver never sent and every run stopped at 'cannot start a local Ray' (cluster.local_ray_auth)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"} | {"HOME": str(tmp_path)}  # its own token
    args = ["run", "--teacher", str(tiny_teacher), "--trials", "1", *FAST, "--study", "auth",
            "--storage", f"sqlite:///{tmp_path / 's.db'}", "--runs-dir", str(tmp_path / "runs"),
            "--dashboard-port", str(free_port())]
    proc = run_cli(args, env, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=400)
    finally:
        _kill_group(proc)
    assert proc.returncode == 0, out[-3000:]
    assert "token auth on" in out and (tmp_path / ".ray" / "auth_token").is_file(), out[-3000:]
    assert _finished(f"sqlite:///{tmp_path / 's.db'}", "auth") == 1
