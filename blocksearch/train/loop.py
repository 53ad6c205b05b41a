"""The loop of ``blocksearch train`` on one worker: BK-SDM's KD loss (``distill.Distiller.losses``; the teacher
runs live under no_grad) on this worker's micro-batches of each global batch, gradient accumulation, the gradients
averaged across workers (one all-reduce per bucket after the last micro-batch: data-parallel SGD as DDP does it),
AdamW with the step's learning rate, EMA, and a checkpoint every K steps through ``ray.train.report``. Worker 0 also
evaluates, logs, tracks, draws the learning curve and exports the final pipeline. A Session hides where the loop
runs: a Ray Train worker, or this process.

Every family trains alike: the student and teacher are the family's (``build_student`` / ``load_student``), each
call goes through ``family.forward`` on the denoiser itself (no DDP wrapper, whose class and missing ``config``
the families' calls would see), and the final student drops into the teacher's stock pipeline class.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from huggingface_hub import ModelCardData

from blocksearch.adapt.blockmap import block_map, write_block_map
from blocksearch.cache import record_folder
from blocksearch.console import quiet
from blocksearch.recipe.distill import DistillConfig, Distiller, batch_stream, resolve_design
from blocksearch.errors import BlocksearchError
from blocksearch.recipe.evaluate import EvalConfig, score_images
from blocksearch.report.model_card import base_model, card_tags, license_lines, teacher_license, type_name
from blocksearch.train.learning_curve import EVAL_LOG, TRAIN_LOG, compute_curve, truncate_log, write_curve
from blocksearch.teachers import Teacher, TeacherRef, with_denoiser
from blocksearch.train.tracking import open_tracker
from blocksearch.recipe.schedules import Ema, lr_at
from blocksearch.recipe.student_files import check_student
from blocksearch.train.state import (TrainConfig, load_state, micro_batch, save_state, settings_of,
                                     split)

RUN_NAME = "train"  # DIR/ray/train: Ray Train's storage of the run (checkpoints, the manager's snapshot)
TERMS = ("loss", "loss_task", "loss_kd_out", "loss_kd_feat")
BUCKET = 2**24  # gradient elements per all-reduce (64 MiB of fp32): few calls, bounded extra memory


@dataclass(frozen=True)
class TrainJob:
    """What every worker needs, picklable: the teacher ``prepare_job`` resolved (its ``Family`` pickles by name), the
    student (("design", NAME) or ("init", DIR)), the KD recipe (a DistillConfig's dict), the loop (a TrainConfig's),
    the evaluation (an EvalConfig's, or None)."""

    teacher: TeacherRef
    student: tuple[str, str]
    space: str
    distill: dict
    train: dict
    eval: dict | None
    out: str
    command: str = ""
    source: dict = dataclasses.field(default_factory=dict)  # what the student came from, as given

    def record(self) -> dict:
        """The job as train.json records it: plain data, the teacher by its ``--teacher`` spec."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)} | {"teacher": self.teacher.spec}


def make_student(job: TrainJob, teacher: Teacher):
    """A design cut out of the teacher (surgery), or a saved student folder (``load_student``): the family's."""
    family = teacher.family
    if not family.trains:
        raise BlocksearchError(f"blocksearch train: the {family.name} family's students do not train here (its "
                               f"`trains` hook is off); teacher {job.teacher.spec} is a {family.denoiser_name}: distil "
                               f"its students with blocksearch distill")
    if job.student[0] == "init" and family.load_student is None:
        raise BlocksearchError(f"--init: the {family.name} family reads no saved student back; allowed: --design "
                               f"or --trial")
    kind, value = job.student
    if kind == "design":
        return family.build_student(teacher.denoiser, resolve_design(teacher.denoiser, value, job.space)[0])
    check_student(value, then="it is not trained on; pass another student, or --design")  # its recorded hashes
    return family.load_student(value, teacher.denoiser)


# -- where the loop runs ----------------------------------------------------------------------------------
class RaySession:
    """A Ray Train worker: rank, world size and device from Ray; checkpoints through ``ray.train.report``."""

    def __init__(self):
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.device = ray.train.torch.get_device()

    @contextlib.contextmanager
    def latest(self):
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            yield None
            return
        with checkpoint.as_directory() as folder:
            yield Path(folder)

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model on this worker's device (``train_step`` averages the gradients across workers)."""
        return ray.train.torch.prepare_model(model, parallel_strategy=None)

    def report(self, metrics: dict, step: int, folder: Path | None) -> None:
        """Every worker calls it (a barrier); worker 0 brings the checkpoint folder."""
        checkpoint = ray.train.Checkpoint.from_directory(str(folder)) if folder is not None else None
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=f"step-{step:07d}")


class LocalSession:
    """This process, no Ray (``--workers 0``): checkpoints in DIR/checkpoints/step-N, the last ``keep`` kept."""

    rank, world = 0, 1

    def __init__(self, out: Path, device: str, keep: int):
        self.root, self.device, self.keep = out / "checkpoints", torch.device(device), keep

    def _done(self) -> list[Path]:
        return sorted(p for p in self.root.glob("step-*") if (p / "checkpoint.json").is_file())

    @contextlib.contextmanager
    def latest(self):
        done = self._done()
        yield done[-1] if done else None

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        return model

    def report(self, metrics: dict, step: int, folder: Path | None) -> None:
        target = self.root / f"step-{step:07d}"
        shutil.rmtree(target, ignore_errors=True)
        self.root.mkdir(parents=True, exist_ok=True)
        shutil.copytree(folder, target.with_name(f".{target.name}.tmp"), dirs_exist_ok=True)
        target.with_name(f".{target.name}.tmp").rename(target)
        for old in self._done()[:-self.keep]:
            shutil.rmtree(old)


def ray_worker(config: dict) -> None:
    """The function each Ray Train worker runs."""
    train_worker(config["job"], RaySession())


def run_local(job: TrainJob) -> None:
    tcfg = TrainConfig.from_dict(job.train)
    train_worker(job, LocalSession(Path(job.out), "cuda" if tcfg.gpus_per_worker else "cpu", tcfg.keep_checkpoints))


# -- the loop ---------------------------------------------------------------------------------------------
def train_worker(job: TrainJob, session) -> None:
    """Train the student from the last checkpoint (if any) to ``steps``; worker 0 writes DIR's outputs."""
    tcfg, dcfg = TrainConfig.from_dict(job.train), DistillConfig.from_dict(job.distill)
    torch.set_num_threads(tcfg.cpus_per_worker)
    torch.manual_seed(dcfg.seed)
    lead, out = session.rank == 0, Path(job.out)
    teacher = job.teacher.load(session.device)
    student = make_student(job, teacher)
    ema = Ema(student.denoiser, tcfg.ema) if tcfg.ema and lead else None  # before the KD hooks: a clean copy
    recipe = Distiller(teacher, student, dcfg, session.device)
    micro, accum = split(dcfg.batch_size, session.world, tcfg.micro_batch_size)
    settings, genome = settings_of(dcfg, tcfg), student.genome.id
    start = 0
    with session.latest() as folder:
        if folder is not None:
            start = load_state(folder, recipe.unet, recipe.opt, recipe.scaler, ema, genome, teacher.denoiser,
                               settings)
    raw = recipe.unet = session.wrap(recipe.unet)  # the student denoiser, on this worker's device
    stream = batch_stream(teacher, dcfg)
    log = RunLog(job, start, session.world, micro, accum) if lead else None
    eval_cfg = EvalConfig.from_dict(job.eval) if job.eval else None
    t0 = time.perf_counter()
    for i in range(start, tcfg.steps):
        lr = lr_at(i, dcfg.lr, tcfg.warmup, tcfg.steps, tcfg.schedule)
        for group in recipe.opt.param_groups:
            group["lr"] = lr
        record = train_step(recipe, stream[i], session, micro, accum, i + 1) | {"lr": lr}
        if ema is not None:
            ema.update(raw)
        step, scores = i + 1, {}
        if lead:
            log.step(record)
            if eval_cfg is not None and (step % tcfg.every_eval == 0 or step == tcfg.steps):
                scores = log.evaluate(step, teacher, ema.model if ema else raw, eval_cfg, session.device)
                raw.train()
                recipe.hooks.pop()  # the features of the generation's forwards
        if step % tcfg.every_checkpoint == 0 or step == tcfg.steps:
            with tempfile.TemporaryDirectory() as tmp:
                if lead:
                    save_state(Path(tmp), raw, recipe.opt, recipe.scaler, ema, step, genome, teacher.denoiser,
                               settings)
                    log.progress(step, record, scores, (step - start) / (time.perf_counter() - t0), True)
                session.report(record | scores, step, Path(tmp) if lead else None)
        elif lead and scores:
            log.progress(step, record, scores, (step - start) / (time.perf_counter() - t0), False)
    recipe.close()
    if lead:
        log.finish(teacher, ema.model if ema else raw, genome, time.perf_counter() - t0)


def train_step(recipe: Distiller, batch, session, micro: int, accum: int, step: int) -> dict:
    """One optimizer step on the global batch: this worker's ``accum`` micro-batches, then the gradients averaged
    over every worker (``average_gradients``), the step's losses too."""
    model = recipe.unet
    sums = torch.zeros(len(TERMS), device=recipe.device)
    for a in range(accum):
        part = micro_batch(batch, session.rank, session.world, a, micro).to(recipe.device)
        t_out, t_feats = recipe.teacher_targets(part)
        terms = recipe.losses(part, t_out, t_feats)
        recipe.scaler.scale(terms["loss"] / accum).backward()
        sums += torch.stack([terms[k].detach().float() for k in TERMS]) / accum
    if session.world > 1:
        average_gradients(model, session.world)
        dist.all_reduce(sums)
        sums /= session.world
    record = {"step": step} | {k: float(v) for k, v in zip(TERMS, sums)}
    if not all(math.isfinite(v) for v in record.values()):
        raise BlocksearchError(f"non-finite loss at step {step} (" + ", ".join(
            f"{k}={record[k]:.4g}" for k in TERMS) + "); lower --lr or use --precision fp32; the last checkpoint "
            "is kept")
    recipe.scaler.unscale_(recipe.opt)
    torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.config.max_grad_norm)
    recipe.scaler.step(recipe.opt)
    recipe.scaler.update()
    recipe.opt.zero_grad(set_to_none=True)
    return record


def average_gradients(model: torch.nn.Module, world: int) -> None:
    """Data-parallel SGD's step (as DDP's reducer does it): every gradient becomes its mean over the ``world``
    workers, in buckets of ``BUCKET`` elements flattened into one all-reduce each. Every worker holds the same
    model, so the buckets line up."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    while grads:
        bucket, size = [], 0
        while grads and (not bucket or size + grads[0].numel() <= BUCKET):
            size += grads[0].numel()
            bucket.append(grads.pop(0))
        flat = torch.cat([g.flatten() for g in bucket])
        dist.all_reduce(flat)
        flat /= world
        for g, part in zip(bucket, flat.split([g.numel() for g in bucket])):
            g.copy_(part.view_as(g))


class RunLog:
    """Worker 0's outputs: DIR/train_log.jsonl and evals.jsonl (cut back to the checkpoint on resume), the
    tracker, progress lines, the learning curve and, at the end, the pipeline and train.json."""

    def __init__(self, job: TrainJob, start: int, world: int, micro: int, accum: int):
        self.job, self.out, self.start = job, Path(job.out), start
        self.out.mkdir(parents=True, exist_ok=True)
        for name in (TRAIN_LOG, EVAL_LOG):
            truncate_log(self.out / name, start)
        self.split = {"workers": world, "micro_batch_size": micro, "accumulation": accum}
        params = {"distill": job.distill, "train": job.train, "student": job.source, "split": self.split}
        self.tracker = open_tracker(TrainConfig.from_dict(job.train).report_to, self.out, start, params,
                                    self.out.name)
        self.steps = TrainConfig.from_dict(job.train).steps
        say(f"training {job.source.get('value')} from step {start} to {self.steps}: global batch "
            f"{job.distill['batch_size']} = {world} worker(s) x {micro} x {accum} accumulation step(s)")

    def step(self, record: dict) -> None:
        with (self.out / TRAIN_LOG).open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tracker is not None:
            self.tracker.log(record["step"], {f"train/{k}": v for k, v in record.items() if k != "step"})

    def evaluate(self, step: int, teacher: Teacher, unet, config: EvalConfig, device) -> dict:
        t0 = time.perf_counter()
        s = score_images(teacher, unet, config, device, progress=False)
        scores = {"fid": s.distance.fid, "kid": s.distance.kid, "alignment": s.alignment}
        with (self.out / EVAL_LOG).open("a") as f:
            f.write(json.dumps({"step": step, **scores, "eval_s": round(time.perf_counter() - t0, 2)}) + "\n")
        if self.tracker is not None:
            self.tracker.log(step, {f"eval/{k}": v for k, v in scores.items() if v is not None})
        write_curve(compute_curve(self.out), self.out)
        return scores

    def progress(self, step: int, record: dict, scores: dict, rate: float, checkpoint: bool) -> None:
        shown = "".join(f", {k} {v:.4g}" for k, v in scores.items() if v is not None)
        say(f"step {step}/{self.steps}: loss {record['loss']:.4f} (task {record['loss_task']:.4f}, out "
            f"{record['loss_kd_out']:.4f}, feat {record['loss_kd_feat']:.4f}), lr {record['lr']:.3g}{shown}; "
            f"{rate:.2f} steps/s{'; checkpoint' if checkpoint else ''}")

    def finish(self, teacher: Teacher, unet, genome: str, wall_s: float) -> None:
        """The final student as a pipeline folder in DIR, the learning curve, train.json and a short card."""
        pipe = with_denoiser(teacher.pipeline, unet.eval(), teacher.family)  # the teacher's stock pipeline class
        pipe.save_pretrained(self.out, safe_serialization=True)
        record_folder(self.out / teacher.family.subfolder)  # its weights' hashes: readers check them (student_files)
        write_block_map(self.out, block_map(teacher.family, teacher.denoiser, teacher.family.arch_from_id(genome),
                                            self.job.teacher.spec, self.job.space))
        curve = compute_curve(self.out)
        write_curve(curve, self.out)
        weights = "EMA" if self.job.train.get("ema") else "final"
        info = json.loads((self.out / "train.json").read_text())
        info |= {"genome": genome, "steps": self.steps, "exported_weights": weights, "split": self.split,
                 "final": curve.rows[-1] if curve.rows else None, "wall_s_last_session": round(wall_s, 1),
                 "resumed_from": self.start or None}
        (self.out / "train.json").write_text(json.dumps(info, indent=1, default=str) + "\n")
        (self.out / "README.md").write_text(model_card(self.job, teacher.family, genome, weights, info["final"],
                                                       teacher.family.call_kwargs(teacher.pipeline)),
                                            encoding="utf-8")
        if self.tracker is not None:
            self.tracker.close()


def say(line: str) -> None:
    """One progress line on stdout (not ``print``: Ray Train's workers route print through a logger too); none
    with ``-q`` (console.quiet)."""
    if quiet():
        return
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def model_card(job: TrainJob, family, genome: str, weights: str, final: dict | None, call_kwargs: dict) -> str:
    """A short Hugging Face model card for the trained pipeline: the teacher's ``base_model`` and licence (as the
    export's card reads them: report/model_card.py), the family's words, tags and stock pipeline (called with
    ``call_kwargs``, the family's ``call_kwargs``)."""
    final = final or {}
    scores = ", ".join(f"{k} {final[k]:.4g}" for k in ("loss", "fid", "alignment") if final.get(k) is not None)
    spec, lic = job.teacher.spec, teacher_license(job.teacher.spec)
    base, base_note = base_model(spec)
    data = ModelCardData(base_model=base, license=lic.id, license_name=lic.name, license_link=lic.link,
                         library_name="diffusers", pipeline_tag="text-to-image", tags=card_tags(family))
    what = family.card_summary.format(denoiser=family.denoiser_name, model_class=type_name(family))
    body = [f"# `{genome}`, trained by `blocksearch train`", "",
            f"{what}, distilled from teacher `{spec}` with BK-SDM's feature KD (arXiv 2305.15798) for "
            f"{job.train['steps']} steps at global batch {job.distill['batch_size']}, lr {job.distill['lr']} "
            f"({job.train['schedule']}, warm-up {job.train['warmup']}). `{family.subfolder}/` holds the {weights} "
            f"weights{' (EMA decay ' + str(job.train['ema']) + ')' if job.train.get('ema') else ''}. At the last "
            f"step: {scores or 'not evaluated'}. The other components are the teacher's. Base model: {base_note}.", "",
            "```python", f"from diffusers import {family.pipeline_class}",
            f'pipe = {family.pipeline_class}.from_pretrained("{job.out}")',
            f'image = pipe("a prompt"{"".join(f", {k}={v!r}" for k, v in call_kwargs.items())}).images[0]', "```", "",
            *license_lines(lic),
            f"Made by: `{job.command}`; the learning curve is curve.html / curve.png / curve.csv.", ""]
    return f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body)
