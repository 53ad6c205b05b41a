"""The search driver: an Optuna multi-objective study over a space, its trials run by Ray Tune.

Ray Tune runs the trials (one trial = one candidate: surgery -> distillation -> evaluation, BK-SDM
arXiv 2305.15798) with resources per trial, locally or on a cluster, asking
:class:`blocksearch.search.searcher.StudySearch` for each candidate; ASHA (Li et al., MLSys 2020) optionally
stops weak candidates early on their output-KD loss. The study itself (storage, bookkeeping) is
:mod:`blocksearch.study`; the final table and the report come from one
:class:`blocksearch.report.compute.ParetoReport`.

Ray is imported only once a search has work for it: ``import ray.tune.search.optuna`` costs 1.0-1.3 s
on an idle machine and ~3 s on a busy one, even after torch and diffusers (``python -X importtime``),
which bad flags (exit 2) and a study that already has its trials never pay.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import Callable, TextIO

import optuna
import torch
from tqdm.auto import tqdm

from blocksearch.recipe.baseline import alignment_bound, teacher_reference
from blocksearch.cache import default_cache_dir
from blocksearch.recipe.cost import count_params
from blocksearch.recipe.distill import DistillConfig, prepare_teacher_cache
from blocksearch.errors import BlocksearchError
from blocksearch.recipe.evaluate import EvalConfig, evaluation_set, toy_prompts_note
from blocksearch.report.render import fmt, render_all
from blocksearch.report.compute import ParetoReport, build_report
from blocksearch.search.rungs import (MAX_FRACTION, REFERENCES, carried_noise, check_rung_settings, check_rungs,
                               default_rungs, drop_checkpoints, prepare_rung, prepared_lanes, promoted, rung_plan,
                               rung_work, stopped_references, study_free)
from blocksearch.search.run_settings import absolute, check_inputs, check_stage_flags, data_identity, stage_configs
from blocksearch.search.samplers import SAMPLERS
from blocksearch.search.reference_noise import NOISE_SOURCES, table_of
from blocksearch.search.selection import FirstStage, first_stage, read_selection
from blocksearch.settings import PROBE_KEYS
from blocksearch.space import BoundSpace, Genome, SearchSpace, load_space
from blocksearch.study import (OBJECTIVES, SearchConfig, check_settings, counts, default_runs_dir,
                               default_storage, default_study_name, existing_study, open_storage,
                               prepare_study, space_name)
from blocksearch.families.base import get_family
from blocksearch.teachers import (ARCHITECTURES, is_toy, load_teacher, load_teacher_denoiser,  # noqa: F401
                                  load_teacher_unet, resolve_teacher, weights_sha256)  # load_teacher_unet: tests
from blocksearch.search.trial import KD_METRIC, TrialJob, trainable

CANDIDATE = "blocksearch.search.trial:train_candidate"  # the work of one trial; tests may point elsewhere
TOY_OF_FAMILY = {"unet": "toy", "dit": "toy-dit"}  # `--teacher toy` (the default) for a space of each family


# -- validation and set-up (driver) -----------------------------------------------------------------
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
    if not 0 <= cfg.min_alignment <= 1:
        raise BlocksearchError(f"--min-alignment {cfg.min_alignment}: allowed: 0 (off) to 1 (the teacher's own)")
    check_stage_flags(cfg)
    runs = Path(cfg.runs_dir or default_runs_dir()).resolve()
    paths = {k: absolute(getattr(cfg, k)) for k in ("data", "reference", "captions", "inception_weights",
                                                     "clip_model") if getattr(cfg, k) not in (None, "toy")}
    teacher = str(Path(cfg.teacher).resolve()) if Path(cfg.teacher).exists() else cfg.teacher  # trials chdir
    if teacher == "toy":  # the bundled toy teacher of the space's family: a U-Net, or the toy transformer
        teacher = TOY_OF_FAMILY[load_space(cfg.space).family]
    return dataclasses.replace(cfg, runs_dir=str(runs), storage=cfg.storage or default_storage(runs),
                               candidate=cfg.candidate or CANDIDATE, teacher=teacher, **paths,
                               study=cfg.study or default_study_name(cfg.space, teacher))


def first_stage_config(cfg: SearchConfig, stage: FirstStage) -> SearchConfig:
    """The base study's settings for a first stage (selection.py): its objectives (``fid`` -> the stage's score),
    its KD budget, and -- where the stage is a cheaper score than FID and no ``--rungs`` were given -- one rung at
    4 x the default KD budget (FID after 480 steps on the toy: the budget whose ranking came closest to the
    1920-step one in bench fidelity), or 4 x ``--steps`` where they were given."""
    if stage.score == "fid":
        return dataclasses.replace(cfg, score="fid")
    rungs = cfg.rungs if cfg.rungs is not None else default_rungs(cfg.steps or DistillConfig().steps)
    return dataclasses.replace(cfg, score=stage.score, objectives=stage.objectives(cfg.objectives),
                               steps=stage.steps, rungs=rungs)


def bind_space(space: SearchSpace, teacher: str) -> tuple[BoundSpace, torch.nn.Module]:
    """The space bound to the teacher's topology, and the teacher's denoiser (for exact params); a space of
    another denoiser family than the teacher's is a one-line error."""
    if teacher in ARCHITECTURES:
        raise BlocksearchError(
            f"teacher {teacher!r} is an architecture without weights; a search distils from real "
            f"weights: use toy, a local diffusers folder, or a cached hub id")
    ref = resolve_teacher(teacher)
    if ref.family_name != space.family:
        raise BlocksearchError(f"space {space.name} ({space.path}) is for the {space.family} family but teacher "
                               f"{teacher} is a {ref.family_name} teacher; allowed: a {space.family} teacher (e.g. "
                               f"{TOY_OF_FAMILY[space.family]}) or a {ref.family_name} space")
    denoiser = load_teacher_denoiser(teacher, device="cpu")
    return space.bind(ref.family.topology(denoiser.config)), denoiser


def trial_job(cfg: SearchConfig, bound: BoundSpace, teacher_unet=None) -> tuple[TrialJob, dict]:
    """The stage configs of every trial, and the study's user attrs (the study contract): its full
    settings -- the teacher and a sha256 of its U-Net weights, the data, the evaluation set, the budgets
    and constraints -- which a resume must match (``study.check_settings``)."""
    distill_cfg, eval_cfg = stage_configs(cfg)
    if cfg.score in PROBE_KEYS:  # the first stage is ranked by the held-out probe: no image to generate
        eval_cfg = dataclasses.replace(eval_cfg, images=False)
    rungs = default_rungs(distill_cfg.steps) if cfg.rungs is None else check_rungs(cfg.rungs, distill_cfg.steps)
    device = "cuda" if cfg.gpus_per_trial > 0 else "cpu"
    job = TrialJob(cfg.teacher, device, dataclasses.asdict(distill_cfg), dataclasses.asdict(eval_cfg),
                   str(Path(cfg.runs_dir) / cfg.study / "students"), max(1, int(cfg.cpus_per_trial)),
                   report_every=max(1, distill_cfg.steps // 10), noise_seeds=cfg.noise_seeds,
                   checkpoint=bool(rungs), cache_steps=max((distill_cfg.steps, *rungs)), score=cfg.score,
                   family=bound.space.family, reference_seeds=reference_seeds(cfg))
    target = cfg.latency_device or device
    attrs = {"space": space_name(cfg.space), "space_path": str(bound.space.path), "teacher": cfg.teacher,
             "teacher_unet_sha256": weights_sha256(teacher_unet) if teacher_unet is not None else None,
             "data": data_identity(distill_cfg.data), "eval_set": evaluation_set(eval_cfg, is_toy(cfg.teacher)),
             "distill": _jsonable(job.distill), "eval": _jsonable(job.eval), "device": device,
             "latency_target": [target, cfg.latency_dtype or ("fp16" if target.startswith("cuda") else "fp32")],
             "constraints": {"max_params": cfg.max_params, "min_alignment": cfg.min_alignment},
             "command": cfg.command, "reference_designs": {n: g.id for n, g in bound.named_designs().items()},
             "noise_seeds": cfg.noise_seeds, "noise_source": cfg.noise_source, "rungs": list(rungs),
             "rung_references": cfg.rung_references, "score": cfg.score}
    return job, attrs


def reference_seeds(cfg: SearchConfig) -> dict:
    """bench fidelity's seed scores of the reference designs for the trials to reuse (reference_noise.py): with
    ``--noise-source auto`` and seed noise asked for, where the study was of this run's teacher; else none."""
    if cfg.noise_source != "auto" or cfg.noise_seeds < 2:
        return {}
    return table_of(read_selection(), cfg.teacher)


# -- rungs: longer KD for the students near the front (rungs.py) ------------------------------------
def run_rungs(cfg: SearchConfig, storage, bound: BoundSpace, plan, params_of, ray_info: dict, out: TextIO,
              floor: float | None) -> None:
    """Each rung in turn: promote the students of the study below (rungs.promoted), queue them in the rung's
    study, continue them from their KD checkpoints on Ray Tune, and free the checkpoints nobody continues."""
    for name, below, job, attrs in plan:
        report = build_report(optuna.load_study(study_name=below, storage=storage))
        # the rung's places fill whole rounds of the parallel trials: those it was prepared with, on a resume
        parallel = prepared_lanes(storage, name) or lanes(cfg, ray_info["resources"], len(report.ranked))
        free = study_free(report, job)
        chosen = promoted(report, references=cfg.rung_references, lanes=parallel, free=free)
        settled_refs = stopped_references(report, chosen)
        rule = "on or within noise of its front" if report.noise_measured else "on its front (noise not measured)"
        refs = ("the reference designs it left open" if cfg.rung_references == "open" else "the reference designs")
        print(f"\nrung {job.distill['steps']} KD steps: {len(chosen)} of {len(report.ranked)} feasible students of "
              f"{below!r} go on from their KD checkpoints -- {refs} and the students {rule}, at most "
              f"{MAX_FRACTION:.0%} of the feasible searched ones, in whole rounds of {parallel} parallel trials "
              f"(never fewer than one): "
              f"{', '.join(t.genome for t in chosen)}", file=out)
        for t in chosen:
            if t.number in free:
                print(f"  {t.design} is taken from bench fidelity's study at {job.distill['steps']} steps, as at "
                      f"{below!r} (reproduced there after {t.from_study['checked_at']} KD steps): a place, no lane",
                      file=out)
        for ref, by in settled_refs.items():
            print(f"  {ref} stops at {below!r}: dominated there on quality beyond noise by trial(s) "
                  f"{', '.join(map(str, by))} (--rung-references all continues it anyway)", file=out)
        teacher = report.attrs.get("teacher_metrics")  # measured once, on the base study; each rung passes it on
        carried = carried_noise(report, settled_refs, job.reference_seeds, job.distill["steps"])
        extra = ({"teacher_metrics": teacher} if teacher else {}) | {"stopped_references": {below: settled_refs},
                                                                    "carried_noise": carried, "lanes": parallel}
        study = prepare_rung(storage, name, cfg.objectives, [OBJECTIVES[o] for o in cfg.objectives],
                             attrs | extra, chosen, bound)
        running = {t.genome for t in report.trials if t.state == "RUNNING"}  # another driver's: it may still go on
        stopped, freed = drop_checkpoints(job.resume_dir, {t.genome for t in chosen} | running)
        if stopped:
            print(f"KD checkpoints of the {stopped} students that stop here (infeasible or beyond noise of the "
                  f"front) deleted: {freed / 2**20:.0f} MB freed", file=out)
        waiting = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)))
        if waiting:
            rung_cfg = dataclasses.replace(cfg, study=name, trials=len(chosen), asha=False)
            parallel = lanes(rung_cfg, ray_info["resources"], waiting)
            _tune(rung_cfg, storage, bound, job, params_of, waiting, parallel, out, floor, queue_only=True)
        # the rung has continued every student it took (its queue is empty, nothing of it runs): the checkpoints
        # below are no longer needed, except a student another driver still trains there
        running = {t.user_attrs.get("genome") for t in optuna.load_study(study_name=below, storage=storage)
                   .get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))}
        done, freed = drop_checkpoints(job.resume_dir, running)
        if done:
            print(f"rung {job.distill['steps']} done: the KD checkpoints of {done} students in {below!r} deleted "
                  f"({freed / 2**20:.0f} MB freed)", file=out)


def _jsonable(d: dict) -> dict:
    return json.loads(json.dumps(d, default=str))


def params_table(teacher_unet: torch.nn.Module, bound: BoundSpace) -> Callable[[Genome], int]:
    """Exact params of an architecture, from the config alone (meta device), cached by its id in ``.cache``;
    ``teacher_unet``: the teacher's denoiser, of the space's family."""
    cache: dict[str, int] = {}
    config, model_class = teacher_unet.config, type(teacher_unet)  # only the config: Tune pickles the searcher
    family = get_family(bound.space.family)  # and this function with it

    def params_of(genome: Genome) -> int:
        if genome.id not in cache:
            with torch.device("meta"):
                unet = model_class.from_config(family.student_config(config, genome))
            cache[genome.id] = count_params(unet)
        return cache[genome.id]

    for genome in bound.named_designs().values():
        params_of(genome)
    params_of.cache = cache
    return params_of


def warm_teacher_cache(cfg: SearchConfig, job: TrialJob, out: TextIO) -> None:
    """Build the trials' teacher cache once, in the driver, before Tune starts: teacher outputs depend
    only on the batch (docs/design.md, Distillation), so every trial then finds it warm instead of the first
    ones building it in silence. Trials on other machines of a cluster build their own copy."""
    config = DistillConfig.from_dict(job.distill)
    if config.teacher_cache == "off" or not config.steps:
        print("teacher cache off: the teacher runs live in each trial", file=out)
        return
    device = job.device if job.device == "cpu" or torch.cuda.is_available() else "cpu"
    where = config.cache_dir or default_cache_dir()
    print(f"teacher cache ({config.teacher_cache}): the teacher's outputs and stage features for "
          f"{job.cache_steps or config.steps} KD "
          f"batches of {config.batch_size} ({config.data} data), computed once for every trial, under {where}",
          file=out)
    t0 = time.perf_counter()
    cache, why = prepare_teacher_cache(load_teacher(cfg.teacher, device), config, device, steps=job.cache_steps)
    if cache is None:
        print(why, file=out)
        return
    print(f"teacher cache ready: {cache.path} ({cache.path.stat().st_size / 2**20:.0f} MB, "
          f"{time.perf_counter() - t0:.0f} s; {why})", file=out)


def measure_teacher(cfg: SearchConfig, job: TrialJob, study: optuna.Study, out: TextIO) -> float | None:
    """The teacher's own scores at the trials' evaluation settings, once per study (cached on disk): the
    report's teacher row and the text-aware feasibility floor (``--min-alignment`` x its alignment)."""
    device = job.device if job.device == "cpu" or torch.cuda.is_available() else "cpu"
    print("teacher: scoring it at the trials' evaluation settings (once; the report's teacher row and the "
          "alignment floor)", file=out)
    threads = torch.get_num_threads()
    torch.set_num_threads(job.cpus)  # as in a trial: the latencies must be comparable (same threads)
    try:
        config = EvalConfig.from_dict(job.eval | {"images": True})  # the rungs' settings, if the first stage has none
        teacher = load_teacher(cfg.teacher, device)
        if note := toy_prompts_note("--eval-prompts", config.prompts, teacher):
            print(note, file=out)
        metrics = teacher_reference(teacher, config, device)
    finally:
        torch.set_num_threads(threads)
    study.set_user_attr("teacher_metrics", {k: v for k, v in metrics.items() if k != "timings"})
    floor = alignment_bound(metrics.get("alignment"), cfg.min_alignment)
    shown = "off" if floor is None else f"alignment >= {floor:.3f} ({cfg.min_alignment:g} x the teacher's)"
    print(f"teacher: fid {fmt('fid', metrics['fid'])}, alignment {fmt('alignment', metrics.get('alignment'))}, "
          f"{teacher.family.denoiser_name} step {fmt('latency_ms', metrics['latency_ms'])}, end to end {fmt('e2e_ms', metrics.get('e2e_ms'))}; "
          f"feasible students: {shown}", file=out)
    return floor


# -- Ray ---------------------------------------------------------------------------------------------
def start_ray(cfg: SearchConfig) -> dict:
    """Connect to ``--address`` or start a local Ray with the dashboard on ``--dashboard-host``."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # our own progress lines replace Tune's tables
    if not cfg.address:  # a new local cluster: token auth as Ray >= 2.59 does by default, said explicitly
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    import ray

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
    url = ctx.dashboard_url
    return {"dashboard_url": f"http://{url}" if url else None, "resources": ray.cluster_resources(),
            "auth": os.environ.get("RAY_AUTH_MODE", "unset")}


def stop_ray() -> None:
    import ray

    ray.shutdown()


def _probe(address: str) -> None:
    target = address.split("://", 1)[-1]
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise BlocksearchError(f"--address {address!r}: allowed: auto or host:port (e.g. 127.0.0.1:6379)")
    try:
        socket.create_connection((host, int(port)), timeout=3).close()
    except OSError as err:
        raise BlocksearchError(f"cannot reach Ray at --address {address!r} ({err.strerror or err}); "
                               f"start one with 'ray start --head' or leave --address out") from None


def lanes(cfg: SearchConfig, resources: dict, remaining: int) -> int:
    """Trials in parallel: what the cluster's CPUs (and GPUs) allow, capped by --max-concurrent."""
    n = int(resources.get("CPU", 1) // cfg.cpus_per_trial)
    if cfg.gpus_per_trial:
        n = min(n, int(resources.get("GPU", 0) // cfg.gpus_per_trial))
        if n < 1:
            raise BlocksearchError(f"--gpus-per-trial {cfg.gpus_per_trial}: the Ray cluster has "
                                   f"{resources.get('GPU', 0)} GPUs")
    return max(1, min(cfg.max_concurrent or n, n, remaining))


def _announce(cfg: SearchConfig, remaining: int, parallel: int, ray_info: dict, out: TextIO) -> None:
    print(f"study {cfg.study!r} in {cfg.storage}: {remaining} trials to run, {parallel} in parallel "
          f"({cfg.cpus_per_trial:g} CPU, {cfg.gpus_per_trial:g} GPU each), sampler {cfg.sampler}"
          f"{', ASHA on ' + KD_METRIC if cfg.asha else ''}", file=out)
    if ray_info["dashboard_url"]:
        auth = ("token auth on: the token is in ~/.ray/auth_token (ray get-auth-token)"
                if ray_info["auth"] == "token" else f"RAY_AUTH_MODE={ray_info['auth']}")
        print(f"Ray dashboard: {ray_info['dashboard_url']}  ({auth})", file=out)


def _tune(cfg: SearchConfig, storage, bound: BoundSpace, job: TrialJob, params_of, remaining: int,
          parallel: int, out: TextIO, alignment_floor: float | None = None, queue_only: bool = False,
          guide_ceiling: float | None = None, text_key: str = "probe_guide") -> None:
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler
    from ray.tune.search import ConcurrencyLimiter

    from blocksearch.search.searcher import StudySearch

    progress = Progress(remaining, cfg.objectives, out)
    searcher = StudySearch(cfg, storage, bound, params_of, on_change=progress.update,
                           alignment_floor=alignment_floor, queue_only=queue_only, guide_ceiling=guide_ceiling,
                           text_key=text_key)
    n_reports = max(1, int(job.distill.get("steps", 1)) // job.report_every)
    scheduler = (_design_safe_asha()(time_attr="training_iteration", metric=KD_METRIC, mode="min",
                                     max_t=n_reports + 2, grace_period=max(1, n_reports // 4), reduction_factor=2)
                 if cfg.asha else FIFOScheduler())
    fn = tune.with_parameters(trainable, job=job, objectives=tuple(cfg.objectives),
                              candidate=cfg.candidate, params_of_genome=dict(params_of.cache))
    fn = tune.with_resources(fn, {"cpu": cfg.cpus_per_trial, "gpu": cfg.gpus_per_trial})
    tuner = tune.Tuner(
        fn,
        tune_config=tune.TuneConfig(search_alg=ConcurrencyLimiter(searcher, max_concurrent=parallel),
                                    scheduler=scheduler, reuse_actors=True, trial_dirname_creator=trial_dirname,
                                    num_samples=-1),  # until the searcher says FINISHED: --trials finished
                                    # over every driver (early-stopped candidates and repeats do not count),
        run_config=tune.RunConfig(name=f"{cfg.study}-{time.strftime('%Y%m%d-%H%M%S')}",
                                  storage_path=str(Path(cfg.runs_dir) / cfg.study / "tune"), verbose=0),
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
    from ray.tune.schedulers import ASHAScheduler, TrialScheduler

    class DesignSafeASHA(ASHAScheduler):
        def on_trial_result(self, tune_controller, trial, result: dict) -> str:
            decision = super().on_trial_result(tune_controller, trial, result)
            return TrialScheduler.CONTINUE if trial.config.get("_design") else decision

    return DesignSafeASHA


class Progress:
    """Live progress: a tqdm bar over trials and one line per finished trial, fed by the searcher."""

    def __init__(self, total: int, objectives, out: TextIO):
        self.objectives, self.out = objectives, out
        self.bar = tqdm(total=total, desc="trials", unit="trial", file=out, dynamic_ncols=True,
                        disable=None)  # no bar when not a terminal; the per-trial lines remain

    def __getstate__(self) -> dict:  # Tune pickles the searcher, and so this view; a live view keeps nothing
        return {}

    def update(self, outcome, running: int) -> None:
        """A trial started (``outcome`` None) or ended (a ``searcher.TrialOutcome``)."""
        if outcome is not None:
            number, genome, state, info = outcome
            self.bar.write(f"#{number:<3d} {genome:28s} {state:8s} {self._detail(state, info)}", file=self.out)
            self.bar.update(1)
        self.bar.set_postfix(running=running)

    def _detail(self, state: str, info: dict) -> str:
        if state == "FAIL":
            return info.get("error", "stopped early by ASHA")
        if state != "COMPLETE":
            return "stopped early by ASHA"
        t = info.get("timings", {})
        vals = "  ".join(f"{o} {fmt(o, v)}" for o, v in zip(self.objectives, info["values"]))
        return (f"{vals}  (kd {t.get('kd_s', 0):.0f}s, gen {t.get('generate_s', 0):.0f}s, "
                f"score {t.get('score_s', 0):.0f}s, overhead {t.get('overhead_s', 0):.0f}s)")

    def close(self) -> None:
        self.bar.close()


# -- the run -----------------------------------------------------------------------------------------
def run_search(cfg: SearchConfig, out: TextIO | None = None, results: TextIO | None = None) -> ParetoReport:
    """Validate everything, then connect Ray, prepare the study and run the remaining trials. Progress goes to
    ``out`` (default: stdout), the final fronts and the results lines to ``results`` (default: ``out``; ``-q``
    sends progress to os.devnull)."""
    out = out or sys.stdout
    results = results or out
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cfg = resolve(cfg)  # every check reads only; the first write is prepare_study
    stage = first_stage(cfg.score, is_toy(cfg.teacher), cfg.steps)
    rung_objectives = cfg.objectives  # the rungs rank by FID (the first stage may rank by a cheaper score)
    cfg = first_stage_config(cfg, stage)
    print(f"first-stage score: {stage.why}", file=out)
    if cfg.address and cfg.address != "auto":
        _probe(cfg.address)
    space = load_space(cfg.space)
    storage = open_storage(cfg.storage, create_folder=cfg.storage == default_storage(cfg.runs_dir),
                           heartbeat_interval=cfg.heartbeat_interval, grace_period=cfg.heartbeat_grace)
    study = existing_study(storage, cfg)
    check_inputs(cfg)  # a real teacher's inputs: one line each, before the teacher loads and Ray starts
    bound, teacher_unet = bind_space(space, cfg.teacher)
    if cfg.trials > len(bound):  # a small space (9 architectures on the toy transformer): each one once, no more
        print(f"--trials {cfg.trials}: the space has {len(bound)} architectures on this teacher; {len(bound)} trials",
              file=out)
        cfg = dataclasses.replace(cfg, trials=len(bound))
    job, study_attrs = trial_job(cfg, bound, teacher_unet)
    plan = rung_plan(cfg, job, study_attrs)
    if study is not None:
        check_settings(study, study_attrs)  # a resume with incomparable settings: refused, nothing touched
    check_rung_settings(storage, plan)
    done = counts(study)["done"] if study is not None else 0
    if cfg.trials - done <= 0 and not rung_work(storage, plan):
        print(f"study {cfg.study!r} already has {done} finished trials (>= --trials {cfg.trials}); "
              f"nothing to run", file=out)
        prepare_study(storage, cfg, bound, study_attrs, out)  # still: stale trials of a crash are marked FAIL
        return finish(cfg, storage, results, plan)
    params_of = params_table(teacher_unet, bound)
    ray_info = start_ray(cfg)  # fails (unreachable --address) before the study is touched
    try:
        study = prepare_study(storage, cfg, bound, study_attrs, out)
        remaining = cfg.trials - counts(study)["done"]
        parallel = lanes(cfg, ray_info["resources"], max(1, remaining))
        _announce(cfg, remaining, parallel, ray_info, out)
        warm_teacher_cache(cfg, job, out)
        floor = measure_teacher(cfg, job, study, out)
        if remaining > 0:
            if cfg.score in PROBE_KEYS:  # no images in the first stage: its text rule is the probe's (selection.py)
                ceiling = stage.guide_ceiling if cfg.min_alignment > 0 else None  # --min-alignment 0: no text rule
                rule = "off" if ceiling is None else f"{stage.text_key} <= {ceiling:.3f} (bench fidelity's text rule)"
                print(f"first stage: no images generated; feasible students: {rule}", file=out)
                _tune(cfg, storage, bound, job, params_of, remaining, parallel, out, None, guide_ceiling=ceiling,
                      text_key=stage.text_key)
            else:
                _tune(cfg, storage, bound, job, params_of, remaining, parallel, out, floor)
        run_rungs(dataclasses.replace(cfg, objectives=rung_objectives), storage, bound, plan, params_of, ray_info,
                  out, floor)
    finally:
        stop_ray()
    return finish(cfg, storage, results, plan)


def finish(cfg: SearchConfig, storage, out: TextIO, plan=()) -> ParetoReport:
    """Print the Pareto front of the study and of each rung, write their reports, and say where everything
    is. Returns the report of the longest rung that ran (its students trained longest), else the study's."""
    names = set(optuna.study.get_all_study_names(storage=storage))
    studies = [(cfg.study, Path(cfg.runs_dir) / cfg.study / "students")]
    studies += [(name, Path(job.students_dir)) for name, _, job, _ in plan if name in names]
    folders, report = [], None
    for name, students in studies:
        study = optuna.load_study(study_name=name, storage=storage)
        report = build_report(study, cfg.storage)
        _print_front(report, study, report.attrs.get("distill", {}).get("steps"), out)
        folder = Path(cfg.runs_dir).parent / "reports" / name
        render_all(report, folder)
        folders.append((name, students, folder))
    lines = [f"study {name!r} in {cfg.storage}; students in {students}; report in {folder}"
             for name, students, folder in folders]
    print("\nresults: " + lines[0] if len(lines) == 1 else "\nresults:\n" + "\n".join("  " + x for x in lines),
          file=out)
    if len(folders) > 1:
        print(f"the students trained longest, and the front to pick from: study {folders[-1][0]!r} "
              f"(blocksearch export --study {folders[-1][0]} --front -o DIR)", file=out)
    return report


def _print_front(report: ParetoReport, study: optuna.Study, steps, out: TextIO) -> None:
    c = counts(study)
    hits = f"; {c['cached']} sampler repeats of trained Genomes skipped" if c["cached"] else ""
    budget = f" ({steps} KD steps)" if steps is not None else ""
    print(f"\nstudy {report.study!r}{budget}: {c['complete']} complete, {c['pruned']} pruned, {c['failed']} failed"
          f"{hits}; Pareto front ({len(report.front)}):", file=out)
    print(f"{'trial':>6s} {'design':9s} {'genome':28s} " + " ".join(f"{n:>11s}" for n in report.objectives),
          file=out)
    for t in map(report.trial, report.front):
        print(f"{t.number:>6d} {t.design or '':9s} {t.genome or '':28s} "
              + " ".join(f"{fmt(n, v):>11s}" for n, v in zip(report.objectives, t.values)), file=out)
