"""The settings of a search's trials: ``blocksearch run``'s flags -> DistillConfig and EvalConfig, with
defaults that follow the teacher (the toy's own for the toy; BK-SDM's for SD teachers, arXiv 2305.15798
sec. 4: guidance 7.5, 25 steps of the teacher's own scheduler, AdamW lr 5e-5, the teacher's own
resolution); the checks of a real teacher's inputs before Ray starts (preflight.py: each problem one line,
exit 2); and the data's identity that a study records.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from blocksearch.recipe.data import read_metadata
from blocksearch.recipe.distill import CACHE_MODES, PRECISIONS, DistillConfig, distill_defaults
from blocksearch.errors import BlocksearchError
from blocksearch.recipe.evaluate import EvalConfig, eval_defaults, inception_weights
from blocksearch.recipe.preflight import check_captions, check_inception_weights, check_real_inputs
from blocksearch.recipe.schedules import SCHEDULES
from blocksearch.study import SearchConfig
from blocksearch.teachers import TeacherRef


def absolute(path: str) -> str:
    """An absolute path (Ray trials chdir into their own folders)."""
    return str(Path(path).expanduser().resolve())


def check_stage_flags(cfg: SearchConfig) -> None:
    """The real-teacher settings, named by their flags (DistillConfig / EvalConfig check them again)."""
    positive = {"--inference-steps": cfg.inference_steps, "--batch-size": cfg.batch_size,
                "--eval-prompts": cfg.eval_prompts, "--resolution": cfg.resolution}
    for flag, value in positive.items():
        if value is not None and (not isinstance(value, int) or value < 1):
            raise BlocksearchError(f"{flag} {value!r}: allowed: an integer >= 1")
    if cfg.resolution is not None and cfg.resolution % 8:
        raise BlocksearchError(f"--resolution {cfg.resolution}: allowed: a multiple of 8 (the VAE's scale factor)")
    if cfg.steps is not None and cfg.steps < 0:
        raise BlocksearchError(f"--steps {cfg.steps}: allowed: an integer >= 0")
    if cfg.lr is not None and not cfg.lr > 0:
        raise BlocksearchError(f"--lr {cfg.lr}: allowed: a number > 0")
    if cfg.guidance is not None and cfg.guidance < 0:
        raise BlocksearchError(f"--guidance {cfg.guidance}: allowed: a number >= 0 (<= 1: no classifier-free guidance)")
    for flag, value, allowed in (("--precision", cfg.precision, PRECISIONS),
                                 ("--teacher-cache", cfg.teacher_cache, CACHE_MODES),
                                 ("--kd-schedule", cfg.kd_schedule, SCHEDULES)):
        if value is not None and value not in allowed:
            raise BlocksearchError(f"{flag} {value!r}: allowed: {', '.join(allowed)}")
    if cfg.kd_warmup is not None and (not isinstance(cfg.kd_warmup, int) or cfg.kd_warmup < 0):
        raise BlocksearchError(f"--kd-warmup {cfg.kd_warmup!r}: allowed: an integer >= 0 (steps)")
    if cfg.kd_ema is not None and not 0 <= cfg.kd_ema < 1:
        raise BlocksearchError(f"--kd-ema {cfg.kd_ema}: allowed: 0 (off) or a decay in (0, 1), e.g. 0.99")


REAL_ONLY = ("reference", "captions", "inception_weights", "clip_model")


def stage_configs(cfg: SearchConfig, ref: TeacherRef) -> tuple[DistillConfig, EvalConfig]:
    """The trials' DistillConfig and EvalConfig: the flags given, else the defaults that follow the teacher ``ref``
    (``cfg.teacher`` resolved once; the toy's own for the toy; for SD teachers BK-SDM's: guidance 7.5, 25 steps of
    the teacher's own scheduler, AdamW lr 5e-5) at the teacher's own resolution. One-line errors for what a teacher
    lacks."""
    toy, native = ref.is_toy, ref.native_resolution()
    resolution = cfg.resolution or native
    if toy:
        given = [f"--{k.replace('_', '-')}" for k in REAL_ONLY if getattr(cfg, k) is not None]
        if given:
            raise BlocksearchError(f"{', '.join(given)}: for real teachers; the toy teacher {cfg.teacher!r} is "
                                   f"scored by its judge (toy-FID, judge alignment)")
        if resolution != native:
            raise BlocksearchError(f"--resolution {resolution}: the toy teacher works at its own {native} px")
    else:
        _require_real_inputs(cfg)
    data = cfg.data or "toy"
    distill_given = dict(steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, precision=cfg.precision, data=data,
                         resolution=resolution if data != "toy" else None, teacher_cache=cfg.teacher_cache,
                         schedule=cfg.kd_schedule, warmup=cfg.kd_warmup, ema=cfg.kd_ema)
    distill_cfg = DistillConfig(**(distill_defaults(toy) | _given(distill_given)), seed=cfg.seed)
    eval_given = dict(prompts=cfg.eval_prompts, steps=cfg.inference_steps, guidance=cfg.guidance, resolution=resolution,
                      latency_device=cfg.latency_device, latency_dtype=cfg.latency_dtype,
                      latency_repeats=cfg.latency_repeats,
                      e2e_repeats=None if cfg.latency_repeats is None else max(1, min(3, cfg.latency_repeats)))
    if not toy:
        eval_given |= dict(reference=cfg.reference, captions=cfg.captions or _captions_of(cfg),
                           clip_model=cfg.clip_model, inception_weights=cfg.inception_weights or str(
                               inception_weights(EvalConfig())))
    return distill_cfg, EvalConfig(**(eval_defaults(toy) | _given(eval_given)))


def _given(d: dict) -> dict:
    return {k: v for k, v in d.items() if v is not None}


def _require_real_inputs(cfg: SearchConfig) -> None:
    teacher = f"real teacher {cfg.teacher}"
    if cfg.data is None:
        raise BlocksearchError(f"{teacher}: pass --data, an imagefolder of its kind of images with captions "
                               f"(metadata.jsonl or metadata.csv: file_name, text), or --data toy")
    if cfg.reference is None:
        raise BlocksearchError(f"{teacher}: pass --reference, a folder of real images for FID (an imagefolder's "
                               f"captions are then the prompts)")
    if cfg.clip_model is None and (cfg.min_alignment > 0 or "alignment" in cfg.objectives):
        raise BlocksearchError(f"{teacher}: the text-aware rule (--min-alignment {cfg.min_alignment:g}) needs "
                               f"a CLIP score: pass --clip-model DIR (a local CLIP folder) or --min-alignment 0")


def _captions_of(cfg: SearchConfig) -> str | None:
    """The prompts' captions: the reference imagefolder's, else the --data imagefolder's."""
    reference = Path(cfg.reference)
    if (reference / "metadata.jsonl").is_file() or (reference / "metadata.csv").is_file():
        return None  # EvalConfig's default: the reference's own
    if cfg.data in (None, "toy"):
        raise BlocksearchError(f"reference folder {reference} has no captions (metadata.jsonl or metadata.csv) "
                               f"and --data is not an imagefolder; pass --captions DIR, a captioned imagefolder")
    return cfg.data


def check_inputs(cfg: SearchConfig, ref: TeacherRef) -> tuple[DistillConfig, EvalConfig]:
    """Every input of the run, checked before Ray starts (preflight.py: each problem one line, exit 2):
    the teacher folder (``ref``: ``cfg.teacher`` resolved, so an unknown teacher failed before any folder check),
    the data, the reference set for the FID asked for, the Inception weights, CLIP."""
    check_real_inputs(cfg.teacher, cfg.data, cfg.reference, cfg.inception_weights, cfg.clip_model,
                      fid_images=cfg.eval_prompts or EvalConfig.prompts)
    distill_cfg, eval_cfg = stage_configs(cfg, ref)
    if eval_cfg.inception_weights and not cfg.inception_weights:  # found in a cache: torch-fidelity unpickles it
        check_inception_weights(eval_cfg.inception_weights)
    if eval_cfg.reference is not None:
        check_captions(eval_cfg.captions or eval_cfg.reference, eval_cfg.prompts)
    return distill_cfg, eval_cfg


def data_identity(data: str) -> dict:
    """The KD data as a study records it: toy, or an imagefolder's rows and a sha256 of its metadata file."""
    if data == "toy":
        return {"source": "toy"}
    folder = Path(data)
    meta = next(p for p in (folder / "metadata.jsonl", folder / "metadata.csv") if p.is_file())
    return {"source": str(folder), "items": len(read_metadata(folder)),
            "metadata_sha256": hashlib.sha256(meta.read_bytes()).hexdigest()}
