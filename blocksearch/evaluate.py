"""Evaluation: generate a fixed prompt set with fixed seeds, then FID, text alignment, params, MACs, latency.

FID (Heusel et al. 2017) goes through ``torch_fidelity.calculate_metrics`` with a named feature
extractor: ``toy-judge`` for the toy teacher, ``inception-v3-compat`` for real teachers (weights from a
path or the user's cache; offline without them is an error naming the file). The reference (real
image) statistics are cached by torch-fidelity under ``<cache_dir>/fidelity``. Latency is one U-Net
step at the evaluation resolution with a classifier-free-guidance batch of 2 (see ``latency.py``).
Every number says how it was measured (``Metrics.measured``).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel

from blocksearch.cache import default_cache_dir
from blocksearch.data import read_metadata
from blocksearch.errors import BlocksearchError
from blocksearch.generation import ImageSet, generate
from blocksearch.settings import GUIDANCE_SCALE, N_PROMPTS, NUM_STEPS, Settings
from blocksearch.latency import cost, measure_latency
from blocksearch.teachers import Teacher

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_FILE}"


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
    latency_repeats: int = 15
    latency_min_s: float = 0.2  # each repeat times a loop of calls at least this long
    latency_clock: str = "auto"  # wall | cpu (process time) | auto: cpu on a 1-thread CPU, else wall
    reference: str | None = None  # real teachers: an imagefolder whose images and captions are the reference
    inception_weights: str | None = None  # real teachers: path to weights-inception-2015-12-05-6726825d.pth
    clip_model: str | None = None  # real teachers: a local CLIP model folder for the alignment score
    cache_dir: str | None = None


@dataclass(frozen=True)
class Metrics:
    fid: float
    alignment: float | None
    params: int
    macs: int
    latency_ms: float
    latency_cv: float
    timings: dict = field(default_factory=dict)  # generate_s, score_s, latency_s
    measured: dict = field(default_factory=dict)  # how each number was measured

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Metrics":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def evaluate(teacher: Teacher, unet: UNet2DConditionModel, config: EvalConfig, device="cpu",
             progress: bool = True) -> Metrics:
    """Score ``unet`` as a drop-in replacement of the teacher's U-Net."""
    cache_dir = Path(config.cache_dir) if config.cache_dir else default_cache_dir()
    unet = unet.to(device).eval()
    t0 = time.perf_counter()
    prompts, seeds = prompt_set(teacher, config)
    images = generate_images(teacher, unet, prompts, seeds, config, device, progress)
    t1 = time.perf_counter()
    fid, fid_how = compute_fid(teacher, images, prompts, config, cache_dir, device)
    alignment, align_how = compute_alignment(teacher, images, prompts, config, device)
    t2 = time.perf_counter()
    latent = unet.config.sample_size
    params, macs = cost(unet, latent, cache_dir)
    lat = measure_latency(unet, latent, config.latency_warmup, config.latency_repeats, config.latency_min_s,
                          cache_dir, device, clock=config.latency_clock)
    t3 = time.perf_counter()
    measured = {
        "fid": fid_how, "alignment": align_how,
        "generation": {"prompts": len(prompts), "seeds": f"per-prompt seed + {config.seed}",
                       "sampler": type(teacher.pipeline.scheduler).__name__, "steps": config.steps,
                       "guidance": config.guidance, "resolution": list(images.shape[-2:]), "device": str(device),
                       "prompt_set_sha": _sha([prompts, seeds])},
        "params": "exact count of U-Net parameters",
        "macs": f"one U-Net forward at batch 1, latent {latent}x{latent}, 77 text tokens; "
                f"torch.utils.flop_counter (matmul, conv, attention), MACs = FLOPs / 2",
        "latency": lat.how,
    }
    return Metrics(fid, alignment, params, macs, lat.median_ms, lat.cv,
                   {"generate_s": t1 - t0, "score_s": t2 - t1, "latency_s": t3 - t2}, measured)


def prompt_set(teacher: Teacher, config: EvalConfig) -> tuple[list[str], list[int]]:
    """The fixed (prompt, seed) pairs: the toy world's held-out set, or the reference folder's captions."""
    if teacher.is_toy:
        from blocksearch.toy.world import heldout_prompts

        pairs = heldout_prompts(config.prompts)
        return [p for p, _ in pairs], [s + config.seed for _, s in pairs]
    items = read_metadata(_reference_folder(config))[:config.prompts]
    return [c for _, c in items], [i + config.seed for i in range(len(items))]


def student_pipeline(teacher: Teacher, unet) -> StableDiffusionPipeline:
    """The teacher's pipeline with the student U-Net (and its own scheduler state)."""
    parts = dict(teacher.pipeline.components)
    parts["unet"] = unet
    parts["scheduler"] = type(parts["scheduler"]).from_config(parts["scheduler"].config)
    pipe = StableDiffusionPipeline(**parts, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate_images(teacher: Teacher, unet, prompts, seeds, config: EvalConfig, device,
                    progress: bool = True) -> torch.Tensor:
    """uint8 (N,3,H,W); image i depends only on (prompts[i], seeds[i])."""
    pipe = student_pipeline(teacher, unet).to(device)
    return generate(pipe, prompts, seeds, config.steps, config.guidance, config.batch_size, progress)


def compute_fid(teacher: Teacher, images, prompts, config: EvalConfig, cache_dir: Path, device):
    import torch_fidelity

    if teacher.is_toy:
        from blocksearch.toy.world import real_images

        extractor, weights = "toy-judge", str(teacher.judge_path)
        n_ref, uniq = config.reference_images, sorted(set(prompts))
        reference = ImageSet(n_ref, lambda i: real_images(1, _sha([config.seed, i], 8), [uniq[i % len(uniq)]])[0])
        ref_id = ["toy", _file_sha(teacher.judge_path), n_ref, config.seed, uniq]
        ref_desc = f"{n_ref} toy-world images of the {len(uniq)} evaluation prompts (cycled), seed {config.seed}"
    else:
        extractor, weights = "inception-v3-compat", str(inception_weights(config))
        folder = _reference_folder(config)
        items = read_metadata(folder)
        size = images.shape[-1]
        from blocksearch.data import load_image

        reference = ImageSet(len(items), lambda i: ((load_image(folder / items[i][0], size) + 1) * 127.5)
                            .round().clamp(0, 255).to(torch.uint8))
        n_ref = len(items)
        ref_id = ["folder", str(folder.resolve()), n_ref, size, os.stat(folder).st_mtime]
        ref_desc = f"{n_ref} images of {folder} at {size}px"
    ref_key = f"blocksearch-ref-{_sha(ref_id)}"
    metrics = torch_fidelity.calculate_metrics(
        input1=ImageSet.of(images), input2=reference, fid=True,
        feature_extractor=extractor, feature_extractor_weights_path=weights,
        cuda=str(device).startswith("cuda"), cache=True, cache_root=str(cache_dir / "fidelity"),
        input2_cache_name=ref_key, verbose=False, save_cpu_ram=True)
    how = {"library": f"torch-fidelity {torch_fidelity.__version__}", "feature_extractor": extractor,
           "weights": weights, "generated": len(images), "reference": ref_desc,
           "reference_stats_cache": str(cache_dir / "fidelity" / ref_key)}
    return float(metrics["frechet_inception_distance"]), how


def compute_alignment(teacher: Teacher, images, prompts, config: EvalConfig, device):
    if teacher.is_toy:
        from blocksearch.toy.judge import load_judge, text_alignment

        judge = load_judge(device=device, path=teacher.judge_path)
        return text_alignment(images, prompts, judge), (
            "toy judge: fraction of images whose every predicted attribute matches the prompt")
    if config.clip_model is None:
        return None, "not measured: pass a local CLIP model folder (--clip-model) for a CLIP score"
    return clip_score(images, prompts, config.clip_model, device), (
        f"CLIP score: mean cosine similarity of image and prompt embeddings, {config.clip_model}")


@torch.no_grad()
def clip_score(images, prompts, model_path: str, device) -> float:
    from transformers import CLIPModel, CLIPProcessor

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
        raise BlocksearchError("evaluating a real teacher needs --reference: an imagefolder of real images "
                               "with captions (metadata.jsonl or metadata.csv: file_name, text)")
    return Path(config.reference)


def _sha(obj, n: int | None = None):
    digest = hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()
    return int(digest[:n], 16) if n else digest[:16]


def _file_sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
