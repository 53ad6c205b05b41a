"""A trial worker SIGKILLed mid-KD (an OOM kill, a pre-empted node) is retried (``run --trial-retries``, default 1):
the search completes, the design is trained once in the study, and the retried trial scores what an uninterrupted
one does. The worker is found through Ray's state API, as an operator would find it, not by process name."""

import json
import os
import signal
import threading
import time
from pathlib import Path

import optuna
import pytest
import ray
import torch
from ray.util.state import list_actors

from blocksearch.cli import main
from blocksearch.search import driver
from blocksearch.search.trial import TrialJob, train_candidate
from blocksearch.settings import LOSSES_FILE, PROBE_KEYS
from blocksearch.families.unet.genome import Genome
from blocksearch.teachers import resolve_teacher
from tests.integration.conftest import ROOT, free_port

pytestmark = pytest.mark.integration
STEPS, HOLD_AT = 4, 2  # KD steps per trial; the first trial waits at this step to be killed
TRAINABLE = "ImplicitFunc"  # the actor class of a Ray Tune function trainable (ray.tune.trainable.function_trainable)
QUALITY = ("fid", "kid", "alignment", *PROBE_KEYS)  # the scores KD decides; latency is measured, params exact


def kill_held_trial(marker: Path, seen: dict) -> None:
    """Once a trial holds mid-KD (``marker``, tests/integration/faulty.py), SIGKILL its worker: the one live actor
    of the trainable, from Ray's state API."""
    end = time.time() + 240
    while time.time() < end:
        try:
            seen["held"] = json.loads(marker.read_text())
        except (OSError, ValueError):  # not there yet, or half written
            time.sleep(0.2)
            continue
        try:
            actors = list_actors(address=ray.get_runtime_context().gcs_address,
                                 filters=[("state", "=", "ALIVE"), ("class_name", "=", TRAINABLE)])
            seen["actors"] = [(a.actor_id, a.pid) for a in actors]
            if len(actors) == 1:
                os.kill(actors[0].pid, signal.SIGKILL)
        except Exception as err:  # noqa: BLE001 - reported by the test's asserts
            seen["error"] = repr(err)
        return


def test_a_trial_worker_killed_mid_kd_is_retried_and_its_design_trained_once(tiny_teacher, tmp_path, monkeypatch,
                                                                             capsys):
    marker = tmp_path / "held.json"
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))  # the workers
    monkeypatch.setenv("BLOCKSEARCH_TEST_HOLD", f"{marker}:{HOLD_AT}")
    monkeypatch.setattr(driver, "CANDIDATE", "tests.integration.faulty:candidate")
    db, runs = f"sqlite:///{tmp_path / 's.db'}", tmp_path / "runs"
    seen: dict = {}
    killer = threading.Thread(target=kill_held_trial, args=(marker, seen), daemon=True)
    killer.start()
    code = main(["run", "--teacher", str(tiny_teacher), "--trials", "2", "--steps", str(STEPS), "--eval-prompts", "4",
                 "--latency-repeats", "2", "--rungs", "none", "--noise-seeds", "1", "--teacher-cache", "off",
                 "--max-concurrent", "1", "--study", "retry", "--storage", db, "--runs-dir", str(runs), "--dashboard-port", str(free_port())])
    out = capsys.readouterr().out
    killer.join(10)
    assert code == 0, out
    assert "error" not in seen and len(seen.get("actors", [])) == 1, seen
    assert seen["actors"][0][1] == seen["held"]["pid"], seen  # the state API's worker is the one that held
    study = optuna.load_study(study_name="retry", storage=db)
    trials = [t for t in study.get_trials() if t.state.name != "WAITING"]  # bk_tiny stays queued (--trials 2)
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"], out  # no second Optuna trial of the design
    genomes = [t.user_attrs["genome"] for t in trials]
    assert len(set(genomes)) == 2 and seen["held"]["genome"] in genomes, (genomes, seen)
    killed = next(t for t in trials if t.user_attrs["genome"] == seen["held"]["genome"])
    losses = runs / "retry" / "students" / killed.user_attrs["genome"] / LOSSES_FILE
    assert [json.loads(x)["step"] for x in losses.read_text().splitlines()] == list(range(1, STEPS + 1))

    # the retried trial scores what an uninterrupted trial of the same design does (the suite's KD-resume tolerance)
    attrs = study.user_attrs
    job = TrialJob(resolve_teacher(attrs["teacher"]), attrs["device"], attrs["distill"], attrs["eval"],
                   str(tmp_path / "straight"), 1, report_every=1, score=attrs["score"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the trial ran (--cpus-per-trial 1)
    try:
        straight = train_candidate(Genome.from_id(killed.user_attrs["genome"]), job, lambda step, losses: None)
    finally:
        torch.set_num_threads(threads)
    retried = killed.user_attrs["metrics"]
    compared = [k for k in QUALITY if straight.metrics.get(k) is not None]
    assert compared, straight.metrics
    assert {k: retried[k] for k in compared} == pytest.approx({k: straight.metrics[k] for k in compared}, rel=1e-5)
    assert retried["params"] == straight.metrics["params"]
