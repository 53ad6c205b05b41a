"""One trial of the search, run inside a Ray worker: surgery -> distillation -> save -> evaluation.

The same stage functions as ``blocksearch distill`` / ``evaluate`` (docs/design.md: a trial is never a
special case); this module only adds timings and scores the students of the reference designs at more
generation seeds (the report's seed noise, noise.py). Ray Tune reporting and failure capture are the
trainable's (ray_tune.py). Paths are absolute (Ray trials chdir into their own folder).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import time
from dataclasses import dataclass, field
from importlib import import_module
from pathlib import Path
from typing import Callable


from blocksearch.adapt.blockmap import block_map, write_block_map
from blocksearch.cache import atomic_dir, record_folder, work_slot
from blocksearch.recipe.distill import DistillConfig, checkpoint_info, distill
from blocksearch.errors import BlocksearchError
from blocksearch.recipe.evaluate import EvalConfig, evaluate, score_images
from blocksearch.families.base import family_of_arch
from blocksearch.recipe.probe import Probe, ProbeConfig, teacher_probe
from blocksearch.search.reference_noise import reproduced
from blocksearch.settings import LOSSES_FILE, PROBE_KEYS
from blocksearch.teachers import Teacher, TeacherRef

KD_METRIC = "kd_out_loss"  # ASHA's metric: output KD is comparable between students of any depth
CHECKPOINT = "kd-checkpoint"  # <students>/<genome>/kd-checkpoint[-seed<k>]: a student's KD checkpoint (rungs.py)


@dataclass(frozen=True)
class TrialJob:
    """What a Ray trial needs, picklable: the teacher the driver resolved (its ``Family`` pickles by name), the stage
    configs and where to write."""

    teacher: TeacherRef
    device: str
    distill: dict
    eval: dict
    students_dir: str
    cpus: int
    report_every: int
    noise_seeds: int = 1  # generation seeds at which a reference design's student is scored (run --noise-seeds)
    design: str | None = None  # this trial's reference design (set per trial by ``trainable``)
    checkpoint: bool = False  # keep the students' KD checkpoints: a longer rung may continue them (rungs.py)
    resume_dir: str | None = None  # a rung's trial: the students folder of the study below, whose checkpoints it continues
    cache_steps: int | None = None  # the teacher cache covers this many steps (the longest rung): one file for all
    score: str = "fid"  # the quality objective: fid, or a held-out probe score (probe.py; selection.py chose it)
    # bench fidelity's seed scores of the reference designs, {budget: {genome: rows}} (reference_noise.py): a
    # reference design whose own scores they reproduce takes its other seeds from them instead of training them
    reference_seeds: dict = field(default_factory=dict)
    # a KD checkpoint of this trial's own student to go on from, and delete once used: the one the check of
    # study_reuse.reuse trained, where this run did not reproduce bench fidelity's study (set per trial)
    head_start: str | None = None

    @property
    def family(self) -> str:
        """The teacher's (and space's) denoiser family name (families/base.py): how an architecture id is read."""
        return self.teacher.family.name


@dataclass
class Outcome:
    """A finished candidate: its Metrics.to_dict(), timings and the saved student's folder."""

    metrics: dict
    timings: dict
    student_dir: str
    extra: dict = field(default_factory=dict)
    seed_scores: list = field(default_factory=list)  # reference designs: the scores at each generation seed


_TEACHERS: dict = {}  # one loaded teacher per worker process (actors are reused between trials)


def build_student(teacher_denoiser, arch):
    """Surgery by the architecture's family (families/base.py): a U-Net ``Genome`` or a transformer's
    ``DitGenome``. ``.unet`` of teachers and students below is their denoiser, of either family."""
    return family_of_arch(arch).build_student(teacher_denoiser, arch)


def cached_teacher(ref: TeacherRef, device: str) -> Teacher:
    """``ref.load(device)`` once per worker process."""
    if (ref.spec, device) not in _TEACHERS:
        _TEACHERS[(ref.spec, device)] = ref.load(device)
    return _TEACHERS[(ref.spec, device)]


def cached_probe(teacher, job: TrialJob) -> Probe:
    """The held-out KD probe (probe.py) of the trials' teacher and KD data, built once per worker process."""
    settings = DistillConfig.from_dict(job.distill)
    return teacher_probe(job.teacher.spec, teacher, ProbeConfig(), job.device, settings.data, settings.cache_dir,
                         settings.resolution)


def train_candidate(genome, job: TrialJob, report: Callable[[int, dict], None]) -> Outcome:
    """One candidate: surgery -> distillation -> save -> evaluation (BK-SDM's recipe, short). The whole
    trial is heavy work: latency measurements of other trials wait for its next checkpoint (cache.py)."""
    with work_slot():
        return _train_candidate(genome, job, report)


def _train_candidate(genome, job: TrialJob, report: Callable[[int, dict], None]) -> Outcome:
    t0 = time.perf_counter()
    teacher = cached_teacher(job.teacher, job.device)
    student = build_student(teacher.unet, genome)
    prep_s = time.perf_counter() - t0  # teacher (cached per worker) and surgery: part of the overhead
    settings = DistillConfig.from_dict(job.distill)
    config = EvalConfig.from_dict(job.eval)
    losses = Path(job.students_dir) / genome.id / LOSSES_FILE
    with logged(report, losses, append=job.head_start is not None) as on_step:  # a head start's steps are there
        kd = distill(teacher, student, settings, device=job.device, on_step=on_step,
                     progress=False, **kd_checkpoints(job, genome, 0))
    if job.head_start is not None:  # consumed: the student went on from it
        shutil.rmtree(job.head_start, ignore_errors=True)
    out = Path(job.students_dir) / genome.id / job.teacher.family.subfolder
    atomic_dir(out, lambda tmp: saved(student.unet, tmp))  # never half-written; its hashes recorded
    write_block_map(out.parent, block_map(job.teacher.family, teacher.unet, genome, job.teacher.spec, None))
    metrics = evaluate(teacher, student.unet, config, device=job.device)
    tm = metrics.timings
    timings = {"kd_s": kd.wall_s, "generate_s": tm.get("generate_s", 0.0),
               "score_s": tm.get("score_s", 0.0) + tm.get("latency_s", 0.0)}
    probe = None
    if job.score in PROBE_KEYS:  # the first-stage score: the held-out KD probe, paired across candidates
        probe = cached_probe(teacher, job)
        result = probe.score(student.unet, student.kd_pairs)
        timings["score_s"] += result.pop("probe_s")
    values = metrics.to_dict() | (result if probe is not None else {})
    scores = []
    if job.design and job.noise_seeds > 1:
        t1 = time.perf_counter()

        def retrain(k: int):  # the same architecture and recipe, KD seed + k
            other = build_student(teacher.unet, genome)
            seeded = job.distill | {"seed": int(job.distill.get("seed", 0)) + k}
            distill(teacher, other, DistillConfig.from_dict(seeded), device=job.device, progress=False,
                    **kd_checkpoints(job, genome, k))
            return other

        table = job.reference_seeds.get(str(settings.steps), {}).get(genome.id)
        scores = reproduced(main_row(config, values), table, job.noise_seeds) if table else None
        if scores is None:  # no study of this recipe: train and score the other seeds here
            scores = seed_scores(teacher, student.unet, config, values, job.noise_seeds, job.device, retrain, probe)
        timings["noise_s"] = time.perf_counter() - t1
    return Outcome(values, timings, str(out), {"prep_s": prep_s, "kd_start_step": kd.extra["start_step"]}, scores)


def saved(denoiser, folder: Path) -> None:
    """``denoiser`` saved to ``folder`` (diffusers, safetensors) with each weight file's size and SHA-256 beside it
    (``cache.record_folder``): whoever reads the student later checks them (recipe/student_files.py)."""
    denoiser.save_pretrained(folder, safe_serialization=True)
    record_folder(folder)


@contextlib.contextmanager
def logged(report: Callable[[int, dict], None], path: Path, append: bool = False):
    """``report``, each step's losses first appended to ``path`` as a JSON line (a rerun starts it again,
    unless ``append``: a run that goes on from a head start's steps)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a" if append else "w") as f:
        def on_step(step: int, losses: dict) -> None:
            f.write(json.dumps(losses) + "\n")
            f.flush()
            report(step, losses)

        yield on_step


def checkpoint_dir(students_dir: str | Path, genome: str, kd_seed: int = 0) -> Path:
    """Where a trial keeps the KD checkpoint of its student (``kd_seed`` k > 0: the noise-seed student k)."""
    return Path(students_dir) / genome / (CHECKPOINT if kd_seed == 0 else f"{CHECKPOINT}-seed{kd_seed}")


def kd_checkpoints(job: TrialJob, genome, kd_seed: int) -> dict:
    """``distill``'s checkpoint arguments for the student of ``kd_seed``: continue the study below's checkpoint
    where one exists (a rung; a missing one -- deleted, or never kept -- means a straight run from surgery,
    the same student at more cost) or the ``head_start`` the job names, keep this run's own where a longer
    rung may follow."""
    kwargs: dict = {"cache_steps": job.cache_steps}
    if job.resume_dir is not None:
        below = checkpoint_dir(job.resume_dir, genome.id, kd_seed)
        if checkpoint_info(below) is not None:
            kwargs["resume_from"] = below
    if job.head_start is not None and kd_seed == 0:  # the reuse check's KD goes on, not again (study_reuse.py)
        kwargs["resume_from"] = Path(job.head_start)
    if job.checkpoint:
        kwargs["save_to"] = checkpoint_dir(job.students_dir, genome.id, kd_seed)
    return kwargs


def seed_scores(teacher, unet, config: EvalConfig, metrics: dict, n: int, device,
                retrain: Callable[[int], object] | None = None, probe: Probe | None = None) -> list[dict]:
    """The scores of one architecture at ``n`` seeds, the seed noise of noise.py: the main student
    (``metrics``, already measured; with its KID where it has one), then for k = 1 .. n-1 a student
    trained again with KD seed + k (``retrain(k)``; without it, the same student) whose images are
    generated at ``config.seed + k * config.prompts``. KD's seed moves a 120-step student's FID far more
    than the generation seed does (the toy's bk_tiny: FID 193.8 at KD seed 0, 144.8 at seed 1), so both
    vary. The stride keeps every prompt's seed new: a real teacher's prompt i is generated at seed + i, so
    seed + 1 would reuse all but one initial latent. The FID reference set stays the main seed's, and
    nothing seed-independent (params, latency, memory) is measured again. ``retrain(k)`` returns a Student;
    with ``probe`` its held-out probe scores are kept too (the probe's data is fixed: only KD's seed moves them)."""
    rows = [main_row(config, metrics)]
    for k in range(1, n):
        seed = config.seed + k * config.prompts
        other = retrain(k) if retrain is not None else None
        other_unet = other.unet if other is not None else unet
        row = {"seed": seed, "kd_seed": k if retrain is not None else 0}
        if config.images:
            scores = score_images(teacher, other_unet, dataclasses.replace(config, seed=seed), device,
                                  progress=False, reference=config)
            row |= {"fid": scores.distance.fid, "kid": scores.distance.kid, "alignment": scores.alignment}
        if probe is not None and other is not None:
            row |= {key: v for key, v in probe.score(other_unet, other.kd_pairs).items() if key in PROBE_KEYS}
        rows.append(row)
    return rows


def main_row(config: EvalConfig, metrics: dict) -> dict:
    """The main student's seed row: KD seed 0 at the evaluation's generation seed, the scores it has."""
    return {"seed": config.seed, "kd_seed": 0,
            **{k: metrics[k] for k in ("fid", "alignment", "kid", *PROBE_KEYS) if metrics.get(k) is not None}}


def load_candidate(path: str) -> Callable:
    module, _, name = path.partition(":")
    try:
        return getattr(import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise BlocksearchError(f"candidate function {path!r} cannot be imported ({err})") from None
