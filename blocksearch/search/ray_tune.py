"""Ray plumbing of a search: connect to or start Ray, size the lanes, run a study's trials with Ray Tune (Liaw et
al., arXiv 1807.05118; optional ASHA, Li et al., MLSys 2020), and the function trainable each worker runs.

Ray is imported at the top here, and this module only where a search has work for it (driver.py, which hands
``run_trials`` to the first stage and the rungs) and in the workers: ``import ray.tune.search.optuna`` costs
1.0-1.3 s on an idle machine and ~3 s on a busy one, even after torch and diffusers (``python -X importtime``),
which bad flags (exit 2) and a study that already has its trials never pay.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import threading
import time
import traceback
from pathlib import Path

import ray
import torch
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import ConcurrencyLimiter

from blocksearch.cache import outside_work_slot
from blocksearch.errors import BlocksearchError
from blocksearch.search.cluster import Tuning, watch_head
from blocksearch.search.console import Progress
from blocksearch.search.searcher import StudySearch
from blocksearch.search.study_reuse import reused_or_trained
from blocksearch.search.trial import KD_METRIC, TrialJob, load_candidate
from blocksearch.study import SearchConfig


_HEAD = threading.Event()  # set: the Ray head watch (cluster.watch_head) stops


def start_ray(cfg: SearchConfig) -> dict:
    """Connect to ``--address`` or start a local Ray with the dashboard on ``--dashboard-host``."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # our own progress lines replace Tune's tables
    kwargs = dict(logging_level=logging.WARNING, log_to_driver=False, configure_logging=True)
    try:
        if cfg.address:
            ctx = ray.init(address=cfg.address, **kwargs)
        else:
            ctx = ray.init(address="local", include_dashboard=True, dashboard_host=cfg.dashboard_host,
                           dashboard_port=cfg.dashboard_port, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as err:
        why = str(err).strip().splitlines()[0][:160]
        if not cfg.address:
            raise BlocksearchError(f"cannot start a local Ray ({why}); pick a free --dashboard-port") from None
        raise BlocksearchError(f"cannot connect to Ray at {cfg.address!r} ({why}); allowed: auto or host:port "
                               f"of a running 'ray start --head'") from None
    _HEAD.clear()
    watch_head(ray.get_runtime_context().gcs_address, cfg, _HEAD)  # a lost head: one line and exit 1, not Ray's 60 s
    url = ctx.dashboard_url
    return {"dashboard_url": f"http://{url}" if url else None, "resources": ray.cluster_resources(),
            "auth": os.environ.get("RAY_AUTH_MODE", "unset")}


def stop_ray() -> None:
    """Disconnect from Ray (a local one stops): the head watch first, or a local head's exit would look lost."""
    _HEAD.set()
    ray.shutdown()


def run_trials(cfg: SearchConfig, job: TrialJob, tuning: Tuning, remaining: int, parallel: int,
               alignment_floor: float | None = None, queue_only: bool = False,
               guide_ceiling: float | None = None, text_key: str = "probe_guide") -> None:
    """Run study ``cfg.study``'s trials on Ray Tune until the searcher (searcher.StudySearch) says FINISHED,
    ``parallel`` at a time, FIFO or ASHA (``--asha``)."""
    progress = Progress(remaining, cfg.objectives, tuning.out)
    searcher = StudySearch(cfg, tuning.storage, tuning.bound, tuning.params_of, on_change=progress.update,
                           alignment_floor=alignment_floor, queue_only=queue_only, guide_ceiling=guide_ceiling,
                           text_key=text_key)
    n_reports = max(1, int(job.distill.get("steps", 1)) // job.report_every)
    scheduler = (_design_safe_asha()(time_attr="training_iteration", metric=KD_METRIC, mode="min",
                                     max_t=n_reports + 2, grace_period=max(1, n_reports // 4), reduction_factor=2)
                 if cfg.asha else FIFOScheduler())
    fn = tune.with_parameters(trainable, job=job, objectives=tuple(cfg.objectives),
                              candidate=cfg.candidate, params_of_genome=dict(tuning.params_of.cache))
    fn = tune.with_resources(fn, {"cpu": cfg.cpus_per_trial, "gpu": cfg.gpus_per_trial})
    tuner = tune.Tuner(
        fn,
        tune_config=tune.TuneConfig(search_alg=ConcurrencyLimiter(searcher, max_concurrent=parallel),
                                    scheduler=scheduler, reuse_actors=True, trial_dirname_creator=trial_dirname,
                                    num_samples=-1),  # until the searcher says FINISHED: --trials finished
                                    # over every driver (early-stopped candidates and repeats do not count),
        run_config=tune.RunConfig(name=f"{cfg.study}-{time.strftime('%Y%m%d-%H%M%S')}",
                                  storage_path=str(Path(cfg.runs_dir) / cfg.study / "tune"), verbose=0,
                                  # a worker that died (SIGKILL, OOM) reruns the same Tune trial: the searcher is
                                  # not told in between (TuneController._requeue_trial), so it keeps its Optuna trial
                                  failure_config=tune.FailureConfig(max_failures=cfg.trial_retries)),
    )
    try:
        tuner.fit()
    finally:
        progress.close()


def trial_dirname(trial) -> str:
    """A trial's folder under <runs>/<study>/tune/: ``<number>_<genome>`` (its Optuna trial number and Genome)
    instead of Tune's long default names."""
    return f"{trial.config.get('_number', trial.trial_id)}_{trial.config.get('_genome', 'candidate')}"


def _design_safe_asha():
    """ASHA (Li et al., MLSys 2020) that never stops a reference design: the BK designs are the yardstick
    of every report, so they always train to the full budget (their results still feed ASHA's rungs)."""
    class DesignSafeASHA(ASHAScheduler):
        def on_trial_result(self, tune_controller, trial, result: dict) -> str:
            decision = super().on_trial_result(tune_controller, trial, result)
            return TrialScheduler.CONTINUE if trial.config.get("_design") else decision

    return DesignSafeASHA


def trainable(config: dict, job: TrialJob, objectives: tuple[str, ...], candidate: str,
              params_of_genome: dict) -> None:
    """The Ray Tune function trainable: bench fidelity's study where it stands for the trial (study_reuse.py),
    else the trial ``candidate`` (trial.py); every report carries every searcher metric, a failure is recorded."""
    torch.set_num_threads(max(1, job.cpus))
    job = dataclasses.replace(job, design=config.get("_design"))
    genome = job.teacher.family.arch_from_id(config["_genome"])
    placeholder = {o: float("nan") for o in objectives}
    if "params" in objectives and genome.id in params_of_genome:
        placeholder["params"] = float(params_of_genome[genome.id])
    last = {KD_METRIC: float("nan")}

    def report(step: int, losses: dict) -> None:
        last[KD_METRIC] = float(losses.get("loss_kd_out", losses.get("loss", float("nan"))))
        if step % job.report_every == 0:
            with outside_work_slot():  # the report may block on the driver: never while holding the slot
                tune.report({**placeholder, KD_METRIC: last[KD_METRIC], "final": 0, "step": step, "payload": ""})

    try:  # a failing candidate (exception, NaN, out of memory) is recorded FAILED; the search goes on
        outcome = reused_or_trained(genome, job, report, load_candidate(candidate))  # the study first, beside
        values = {o: float(outcome.metrics[o]) for o in objectives}
        bad = [o for o, v in values.items() if not math.isfinite(v)]
        if bad:
            raise BlocksearchError(f"non-finite {bad[0]} = {values[bad[0]]}")
    except Exception as err:
        kind = "out of memory" if "out of memory" in str(err).lower() else type(err).__name__
        message = f"{kind}: {str(err).strip().splitlines()[0][:300] if str(err).strip() else kind}"
        failure = {"error": message} | _error_log()
        tune.report({**placeholder, KD_METRIC: last[KD_METRIC], "final": 1, "payload": json.dumps(failure)})
        return
    tune.report({**values, KD_METRIC: last[KD_METRIC], "final": 1, "payload": json.dumps(_payload(outcome, config))})


def _error_log() -> dict:
    """The traceback being handled, written to ``error.txt`` in the trial's Tune folder: ``{"log": path}``, or {}
    where there is no trial folder to write it in."""
    try:
        path = Path(tune.get_context().get_trial_dir()) / "error.txt"
        path.write_text(traceback.format_exc())
    except Exception:  # noqa: BLE001 - the error itself is recorded either way
        return {}
    return {"log": str(path)}


def _payload(outcome, config: dict) -> dict:
    """A finished trial's record for the searcher: metrics, timings (with the overhead around the work), the
    student's folder, the Ray node, and what only some trials have."""
    total = time.time() - config["_suggested_at"]
    timings = {k: round(float(v), 3) for k, v in outcome.timings.items()}
    work = sum(timings.get(k, 0.0) for k in ("kd_s", "generate_s", "score_s", "noise_s"))
    timings.update(total_s=round(total, 3), overhead_s=round(max(0.0, total - work), 3))
    payload = {"metrics": outcome.metrics, "timings": timings, "student_dir": outcome.student_dir,
               "node": ray.get_runtime_context().get_node_id()}  # which machine of a cluster trained it
    if outcome.seed_scores:
        payload["seed_scores"] = outcome.seed_scores
    if outcome.extra.get("from_study"):
        payload["from_study"] = outcome.extra["from_study"]  # a reference design's scores: bench fidelity's
    if outcome.extra.get("kd_start_step"):
        payload["kd_start_step"] = outcome.extra["kd_start_step"]  # a rung's student: continued from this step
    return payload
