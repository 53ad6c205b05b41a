"""``blocksearch train``: finish a chosen student by a long KD run on Ray Train (BK-SDM's recipe at full length,
arXiv 2305.15798: the same loss as ``distill``, many more steps, a larger batch).

The driver checks every input before Ray starts (the student -- a design, a saved student folder, or a study's
trial --, the teacher, the batch split, the tracking library, the output folder), then runs
``train_loop.train_worker`` on N workers through ``ray.train.torch.TorchTrainer`` (DDP: gloo on CPU, nccl on
GPU), or in this process with ``--workers 0``. Checkpoints go through Ray Train into ``DIR/ray/train``; rerunning
the same command after a kill finds them there (Ray Train's checkpoint manager snapshot) and continues from the
last one. Worker 0 evaluates, logs, draws the learning curve and exports the final pipeline into ``DIR``.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import TextIO

import ray
import ray.train
from ray.train.torch import TorchConfig, TorchTrainer

from blocksearch.recipe.distill import DistillConfig, distill_defaults
from blocksearch.errors import BlocksearchError
from blocksearch.recipe.evaluate import EvalConfig, eval_defaults, inception_weights
from blocksearch.report.export import choose
from blocksearch.recipe.preflight import check_real_inputs
from blocksearch.report.compute import load_report
from blocksearch.search.run_settings import absolute
from blocksearch.teachers import resolve_teacher
from blocksearch.train.tracking import require
from blocksearch.train.loop import RUN_NAME, TrainJob, make_student, ray_worker, run_local
from blocksearch.train.state import TrainConfig, settings_of, split

# The defaults that follow the teacher: the toy's 1920 steps (bench fidelity's longest budget, 16 x the search's
# 120); SD-family teachers: BK-SDM's pretraining (50K iterations, batch 256, AdamW lr 5e-5).
TOY_TRAIN = {"steps": 1920}
SD_TRAIN = {"steps": 50_000}
SD_BATCH = 256
# A worker that dies (SIGKILL: an OOM kill, a pre-empted node) or whose node is lost: Ray Train restarts the whole
# worker group this many times (FailureConfig), each restart going on from the last registered checkpoint (the loop
# asks ``ray.train.get_checkpoint()``); past it the run stops with one line, and rerunning the command resumes it.
WORKER_RETRIES = 1
# The study's KD settings a --study --trial student keeps unless a flag overrides them.
FROM_STUDY = ("data", "resolution", "lambda_task", "lambda_out", "lambda_feat", "feat_norm", "max_grad_norm",
              "lr", "batch_size", "precision", "seed")


def prepare_job(teacher: str | None, student: tuple[str, str], out: str, *, space: str = "unet_blocks",
                storage: str | None = None, distill: dict | None = None, train: dict | None = None,
                evaluation: dict | None = None, command: str = "") -> TrainJob:
    """Resolve and check everything a run needs, before Ray starts: ``student`` is ("design", NAME),
    ("init", DIR) or ("trial", "STUDY:N"); ``distill`` / ``train`` / ``evaluation``: the flags given (None
    where not given). The teacher cache is off: the teacher runs live in each worker, under no_grad."""
    given = _absolute({k: v for k, v in (distill or {}).items() if v is not None})  # workers run elsewhere
    if student[0] == "init":
        student = ("init", str(Path(student[1]).resolve()))
    base, eval_base, source = {}, {}, {"kind": student[0], "value": student[1]}
    if student[0] == "trial":
        base, eval_base, teacher, init = _from_study(student[1], storage, teacher)
        source |= {"student_dir": init}
        student = ("init", init)
    teacher = teacher or "toy"
    teacher = str(Path(teacher).resolve()) if Path(teacher).exists() else teacher  # workers run elsewhere
    ref = resolve_teacher(teacher)  # --teacher (or the study's), read once: the job carries this value
    toy = ref.is_toy
    steps = (train or {}).get("steps") or (TOY_TRAIN if toy else SD_TRAIN)["steps"]
    defaults = base or (distill_defaults(toy) | ({} if toy else {"batch_size": SD_BATCH}))
    dcfg = DistillConfig(**(defaults | given | {"steps": steps, "teacher_cache": "off"}))
    tcfg = TrainConfig(**{k: v for k, v in (train or {}).items() if v is not None} | {"steps": steps})
    split(dcfg.batch_size, tcfg.workers, tcfg.micro_batch_size)
    if dcfg.precision == "fp16" and not tcfg.gpus_per_worker:
        raise BlocksearchError("--precision fp16 needs GPUs (--gpus-per-worker > 0); on CPU use bf16 or fp32")
    require(tcfg.report_to)  # the tracking library is there, or one line naming the package
    eval_given = eval_defaults(toy) | eval_base | _absolute({k: v for k, v in (evaluation or {}).items()
                                                             if v is not None})
    if tcfg.eval_every is None and not toy and not eval_given.get("reference"):
        tcfg = dataclasses.replace(tcfg, eval_every=0)  # the default where no FID reference set is known
        print("evaluation during training off: a real teacher's student needs --reference (FID reference images)")
    eval_cfg = None
    if tcfg.every_eval:
        eval_cfg = EvalConfig(**eval_given)
        if not toy and not eval_cfg.reference:
            raise BlocksearchError("evaluating a real teacher's student needs --reference (a folder of real images "
                                   "for FID); allowed: --reference DIR, or --eval-every 0")
        if not toy:
            check_real_inputs(reference=eval_cfg.reference, inception_weights=eval_cfg.inception_weights,
                              clip_model=eval_cfg.clip_model, fid_images=eval_cfg.prompts)
            inception_weights(eval_cfg)  # found, or one line saying where to put it (never downloaded)
    check_real_inputs(data=dcfg.data)
    job = TrainJob(ref, student, space, dcfg.to_dict(), tcfg.to_dict(),
                   eval_cfg.to_dict() if eval_cfg else None, str(Path(out).resolve()), command, source)
    make_student(job, ref.load("cpu"))  # the teacher loads and the student fits it, or one line
    check_out_folder(job)
    return job


def _absolute(settings: dict) -> dict:
    """The path settings made absolute (``toy`` stays the toy world)."""
    paths = ("data", "cache_dir", "reference", "captions", "inception_weights", "clip_model")
    return {k: absolute(v) if k in paths and v != "toy" else v for k, v in settings.items()}


def _from_study(spec: str, storage: str | None, teacher: str | None) -> tuple[dict, dict, str, str]:
    """(KD settings, evaluation settings, teacher, student folder) of a study's completed trial."""
    study, _, number = spec.rpartition(":")
    report = load_report(study, storage)
    trial = choose(report, trial=int(number))[0]
    folder = Path(trial.student_dir or "")
    if trial.from_study:
        raise BlocksearchError(f"trial {number} of study {study} ({trial.design}) took its scores from bench "
                               f"fidelity's study and trained no student here; allowed: a searched trial, or "
                               f"--design {trial.design} (cut out of the teacher)")
    if not (folder / "config.json").is_file():
        raise BlocksearchError(f"trial {number} of study {study}: its student {folder} is gone (was runs/ moved "
                               f"or cleaned?)")
    kd = report.attrs.get("distill") or {}
    evaluation = {k: v for k, v in (report.attrs.get("eval") or {}).items() if k in EvalConfig.__dataclass_fields__}
    return ({k: kd[k] for k in FROM_STUDY if k in kd}, evaluation, teacher or report.attrs.get("teacher", "toy"),
            str(folder))


def check_out_folder(job: TrainJob) -> None:
    """``-o DIR``: new, empty, or a run of the same trajectory (then this run continues it)."""
    out = Path(job.out)
    if out.exists() and not out.is_dir():
        raise BlocksearchError(f"-o {out} is a file; pass a folder")
    info = out / "train.json"
    if out.exists() and any(out.iterdir()) and not info.is_file():
        raise BlocksearchError(f"-o {out} is not empty and holds no blocksearch train run; choose another folder")
    mine = json.loads(json.dumps(settings_of(DistillConfig.from_dict(job.distill), TrainConfig.from_dict(job.train))))
    if info.is_file():
        theirs = json.loads(info.read_text()).get("trajectory", {})
        diff = [(part, k) for part in mine for k in mine[part] if mine[part][k] != theirs.get(part, {}).get(k)]
        if diff or json.loads(info.read_text()).get("student") != job.source:
            what = f"{diff[0][1]} ({theirs.get(diff[0][0], {}).get(diff[0][1])!r})" if diff else "student"
            raise BlocksearchError(f"-o {out} holds a run of other settings (its {what}); rerun with its "
                                   f"settings to continue it, or choose another folder")


def run_train(job: TrainJob, address: str | None = None, dashboard_port: int | None = None,
              out: TextIO | None = None) -> dict:
    """Train ``job`` on Ray Train (or in this process with 0 workers); the run's summary (DIR/train.json)."""
    out = out or sys.stdout
    folder, tcfg = Path(job.out), TrainConfig.from_dict(job.train)
    folder.mkdir(parents=True, exist_ok=True)
    info = folder / "train.json"
    settings = settings_of(DistillConfig.from_dict(job.distill), tcfg)
    if not info.is_file():
        info.write_text(json.dumps({"student": job.source, "trajectory": settings, "job": job.record()},
                                   indent=1, default=str) + "\n")
    print("teacher cache off: the teacher runs live in each worker, under no_grad", file=out)
    if tcfg.workers == 0:
        run_local(job)
    else:
        fit_on_ray(job, tcfg, address, dashboard_port)
    return json.loads(info.read_text())


def fit_on_ray(job: TrainJob, tcfg: TrainConfig, address: str | None, dashboard_port: int | None) -> None:
    """``TorchTrainer`` over ``tcfg.workers`` workers; checkpoints in DIR/ray/train (kept: the last few). Runs on
    the Ray this process has already started or joined, else on ``address``, else on a new local Ray."""
    owned = not ray.is_initialized()
    try:
        if owned:
            ray.init(address=address or "local", logging_level="WARNING",
                     **({} if address else {"include_dashboard": True, "dashboard_port": dashboard_port}))
    except (ConnectionError, RuntimeError, ValueError) as err:
        why = str(err).strip().splitlines()[0][:160]
        raise BlocksearchError(f"cannot {'connect to Ray at ' + repr(address) if address else 'start a local Ray'} "
                               f"({why}); allowed: --address auto or host:port of a running 'ray start --head', "
                               f"or a free --dashboard-port") from None
    try:
        trainer = TorchTrainer(
            ray_worker, train_loop_config={"job": job},  # pickled: the TeacherRef's Family travels by name
            torch_config=TorchConfig(backend="nccl" if tcfg.gpus_per_worker else "gloo"),
            scaling_config=ray.train.ScalingConfig(num_workers=tcfg.workers, use_gpu=bool(tcfg.gpus_per_worker),
                                                   resources_per_worker=worker_resources(tcfg)),
            run_config=ray.train.RunConfig(
                name=RUN_NAME, storage_path=str(Path(job.out) / "ray"),
                checkpoint_config=ray.train.CheckpointConfig(num_to_keep=tcfg.keep_checkpoints),
                failure_config=ray.train.FailureConfig(max_failures=WORKER_RETRIES),
                logging_config=ray.train.LoggingConfig(log_level="WARNING")))
        trainer.fit()
    except ray.train.WorkerGroupError as err:
        raise BlocksearchError(_worker_error(err)) from None
    finally:
        if owned:
            ray.shutdown()


def worker_resources(tcfg: TrainConfig) -> dict:
    """Each worker's Ray resources; refused when the cluster has fewer than all the workers need together."""
    wanted = {"CPU": tcfg.cpus_per_worker} | ({"GPU": tcfg.gpus_per_worker} if tcfg.gpus_per_worker else {})
    have = ray.cluster_resources()
    short = [k for k, v in wanted.items() if have.get(k, 0) < v * tcfg.workers]
    if short:
        raise BlocksearchError(f"--workers {tcfg.workers} x {wanted[short[0]]:g} {short[0]} per worker: the Ray "
                               f"cluster has {have.get(short[0], 0):g} {short[0]}; allowed: fewer workers or "
                               f"resources per worker, or a larger cluster (--address)")
    return wanted


def _worker_error(err) -> str:
    """The first worker's error as one line: a BlocksearchError's own message, else the exception's last line."""
    for rank in sorted(err.worker_failures):
        failure = err.worker_failures[rank]
        cause = getattr(failure, "cause", None) or failure
        if isinstance(cause, BlocksearchError):
            return str(cause)
        lines = [x for x in str(failure).strip().splitlines() if x.strip()]
        marker = [x for x in lines if "BlocksearchError: " in x]
        if marker:
            return marker[-1].split("BlocksearchError: ", 1)[1]
        return f"worker {rank} failed: {lines[-1] if lines else type(failure).__name__}"
    return str(err).splitlines()[0]
