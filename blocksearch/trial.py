"""One trial of the search, run inside a Ray worker: surgery -> distillation -> save -> evaluation.

The same stage functions as ``blocksearch distill`` / ``evaluate`` (DESIGN.md: a trial is never a
special case); this module only adds Ray Tune reporting, timings and failure capture. Paths are
absolute (Ray trials chdir into their own folder).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from importlib import import_module
from pathlib import Path
from typing import Callable

import torch

from blocksearch.cache import outside_work_slot, work_slot
from blocksearch.distill import DistillConfig, distill
from blocksearch.errors import BlocksearchError
from blocksearch.evaluate import EvalConfig, evaluate
from blocksearch.space import Genome
from blocksearch.surgery import build_student
from blocksearch.teachers import load_teacher

KD_METRIC = "kd_out_loss"  # ASHA's metric: output KD is comparable between students of any depth


@dataclass(frozen=True)
class TrialJob:
    """What a Ray trial needs, picklable: the teacher, the stage configs and where to write."""

    teacher: str
    device: str
    distill: dict
    eval: dict
    students_dir: str
    cpus: int
    report_every: int


@dataclass
class Outcome:
    """A finished candidate: its Metrics.to_dict(), timings and the saved student's folder."""

    metrics: dict
    timings: dict
    student_dir: str
    extra: dict = field(default_factory=dict)


_TEACHERS: dict = {}  # one loaded teacher per worker process (actors are reused between trials)


def cached_teacher(spec: str, device: str):
    """``load_teacher`` once per worker process."""
    if (spec, device) not in _TEACHERS:
        _TEACHERS[(spec, device)] = load_teacher(spec, device=device)
    return _TEACHERS[(spec, device)]


def train_candidate(genome: Genome, job: TrialJob, report: Callable[[int, dict], None]) -> Outcome:
    """One candidate: surgery -> distillation -> save -> evaluation (BK-SDM's recipe, short). The whole
    trial is heavy work: latency measurements of other trials wait for its next checkpoint (cache.py)."""
    with work_slot():
        return _train_candidate(genome, job, report)


def _train_candidate(genome: Genome, job: TrialJob, report: Callable[[int, dict], None]) -> Outcome:
    t0 = time.perf_counter()
    teacher = cached_teacher(job.teacher, job.device)
    student = build_student(teacher.unet, genome)
    prep_s = time.perf_counter() - t0  # teacher (cached per worker) and surgery: part of the overhead
    kd = distill(teacher, student, DistillConfig.from_dict(job.distill), device=job.device, on_step=report,
                 progress=False)
    out = Path(job.students_dir) / genome.id / "unet"
    student.unet.save_pretrained(out, safe_serialization=True)
    metrics = evaluate(teacher, student.unet, EvalConfig.from_dict(job.eval), device=job.device)
    tm = metrics.timings
    return Outcome(metrics.to_dict(), {"kd_s": kd.wall_s, "generate_s": tm.get("generate_s", 0.0),
                                       "score_s": tm.get("score_s", 0.0) + tm.get("latency_s", 0.0)},
                   str(out), {"prep_s": prep_s})


def load_candidate(path: str) -> Callable:
    module, _, name = path.partition(":")
    try:
        return getattr(import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise BlocksearchError(f"candidate function {path!r} cannot be imported ({err})") from None


def trainable(config: dict, job: TrialJob, objectives: tuple[str, ...], candidate: str,
              params_of_genome: dict) -> None:
    """The Ray Tune function trainable: every report carries every searcher metric."""
    from ray import tune  # in the worker only: the driver imports this module for TrialJob, and Ray lazily

    torch.set_num_threads(max(1, job.cpus))
    genome = Genome.from_id(config["_genome"])
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
        outcome = load_candidate(candidate)(genome, job, report)
        values = {o: float(outcome.metrics[o]) for o in objectives}
        bad = [o for o, v in values.items() if not math.isfinite(v)]
        if bad:
            raise BlocksearchError(f"non-finite {bad[0]} = {values[bad[0]]}")
    except Exception as err:
        kind = "out of memory" if "out of memory" in str(err).lower() else type(err).__name__
        message = f"{kind}: {str(err).strip().splitlines()[0][:300] if str(err).strip() else kind}"
        tune.report({**placeholder, KD_METRIC: last[KD_METRIC], "final": 1, "payload": json.dumps({"error": message})})
        return
    total = time.time() - config["_suggested_at"]
    timings = {k: round(float(v), 3) for k, v in outcome.timings.items()}
    work = sum(timings.get(k, 0.0) for k in ("kd_s", "generate_s", "score_s"))
    timings.update(total_s=round(total, 3), overhead_s=round(max(0.0, total - work), 3))
    import ray  # noqa: PLC0415 - the worker side, as `tune` above

    payload = {"metrics": outcome.metrics, "timings": timings, "student_dir": outcome.student_dir,
               "node": ray.get_runtime_context().get_node_id()}  # which machine of a cluster trained it
    tune.report({**values, KD_METRIC: last[KD_METRIC], "final": 1, "payload": json.dumps(payload)})
