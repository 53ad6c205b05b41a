"""The search: an Optuna multi-objective study over a space, its trials run by Ray Tune.

Optuna (Akiba et al., KDD 2019) is the memory: a persistent study holds every trial, so a search can
be stopped and re-run. Ray Tune runs the trials (``OptunaSearch``, one trial = one candidate:
surgery -> distillation -> evaluation, BK-SDM arXiv 2305.15798) with resources per trial, locally or
on a cluster; ASHA (Li et al., MLSys 2020) optionally stops weak candidates early on their output-KD
loss. The define-by-run function only calls ``trial.suggest_*``; the trainable does the work.
One driver per study at a time: at start, RUNNING trials can only be left by a crash (marked FAIL,
re-queued).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from blocksearch.errors import BlocksearchError
from blocksearch.samplers import REPEATS_BEFORE_FALLBACK, SAMPLERS, make_sampler, untrained_genome
from blocksearch.space import BoundSpace, Genome, load_space
from blocksearch.trial import KD_METRIC, TrialJob, trainable

OBJECTIVES = {"fid": "minimize", "params": "minimize", "latency_ms": "minimize", "macs": "minimize",
              "alignment": "maximize"}
DEFAULT_OBJECTIVES = ("fid", "params", "latency_ms")
CANDIDATE = "blocksearch.trial:train_candidate"  # the work of one trial; tests may point elsewhere
MAX_ASKS = 200  # suggestions tried per Ray trial before giving up on finding an untrained Genome
FINISHED = ("COMPLETE", "PRUNED", "FAIL")


@dataclass(frozen=True)
class SearchConfig:
    """Everything ``blocksearch run`` needs; paths are made absolute (Ray trials chdir)."""

    space: str = "unet_blocks"
    teacher: str = "toy"
    trials: int = 16
    study: str | None = None  # default: "<space>-<teacher>"
    storage: str | None = None  # default: sqlite:///<cwd>/runs/blocksearch.db
    runs_dir: str | None = None  # default: <cwd>/runs
    address: str | None = None  # None: start a local Ray; "auto" or host:port: connect
    dashboard_host: str = "127.0.0.1"
    dashboard_port: int = 8265
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_concurrent: int | None = None  # default: what the cluster's CPUs/GPUs allow
    steps: int | None = None  # distillation steps (None: DistillConfig's default)
    eval_prompts: int | None = None  # evaluation prompts (None: EvalConfig's default)
    sampler: str = "tpe"
    seed: int = 0
    objectives: tuple[str, ...] = DEFAULT_OBJECTIVES
    max_params: float | None = None  # parameter budget (an Optuna constraint)
    asha: bool = False
    candidate: str | None = None  # "module:function" doing one trial's work (default: CANDIDATE)
    command: str = ""


# -- validation and study set-up (driver) -----------------------------------------------------------
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
    runs = Path(cfg.runs_dir or Path.cwd() / "runs").resolve()
    teacher_tag = Path(cfg.teacher).name if Path(cfg.teacher).exists() else cfg.teacher.replace("/", "--")
    space_name = Path(cfg.space).stem if cfg.space.endswith((".yaml", ".yml")) else cfg.space
    storage = cfg.storage or f"sqlite:///{runs / 'blocksearch.db'}"
    return dataclasses.replace(cfg, runs_dir=str(runs), storage=storage, candidate=cfg.candidate or CANDIDATE,
                               study=cfg.study or f"{space_name}-{teacher_tag}")


def bind_space(space, teacher: str) -> tuple[BoundSpace, Any]:
    """The space bound to the teacher's topology, and the teacher U-Net (for exact params)."""
    from blocksearch.teachers import ARCHITECTURES, load_teacher_unet, topology_of

    if teacher in ARCHITECTURES:
        raise BlocksearchError(
            f"teacher {teacher!r} is an architecture without weights; a search distils from real "
            f"weights: use toy, a local diffusers folder, or a cached hub id")
    unet = load_teacher_unet(teacher, device="cpu")
    return space.bind(topology_of(unet.config)), unet


def open_storage(url: str):
    """An Optuna storage object for ``url`` (Ray's OptunaSearch needs the object, not the URL)."""
    import optuna

    if url.startswith("sqlite:///") and url.endswith("/runs/blocksearch.db"):  # the default location
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    try:
        return optuna.storages.get_storage(url)
    except Exception as err:  # sqlalchemy/optuna raise many types for a bad URL
        first = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        raise BlocksearchError(
            f"cannot open storage {url!r} ({first}); allowed: an Optuna storage URL such as "
            f"sqlite:////abs/path/study.db or postgresql://user@host/db") from None


def existing_study(storage, cfg: SearchConfig):
    """The study if it exists, checked against this run's objectives, space and teacher."""
    import optuna

    names = {s.study_name: s for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}
    if cfg.study not in names:
        return None
    study = optuna.load_study(study_name=cfg.study, storage=storage)
    want = [OBJECTIVES[o] for o in cfg.objectives]
    have = [d.name.lower() for d in study.directions]
    names_have = study.metric_names
    attrs = study.user_attrs
    if have != want or (names_have and list(names_have) != list(cfg.objectives)):
        raise BlocksearchError(
            f"study {cfg.study!r} has objectives {names_have or have}, not {list(cfg.objectives)}; "
            f"use the same --objectives or another --study")
    for key, value in (("space", bind_name(cfg.space)), ("teacher", cfg.teacher)):
        if key in attrs and attrs[key] != value:
            raise BlocksearchError(
                f"study {cfg.study!r} was run with {key} {attrs[key]!r}, not {value!r}; use another --study")
    return study


def bind_name(space: str) -> str:
    return Path(space).stem if space.endswith((".yaml", ".yml")) else space


def counts(study) -> dict[str, int]:
    """Trials that count toward --trials (evaluated: not repeats of a Genome, not stale), by state."""
    out = {"done": 0, "stale": 0, "complete": 0, "pruned": 0, "failed": 0, "cached": 0}
    for t in study.get_trials(deepcopy=False):
        attrs = t.user_attrs
        if t.state.name == "RUNNING":
            out["stale"] += 1
        elif attrs.get("skipped") or attrs.get("stale"):  # repeats of a Genome / left by a crash
            out["cached"] += "cached_from" in attrs
        elif t.state.name in FINISHED:
            out["done"] += 1
            out[{"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed"}[t.state.name]] += 1
    return out


def prepare_study(storage, cfg: SearchConfig, bound: BoundSpace, study_attrs: dict):
    """Create or load the study; mark stale RUNNING trials FAIL (and re-queue them); enqueue the
    reference designs once."""
    import optuna

    study = optuna.create_study(storage=storage, study_name=cfg.study, load_if_exists=True,
                                directions=[OBJECTIVES[o] for o in cfg.objectives])
    if not study.metric_names:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(list(cfg.objectives))
    for key, value in study_attrs.items():
        if key not in study.user_attrs or key in ("command",):
            study.set_user_attr(key, value)
    waiting = [t.params or t.system_attrs.get("fixed_params") for t in study.get_trials(
        deepcopy=False, states=(optuna.trial.TrialState.WAITING,))]
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        storage.set_trial_user_attr(t._trial_id, "stale", True)
        storage.set_trial_user_attr(t._trial_id, "error", "stale: its driver stopped before it finished "
                                                          "(re-queued when the search resumed)")
        storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
        params = t.params or t.system_attrs.get("fixed_params")
        if params and params not in waiting:
            study.enqueue_trial(params, user_attrs={k: v for k, v in t.user_attrs.items() if k == "design"})
            waiting.append(params)
        print(f"stale trial #{t.number} ({t.user_attrs.get('genome', '?')}) marked FAIL and re-queued")
    for name, genome in bound.named_designs().items():
        study.enqueue_trial(bound.to_params(genome), user_attrs={"design": name}, skip_if_exists=True)
    return study


# -- the searcher: OptunaSearch plus the study contract -----------------------------------------------
def make_searcher(cfg: SearchConfig, storage, bound: BoundSpace, params_of: Callable[[Genome], int]):
    """An ``OptunaSearch`` that caches results by Genome, records PRUNED/FAIL and user attrs."""
    from ray.tune.search.optuna import OptunaSearch

    class StudySearch(OptunaSearch):
        """OptunaSearch with the study contract: genome/metrics/timings attrs, cache by Genome,
        parameter budget as a constraint, ASHA-stopped trials PRUNED, failures FAIL with ``error``."""

        def __init__(self):
            super().__init__(space=_define_by_run(bound), metric=list(cfg.objectives),
                             mode=["min" if OBJECTIVES[o] == "minimize" else "max" for o in cfg.objectives],
                             sampler=make_sampler(cfg.sampler, cfg.seed, cfg.trials),
                             study_name=cfg.study, storage=storage)
            self.inflight: dict[str, int] = {}  # genome id -> Optuna trial number
            self.outcomes: list[tuple[int, str, str, dict]] = []  # (number, genome, state, values)

        def suggest(self, trial_id: str):
            for attempt in range(MAX_ASKS):
                if attempt >= REPEATS_BEFORE_FALLBACK:
                    self._enqueue_untrained(attempt)
                params = super().suggest(trial_id)
                ot = self._ot_trials[trial_id]
                genome = bound.from_params(params)
                ot.set_user_attr("genome", genome.id)
                if cfg.max_params is not None:
                    ot.set_constraint("params_budget", params_of(genome) - cfg.max_params)
                done = self._evaluated(genome)
                if done is None and genome.id not in self.inflight:
                    self.inflight[genome.id] = ot.number
                    design = ot.user_attrs.get("design")
                    return {**params, "_genome": genome.id, "_number": ot.number, "_design": design,
                            "_suggested_at": time.time()}
                # A repeat: never retrain a Genome. Its result already lives in trial `done` (or will);
                # recording it again as COMPLETE would make TPE re-propose it ever more (a feedback loop
                # seen in practice), so the repeat is closed as FAIL, which samplers ignore.
                del self._ot_trials[trial_id]
                ot.set_user_attr("skipped", True)
                ot.set_user_attr("cached_from", done.number if done is not None else self.inflight[genome.id])
                self._ot_study.tell(ot, state=_state("FAIL"))
            raise BlocksearchError(f"the sampler proposed only trained Genomes {MAX_ASKS} times in a row; "
                                   f"the space may be exhausted ({len(bound)} architectures)")

        def _enqueue_untrained(self, attempt: int) -> None:
            trained = {t.user_attrs.get("genome") for t in self._ot_study.get_trials(deepcopy=False)
                       if t.state != _state("WAITING")} | set(self.inflight)
            genome = untrained_genome(bound, trained, cfg.seed, attempt)
            if genome is not None:
                self._ot_study.enqueue_trial(bound.to_params(genome), user_attrs={"explore": True})

        def save(self, checkpoint_path: str) -> None:  # the Optuna study is the memory, not Tune's checkpoint
            Path(checkpoint_path).write_text(json.dumps({"study": cfg.study, "storage": cfg.storage}))

        def restore(self, checkpoint_path: str) -> None:
            pass

        def _evaluated(self, genome: Genome):
            """The trial that already trained ``genome`` (complete, pruned or failed), if any."""
            for t in self._ot_study.get_trials(deepcopy=False, states=tuple(_state(s) for s in FINISHED)):
                if t.user_attrs.get("genome") == genome.id and not {"skipped", "stale"} & set(t.user_attrs):
                    return t
            return None

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
            ot = self._ot_trials.get(trial_id)
            if ot is None or trial_id in self._completed_trials:
                return super().on_trial_complete(trial_id, result, error)
            genome = ot.user_attrs.get("genome", "?")
            self.inflight.pop(genome, None)
            payload = json.loads(result["payload"]) if result and result.get("payload") else {}
            if error or not result:
                ot.set_user_attr("error", "the trial process died (killed, out of memory or crashed); "
                                          f"see the Ray Tune folder {cfg.runs_dir}/{cfg.study}/tune")
                state, values = "FAIL", None
            elif payload.get("error"):
                ot.set_user_attr("error", payload["error"])
                state, values = "FAIL", None
            elif not result.get("final"):  # ASHA stopped it: its scores are partial, never on the front
                ot.set_user_attr("pruned_at", {"iteration": result.get("training_iteration"),
                                               KD_METRIC: result.get(KD_METRIC)})
                state, values = "PRUNED", None
            else:
                for key in ("metrics", "timings", "student_dir"):
                    ot.set_user_attr(key, payload[key])
                state, values = "COMPLETE", [result[o] for o in cfg.objectives]
            self.outcomes.append((ot.number, genome, state, {"values": values, **payload}))
            super().on_trial_complete(trial_id, result=result if state == "COMPLETE" else None,
                                      error=state == "FAIL")

    return StudySearch()


def _define_by_run(bound: BoundSpace) -> Callable:
    """The define-by-run space for OptunaSearch: only ``trial.suggest_*`` calls (returns None)."""

    def space(trial) -> None:
        bound.suggest(trial)

    return space


def _state(name: str):
    import optuna

    return optuna.trial.TrialState[name]


# -- the run -----------------------------------------------------------------------------------------
def run_search(cfg: SearchConfig, out=None):
    """Validate everything, then connect Ray, prepare the study and run the remaining trials."""
    import optuna

    out = out or sys.stdout
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cfg = resolve(cfg)  # every check reads only; the first write is prepare_study
    if cfg.address and cfg.address != "auto":
        _probe(cfg.address)
    space = load_space(cfg.space)
    storage = open_storage(cfg.storage)
    study = existing_study(storage, cfg)
    bound, teacher_unet = bind_space(space, cfg.teacher)
    job, study_attrs = trial_job(cfg, bound)
    before = counts(study) if study is not None else {"done": 0, "stale": 0}
    remaining = cfg.trials - before["done"]
    if remaining <= 0:
        print(f"study {cfg.study!r} already has {before['done']} finished trials (>= --trials "
              f"{cfg.trials}); nothing to run", file=out)
        prepare_study(storage, cfg, bound, study_attrs)  # still: stale trials of a crash are marked FAIL
        return finish(load(storage, cfg), cfg, out)
    params_of = _params_table(teacher_unet, bound)
    ray_info = start_ray(cfg)  # fails (unreachable --address) before the study is touched
    try:
        study = prepare_study(storage, cfg, bound, study_attrs)
        remaining = cfg.trials - counts(study)["done"]
        if remaining > 0:
            _tune(cfg, storage, bound, job, params_of, remaining, ray_info, out)
    finally:
        import ray

        ray.shutdown()
    return finish(load(storage, cfg), cfg, out)


def load(storage, cfg: SearchConfig):
    import optuna

    return optuna.load_study(study_name=cfg.study, storage=storage)


def trial_job(cfg: SearchConfig, bound: BoundSpace) -> tuple[TrialJob, dict]:
    """The stage configs of every trial, and the study's user attrs (the study contract)."""
    from blocksearch.distill import DistillConfig
    from blocksearch.evaluate import EvalConfig

    distill_cfg = DistillConfig(**({"steps": cfg.steps} if cfg.steps else {}), seed=cfg.seed)
    eval_cfg = EvalConfig(**({"prompts": cfg.eval_prompts} if cfg.eval_prompts else {}))
    device = "cuda" if cfg.gpus_per_trial > 0 else "cpu"
    runs = Path(cfg.runs_dir)
    steps = int(getattr(distill_cfg, "steps", 1))
    job = TrialJob(cfg.teacher, device, dataclasses.asdict(distill_cfg), dataclasses.asdict(eval_cfg),
                   str(runs / cfg.study / "students"), max(1, int(cfg.cpus_per_trial)),
                   report_every=max(1, steps // 10))
    attrs = {"space": bind_name(cfg.space), "space_path": str(bound.space.path), "teacher": cfg.teacher,
             "distill": _jsonable(job.distill), "eval": _jsonable(job.eval), "device": device,
             "command": cfg.command, "reference_designs": {n: g.id for n, g in bound.named_designs().items()}}
    return job, attrs


def _jsonable(d: dict) -> dict:
    return json.loads(json.dumps(d, default=str))


def _params_table(teacher_unet, bound: BoundSpace) -> Callable[[Genome], int]:
    """Exact params of a Genome, from the config alone (meta device), cached by Genome."""
    import torch
    from diffusers import UNet2DConditionModel

    from blocksearch.cost import count_params
    from blocksearch.surgery import student_config

    cache: dict[str, int] = {}

    def params_of(genome: Genome) -> int:
        if genome.id not in cache:
            with torch.device("meta"):
                unet = UNet2DConditionModel.from_config(student_config(teacher_unet.config, genome))
            cache[genome.id] = count_params(unet)
        return cache[genome.id]

    for genome in bound.named_designs().values():
        params_of(genome)
    params_of.cache = cache
    return params_of


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


def _tune(cfg, storage, bound, job, params_of, remaining, ray_info, out) -> None:
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import ConcurrencyLimiter

    res = ray_info["resources"]
    lanes = int(res.get("CPU", 1) // cfg.cpus_per_trial)
    if cfg.gpus_per_trial:
        lanes = min(lanes, int(res.get("GPU", 0) // cfg.gpus_per_trial))
        if lanes < 1:
            raise BlocksearchError(f"--gpus-per-trial {cfg.gpus_per_trial}: the Ray cluster has "
                                   f"{res.get('GPU', 0)} GPUs")
    lanes = max(1, min(cfg.max_concurrent or lanes, lanes, remaining))
    searcher = make_searcher(cfg, storage, bound, params_of)
    n_reports = max(1, int(job.distill.get("steps", 1)) // job.report_every)
    scheduler = (ASHAScheduler(time_attr="training_iteration", metric=KD_METRIC, mode="min",
                               max_t=n_reports + 2, grace_period=max(1, n_reports // 4), reduction_factor=2)
                 if cfg.asha else FIFOScheduler())
    fn = tune.with_parameters(trainable, job=job, objectives=tuple(cfg.objectives),
                              candidate=cfg.candidate, params_of_genome=dict(params_of.cache))
    fn = tune.with_resources(fn, {"cpu": cfg.cpus_per_trial, "gpu": cfg.gpus_per_trial})
    print(f"study {cfg.study!r} in {cfg.storage}: {remaining} trials to run, {lanes} in parallel "
          f"({cfg.cpus_per_trial:g} CPU, {cfg.gpus_per_trial:g} GPU each), sampler {cfg.sampler}"
          f"{', ASHA on ' + KD_METRIC if cfg.asha else ''}", file=out)
    if ray_info["dashboard_url"]:
        auth = ("token auth on: the token is in ~/.ray/auth_token (ray get-auth-token)"
                if ray_info["auth"] == "token" else f"RAY_AUTH_MODE={ray_info['auth']}")
        print(f"Ray dashboard: {ray_info['dashboard_url']}  ({auth})", file=out)
    tuner = tune.Tuner(
        fn,
        tune_config=tune.TuneConfig(search_alg=ConcurrencyLimiter(searcher, max_concurrent=lanes),
                                    scheduler=scheduler, num_samples=remaining, reuse_actors=True),
        run_config=tune.RunConfig(name=f"{cfg.study}-{time.strftime('%Y%m%d-%H%M%S')}",
                                  storage_path=str(Path(cfg.runs_dir) / cfg.study / "tune"), verbose=0,
                                  callbacks=[Progress(searcher, remaining, cfg.objectives, out)]),
    )
    tuner.fit()


def _fmt_value(name: str, v) -> str:
    if v is None:
        return "-"
    if name in ("params", "macs"):
        return f"{v / 1e6:.2f}M"
    return f"{v:.3g}" if isinstance(v, float) else str(v)


class _ProgressBase:
    """Live progress: a tqdm bar over trials and one line per finished trial."""

    def __init__(self, searcher, total: int, objectives, out):
        from tqdm.auto import tqdm

        self.searcher, self.objectives, self.seen, self.out = searcher, objectives, 0, out
        self.bar = tqdm(total=total, desc="trials", unit="trial", file=out, dynamic_ncols=True,
                        disable=None)  # no bar when not a terminal; the per-trial lines remain

    def __getstate__(self) -> dict:  # Tune pickles its callbacks; a live view has nothing to keep
        return {}

    def _drain(self) -> None:
        for number, genome, state, info in self.searcher.outcomes[self.seen:]:
            if state == "COMPLETE":
                vals = "  ".join(f"{o} {_fmt_value(o, v)}" for o, v in zip(self.objectives, info["values"]))
                t = info.get("timings", {})
                detail = f"{vals}  (kd {t.get('kd_s', 0):.0f}s, gen {t.get('generate_s', 0):.0f}s, " \
                         f"score {t.get('score_s', 0):.0f}s, overhead {t.get('overhead_s', 0):.0f}s)"
            else:
                detail = info.get("error", "stopped early by ASHA") if state == "FAIL" else "stopped early by ASHA"
            self.bar.write(f"#{number:<3d} {genome:28s} {state:8s} {detail}", file=self.out)
            self.bar.update(1)
        self.seen = len(self.searcher.outcomes)
        self.bar.set_postfix(running=len(self.searcher.inflight))


def _progress_class():
    from ray.tune import Callback

    class Progress(_ProgressBase, Callback):
        def on_trial_start(self, iteration, trials, trial, **info):
            self._drain()

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._drain()

        def on_trial_error(self, iteration, trials, trial, **info):
            self._drain()

        def on_experiment_end(self, trials, **info):
            self._drain()
            self.bar.close()

    return Progress


def Progress(searcher, total, objectives, out):  # noqa: N802 - a factory: Ray is imported lazily
    return _progress_class()(searcher, total, objectives, out)


# -- the end: the front and where everything is ---------------------------------------------------------
def front_trials(study) -> list:
    """COMPLETE, feasible trials on the Pareto front."""
    import numpy as np

    from blocksearch.pareto import pareto_mask, to_minimise

    trials = [t for t in study.get_trials(deepcopy=False, states=(_state("COMPLETE"),))
              if all(v <= 0 for v in t.constraints.values())]
    if not trials:
        return []
    values = to_minimise(np.array([t.values for t in trials]), [d.name for d in study.directions])
    return [t for t, keep in zip(trials, pareto_mask(values)) if keep]


def finish(study, cfg: SearchConfig, out):
    """Print the Pareto front table and where the results are."""
    names = study.metric_names or list(cfg.objectives)
    c = counts(study)
    front = sorted(front_trials(study), key=lambda t: t.values[0])
    hits = f"; {c['cached']} sampler repeats of trained Genomes skipped" if c["cached"] else ""
    print(f"\nstudy {cfg.study!r}: {c['complete']} complete, {c['pruned']} pruned, {c['failed']} failed"
          f"{hits}; Pareto front ({len(front)}):", file=out)
    print(f"{'trial':>6s} {'design':9s} {'genome':28s} " + " ".join(f"{n:>11s}" for n in names), file=out)
    for t in front:
        print(f"{t.number:>6d} {t.user_attrs.get('design', ''):9s} {t.user_attrs.get('genome', ''):28s} "
              + " ".join(f"{_fmt_value(n, v):>11s}" for n, v in zip(names, t.values)), file=out)
    from blocksearch.report import write_report

    report = write_report(cfg.study, cfg.storage, Path(cfg.runs_dir).parent / "reports" / cfg.study)
    print(f"\nresults: study {cfg.study!r} in {cfg.storage}; students in {Path(cfg.runs_dir) / cfg.study / 'students'}"
          f"; report in {report}", file=out)
    return study
