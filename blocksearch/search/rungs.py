"""Spend the search's KD budget where the front is: rungs of longer training for the students near it.

``blocksearch bench fidelity`` measured that the FID of a short KD run ranks architectures poorly against a
long one (the toy teacher, 24 architectures: FID after 120 steps, Kendall tau +0.28 against 1920 steps over the
text-following ones; 480 steps, +0.74; reports/fidelity-toy/predictors.md), and no budget's FID reached tau >= 0.8
at <= 25 % of the long budget. So, as in successive halving (Jamieson & Talwalkar, AISTATS 2016) and Hyperband
(Li et al., JMLR 2018), every candidate gets the short budget, and only the students that may still be on the
front go on: after the search, each rung continues the students on or
within noise of the previous study's front -- and the reference designs it left open --, at most a quarter
of its feasible searched students (:func:`promoted`), from their KD checkpoints to a longer budget (``distill``'s
checkpoints: 0 -> k -> n trains the same student as 0 -> n).

A rung is an Optuna study of its own, ``<study>@<steps>``, in the same storage: its front and report
compare only students trained to the same budget. Its trials are exactly the promoted students, queued
(``enqueue_trial``) and never sampled; they do not count toward ``--trials``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import warnings
from pathlib import Path

import numpy as np
import optuna

from blocksearch.errors import BlocksearchError
from blocksearch.recipe.evaluate import EvalConfig
from blocksearch.report.noise import quality_mask
from blocksearch.report.pareto import dominates, dominates_despite_noise, normalised_hypervolume
from blocksearch.search.reference_noise import IMAGE_KEYS, SOURCE
from blocksearch.report.compute import ParetoReport, TrialPoint, build_report
from blocksearch.space import BoundSpace
from blocksearch.study import FINISHED, SearchConfig, check_settings, is_stale, rung_name
from blocksearch.search.trial import CHECKPOINT, TrialJob, study_taken

RUNG_FACTOR = 4  # the default rung: 4 x the search's KD steps (the fidelity ladder's step from 120 to 480)


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


# A rung takes at most this share of the feasible searched students below it (the open reference designs go on
# beside them): 1 / RUNG_FACTOR, Hyperband's coupling (Li et al., JMLR 2018; eta = 4 as in ASHA's experiments): a
# rung's students x its budget is the stage's below, so each rung costs about as much KD as the first stage.
MAX_FRACTION = 1 / RUNG_FACTOR
REFERENCES = ("open", "all")  # run --rung-references: which reference designs a rung always continues


def settled(report: ParetoReport) -> set[int]:
    """The reference designs' trials whose comparison this study already settles: a searched student dominates
    them beyond noise *on quality* (``pareto.claim``: better beyond noise in a quality objective, worse beyond
    noise in none) at the study's budget. Training them longer would re-test a verdict already reached on the
    stage's own noise; the rung's places go to what is still open (the default, ``--rung-references open``)."""
    return {d.reference_trial for d in report.dominations if d.beyond_noise and d.kind == "quality"}


def stopped_references(report: ParetoReport, chosen: list[TrialPoint]) -> dict[str, list[int]]:
    """The reference designs of ``report`` that ``chosen`` leaves behind because the study settled them
    (:func:`settled`): name -> the searched trials that dominate it on quality beyond noise."""
    left = settled(report) - {t.number for t in chosen}
    return {name: sorted({d.searched for d in report.dominations if d.reference_trial == n and d.beyond_noise
                          and d.kind == "quality"})
            for name, n in report.reference_trials.items() if n in left}


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


def whole_rounds(cap: int, lanes: int) -> int:
    """``cap`` places rounded down to whole rounds of ``lanes`` trials in parallel (unchanged at or below one
    round): the last, partial round would hold the rung for a whole trial's time while the other lanes idle."""
    return cap if lanes <= 1 or cap <= lanes else lanes * (cap // lanes)


def promoted(report: ParetoReport, max_fraction: float = MAX_FRACTION, references: str = "open",
             lanes: int = 1, free: frozenset[int] | set[int] = frozenset()) -> list[TrialPoint]:
    """The students of ``report`` that go on to the next rung, by trial number: successive halving's cut
    (Jamieson & Talwalkar, AISTATS 2016) on noisy scores.

    1. Candidates: the reference designs' students that the study left open (``references`` "open": not
       :func:`settled`; "all": every one), and every feasible completed student on or within noise of the
       front: one that no other dominates even with both moved by their noise margins
       (``pareto.dominates_despite_noise``, on the noise measured for each objective, the first-stage score's
       included; any objective's noise unmeasured: the plain front). A settled reference design is an ordinary
       student here: it goes on only from within noise of the front.
    2. Cap: floor(``max_fraction`` x the feasible searched students) -- successive halving's cut among the
       students the search proposed; the reference designs go on beside them, as the comparison --, the places
       trained rounded down to whole rounds of the ``lanes`` trials the cluster runs in parallel
       (:func:`whole_rounds`), but never below the reference designs plus one searched student (a rung that
       re-trained the baselines alone would test nothing the search found). A reference design in ``free`` (its
       rung scores come from ``bench fidelity``'s study, :func:`study_free`) takes no lane: it is not counted in
       the rounds. Candidates within the cap all go on.
    3. Past the cap the reference designs stay (the comparison at the longer budget), and the searched candidates
       fill the places left by the report's non-dominated sorting rank (Deb et al. 2002, over every feasible
       student: one that a reference design dominates ranks behind one that nothing dominates); a rank with more
       candidates than places left gives them by hypervolume contribution (:func:`by_contribution`), ties by the
       quality objective (the first objective that is not a cost, ``noise.COSTS``: fid, or the first stage's
       probe score), then by trial number."""
    if not 0 < max_fraction <= 1:
        raise BlocksearchError(f"max_fraction {max_fraction}: allowed: a share of the feasible students in (0, 1]")
    sign = [1.0 if d == "minimize" else -1.0 for d in report.directions]
    points = {t.number: tuple(s * v for s, v in zip(sign, t.values)) for t in report.ranked}
    sigmas = [report.noise[o].sigma if o in report.noise else None for o in report.objectives]
    known = all(s is not None for s in sigmas)

    def beaten(n: int) -> bool:
        return any(m != n and (dominates_despite_noise(p, points[n], sigmas) if known else dominates(p, points[n]))
                   for m, p in points.items())

    if references not in REFERENCES:
        raise BlocksearchError(f"--rung-references {references!r}; allowed: {', '.join(REFERENCES)}")
    refs = set(report.reference_trials.values()) - (settled(report) if references == "open" else set())
    chosen = [t for t in report.ranked if t.number in refs or not beaten(t.number)]
    kept = [t for t in chosen if t.number in refs]
    untrained = sum(t.number in free for t in kept)
    trained = len(kept) - untrained  # reference designs that take a lane
    searched = sum(t.number not in report.reference_trials.values() for t in report.ranked)
    places = math.floor(max_fraction * searched + 1e-9)
    cap = max(whole_rounds(places + trained, lanes), trained + 1) + untrained
    if len(chosen) <= cap:
        return chosen
    q = next((i for i, quality in enumerate(quality_mask(report.objectives)) if quality), 0)
    others = sorted((t for t in chosen if t.number not in refs), key=lambda t: (t.rank, points[t.number][q], t.number))
    taken = list(kept)
    for rank in sorted({t.rank for t in others}):
        tier = [t for t in others if t.rank == rank]
        room = cap - len(taken)
        taken += tier if len(tier) <= room else by_contribution(tier, taken, points, room)
        if len(taken) >= cap:
            break
    return sorted(taken, key=lambda t: t.number)


def study_free(report: ParetoReport, job: TrialJob) -> set[int]:
    """The reference designs' trials of ``report`` that the rung of ``job`` takes from ``bench fidelity``'s
    study without training (trial.from_study): taken from it below, and the study holds what the rung's trial
    takes at the rung's budget (trial.study_taken)."""
    config = EvalConfig.from_dict(job.eval)
    return {n for n in report.reference_trials.values() if report.trial(n).from_study
            and study_taken(job, report.trial(n).genome, job.distill["steps"], config) is not None}


def by_contribution(tier: list[TrialPoint], taken: list[TrialPoint], points: dict, room: int) -> list[TrialPoint]:
    """``room`` of ``tier`` (in its order: quality first), greedily by hypervolume contribution to what is
    ``taken`` (SMS-EMOA's selection, Beume et al., EJOR 2007; MO-ASHA's, Schmucker et al. 2021): each pick the
    one that adds the most to the hypervolume of the minimised objectives, normalised to [0, 1] over all the
    report's ranked students (``points``), reference 1.1; a tie, by the order of ``tier``. A front's best-quality
    students are often near each other in cost: this sends its spread to the longer budget instead."""
    everything = np.array(list(points.values()), dtype=float)
    lower, upper = everything.min(axis=0), everything.max(axis=0)
    picked, rest = [], list(tier)
    base = [points[t.number] for t in taken]
    while rest and len(picked) < room:
        current = [*base, *(points[t.number] for t in picked)]
        volume = normalised_hypervolume(np.array(current), lower, upper) if current else 0.0
        gains = [normalised_hypervolume(np.array([*current, points[t.number]]), lower, upper) - volume for t in rest]
        best = max(range(len(rest)), key=lambda i: (round(gains[i], 12), -i))  # float dust is a tie
        picked.append(rest.pop(best))
    return picked


def prepare_rung(storage, name: str, objectives: tuple[str, ...], directions: list[str], attrs: dict,
                 chosen: list[TrialPoint], bound: BoundSpace) -> optuna.Study:
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


def rung_plan(cfg: SearchConfig, job: TrialJob, attrs: dict) -> list[tuple[str, str, TrialJob, dict]]:
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
        plan.append((name, below, rung_job, rung_attrs))
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
