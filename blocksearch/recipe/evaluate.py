"""Evaluation: generate a fixed prompt set with fixed seeds, then FID, KID, text alignment, params, MACs, latency.

FID (Heusel et al. 2017) and KID (Binkowski et al. 2018, on the same features: unbiased where FID is biased
at small sample sizes) go through one ``torch_fidelity.calculate_metrics`` call with a named feature
extractor: ``toy-judge`` for the toy teacher, ``inception-v3-compat`` for real teachers (weights from a
path or the user's cache; offline without them is an error naming the file). The reference (real
image) statistics are cached by torch-fidelity under ``<cache_dir>/fidelity``. Latency (one denoiser step at
the evaluation resolution with a classifier-free-guidance batch of 2), end-to-end latency of one image and
peak memory are measured on the deployment target (``latency_device``/``latency_dtype``; ``latency.py``).
The student is scored inside its teacher's own pipeline class, called as its family says (families/base.py).
Every number says how it was measured (``Metrics.measured``). What differs between kinds of teacher
(prompt set, FID features, alignment score) is one small ``Scorer`` each: ``ToyScorer``, ``RealScorer``.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import torch
import torch_fidelity
from transformers import CLIPModel, CLIPProcessor

from blocksearch.cache import checked_archives, default_cache_dir, file_lock, lock_path
from blocksearch.recipe.data import load_image, read_metadata
from blocksearch.errors import BlocksearchError
from blocksearch.recipe.generation import ImageSet, generate
from blocksearch.recipe.latency import DTYPES, cost, speed_and_memory
from blocksearch.recipe.preflight import image_files
from blocksearch.settings import GUIDANCE_SCALE, LATENCY_MIN_S, LATENCY_REPEATS, N_PROMPTS, NUM_STEPS, Settings
from blocksearch.teachers import Teacher, with_denoiser
from blocksearch.toy.judge import load_judge, text_alignment  # also registers the "toy-judge" FID features
from blocksearch.toy.world import heldout_prompts, real_images

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
# The defaults that follow the teacher: the toy's are EvalConfig's own; SD-family teachers are sampled as
# BK-SDM evaluated them (arXiv 2305.15798 sec. 4: guidance 7.5, 25 steps of SD-v1.4's own PNDM scheduler;
# here the teacher's own scheduler, as is, at the teacher's own resolution), 8 images per batch at 512 px.
SD_EVAL = {"guidance": 7.5, "steps": 25, "batch_size": 8}
INCEPTION_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_FILE}"
KID_SUBSETS, KID_SUBSET_SIZE = 100, 1000  # torch-fidelity's defaults; the size is capped by the image counts


def toy_prompts_note(flag: str, prompts: int, teacher: Teacher) -> str | None:
    """One line where a toy teacher's evaluation set holds fewer prompts than ``flag`` asks: all are generated."""
    have = len(heldout_prompts(prompts)) if teacher.is_toy else prompts
    return f"{flag} {prompts}: the toy evaluation set has {have} prompts; all of them are generated" \
        if have < prompts else None


@dataclass(frozen=True)
class EvalConfig(Settings):
    """How a student is scored. Defaults are sized for the toy teacher on one CPU thread."""

    prompts: int = N_PROMPTS  # held-out prompts (toy) or captions of the reference folder (real teachers)
    steps: int = NUM_STEPS  # sampler steps (the teacher's scheduler: DPM-Solver++ for the toy)
    guidance: float = GUIDANCE_SCALE  # classifier-free guidance scale (3; why: settings.py)
    seed: int = 0  # added to every prompt's own seed
    batch_size: int = 64
    reference_images: int = 1024  # real images behind the FID reference statistics (toy)
    latency_warmup: int = 3
    latency_repeats: int = LATENCY_REPEATS
    latency_min_s: float = LATENCY_MIN_S  # each repeat times a loop of calls at least this long
    latency_clock: str = "auto"  # wall | cpu (process time) | auto: cpu on a 1-thread CPU, else wall
    resolution: int | None = None  # generated image size in px (None: the teacher's own)
    reference: str | None = None  # real teachers: the FID reference images (a folder; an imagefolder's metadata rows)
    captions: str | None = None  # real teachers: the imagefolder whose captions are the prompts (default: reference)
    inception_weights: str | None = None  # real teachers: path to weights-inception-2015-12-05-6726825d.pth
    clip_model: str | None = None  # real teachers: a local CLIP model folder for the alignment score
    latency_device: str | None = None  # the deployment target, cpu or cuda (default: the evaluation's device)
    latency_dtype: str | None = None  # fp32 | fp16 | bf16 on the target (default: fp16 on CUDA, fp32 on CPU)
    e2e_repeats: int = 3  # timed end-to-end generations of one image (after one warm-up)
    cache_dir: str | None = None
    images: bool = True  # generate and score images (FID, KID, alignment); False: cost and speed only (a first
    # stage ranked by the held-out KD probe, selection.py: no image is generated)

    def __post_init__(self):
        if self.resolution is not None and (self.resolution < 8 or self.resolution % 8):
            raise BlocksearchError(f"resolution {self.resolution}: allowed: a multiple of 8 (the VAE's scale factor)")
        target = self.latency_device
        if target is not None and not (target == "cpu" or target.startswith("cuda")):
            raise BlocksearchError(f"latency device {target!r}; allowed: cpu, cuda, cuda:N")
        if self.latency_dtype is not None and self.latency_dtype not in DTYPES:
            raise BlocksearchError(f"latency dtype {self.latency_dtype!r}; allowed: {', '.join(DTYPES)}")
        if self.latency_dtype == "fp16" and (target or "cpu") == "cpu":
            raise BlocksearchError("latency dtype fp16 needs --latency-device cuda; on CPU use fp32 or bf16")

    def latency_target(self, device) -> tuple[str, str]:
        """(device, dtype) latency and memory are measured on: the deployment target."""
        target = self.latency_device or str(device)
        if target.startswith("cuda") and not torch.cuda.is_available():
            raise BlocksearchError(f"latency device {target}: no CUDA device on this machine; allowed here: cpu")
        return target, self.latency_dtype or ("fp16" if target.startswith("cuda") else "fp32")


def eval_defaults(toy: bool) -> dict:
    """The evaluation settings that follow the teacher: EvalConfig's own for the toy, ``SD_EVAL`` for others."""
    return {} if toy else dict(SD_EVAL)


@dataclass(frozen=True)
class Metrics:
    fid: float
    alignment: float | None
    params: int
    macs: int
    latency_ms: float
    latency_cv: float
    e2e_ms: float | None = None  # one image end to end: text encoder + N CFG U-Net steps + VAE decode
    memory_mb: float | None = None  # peak memory of one CFG U-Net step at inference
    weights_mb: float | None = None  # the U-Net's weights in the latency dtype
    timings: dict = field(default_factory=dict)  # generate_s, score_s, latency_s
    measured: dict = field(default_factory=dict)  # how each number was measured
    kid: float | None = None  # mean over subsets (None: a study of an earlier version)
    kid_std: float | None = None  # its standard deviation over the subsets

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Metrics":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


@dataclass(frozen=True)
class ImageDistance:
    """FID and KID (mean and std over subsets) of one image set against the reference set."""

    fid: float
    kid: float
    kid_std: float


@dataclass(frozen=True)
class ImageScores:
    """The quality half of ``evaluate``: distances to the reference set and text alignment, no cost or speed."""

    distance: ImageDistance
    alignment: float | None
    prompts: list[str]
    timings: dict  # generate_s, score_s
    measured: dict  # fid (and kid), alignment, generation


def score_images(teacher: Teacher, unet: torch.nn.Module, config: EvalConfig, device="cpu",
                 progress: bool = True, reference: EvalConfig | None = None) -> ImageScores:
    """Generate the fixed prompt set with the denoiser ``unet`` in the teacher's pipeline; FID, KID and text
    alignment.
    ``reference``: the settings whose FID reference set is used (default ``config``'s; the toy's depends on
    the seed), so that only the generation seed changes between scores at several seeds."""
    cache_dir = Path(config.cache_dir) if config.cache_dir else default_cache_dir()
    unet = unet.to(device).eval()
    scorer = scorer_for(teacher, config)
    t0 = time.perf_counter()
    prompts, seeds = scorer.prompt_set()
    images = generate_images(teacher, unet, prompts, seeds, config, device, progress)
    t1 = time.perf_counter()
    distance, fid_how = scorer_for(teacher, reference or config).distance(images, prompts, cache_dir, device)
    alignment, align_how = scorer.alignment(images, prompts, device)
    t2 = time.perf_counter()
    measured = {
        "fid": fid_how, "alignment": align_how,
        "generation": {"prompts": len(prompts), "seeds": f"per-prompt seed + {config.seed}",
                       "sampler": type(teacher.pipeline.scheduler).__name__, "steps": config.steps,
                       "guidance": config.guidance, "resolution": list(images.shape[-2:]), "device": str(device),
                       "prompt_set_sha": _sha([prompts, seeds])},
    }
    return ImageScores(distance, alignment, prompts, {"generate_s": t1 - t0, "score_s": t2 - t1}, measured)


def evaluate(teacher: Teacher, unet: torch.nn.Module, config: EvalConfig, device="cpu",
             progress: bool = True) -> Metrics:
    """Score the denoiser ``unet`` as a drop-in replacement of the teacher's (U-Net or transformer;
    ``config.images`` False: its cost and speed only, FID and alignment None)."""
    cache_dir = Path(config.cache_dir) if config.cache_dir else default_cache_dir()
    if config.images:
        scores = score_images(teacher, unet, config, device, progress)
    else:
        prompts = scorer_for(teacher, config).prompt_set()[0][:1]
        scores = ImageScores(ImageDistance(None, None, None), None, prompts, {}, {"fid": "not measured (images off)"})
    t2 = time.perf_counter()
    scale = teacher.pipeline.vae_scale_factor
    latent = config.resolution // scale if config.resolution else unet.config.sample_size
    family = teacher.family
    text_len = family.text_tokens(teacher.pipeline)
    params, macs = cost(unet, latent, cache_dir, family=family, text_len=text_len)
    target, dtype = config.latency_target(device)
    speed, speed_how = speed_and_memory(
        student_pipeline(teacher, unet), latent, config.steps, config.guidance, scores.prompts[0], target, dtype,
        config.latency_warmup, config.latency_repeats, config.latency_min_s, config.latency_clock, cache_dir,
        e2e_repeats=config.e2e_repeats, reference=teacher.denoiser)
    t3 = time.perf_counter()
    name = family.denoiser_name
    measured = {
        **scores.measured,
        "params": f"exact count of {name} parameters",
        "macs": f"one {name} forward at batch 1, latent {latent}x{latent}, {text_len} text tokens; "
                f"torch.utils.flop_counter (matmul, conv, attention), MACs = FLOPs / 2",
        **speed_how,
    }
    d = scores.distance
    return Metrics(fid=d.fid, alignment=scores.alignment, params=params, macs=macs, latency_ms=speed["latency_ms"],
                   latency_cv=speed["latency_cv"], e2e_ms=speed["e2e_ms"], memory_mb=speed["memory_mb"],
                   weights_mb=speed["weights_mb"], timings=scores.timings | {"latency_s": t3 - t2},
                   measured=measured, kid=d.kid, kid_std=d.kid_std)


def student_pipeline(teacher: Teacher, unet):
    """The teacher's pipeline class with the student denoiser (and its own scheduler state): a stock
    StableDiffusionPipeline for a U-Net, the teacher's transformer pipeline (PixArtSigmaPipeline, ...) for a
    transformer."""
    pipe = with_denoiser(teacher.pipeline, unet, teacher.family)
    pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate_images(teacher: Teacher, unet, prompts, seeds, config: EvalConfig, device,
                    progress: bool = True) -> torch.Tensor:
    """uint8 (N,3,H,W); image i depends only on (prompts[i], seeds[i])."""
    pipe = student_pipeline(teacher, unet).to(device)
    return generate(pipe, prompts, seeds, config.steps, config.guidance, config.batch_size, progress,
                    config.resolution)


# -- scorers: what differs between kinds of teacher -------------------------------------------------
class Scorer(Protocol):
    """How one kind of teacher is scored: its fixed prompt set, its FID features, its alignment score."""

    def prompt_set(self) -> tuple[list[str], list[int]]:
        """The fixed (prompt, seed) pairs."""

    def distance(self, images: torch.Tensor, prompts: list[str], cache_dir: Path,
                 device) -> tuple[ImageDistance, dict]:
        """FID and KID of uint8 (N,3,H,W) images against the reference set, and how they were measured."""

    def alignment(self, images: torch.Tensor, prompts: list[str], device) -> tuple[float | None, str]:
        """Text alignment of the images with their prompts (None: not measured), and how."""


@dataclass(frozen=True)
class ToyScorer:
    """The toy teacher: the toy world's held-out prompts, toy-judge FID features, the judge's alignment."""

    judge_path: Path
    config: EvalConfig

    def prompt_set(self) -> tuple[list[str], list[int]]:
        pairs = heldout_prompts(self.config.prompts)
        return [p for p, _ in pairs], [s + self.config.seed for _, s in pairs]

    def distance(self, images, prompts, cache_dir, device):
        seed, n_ref, uniq = self.config.seed, self.config.reference_images, sorted(set(prompts))
        reference = ImageSet(n_ref, lambda i: real_images(1, _sha([seed, i], 8), [uniq[i % len(uniq)]])[0])
        return image_distance(
            images, reference, "toy-judge", str(self.judge_path), cache_dir, device,
            ref_id=["toy", _file_sha(self.judge_path), n_ref, seed, uniq],
            ref_desc=f"{n_ref} toy-world images of the {len(uniq)} evaluation prompts (cycled), seed {seed}")

    def alignment(self, images, prompts, device):
        judge = load_judge(device=device, path=self.judge_path)
        return text_alignment(images, prompts, judge), (
            "toy judge: fraction of images whose every predicted attribute matches the prompt")


@dataclass(frozen=True)
class RealScorer:
    """SD-family teachers: the first ``prompts`` captions of ``captions`` (default: the --reference
    imagefolder's), FID against the --reference images with Inception-v3, the CLIP score."""

    config: EvalConfig

    def prompt_set(self) -> tuple[list[str], list[int]]:
        return real_prompt_set(self.config)

    def distance(self, images, prompts, cache_dir, device):
        weights = str(inception_weights(self.config))
        folder = _reference_folder(self.config)
        files, size = reference_images(folder), images.shape[-1]
        reference = ImageSet(len(files), lambda i: ((load_image(files[i], size) + 1) * 127.5)
                             .round().clamp(0, 255).to(torch.uint8))
        return image_distance(
            images, reference, "inception-v3-compat", weights, cache_dir, device,
            ref_id=["folder", str(folder.resolve()), len(files), size, os.stat(folder).st_mtime],
            ref_desc=f"{len(files)} images of {folder} at {size}px")

    def alignment(self, images, prompts, device):
        if self.config.clip_model is None:
            return None, "not measured: pass a local CLIP model folder (--clip-model) for a CLIP score"
        return clip_score(images, prompts, self.config.clip_model, device), (
            f"CLIP score: mean cosine similarity of image and prompt embeddings, {self.config.clip_model}")


def real_prompt_set(config: EvalConfig) -> tuple[list[str], list[int]]:
    """The first ``prompts`` captions of ``config.captions`` (default: the reference folder), seeds ``seed + i``."""
    folder = Path(config.captions) if config.captions else _reference_folder(config)
    items = read_metadata(folder)
    if len(items) < config.prompts:
        raise BlocksearchError(f"captions of {folder}: {len(items)} rows, but the evaluation asks for "
                               f"{config.prompts} prompts; allowed: at most {len(items)} (--eval-prompts)")
    return [c for _, c in items[:config.prompts]], [i + config.seed for i in range(config.prompts)]


def reference_images(folder: Path) -> list[Path]:
    """The FID reference images: an imagefolder's metadata rows, else every image file in ``folder``."""
    if (folder / "metadata.jsonl").is_file() or (folder / "metadata.csv").is_file():
        return [folder / f for f, _ in read_metadata(folder)]
    return image_files(folder)


def evaluation_set(config: EvalConfig, toy: bool) -> dict:
    """The evaluation set as a study records it: a sha256 of its (prompt, seed) pairs, and for a real
    teacher the reference folder's image count (read from files only: no model is loaded)."""
    prompts, seeds = ToyScorer(None, config).prompt_set() if toy else real_prompt_set(config)
    out = {"prompts": len(prompts), "prompt_set_sha": _sha([prompts, seeds])}
    if not toy:
        out["reference_images"] = len(reference_images(_reference_folder(config)))
    return out


def scorer_for(teacher: Teacher, config: EvalConfig) -> Scorer:
    """The toy judge for the toy teacher (a judge file beside it), Inception + CLIP for any other."""
    return ToyScorer(teacher.judge_path, config) if teacher.is_toy else RealScorer(config)


def image_distance(images, reference: ImageSet, extractor: str, weights: str, cache_dir: Path, device,
                   ref_id: list, ref_desc: str) -> tuple[ImageDistance, dict]:
    """FID (Heusel et al. 2017) and KID (Binkowski et al. 2018) in one torch-fidelity call on the same
    features; the reference features and statistics are cached under ``ref_id``. KID's subset size is
    capped by the number of images on either side (torch-fidelity refuses a larger one)."""
    ref_key = f"blocksearch-ref-{_sha(ref_id)}"
    subset = min(KID_SUBSET_SIZE, len(images), len(reference))
    with file_lock(lock_path(ref_key, cache_dir)):  # a cut or bit-flipped statistics file: set aside, recomputed
        checked_archives(cache_dir / "fidelity", ref_key)
    metrics = torch_fidelity.calculate_metrics(
        input1=ImageSet.of(images), input2=reference, fid=True, kid=True, kid_subsets=KID_SUBSETS,
        kid_subset_size=subset, feature_extractor=extractor, feature_extractor_weights_path=weights,
        cuda=str(device).startswith("cuda"), cache=True, cache_root=str(cache_dir / "fidelity"),
        input2_cache_name=ref_key, verbose=False, save_cpu_ram=True)
    how = {"library": f"torch-fidelity {torch_fidelity.__version__}", "feature_extractor": extractor,
           "weights": weights, "generated": len(images), "reference": ref_desc,
           "reference_stats_cache": str(cache_dir / "fidelity" / ref_key),
           "kid": f"polynomial-kernel MMD^2 (degree 3), mean and std over {KID_SUBSETS} subsets of {subset}"}
    distance = ImageDistance(float(metrics["frechet_inception_distance"]),
                             float(metrics["kernel_inception_distance_mean"]),
                             float(metrics["kernel_inception_distance_std"]))
    return distance, how


@torch.no_grad()
def clip_score(images, prompts, model_path: str, device) -> float:
    """Mean cosine similarity of CLIP image and text embeddings (Hessel et al. 2021, without the 2.5 scale)."""
    try:
        model = CLIPModel.from_pretrained(model_path, local_files_only=True, use_safetensors=True).to(device).eval()
        processor = CLIPProcessor.from_pretrained(model_path, local_files_only=True)
    except (OSError, ValueError) as err:
        raise BlocksearchError(f"CLIP model {model_path} does not load offline ({type(err).__name__}); "
                               f"pass a local folder with a safetensors CLIP model") from None
    scores = []
    for i in range(0, len(images), 32):
        inputs = processor(text=list(prompts[i:i + 32]), images=list(images[i:i + 32]), return_tensors="pt",
                           padding=True, truncation=True).to(device)
        out = model(**inputs)
        img = torch.nn.functional.normalize(out.image_embeds, dim=-1)
        txt = torch.nn.functional.normalize(out.text_embeds, dim=-1)
        scores.append((img * txt).sum(-1).cpu())
    return float(torch.cat(scores).mean())


def inception_weights(config: EvalConfig) -> Path:
    """The Inception weights torch-fidelity needs, from a path or a cache; never downloaded silently."""
    candidates = [Path(config.inception_weights)] if config.inception_weights else [
        default_cache_dir() / INCEPTION_FILE,
        Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE,
    ]
    for path in candidates:
        if path.is_file():
            return path
    raise BlocksearchError(
        f"FID of a real teacher needs the Inception weights file {INCEPTION_FILE}, not found at "
        f"{', '.join(map(str, candidates))} and this machine is offline; download it from {INCEPTION_URL} "
        f"and pass --inception-weights PATH (or put it in {default_cache_dir()})")


def _reference_folder(config: EvalConfig) -> Path:
    if not config.reference:
        raise BlocksearchError("evaluating a real teacher needs --reference: a folder of real images (with "
                               "captions in metadata.jsonl or metadata.csv, or captions from --data)")
    return Path(config.reference)


def _sha(obj, n: int | None = None):
    digest = hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()
    return int(digest[:n], 16) if n else digest[:16]


def _file_sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
