"""Spend the search's KD budget where the front is: rungs of longer training for the students near it.

``blocksearch bench fidelity`` measured that the FID of a short KD run ranks architectures poorly against a
long one (the toy teacher, 24 architectures: FID after 120 steps, Kendall tau +0.28 against 1920 steps over the
text-following ones; 480 steps, +0.74; reports/fidelity-toy/predictors.md), and no budget's FID reached tau >= 0.8
at <= 25 % of the long budget. So, as in successive halving (Jamieson & Talwalkar, AISTATS 2016) and Hyperband
(Li et al., JMLR 2018), every candidate gets the short budget, and only the students that may still be on the
front go on: after the search, each rung continues the students on or
within noise of the previous study's front -- and the reference designs it left open --, at most a quarter
of its feasible searched students (promotion.py), from their KD checkpoints to a longer budget (``distill``'s
checkpoints: 0 -> k -> n trains the same student as 0 -> n).

A rung is an Optuna study of its own, ``<study>@<steps>``, in the same storage: its front and report
compare only students trained to the same budget. Its trials are exactly the promoted students, queued
(``enqueue_trial``) and never sampled; they do not count toward ``--trials``.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import warnings
from pathlib import Path
from typing import Callable, NamedTuple

import optuna

from blocksearch.errors import BlocksearchError
from blocksearch.families.base import ArchSpace
from blocksearch.recipe.evaluate import EvalConfig
from blocksearch.report.compute import ParetoReport, TrialPoint, build_report
from blocksearch.search import console
from blocksearch.search.promotion import RUNG_FACTOR, promoted, stopped_references
from blocksearch.search.cluster import Tuning, lanes
from blocksearch.search.reference_noise import IMAGE_KEYS, SOURCE
from blocksearch.study import FINISHED, OBJECTIVES, SearchConfig, check_settings, is_stale, rung_name
from blocksearch.search.study_reuse import study_taken
from blocksearch.search.trial import CHECKPOINT, TrialJob


def default_rungs(steps: int) -> tuple[int, ...]:
    """The rungs when ``--rungs`` is not given: one, at ``RUNG_FACTOR`` x the search's steps (none at 0 steps)."""
    return (RUNG_FACTOR * steps,) if steps > 0 else ()


def check_rungs(rungs: tuple[int, ...], steps: int) -> tuple[int, ...]:
    """``rungs`` as given: increasing KD step counts, each above the search's ``steps``; one-line error else."""
    rungs = tuple(int(r) for r in rungs)
    if any(r <= low for r, low in zip(rungs, (steps, *rungs))):
        raise BlocksearchError(f"--rungs {','.join(map(str, rungs))}: allowed: increasing KD step counts, each "
                               f"above --steps {steps} (or none)")
    return rungs


def carried_noise(report: ParetoReport, stopped: dict[str, list[int]], table: dict, steps: int) -> dict[str, dict]:
    """For the reference designs that stop below (``stopped``): what the rung's noise needs of them, where this run
    reproduced ``bench fidelity``'s study at the stage below (their seed rows there came ``from`` it,
    reference_noise.py): the study's seed scores of each at the rung's ``steps`` (``table``: the trials'
    ``reference_seeds``) and its latency measurement (the same architecture's, cached). So a rung that trains no
    reference design still states the seed noise of its FID. Name -> {genome, metrics, seed_scores}."""
    out = {}
    for name in stopped:
        t = report.trial(report.reference_trials[name])
        rows = table.get(str(steps), {}).get(t.genome) or []
        if not any(r.get("from") == SOURCE for r in t.seed_scores) or not rows:
            continue
        image = [{"seed": r["seed"], "kd_seed": r["kd_seed"], **{k: r[k] for k in IMAGE_KEYS if r.get(k) is not None},
                  "from": SOURCE} for r in rows if "seed" in r]
        latency = {k: t.metrics[k] for k in ("latency_ms", "latency_cv") if t.metrics.get(k) is not None}
        how = (t.metrics.get("measured") or {}).get("latency")
        out[name] = {"genome": t.genome, "seed_scores": image,
                     "metrics": latency | ({"measured": {"latency": how}} if how else {})}
    return out


def study_free(report: ParetoReport, job: TrialJob) -> set[int]:
    """The reference designs' trials of ``report`` that the rung of ``job`` takes from ``bench fidelity``'s
    study without training (study_reuse.reuse): taken from it below, and the study holds what the rung's trial
    takes at the rung's budget (study_reuse.study_taken)."""
    config = EvalConfig.from_dict(job.eval)
    return {n for n in report.reference_trials.values() if report.trial(n).from_study
            and study_taken(job, report.trial(n).genome, job.distill["steps"], config) is not None}


def prepare_rung(storage, name: str, objectives: tuple[str, ...], directions: list[str], attrs: dict,
                 chosen: list[TrialPoint], bound: ArchSpace) -> optuna.Study:
    """Create or load the rung's study and queue each chosen student once (``promoted_from``: its trial in
    the study below; reference designs keep ``design``). A student queued before is not queued again."""
    study = optuna.create_study(storage=storage, study_name=name, load_if_exists=True, directions=directions)
    if not study.metric_names:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(list(objectives))
    for key, value in attrs.items():
        if key not in study.user_attrs or key == "command":
            study.set_user_attr(key, value)
    for t in chosen:
        extra = {"design": t.design} if t.design else {}
        study.enqueue_trial(bound.to_params(bound.from_id(t.genome)), skip_if_exists=True,
                            user_attrs={"promoted_from": t.number, **extra})
    return study


def drop_checkpoints(students_dir: str | Path, keep: set[str]) -> tuple[int, int]:
    """Delete the KD checkpoints of the students not in ``keep`` (genome ids): a checkpoint (weights and
    AdamW's state, ~3x the student) is kept only while a rung may continue it. The students whose checkpoints
    went, and the bytes freed."""
    freed, students = 0, set()
    for folder in Path(students_dir).glob(f"*/{CHECKPOINT}*"):
        if folder.is_dir() and folder.parent.name not in keep:
            freed += sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
            students.add(folder.parent.name)
            shutil.rmtree(folder, ignore_errors=True)
    return len(students), freed


class Rung(NamedTuple):
    """One rung of a search: its study, the study below it, its trials' job and its study attrs."""

    name: str
    below: str
    job: TrialJob
    attrs: dict


@dataclasses.dataclass(frozen=True)
class Ladder:
    """What the rung loop needs, handed over once by the driver: the rungs in order (:func:`rung_plan`) and the
    settings their trials run with (the run's own objectives: a rung ranks by FID, whatever the first stage's)."""

    cfg: SearchConfig
    plan: list[Rung]


def ladder(cfg: SearchConfig, job: TrialJob, attrs: dict, objectives: tuple[str, ...]) -> Ladder:
    """The search's rungs above the first stage of ``cfg`` / ``job`` / ``attrs``; their trials rank by
    ``objectives``."""
    return Ladder(dataclasses.replace(cfg, objectives=objectives), rung_plan(cfg, job, attrs))


def rung_plan(cfg: SearchConfig, job: TrialJob, attrs: dict) -> list[Rung]:
    """Per rung, in order: its study, the study below it, its trials' job and its study attrs (the search's
    settings at the rung's KD steps, and where it comes from)."""
    plan, below, below_dir = [], cfg.study, job.students_dir
    rungs = attrs["rungs"]
    for i, steps in enumerate(rungs):
        name = rung_name(cfg.study, steps)
        rung_job = dataclasses.replace(job, distill=job.distill | {"steps": steps}, resume_dir=below_dir, score="fid",
                                       eval=job.eval | {"images": True},
                                       students_dir=str(Path(cfg.runs_dir) / name / "students"),
                                       report_every=max(1, steps // 10), checkpoint=i + 1 < len(rungs))
        rung_attrs = attrs | {"distill": json.loads(json.dumps(rung_job.distill, default=str)),
                              "eval": json.loads(json.dumps(rung_job.eval, default=str)),
                              "rung": {"of": cfg.study, "from": below, "steps": steps}, "score": "fid"}
        plan.append(Rung(name, below, rung_job, rung_attrs))
        below, below_dir = name, rung_job.students_dir
    return plan


def recorded_lanes(rung: optuna.Study) -> int:
    """The parallel trials ``rung`` filled its places for (``promoted``'s ``lanes``); 1 for a rung prepared before
    they were recorded (no rounding then)."""
    return int(rung.user_attrs.get("lanes", 1))


def prepared_lanes(storage, name: str) -> int | None:
    """:func:`recorded_lanes` of rung ``name``, None where it does not exist yet."""
    if name not in optuna.study.get_all_study_names(storage=storage):
        return None
    return recorded_lanes(optuna.load_study(study_name=name, storage=storage))


def check_rung_settings(storage, plan) -> None:
    """A resume: each rung study that exists must have been run with this run's settings (reads only)."""
    names = set(optuna.study.get_all_study_names(storage=storage))
    for name, _, _, attrs in plan:
        if name in names:
            check_settings(optuna.load_study(study_name=name, storage=storage), attrs)


def rung_work(storage, plan) -> bool:
    """Is a promoted student of some rung not trained yet (or the rung not started)? Reads only."""
    names = set(optuna.study.get_all_study_names(storage=storage))
    for name, below, _, attrs in plan:
        if name not in names or below not in names:
            return below in names
        rung = optuna.load_study(study_name=name, storage=storage)
        trained = {t.user_attrs.get("genome") for t in rung.get_trials(deepcopy=False)
                   if t.state.name in FINISHED and not t.user_attrs.get("skipped") and not is_stale(t)}
        chosen = promoted(build_report(optuna.load_study(study_name=below, storage=storage)),
                          references=attrs.get("rung_references", "open"),
                          lanes=recorded_lanes(rung))  # as the rung was prepared
        if any(t.genome not in trained for t in chosen):
            return True
    return False


def run_rungs(ladder: Ladder, tuning: Tuning, floor: float | None, run_trials: Callable) -> None:
    """Each rung in turn: promote the students of the study below (promotion.promoted), queue them in the rung's
    study, continue them from their KD checkpoints on Ray Tune (``run_trials``: ray_tune.run_trials, inside the
    driver's started cluster), and free the checkpoints nobody continues."""
    for rung in ladder.plan:
        run_rung(ladder.cfg, rung, tuning, floor, run_trials)


def run_rung(cfg: SearchConfig, rung: Rung, tuning: Tuning, floor: float | None, run_trials: Callable) -> None:
    """One rung (successive halving's next budget, Jamieson & Talwalkar 2016): promote, queue, train, clean up."""
    name, below, job, attrs = rung
    storage, steps, out = tuning.storage, job.distill["steps"], tuning.out
    report = build_report(optuna.load_study(study_name=below, storage=storage))
    # the rung's places fill whole rounds of the parallel trials: those it was prepared with, on a resume
    parallel = prepared_lanes(storage, name) or lanes(cfg, tuning.resources, len(report.ranked))
    free = study_free(report, job)
    chosen = promoted(report, references=cfg.rung_references, lanes=parallel, free=free)
    settled_refs = stopped_references(report, chosen)
    console.rung_promotions(steps, below, report, chosen, free, settled_refs, cfg.rung_references, parallel, out)
    teacher = report.attrs.get("teacher_metrics")  # measured once, on the base study; each rung passes it on
    carried = carried_noise(report, settled_refs, job.reference_seeds, steps)
    extra = ({"teacher_metrics": teacher} if teacher else {}) | {"stopped_references": {below: settled_refs},
                                                                "carried_noise": carried, "lanes": parallel}
    study = prepare_rung(storage, name, cfg.objectives, [OBJECTIVES[o] for o in cfg.objectives],
                         attrs | extra, chosen, tuning.bound)
    running = {t.genome for t in report.trials if t.state == "RUNNING"}  # another driver's: it may still go on
    console.checkpoints_dropped(*drop_checkpoints(job.resume_dir, {t.genome for t in chosen} | running), out)
    waiting = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)))
    if waiting:
        rung_cfg = dataclasses.replace(cfg, study=name, trials=len(chosen), asha=False)
        run_trials(rung_cfg, job, tuning, waiting, lanes(rung_cfg, tuning.resources, waiting), floor,
                   queue_only=True)
    # the rung has continued every student it took (its queue is empty, nothing of it runs): the checkpoints
    # below are no longer needed, except a student another driver still trains there
    running = {t.user_attrs.get("genome") for t in optuna.load_study(study_name=below, storage=storage)
               .get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))}
    console.rung_done(steps, below, *drop_checkpoints(job.resume_dir, running), out)
