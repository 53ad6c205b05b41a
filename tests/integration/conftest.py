"""Integration fixtures: an untrained toy-topology teacher pipeline (real diffusers parts, built in
seconds, no training) and helpers to run ``blocksearch run`` as a user would."""

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
import torch
from safetensors.torch import save_file

from blocksearch.study import is_stale

ROOT = Path(__file__).resolve().parents[2]
FAST = ["--steps", "2", "--eval-prompts", "4", "--latency-repeats", "2", "--rungs", "none"]  # rungs: test_rungs_search


@pytest.fixture(scope="session", autouse=True)
def integration_cache(tmp_path_factory):
    """The integration runs keep their caches and lock files in one folder of their own, never the user's
    ~/.cache/blocksearch, and no wait for the measurement slot lasts past 60 s (a process that holds it and
    never yields -- say an orphaned worker of a killed driver -- slows a test, it cannot hang it)."""
    folder = tmp_path_factory.mktemp("cache")
    saved = {k: os.environ.get(k) for k in ("BLOCKSEARCH_CACHE", "BLOCKSEARCH_SLOT_TIMEOUT")}
    os.environ.update(BLOCKSEARCH_CACHE=str(folder), BLOCKSEARCH_SLOT_TIMEOUT="60")
    yield folder
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory) -> Path:
    """A toy-topology StableDiffusionPipeline folder with a toy judge (random seeded weights)."""
    from blocksearch.toy import models as M
    from blocksearch.toy.build import make_pipeline
    from blocksearch.toy.assets import JUDGE_FILE
    from blocksearch.toy.judge import ToyJudge

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("teacher")
    tokenizer = M.make_tokenizer()
    pipe = make_pipeline(M.make_vae(), tokenizer, M.make_text_encoder(tokenizer), M.make_unet())
    pipe.save_pretrained(out, safe_serialization=True)
    save_file({k: v.contiguous() for k, v in ToyJudge().state_dict().items()}, out / JUDGE_FILE)
    return out


def ray_cli() -> str:
    """The ``ray`` command: on PATH, else the one beside this interpreter (a virtual environment not activated)."""
    return shutil.which("ray") or str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def non_loopback_ip() -> str | None:
    """An address of this machine that is not loopback (None when it has none)."""
    import ray

    ip = ray.util.get_node_ip_address()
    return None if ip.startswith("127.") else ip


def run_cli(args: list[str], env: dict, **kw) -> subprocess.Popen:
    """``blocksearch <args>`` through tests/integration/driver.py (the real CLI, test candidate)."""
    return subprocess.Popen([sys.executable, str(Path(__file__).parent / "driver.py"), *args], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


# -- several drivers on one study (test_drivers.py, test_postgres.py) -------------------------------------
BEATS = ["--heartbeat-interval", "1", "--heartbeat-grace", "8"]


def load_study(db: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=db)


def evaluated(study: optuna.Study) -> list:
    """The trials that ran to an end (not skipped, not left by a dead driver)."""
    return [t for t in study.get_trials() if t.state.name in ("COMPLETE", "FAIL", "PRUNED")
            and not t.user_attrs.get("skipped") and not is_stale(t)]


def driver_args(tiny_teacher, tmp_path, db, study, trials) -> list[str]:
    """``blocksearch run`` for one of several drivers on ``study`` in storage ``db`` (tiny, 1 trial at a time)."""
    return ["run", "--teacher", str(tiny_teacher), "--trials", str(trials), *FAST, "--study", study,
            "--storage", db, "--runs-dir", str(tmp_path / "runs"), "--max-concurrent", "1", *BEATS]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One cache folder for a module's runs: the teacher cache, reference statistics and latencies of an
    architecture are computed once, as on a user's machine."""
    return tmp_path_factory.mktemp("cache")


def driver_env(cache) -> dict:
    return {**os.environ, "RAY_AUTH_MODE": "disabled", "BLOCKSEARCH_CACHE": str(cache)}


def stop(proc: subprocess.Popen) -> None:
    """SIGKILL ``proc``'s process group (a driver started with ``start_new_session``: it and its local Ray)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def kill_one_driver_midtrial(tiny_teacher, tmp_path, cache, db: str, name: str) -> None:
    """Two drivers on study ``name`` in ``db`` (4 trials); the first is SIGKILLed (with its local Ray) while
    one of its trials runs. The survivor must finish, mark the lost trial FAIL after the grace period and
    re-queue it exactly once, and no Genome may be trained twice."""
    args = driver_args(tiny_teacher, tmp_path, db, name, 4)
    env = driver_env(cache)
    doomed = run_cli([*args, "--dashboard-port", str(free_port())], env, start_new_session=True)
    survivor = None
    try:
        end = time.time() + 300
        mine = []
        while time.time() < end and not mine:
            time.sleep(1)
            try:
                running = load_study(db, name).get_trials(states=(optuna.trial.TrialState.RUNNING,))
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
        stop(doomed)
        if survivor is not None:
            stop(survivor)
    assert survivor.returncode == 0 and "Traceback" not in out, out
    study = load_study(db, name)
    lost = study.trials[mine[0].number]
    assert lost.state.name == "FAIL" and is_stale(lost), lost
    retries = [t for t in study.get_trials() if t.system_attrs.get("failed_trial") == lost.number]
    assert len(retries) == 1 and retries[0].state.name == "COMPLETE", retries  # re-queued once, then trained
    assert f"stale trial #{lost.number}" in out
    trials = evaluated(study)
    genomes = [t.user_attrs["genome"] for t in trials]
    assert len(trials) == 4 and len(set(genomes)) == 4, genomes


# -- a throwaway PostgreSQL server (test_postgres.py) ------------------------------------------------------
PG_CTL = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parts[-3]))


def _pg(bindir: Path, *args: str) -> subprocess.CompletedProcess:
    """Run a PostgreSQL program as the ``postgres`` OS user when we are root (initdb refuses root)."""
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    return subprocess.run([*as_user, str(bindir / args[0]), *args[1:]], capture_output=True, text=True, timeout=120)


PG_SERVER: dict = {}  # how ``postgres_url``'s server was started: ``restart_postgres`` restarts it


def restart_postgres() -> None:
    """Restart ``postgres_url``'s server (``pg_ctl restart -m fast``: every client connection is cut, as by a
    database server's restart or fail-over); returns once it accepts connections again."""
    ctl = PG_SERVER["ctl"]
    done = _pg(PG_SERVER["bindir"], "pg_ctl", *ctl[1:], "-m", "fast", "restart")
    assert done.returncode == 0, f"pg_ctl restart failed: {done.stdout}{done.stderr}"


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """A PostgreSQL cluster of its own (Debian's server binaries, /usr/lib/postgresql/<v>/bin): initdb in a
    fresh folder, trust authentication, listening on 127.0.0.1 only at a free port (its socket in the folder
    too), one database ``blocksearch``; yields its SQLAlchemy URL (psycopg 3) and stops and deletes the
    cluster at the end. Skips when the server binaries or the driver are missing."""
    if not PG_CTL:
        pytest.skip("no PostgreSQL server: pg_ctl not found under /usr/lib/postgresql/*/bin "
                    "(apt-get install postgresql; .ci/run does)")
    if importlib.util.find_spec("psycopg") is None:  # the driver of SQLAlchemy's postgresql+psycopg dialect
        pytest.skip("no PostgreSQL driver: psycopg is not installed (pip install -e '.[postgres]')")
    bindir = PG_CTL[-1].parent
    folder = Path(tempfile.mkdtemp(prefix="blocksearch-pg-"))  # short: a socket path has ~100 characters
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    data, port = folder / "data", free_port()
    try:
        done = _pg(bindir, "initdb", "-D", str(data), "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8")
        assert done.returncode == 0, f"initdb failed: {done.stdout}{done.stderr}"
        opts = f"-k {folder} -p {port} -h 127.0.0.1 -c fsync=off -c full_page_writes=off"
        PG_SERVER.update(ctl=[str(bindir / "pg_ctl"), "-D", str(data), "-l", str(folder / "server.log"), "-w",
                              "-t", "60", "-o", opts], bindir=bindir)
        done = _pg(bindir, "pg_ctl", "-D", str(data), "-l", str(folder / "server.log"), "-w", "-t", "60",
                   "-o", opts, "start")
        log = folder / "server.log"
        assert done.returncode == 0, f"pg_ctl start failed: {done.stdout}{done.stderr}" \
                                     f"{log.read_text() if log.exists() else ''}"
        try:
            done = _pg(bindir, "createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "blocksearch")
            assert done.returncode == 0, f"createdb failed: {done.stdout}{done.stderr}"
            yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/blocksearch"
        finally:
            _pg(bindir, "pg_ctl", "-D", str(data), "-m", "fast", "-w", "stop")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
