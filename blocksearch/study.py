"""The study of a search: its settings, its Optuna storage and the bookkeeping of its trials.

Optuna (Akiba et al., KDD 2019) is the search's memory: a persistent study holds every trial, so a
search can be stopped and re-run. This module opens the storage (one default: ``runs/blocksearch.db``
in the working directory), checks a stored study against a run's settings, prepares it (the reference
designs enqueued once; trials a crashed driver left RUNNING marked FAIL and re-queued) and counts its
trials.

Several drivers may share one study through its storage (Optuna's distributed idiom): each driver
records a heartbeat of its running trials (``RDBStorage(heartbeat_interval=..., grace_period=...)``);
a trial whose driver stopped beating for the grace period is marked FAIL by the next driver that looks
and re-queued once (:class:`RequeueStale`, Optuna's ``RetryFailedTrialCallback`` with ``max_retry=1``).
No driver marks another's running trial stale just because it is RUNNING.
The study contract (user attrs ``genome``/``design``/``metrics``/``timings``/``student_dir``/``error``)
is written by :mod:`blocksearch.search.searcher` and read by :mod:`blocksearch.report.compute`.
"""

from __future__ import annotations

import json
import sys
import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import optuna

from blocksearch.errors import BlocksearchError
from blocksearch.families.base import ArchSpace
from blocksearch.objectives import TABLE

SAMPLERS = ("tpe", "nsga2", "gp", "random")  # search/samplers.py builds them
DEFAULT_SAMPLER = "gp"  # chosen by measurement: `blocksearch bench search` (docs/benchmarks.md)
INITS = ("designs", "one-shot")  # --init: the named designs first, or then the one-shot picks (search/warm_start.py)
OBJECTIVES = {o.name: o.direction for o in TABLE if o.searchable}  # name -> Optuna's direction (objectives.py)
DEFAULT_OBJECTIVES = ("fid", "params", "latency_ms")
FINISHED = ("COMPLETE", "PRUNED", "FAIL")
# study settings (user attrs, nested keys dotted) that do not change a trial's result: a resume may change them
# (score: the objectives already name the first-stage score, and existing_study compares them)
NOT_COMPARED = frozenset({"command", "device", "space_path", "reference_designs", "noise_seeds", "noise_source",
                          "rungs", "rung_references", "score",
                          "distill.cache_dir", "distill.teacher_cache", "distill.cache_gb", "eval.cache_dir",
                          "eval.batch_size"})
RUNS_DIR, DB_FILE = "runs", "blocksearch.db"


@dataclass(frozen=True)
class SearchConfig:
    """Everything ``blocksearch run`` needs (its flags, one per field); ``search.resolve`` fills the
    None defaults and makes paths absolute (Ray trials chdir)."""

    space: str = "unet_blocks"
    teacher: str = "toy"
    trials: int = 16
    study: str | None = None  # default: "<space>-<teacher>"
    storage: str | None = None  # default: sqlite:///<runs_dir>/blocksearch.db
    runs_dir: str | None = None  # default: <cwd>/runs
    address: str | None = None  # None: start a local Ray; "auto" or host:port: connect
    dashboard_host: str = "127.0.0.1"
    dashboard_port: int = 8265
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_concurrent: int | None = None  # default: what the cluster's CPUs/GPUs allow
    steps: int | None = None  # distillation steps (None: DistillConfig's default)
    eval_prompts: int | None = None  # evaluation prompts (None: EvalConfig's default)
    # the settings of a real teacher, named as in `distill` / `evaluate`; None: the default that follows the
    # teacher (the toy's own for the toy teacher, BK-SDM's for SD teachers: search.stage_configs)
    data: str | None = None  # KD data: toy or an imagefolder (required for a real teacher)
    reference: str | None = None  # FID reference images (real teachers)
    captions: str | None = None  # imagefolder whose captions are the prompts (default: reference's, else data's)
    inception_weights: str | None = None  # torch-fidelity's Inception weights (default: found in the caches)
    clip_model: str | None = None  # local CLIP folder for the alignment score (real teachers)
    guidance: float | None = None
    inference_steps: int | None = None  # denoising steps per generated image
    resolution: int | None = None  # px, generation and imagefolder encoding (default: the teacher's own)
    precision: str | None = None  # KD mixed precision
    batch_size: int | None = None  # KD batch
    lr: float | None = None  # KD learning rate
    kd_schedule: str | None = None  # KD lr per run segment: constant | linear | cosine (None: constant)
    kd_warmup: int | None = None  # KD warm-up steps per run segment (None: 0)
    kd_ema: float | None = None  # EMA decay of each student's weights (None: off)
    teacher_cache: str = "auto"  # auto | disk | off
    sampler: str = DEFAULT_SAMPLER  # chosen by `blocksearch bench search` (samplers.py)
    init: str = "designs"  # the first trials: the named designs, or then the one-shot picks (INITS, warm_start.py)
    seed: int = 0
    objectives: tuple[str, ...] = DEFAULT_OBJECTIVES
    score: str = "auto"  # the first stage's quality score: fid, a probe score, or auto (selection.py)
    max_params: float | None = None  # parameter budget (an Optuna constraint)
    min_alignment: float = 0.25  # feasible only with alignment >= this x the teacher's (0: no text rule)
    latency_device: str | None = None  # deployment target of latency/memory: cpu | cuda (default: the trials')
    latency_dtype: str | None = None  # fp32 | fp16 | bf16 (default: fp16 on CUDA, fp32 on CPU)
    latency_repeats: int | None = None  # timed repeats of a latency measurement (None: EvalConfig's, settings.LATENCY_REPEATS)
    noise_seeds: int = 2  # (KD, generation) seeds per reference design: the report's seed noise (1: off)
    noise_source: str = "auto"  # auto: bench fidelity's seed scores where this run reproduces them; measure: train
    rung_references: str = "open"  # open: a rung continues the reference designs the study below left open; all
    rungs: tuple[int, ...] | None = None  # longer KD budgets for the students near the front (None: rungs.default_rungs)
    asha: bool = False
    heartbeat_interval: int = 10  # seconds between heartbeats of this driver's running trials
    heartbeat_grace: int = 60  # seconds without a heartbeat after which a trial's driver counts as dead
    trial_retries: int = 1  # Ray Tune reruns a trial whose worker process died this many times (FailureConfig)
    candidate: str | None = None  # "module:function" doing one trial's work (default: search.CANDIDATE)
    command: str = ""


# -- names and the one default storage ------------------------------------------------------------
def default_runs_dir() -> Path:
    return Path.cwd() / RUNS_DIR


def default_storage(runs_dir: str | Path | None = None) -> str:
    """The storage ``blocksearch run`` keeps its studies in by default: ``<runs_dir>/blocksearch.db``."""
    return f"sqlite:///{Path(runs_dir or default_runs_dir()) / DB_FILE}"


def space_name(space: str) -> str:
    """A space's name: the stem of a ``.yaml`` path, or the name itself."""
    return Path(space).stem if space.endswith((".yaml", ".yml")) else space


def rung_name(study: str, steps: int) -> str:
    """The study of ``study``'s rung at ``steps`` KD steps (rungs.py): ``<study>@<steps>``."""
    return f"{study}@{steps}"


def default_study_name(space: str, teacher: str) -> str:
    """``<space>-<teacher>``: a teacher folder by its name, a hub id with ``--`` for ``/``."""
    teacher_tag = Path(teacher).name if Path(teacher).exists() else teacher.replace("/", "--")
    return f"{space_name(space)}-{teacher_tag}"


# -- storage --------------------------------------------------------------------------------------
def open_storage(url: str, create_folder: bool = False, heartbeat_interval: int | None = None,
                 grace_period: int | None = None):
    """An Optuna storage object for ``url`` (Ray's OptunaSearch needs the object, not the URL);
    ``create_folder``: make the folder of a SQLite file first (the default storage's runs/). A database
    URL gets heartbeats when ``heartbeat_interval`` is given (several drivers on one study). Optuna's
    JournalStorage (a log file) is refused: it records no heartbeats."""
    if url.startswith("journal:") or url.endswith(".log"):
        raise BlocksearchError(
            f"storage {url!r} is an Optuna journal file, which records no heartbeats (so a dead driver's trial "
            f"cannot be told from a running one); allowed: sqlite:////abs/path/study.db on one machine, "
            f"postgresql+psycopg://user:pass@host/db for several")
    if create_folder and url.startswith("sqlite:///"):
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    try:
        if "://" not in url or heartbeat_interval is None:
            return optuna.storages.get_storage(url)
        # SQLite: drivers take turns on the file. A database server: each pooled connection is tested before use
        # (SQLAlchemy's pool_pre_ping), so a server restart between two storage calls costs a reconnect, not the
        # first call after it (Optuna turns pre-ping on for MySQL only; docs/reliability.md)
        engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(url, engine_kwargs=engine, heartbeat_interval=heartbeat_interval,
                                              grace_period=grace_period, heartbeat_stale_trial_callback=RequeueStale())
    except Exception as err:  # sqlalchemy/optuna raise many types for a bad URL
        first = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        if isinstance(err, ModuleNotFoundError) and url.startswith("postgres"):  # blocksearch[postgres]: psycopg 3
            first += "; for PostgreSQL: pip install 'blocksearch[postgres]' and a postgresql+psycopg:// URL"
        raise BlocksearchError(
            f"cannot open storage {url!r} ({first}); allowed: an Optuna storage URL such as "
            f"sqlite:////abs/path/study.db or postgresql+psycopg://user:pass@host/db") from None


def heartbeats(storage) -> bool:
    """Does ``storage`` record heartbeats (several drivers may share its studies)?"""
    interval = getattr(storage, "get_heartbeat_interval", None)
    return interval is not None and interval() is not None


class RequeueStale:
    """Called by Optuna for a trial whose driver stopped beating: say so, and re-queue it once
    (``RetryFailedTrialCallback(max_retry=1)``); the FAILed original is recognised by :func:`is_stale`."""

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        retry = optuna.storages.RetryFailedTrialCallback(max_retry=1)
        again = len(trial.system_attrs.get("retry_history", [])) < 1
        retry(study, trial)
        print(f"stale trial #{trial.number} ({trial.user_attrs.get('genome', '?')}): its driver stopped "
              f"beating; marked FAIL{' and re-queued' if again else ' (already retried once: not re-queued)'}",
              file=sys.stdout, flush=True)


def is_stale(t: optuna.trial.FrozenTrial) -> bool:
    """A trial left by a driver that stopped: FAIL with no error of its own (every FAIL that blocksearch
    writes carries ``error`` or ``skipped``), or marked ``stale`` (studies of earlier versions)."""
    ua = t.user_attrs
    return t.state.name == "FAIL" and (bool(ua.get("stale")) or not (ua.get("error") or ua.get("skipped")))


def open_study(name: str, storage: str | None = None) -> optuna.Study:
    """Load study ``name`` to read it; an unknown study or a missing storage is a BlocksearchError naming
    what exists (looking never creates a storage)."""
    url = storage or default_storage()
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).is_file():
        raise BlocksearchError(f"no study storage at {url[len('sqlite:///'):]}; run `blocksearch run` first "
                               f"or pass --storage with an Optuna storage URL")
    try:
        names = sorted(optuna.study.get_all_study_names(storage=url))
    except Exception as err:  # noqa: BLE001 - any storage failure is the user's URL
        raise BlocksearchError(f"cannot read Optuna storage {url} ({type(err).__name__}: "
                               f"{str(err).splitlines()[0][:100]})") from None
    if name not in names:
        raise BlocksearchError(f"unknown study {name!r} in {url}; studies there: {names or 'none'}")
    return optuna.load_study(study_name=name, storage=url)


# -- the study of a run ---------------------------------------------------------------------------
def existing_study(storage, cfg: SearchConfig) -> optuna.Study | None:
    """The study if it exists, checked against this run's objectives, space and teacher (read only)."""
    if cfg.study not in optuna.study.get_all_study_names(storage=storage):
        return None
    study = optuna.load_study(study_name=cfg.study, storage=storage)
    want = [OBJECTIVES[o] for o in cfg.objectives]
    have = [d.name.lower() for d in study.directions]
    names_have = study.metric_names
    if have != want or (names_have and list(names_have) != list(cfg.objectives)):
        raise BlocksearchError(
            f"study {cfg.study!r} has objectives {names_have or have}, not {list(cfg.objectives)}; "
            f"use the same --objectives or another --study")
    attrs = study.user_attrs
    for key, value in (("space", space_name(cfg.space)), ("teacher", cfg.teacher)):
        if key in attrs and attrs[key] != value:
            raise BlocksearchError(
                f"study {cfg.study!r} was run with {key} {attrs[key]!r}, not {value!r}; use another --study")
    return study


def check_settings(study: optuna.Study, attrs: dict) -> None:
    """Refuse to resume ``study`` with settings (``search.trial_job``'s attrs) that would make its trials
    incomparable: one line listing each difference, old -> new. Keys the study does not have yet (an
    earlier version's study) and ``NOT_COMPARED`` keys are not compared. Reads only."""
    old, new = _flat(study.user_attrs), _flat(json.loads(json.dumps(attrs, default=str)))
    diff = [f"{k} {_short(old[k])} -> {_short(v)}" for k, v in new.items()
            if k in old and k not in NOT_COMPARED and old[k] != v]
    if diff:
        raise BlocksearchError(f"study {study.study_name!r} was run with other settings ({'; '.join(diff)}); its "
                               f"trials would not be comparable: rerun with its settings or pass a new --study")


def _flat(attrs: dict) -> dict:
    out = {}
    for key, value in attrs.items():
        if isinstance(value, dict) and key != "reference_designs":
            out.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            out[key] = value
    return out


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 48 else text[:45] + "..."


def prepare_study(storage, cfg: SearchConfig, bound: ArchSpace, study_attrs: dict, out=None,
                  warm: list = ()) -> optuna.Study:
    """Create or load the study; mark stale RUNNING trials FAIL (and re-queue them); enqueue the
    reference designs once, then ``warm`` ((label, arch): ``--init one-shot``'s picks) once. Progress lines go to
    ``out`` (default: stdout)."""
    study = optuna.create_study(storage=storage, study_name=cfg.study, load_if_exists=True,
                                directions=[OBJECTIVES[o] for o in cfg.objectives])
    if not study.metric_names:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(list(cfg.objectives))
    for key, value in study_attrs.items():
        if key not in study.user_attrs or key in ("command",):
            study.set_user_attr(key, value)
    _fail_stale_trials(study, storage, out, cfg.heartbeat_grace)
    for name, genome in bound.named_designs().items():
        study.enqueue_trial(bound.to_params(genome), user_attrs={"design": name}, skip_if_exists=True)
    for label, arch in warm:
        study.enqueue_trial(bound.to_params(arch), user_attrs={"warm": label}, skip_if_exists=True)
    return study


def _fail_stale_trials(study: optuna.Study, storage, out, grace_period: float) -> None:
    """Trials whose driver died: with heartbeats, those silent for the grace period (FAIL, re-queued once
    by :class:`RequeueStale`) and those no driver ever claimed (:func:`fail_unclaimed_trials`); without
    (a storage that cannot beat), every RUNNING trial at start -- one driver per study at a time."""
    if heartbeats(storage):
        optuna.storages.fail_stale_trials(study)
        fail_unclaimed_trials(study, storage, grace_period, out)
        return
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        # Optuna has no public id of a FrozenTrial; the storage API takes FrozenTrial._trial_id
        storage.set_trial_user_attr(t._trial_id, "stale", True)
        storage.set_trial_user_attr(t._trial_id, "error", "stale: its driver stopped before it finished "
                                                          "(re-queued when the search resumed)")
        _fail_and_requeue(study, storage, t)
        print(f"stale trial #{t.number} ({t.user_attrs.get('genome', '?')}) marked FAIL and re-queued", file=out)


def fail_unclaimed_trials(study: optuna.Study, storage, grace_period: float, out=None) -> list[int]:
    """RUNNING trials that no driver claimed within ``grace_period`` s of their start -- a driver killed
    between Optuna's ``ask`` and its first heartbeat leaves one: no heartbeat, no ``driver`` attr, so
    ``fail_stale_trials`` never sees it, and counting it as running would make every driver wait for it
    forever. FAIL (stale: not counted toward --trials) and re-queued where it had parameters."""
    now, failed = datetime.now(), []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if "driver" in t.user_attrs or t.datetime_start is None:
            continue
        if (now - t.datetime_start).total_seconds() < grace_period:
            continue
        _fail_and_requeue(study, storage, t)
        failed.append(t.number)
        print(f"stale trial #{t.number}: no driver claimed it within {grace_period:g} s of its start; "
              f"marked FAIL", file=out or sys.stdout, flush=True)
    return failed


def _fail_and_requeue(study: optuna.Study, storage, t: optuna.trial.FrozenTrial) -> None:
    """FAIL ``t`` (no error of its own: :func:`is_stale`) and enqueue its parameters again once."""
    storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
    params = t.params or t.system_attrs.get("fixed_params")
    waiting = [w.params or w.system_attrs.get("fixed_params") for w in study.get_trials(
        deepcopy=False, states=(optuna.trial.TrialState.WAITING,))]
    if params and params not in waiting:
        study.enqueue_trial(params, user_attrs={k: v for k, v in t.user_attrs.items() if k == "design"})


def counts(study: optuna.Study) -> dict[str, int]:
    """Trials that count toward --trials (evaluated to the end: not early-stopped, not repeats of a Genome,
    not stale), by state;
    ``running``: RUNNING trials of every driver; ``stale``: trials left by a driver that stopped."""
    out = {"done": 0, "running": 0, "stale": 0, "complete": 0, "pruned": 0, "failed": 0, "cached": 0}
    for t in study.get_trials(deepcopy=False):
        attrs = t.user_attrs
        if t.state.name == "RUNNING":
            out["running"] += 1
        elif attrs.get("skipped"):  # repeats of a Genome
            out["cached"] += "cached_from" in attrs
        elif is_stale(t):
            out["stale"] += 1
        elif t.state.name in FINISHED:  # an early-stopped (PRUNED) candidate does not count toward --trials
            out["done"] += t.state.name != "PRUNED"
            out[{"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed"}[t.state.name]] += 1
    return out
