"""The search driver: an Optuna multi-objective study over a space, its trials run by Ray Tune.

Three steps: resolve the flags (:func:`resolve`), build the trials' job and the study contract
(:func:`trial_job`), then run -- the first stage (one trial = one candidate: surgery -> distillation ->
evaluation, BK-SDM arXiv 2305.15798, asked of :class:`blocksearch.search.searcher.StudySearch`), the rungs
(:mod:`blocksearch.search.rungs`) and :func:`finish`. Ray is :mod:`blocksearch.search.ray_tune` (imported lazily
there, so bad flags and a finished study never pay for it), the teacher's set-up
:mod:`blocksearch.search.teacher_setup`, what is printed :mod:`blocksearch.search.console`; the study itself is
:mod:`blocksearch.study`, the final table and the report one :class:`blocksearch.report.compute.ParetoReport`.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Callable, TextIO

import optuna
import torch

from blocksearch.errors import BlocksearchError
from blocksearch.families.base import ArchSpace, get_family
from blocksearch.recipe.distill import DistillConfig
from blocksearch.recipe.evaluate import evaluation_set
from blocksearch.report.compute import ParetoReport, build_report
from blocksearch.report.render import render_all
from blocksearch.search import console
from blocksearch.search.promotion import REFERENCES
from blocksearch.search.cluster import Tuning, lanes, local_ray_auth, probe_address
from blocksearch.search.reference_noise import NOISE_SOURCES, table_of
from blocksearch.search.rungs import check_rung_settings, check_rungs, default_rungs, ladder, run_rungs, rung_work
from blocksearch.search.run_settings import absolute, check_inputs, check_stage_flags, data_identity, stage_configs
from blocksearch.search.samplers import SAMPLERS
from blocksearch.search.selection import FirstStage, first_stage, read_selection, selection_path
from blocksearch.search.teacher_setup import measure_teacher, params_table, warm_teacher_cache
from blocksearch.search.trial import TrialJob
from blocksearch.search.warm_start import check_init, importance_table, one_shot_archs
from blocksearch.settings import PROBE_KEYS
from blocksearch.space import load_space
from blocksearch.study import (OBJECTIVES, SearchConfig, check_settings, counts, default_runs_dir,
                               default_storage, default_study_name, existing_study, open_storage,
                               prepare_study, space_name)
from blocksearch.teachers import TeacherRef, resolve_teacher, weights_sha256

CANDIDATE = "blocksearch.search.trial:train_candidate"  # the work of one trial; tests may point elsewhere


# -- resolve --------------------------------------------------------------------------------------------
def resolve(cfg: SearchConfig) -> SearchConfig:
    """Fill defaults and make paths absolute; reject bad flags with a one-line error."""
    if cfg.sampler not in SAMPLERS:
        raise BlocksearchError(f"unknown sampler {cfg.sampler!r}; allowed: {list(SAMPLERS)}")
    bad = [o for o in cfg.objectives if o not in OBJECTIVES]
    if bad or not cfg.objectives or len(set(cfg.objectives)) != len(cfg.objectives):
        raise BlocksearchError(f"objectives {list(cfg.objectives)}: allowed: distinct names of {list(OBJECTIVES)}")
    if cfg.trials < 1 or cfg.cpus_per_trial <= 0 or cfg.gpus_per_trial < 0:
        raise BlocksearchError("--trials must be >= 1, --cpus-per-trial > 0 and --gpus-per-trial >= 0")
    if cfg.max_params is not None and cfg.max_params <= 0:
        raise BlocksearchError(f"--max-params {cfg.max_params}: must be > 0")
    if cfg.noise_seeds < 1:
        raise BlocksearchError(f"--noise-seeds {cfg.noise_seeds}: allowed: an integer >= 1 (1: no seed noise measured)")
    if cfg.noise_source not in NOISE_SOURCES:
        raise BlocksearchError(f"--noise-source {cfg.noise_source!r}: allowed: {', '.join(NOISE_SOURCES)}")
    if cfg.rung_references not in REFERENCES:
        raise BlocksearchError(f"--rung-references {cfg.rung_references!r}: allowed: {', '.join(REFERENCES)}")
    if cfg.trial_retries < 0:
        raise BlocksearchError(f"--trial-retries {cfg.trial_retries}: allowed: an integer >= 0 (0: no retry)")
    if not 0 <= cfg.min_alignment <= 1:
        raise BlocksearchError(f"--min-alignment {cfg.min_alignment}: allowed: 0 (off) to 1 (the teacher's own)")
    check_stage_flags(cfg)
    check_init(cfg.init, get_family(load_space(cfg.space).family))
    runs = Path(cfg.runs_dir or default_runs_dir()).resolve()
    paths = {k: absolute(getattr(cfg, k)) for k in ("data", "reference", "captions", "inception_weights",
                                                     "clip_model") if getattr(cfg, k) not in (None, "toy")}
    teacher = str(Path(cfg.teacher).resolve()) if Path(cfg.teacher).exists() else cfg.teacher  # trials chdir
    if teacher == "toy":  # the bundled toy teacher of the space's family: a U-Net, or the toy transformer
        teacher = get_family(load_space(cfg.space).family).toy_teacher
    return dataclasses.replace(cfg, runs_dir=str(runs), storage=cfg.storage or default_storage(runs),
                               candidate=cfg.candidate or CANDIDATE, teacher=teacher, **paths,
                               study=cfg.study or default_study_name(cfg.space, teacher))


def space_family(cfg: SearchConfig) -> str:
    """The denoiser family of the run's space (its teacher's: ``bind_space`` refuses a mismatch)."""
    return load_space(cfg.space).family


def first_stage_of(cfg: SearchConfig, ref: TeacherRef) -> FirstStage:
    """The first stage of ``cfg`` on the teacher ``ref``: ``--score``, or bench fidelity's choice recorded for the
    teacher's family (selection.py: a U-Net's and a transformer's are measured apart)."""
    return first_stage(cfg.score, ref.is_toy, cfg.steps, family=ref.family.name)


def first_stage_config(cfg: SearchConfig, stage: FirstStage) -> SearchConfig:
    """The base study's settings for a first stage (selection.py): its objectives (``fid`` -> the stage's score),
    its KD budget, and -- where the stage is a cheaper score than FID and no ``--rungs`` were given -- one rung at
    4 x the default KD budget (FID after 480 steps on the toy: the budget whose ranking came closest to the
    1920-step one in bench fidelity), or 4 x ``--steps`` where they were given."""
    if stage.score == "fid":  # FID chosen by a family's study (the transformer's: after 60 steps) trains its budget
        return dataclasses.replace(cfg, score="fid", steps=cfg.steps if cfg.steps is not None else stage.steps)
    rungs = cfg.rungs if cfg.rungs is not None else default_rungs(cfg.steps or DistillConfig().steps)
    return dataclasses.replace(cfg, score=stage.score, objectives=stage.objectives(cfg.objectives),
                               steps=stage.steps, rungs=rungs)


def bind_space(space, ref: TeacherRef) -> tuple[ArchSpace, torch.nn.Module]:
    """The space bound to the teacher's topology, and the teacher's denoiser (for exact params); a space of
    another denoiser family than the teacher's is a one-line error."""
    teacher = ref.spec
    if ref.kind == "architecture":
        raise BlocksearchError(
            f"teacher {teacher!r} is an architecture without weights; a search distils from real "
            f"weights: use toy, a local diffusers folder, or a cached hub id")
    if ref.family.name != space.family:
        raise BlocksearchError(f"space {space.name} ({space.path}) is for the {space.family} family but teacher "
                               f"{teacher} is a {ref.family.name} teacher; allowed: a {space.family} teacher (e.g. "
                               f"{get_family(space.family).toy_teacher}) or a {ref.family.name} space")
    denoiser = ref.load_denoiser("cpu")
    return space.bind(ref.family.topology(denoiser.config)), denoiser


# -- the job: what every trial runs, and the study contract -------------------------------------------
def trial_job(cfg: SearchConfig, ref: TeacherRef, bound: ArchSpace, teacher_unet=None,
              stages=None) -> tuple[TrialJob, dict]:
    """The trials' job -- the teacher ``ref`` (``cfg.teacher`` resolved once) and the stage configs of every
    trial --, and the study's user attrs (the study contract): its full settings -- the teacher and a sha256 of
    its U-Net weights, the data, the evaluation set, the budgets and constraints -- which a resume must match
    (``study.check_settings``). ``stages``: the run's (DistillConfig, EvalConfig) where already computed
    (run_settings.check_inputs), else computed here."""
    distill_cfg, eval_cfg = stages or stage_configs(cfg, ref)
    if cfg.score in PROBE_KEYS:  # the first stage is ranked by the held-out probe: no image to generate
        eval_cfg = dataclasses.replace(eval_cfg, images=False)
    rungs = default_rungs(distill_cfg.steps) if cfg.rungs is None else check_rungs(cfg.rungs, distill_cfg.steps)
    device = "cuda" if cfg.gpus_per_trial > 0 else "cpu"
    job = TrialJob(ref, device, dataclasses.asdict(distill_cfg), dataclasses.asdict(eval_cfg),
                   str(Path(cfg.runs_dir) / cfg.study / "students"), max(1, int(cfg.cpus_per_trial)),
                   report_every=max(1, distill_cfg.steps // 10), noise_seeds=cfg.noise_seeds,
                   checkpoint=bool(rungs), cache_steps=max((distill_cfg.steps, *rungs)), score=cfg.score,
                   reference_seeds=reference_seeds(cfg, ref.family.name))
    target = cfg.latency_device or device
    attrs = {"space": space_name(cfg.space), "space_path": str(bound.space.path), "teacher": cfg.teacher,
             "teacher_unet_sha256": weights_sha256(teacher_unet) if teacher_unet is not None else None,
             "data": data_identity(distill_cfg.data), "eval_set": evaluation_set(eval_cfg, ref.is_toy),
             "distill": _jsonable(job.distill), "eval": _jsonable(job.eval), "device": device,
             "latency_target": [target, cfg.latency_dtype or ("fp16" if target.startswith("cuda") else "fp32")],
             "constraints": {"max_params": cfg.max_params, "min_alignment": cfg.min_alignment},
             "command": cfg.command, "reference_designs": {n: g.id for n, g in bound.named_designs().items()},
             "noise_seeds": cfg.noise_seeds, "noise_source": cfg.noise_source, "rungs": list(rungs),
             "rung_references": cfg.rung_references, "score": cfg.score}
    return job, attrs


def reference_seeds(cfg: SearchConfig, family: str | None = None) -> dict:
    """bench fidelity's seed scores of the reference designs for the trials to reuse (reference_noise.py): with
    ``--noise-source auto`` and seed noise asked for, where the study (``family``'s) was of this run's teacher;
    else none."""
    if cfg.noise_source != "auto" or cfg.noise_seeds < 2:
        return {}
    return table_of(read_selection(selection_path(family)), cfg.teacher)


def _jsonable(d: dict) -> dict:
    return json.loads(json.dumps(d, default=str))


# -- the run ---------------------------------------------------------------------------------------
def run_search(cfg: SearchConfig, out: TextIO | None = None, results: TextIO | None = None) -> ParetoReport:
    """Validate everything, then connect Ray, prepare the study and run the remaining trials. Progress goes to
    ``out`` (default: stdout), the final fronts and the results lines to ``results`` (default: ``out``; ``-q``
    sends progress to os.devnull)."""
    out = out or sys.stdout
    results = results or out
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cfg = resolve(cfg)  # every check reads only; the first write is prepare_study
    ref = resolve_teacher(cfg.teacher)  # --teacher, read once: every stage below is passed this value
    stage = first_stage_of(cfg, ref)
    rung_objectives = cfg.objectives  # the rungs rank by FID (the first stage may rank by a cheaper score)
    cfg = first_stage_config(cfg, stage)
    print(f"first-stage score: {stage.why}", file=out)
    if cfg.address and cfg.address != "auto":
        probe_address(cfg.address)
    space = load_space(cfg.space)
    storage = open_storage(cfg.storage, create_folder=cfg.storage == default_storage(cfg.runs_dir),
                           heartbeat_interval=cfg.heartbeat_interval, grace_period=cfg.heartbeat_grace)
    study = existing_study(storage, cfg)
    stages = check_inputs(cfg, ref)  # a real teacher's inputs: one line each, before the teacher loads and Ray starts
    bound, teacher_unet = bind_space(space, ref)
    if cfg.trials > len(bound):  # a small space (9 architectures on the toy transformer): each one once, no more
        print(f"--trials {cfg.trials}: the space has {len(bound)} architectures on this teacher; {len(bound)} trials",
              file=out)
        cfg = dataclasses.replace(cfg, trials=len(bound))
    job, study_attrs = trial_job(cfg, ref, bound, teacher_unet, stages)
    rungs = ladder(cfg, job, study_attrs, rung_objectives)  # what the rung loop needs, once
    if study is not None:
        check_settings(study, study_attrs)  # a resume with incomparable settings: refused, nothing touched
    check_rung_settings(storage, rungs.plan)
    done = counts(study)["done"] if study is not None else 0
    if cfg.trials - done <= 0 and not rung_work(storage, rungs.plan):
        print(f"study {cfg.study!r} already has {done} finished trials (>= --trials {cfg.trials}); "
              f"nothing to run", file=out)
        prepare_study(storage, cfg, bound, study_attrs, out)  # still: stale trials of a crash are marked FAIL
        return finish(cfg, storage, results, rungs.plan, progress=out)
    params_of = params_table(teacher_unet, bound)
    local_ray_auth(cfg.address)  # before Ray is imported: it reads RAY_AUTH_MODE then
    from blocksearch.search import ray_tune  # Ray (1-3 s) only once there is work for it; the stages run on it

    ray_info = ray_tune.start_ray(cfg)  # fails (unreachable --address) before the study is touched
    try:
        study = prepare_study(storage, cfg, bound, study_attrs, out, warm_picks(cfg, ref, job, bound, out))
        remaining = cfg.trials - counts(study)["done"]
        parallel = lanes(cfg, ray_info["resources"], max(1, remaining))
        console.announce(cfg, remaining, parallel, ray_info, out)
        warm_teacher_cache(cfg, job, out)
        floor = measure_teacher(cfg, job, study, out)
        tuning = Tuning(storage, bound, params_of, ray_info["resources"], out)
        if remaining > 0:
            run_first_stage(cfg, stage, job, tuning, remaining, parallel, floor, ray_tune.run_trials)
        run_rungs(rungs, tuning, floor, ray_tune.run_trials)
    finally:
        ray_tune.stop_ray()
    return finish(cfg, storage, results, rungs.plan, progress=out)


def warm_picks(cfg: SearchConfig, ref: TeacherRef, job: TrialJob, bound: ArchSpace, out: TextIO) -> list:
    """``--init one-shot``: the one-shot picks (search/warm_start.py) to enqueue after the named designs; else none."""
    if cfg.init != "one-shot":
        return []
    distill = job.distill
    table = importance_table(ref.spec, ref.load("cpu"), "cpu", distill.get("data", "toy"), distill.get("cache_dir"),
                             distill.get("resolution"))
    picks = one_shot_archs(ref.family, table, bound)
    print(f"--init one-shot: {len(picks)} one-shot picks after the named designs: "
          + ", ".join(f"{arch.id} ({label})" for label, arch in picks), file=out)
    return picks


def run_first_stage(cfg: SearchConfig, stage: FirstStage, job: TrialJob, tuning: Tuning, remaining: int,
                    parallel: int, floor: float | None, run_trials: Callable) -> None:
    """The first stage's trials, run by ``run_trials`` (ray_tune.run_trials, in run_search's started cluster): by
    FID, feasible above the teacher's alignment ``floor``; or by a held-out probe score, no images, feasible under
    bench fidelity's text rule (selection.py)."""
    if cfg.score not in PROBE_KEYS:
        run_trials(cfg, job, tuning, remaining, parallel, floor)
        return
    ceiling = stage.guide_ceiling if cfg.min_alignment > 0 else None  # --min-alignment 0: no text rule
    rule = "off" if ceiling is None else f"{stage.text_key} <= {ceiling:.3f} (bench fidelity's text rule)"
    print(f"first stage: no images generated; feasible students: {rule}", file=tuning.out)
    run_trials(cfg, job, tuning, remaining, parallel, None, guide_ceiling=ceiling, text_key=stage.text_key)


class NoTrialCompleted(Exception):
    """A search none of whose trials completed (every one FAIL): its one-line summary, exit code 1 from the CLI
    (commands/run.py); ``report`` is the study's, printed and rendered before."""

    def __init__(self, line: str, report: ParetoReport):
        super().__init__(line)
        self.report = report


def finish(cfg: SearchConfig, storage, out: TextIO, plan=(), progress: TextIO | None = None) -> ParetoReport:
    """Print the Pareto front of the study and of each rung, write their reports, and say where everything
    is. Returns the report of the longest rung that ran (its students trained longest), else the study's;
    raises NoTrialCompleted, once all is printed, where no trial of the study completed."""
    names = set(optuna.study.get_all_study_names(storage=storage))
    studies = [(cfg.study, Path(cfg.runs_dir) / cfg.study / "students")]
    studies += [(name, Path(job.students_dir)) for name, _, job, _ in plan if name in names]
    folders, reports = [], []
    for name, students in studies:
        study = optuna.load_study(study_name=name, storage=storage)
        report = build_report(study, cfg.storage)
        console.print_front(report, study, report.attrs.get("distill", {}).get("steps"), out)
        folder = Path(cfg.runs_dir).parent / "reports" / name
        t0 = time.perf_counter()
        pictures = render_all(report, folder)
        print(console.report_cost(name, time.perf_counter() - t0, pictures.seconds), file=progress or out)  # -q: not
        folders.append((name, students, folder))
        reports.append(report)
    console.results(folders, reports, cfg.storage, out)
    base = optuna.load_study(study_name=cfg.study, storage=storage)
    line = console.no_trial_completed(base, Path(cfg.runs_dir) / cfg.study / "tune")
    if line is not None:
        raise NoTrialCompleted(line, reports[0])
    return reports[-1]
