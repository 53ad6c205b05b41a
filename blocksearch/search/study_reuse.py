"""Reuse of ``bench fidelity``'s study, a step beside the trial and consulted before it.

The study holds KD seed 0 of every reference design at every budget of its ladder (reference_noise.py). Where
this run reproduces it -- the design's KD to the study's longest budget below the trial's (30 of 120 steps)
gives the study's probe scores there, to ``reference_noise.RTOL`` --, the trial's scores at its own budget are
the study's, and the recipe trial (trial.py: surgery -> distillation -> scores) is not run: :func:`reuse`
returns its outcome. Where they disagree, the trial runs from the check's KD checkpoint (0 -> 30 -> 120 trains
the same student as 0 -> 120). A rung's trial takes a design the stage below took from the study again, without
KD (``MARKER``). The Ray trainable (ray_tune.py) calls :func:`reused_or_trained`.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path
from typing import Callable

from blocksearch.cache import work_slot
from blocksearch.families.base import get_family
from blocksearch.recipe.distill import DistillConfig, checkpoint_info, distill
from blocksearch.recipe.evaluate import EvalConfig, evaluate
from blocksearch.search import trial
from blocksearch.search.reference_noise import (IMAGE_KEYS, MARKER, SOURCE, agrees, check_budget, probe_row,
                                                reproduced, study_scores)
from blocksearch.search.trial import CHECKPOINT, Outcome, TrialJob, checkpoint_dir, logged, main_row
from blocksearch.settings import LOSSES_FILE, PROBE_KEYS


@dataclasses.dataclass(frozen=True)
class Reuse:
    """What :func:`reuse` found: the trial's outcome taken from the study (the trial is not run), or the check's
    KD checkpoint for the trial to go on from, or neither (the trial runs as it would without a study)."""

    outcome: Outcome | None = None
    head_start: str | None = None


def reused_or_trained(genome, job: TrialJob, report: Callable[[int, dict], None],
                      train: Callable[..., Outcome]) -> Outcome:
    """A trial's work: the study's outcome where :func:`reuse` applies, else ``train`` (the recipe trial,
    ``trial.train_candidate``) on ``job``, from the check's KD checkpoint where the check ran and disagreed."""
    found = reuse(genome, job, report)
    if found.outcome is not None:
        return found.outcome
    return train(genome, job if found.head_start is None else dataclasses.replace(job, head_start=found.head_start),
                 report)


def reuse(genome, job: TrialJob, report: Callable[[int, dict], None]) -> Reuse:
    """A reference design's trial taken from ``bench fidelity``'s study where this run reproduces it.

    The study must hold KD seed 0's scores of the design at the trial's budget (:func:`study_taken`) and a budget
    below it to check at (:func:`check_at`). The check: KD to that budget and the probe there, against the
    study's (``agrees``). Cost and speed are the architecture's and are measured here as in any trial; the seed
    noise rows are the study's (``reproduced``). No student is written: ``export`` says so."""
    settings, config = DistillConfig.from_dict(job.distill), EvalConfig.from_dict(job.eval)
    study = study_taken(job, genome.id, settings.steps, config) if job.design else None
    where = check_at(job, genome.id, settings.steps) if study is not None else None
    if where is None:
        return Reuse()
    with work_slot():  # heavy work, as the trial: latency measurements of other trials wait (cache.py)
        t0 = time.perf_counter()
        teacher = trial.cached_teacher(job.teacher, job.device)
        student = trial.build_student(teacher.unet, genome)
        prep_s = time.perf_counter() - t0  # teacher (cached per worker) and surgery: part of the overhead
        with logged(report, Path(job.students_dir) / genome.id / LOSSES_FILE) as on_step:
            return _checked(teacher, student, genome, job, (settings, config), study, where, on_step, prep_s)


def check_at(job: TrialJob, genome: str, steps: int) -> tuple[int, bool] | None:
    """Where a reference design's trial of ``steps`` checks the study: (the budget, True where the stage below
    already checked it there, its ``MARKER``), or None where nothing is taken (a rung whose stage below trained
    the design: its checkpoint goes on; or no budget of the study below ``steps``)."""
    below = Path(job.resume_dir) / genome / MARKER if job.resume_dir else None
    if below is not None and below.is_file():
        return json.loads(below.read_text())["checked_at"], True
    if below is not None and checkpoint_info(checkpoint_dir(job.resume_dir, genome)) is not None:
        return None
    check = check_budget(job.reference_seeds, steps, genome)
    return None if check is None else (check, False)


def _checked(teacher, student, genome, job: TrialJob, stages: tuple[DistillConfig, EvalConfig],
             study: tuple[dict, list], where: tuple[int, bool], on_step, prep_s: float) -> Reuse:
    """Run the check (unless the stage below did), then take the study's scores, or hand back the check's KD."""
    (settings, config), (scores, rows), (check, checked) = stages, study, where
    folder = Path(job.students_dir) / genome.id
    t0 = time.perf_counter()
    if not checked:
        verify = folder / f"{CHECKPOINT}-check{check}"
        distill(teacher, student, dataclasses.replace(settings, steps=check), device=job.device, on_step=on_step,
                progress=False, save_to=verify, cache_steps=job.cache_steps)
        mine = trial.cached_probe(teacher, job).score(student.unet, student.kd_pairs)
        if not agrees(mine, probe_row(job.reference_seeds, check, genome.id)):
            return Reuse(head_start=str(verify))
        shutil.rmtree(verify, ignore_errors=True)
    kd_s = time.perf_counter() - t0
    metrics = evaluate(teacher, student.unet, dataclasses.replace(config, images=False), device=job.device)
    source = (f"{SOURCE}'s study ({get_family(job.family).selection_file}): KD seed 0 after {settings.steps} steps, reproduced here "
              f"at {check} steps")
    values = metrics.to_dict() | scores
    values["measured"] = values["measured"] | {k: source for k in scores}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MARKER).write_text(json.dumps({"design": job.design, "steps": settings.steps, "checked_at": check,
                                             "source": source}, indent=1) + "\n")
    timings = {"kd_s": kd_s, "generate_s": 0.0, "score_s": metrics.timings.get("latency_s", 0.0)}
    taken = {"from_study": {"checked_at": check, "steps": settings.steps}, "prep_s": prep_s}
    return Reuse(Outcome(values, timings, str(folder / get_family(job.family).subfolder), taken, rows))


def study_taken(job: TrialJob, genome: str, steps: int, config: EvalConfig) -> tuple[dict, list] | None:
    """What :func:`reuse` takes of a reference design after ``steps`` (the trial's, or a rung's): KD seed 0's
    scores in ``job``'s study table (its images at the evaluation's generation seed where images are scored,
    its probe where the probe ranks) and its seed rows (``reproduced``), or None where the study lacks a score,
    or holds fewer KD seeds than ``--noise-seeds`` asks for."""
    keys = (*(IMAGE_KEYS if config.images else ()), *(PROBE_KEYS if job.score in PROBE_KEYS else ()))
    scores = study_scores(job.reference_seeds, steps, genome, config.seed, keys) if job.reference_seeds else None
    if scores is None:
        return None
    rows = reproduced(main_row(config, scores), job.reference_seeds.get(str(steps), {}).get(genome) or [],
                      job.noise_seeds)
    return None if job.noise_seeds > 1 and rows is None else (scores, rows or [])
