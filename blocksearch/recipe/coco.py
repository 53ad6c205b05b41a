"""BK-SDM's zero-shot MS-COCO protocol (Kim et al., arXiv 2305.15798, sec. 4) on files the user has.

30K val2014 captions, one per distinct image; one image per caption at 512 px (PNDM, 25 steps,
guidance 7.5), resized to 256 px; FID against all val2014 images at 256 px, Inception Score and CLIP
score. BK-SDM's scripts resize with PIL (bicubic) and squash the real images to 256x256 without a crop;
they compute IS with torch-fidelity, FID with pytorch-fid and CLIP with open_clip ViT-g/14. Here FID
and IS both use torch-fidelity's ``inception-v3-compat`` (the same TF-Inception port), the CLIP score a
transformers CLIP folder the user gives. A ``limit`` below 30K is a cheaper subset and says it is one.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import diffusers
import torch
import torch_fidelity
from diffusers import StableDiffusionPipeline
from PIL import Image
from tqdm.auto import tqdm

from blocksearch.cache import default_cache_dir
from blocksearch.console import quiet
from blocksearch.recipe.data import hash_seed
from blocksearch.errors import BlocksearchError
from blocksearch.recipe.evaluate import clip_score
from blocksearch.recipe.generation import ImageSet
from blocksearch.recipe.preflight import check_clip_model, check_inception_weights, check_reference_folder, image_files

FULL_PROMPTS = 30_000
COCO_FORMAT = "the COCO captions format (captions_val2014.json: images[id, file_name], annotations[image_id, caption])"
# BK-SDM Table (arXiv 2305.15798): MS-COCO 30K, FID / IS / CLIP score (open_clip ViT-g/14)
PUBLISHED = {
    "sd-v1.4": {"fid": 13.05, "is": 36.76, "clip": 0.2958},
    "bk-sdm-base": {"fid": 15.76, "is": 33.79, "clip": 0.2878},
    "bk-sdm-small": {"fid": 16.98, "is": 31.68, "clip": 0.2677},
    "bk-sdm-tiny": {"fid": 17.12, "is": 30.09, "clip": 0.2653},
}


@dataclass(frozen=True)
class ProtocolSpec:
    """The numbers of BK-SDM's MS-COCO evaluation (sec. 4 and their scripts/eval_scores.sh)."""

    prompts: int = FULL_PROMPTS  # val2014 captions, one per distinct image
    steps: int = 25
    guidance: float = 7.5
    resolution: int = 512  # generated at
    eval_resolution: int = 256  # resized to, for FID, IS and CLIP
    scheduler: str = "PNDMScheduler"  # SD-v1.4's own sampler
    is_splits: int = 10  # torch-fidelity's default, as BK-SDM ran it
    seed: int = 0  # image i uses seed + i; captions are drawn with this seed


def _read_captions(path: Path) -> dict:
    if not path.is_file():
        raise BlocksearchError(f"COCO captions file {path} does not exist; expected {COCO_FORMAT}")
    try:
        data = json.loads(path.read_text())
        images = {int(im["id"]): str(im["file_name"]) for im in data["images"]}
        rows = [(int(a["image_id"]), int(a.get("id", 0)), str(a["caption"]).strip()) for a in data["annotations"]]
    except (ValueError, KeyError, TypeError) as err:
        raise BlocksearchError(f"{path}: not {COCO_FORMAT} ({type(err).__name__}: {err})") from None
    captions: dict[int, list[tuple[int, str]]] = {}
    for image_id, ann_id, text in rows:
        if image_id not in images:
            raise BlocksearchError(f"{path}: annotation {ann_id} names image {image_id}, which is not in images")
        if text:
            captions.setdefault(image_id, []).append((ann_id, text))
    return {"files": images, "captions": captions}


def coco_prompts(captions_json, n: int, seed: int = 0) -> list[tuple[str, str]]:
    """``n`` (file_name, caption) pairs: ``n`` distinct images in a seeded order, one seeded caption each.

    Deterministic, and nested: the first ``k`` of ``coco_prompts(f, n, s)`` are ``coco_prompts(f, k, s)``."""
    path = Path(captions_json)
    data = _read_captions(path)
    ids = sorted(data["captions"])
    if not 1 <= n <= len(ids):
        raise BlocksearchError(f"{path}: asked for {n} prompts but it has captions for {len(ids)} images; "
                               f"allowed: 1..{len(ids)}")
    random.Random(seed).shuffle(ids)
    out = []
    for image_id in ids[:n]:
        options = sorted(data["captions"][image_id])
        out.append((data["files"][image_id], options[hash_seed(seed, image_id) % len(options)][1]))
    return out


def coco_reference_images(images_dir) -> list[Path]:
    """Every image directly in ``images_dir`` (val2014: 40,504 jpg), sorted by name."""
    check_reference_folder(images_dir, 2)  # a covariance needs at least two images
    return image_files(Path(images_dir))


def evaluate_protocol(pipe, spec: ProtocolSpec, captions_json, images_dir, inception_weights, clip_model,
                      limit: int | None = None, device="cpu", batch_size: int = 8, cache_dir=None,
                      out_dir=None) -> dict:
    """Run the protocol on ``pipe`` (a StableDiffusionPipeline); the figures and how they were measured.

    Generated 256 px images are kept in memory (30K: 5.9 GB of uint8); ``out_dir`` also saves them."""
    n = spec.prompts if limit is None else int(limit)
    if not 1 <= n <= spec.prompts:
        raise BlocksearchError(f"--limit {limit}: allowed 1..{spec.prompts} prompts")
    check_inception_weights(inception_weights)  # torch-fidelity unpickles it: refuse anything unsafe first
    check_clip_model(clip_model)
    reference = coco_reference_images(images_dir)
    pairs = coco_prompts(captions_json, n, spec.seed)
    prompts = [caption for _, caption in pairs]
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    t0 = time.perf_counter()
    images = generate(pipe, prompts, spec, device, batch_size, out_dir)
    t1 = time.perf_counter()
    scores, fid_how = _fid_is(images, reference, spec, inception_weights, device, cache_dir)
    clip = clip_score(images, prompts, str(clip_model), device)
    t2 = time.perf_counter()
    subset, changed = n < FULL_PROMPTS, deviations(spec)
    return {
        "protocol": "bk-sdm", "subset": subset, "prompts": n, **scores, "clip": clip, "deviations": changed,
        "spec": asdict(spec), "published": PUBLISHED, "timings": {"generate_s": t1 - t0, "score_s": t2 - t1},
        "measured": {
            "protocol": "BK-SDM zero-shot MS-COCO (arXiv 2305.15798 sec. 4)" + (
                f"; SUBSET: {n} of {FULL_PROMPTS} prompts, not comparable with the published figures" if subset else "")
            + (f"; NOT the protocol's settings: {', '.join(changed)}" if changed else ""),
            "prompts": f"{n} val2014 captions of {Path(captions_json)}, one per distinct image, seed {spec.seed}, "
                       f"sha {_sha(pairs)}",
            "generation": {"scheduler": spec.scheduler, "steps": spec.steps, "guidance": spec.guidance,
                           "resolution": spec.resolution, "seeds": f"image i: torch.Generator seed {spec.seed} + i",
                           "device": str(device), "dtype": str(pipe.unet.dtype)},
            "resize": f"PIL bicubic {spec.resolution} -> {spec.eval_resolution} px, in memory (BK-SDM saved jpg)",
            "fid": fid_how,
            "is": f"torch-fidelity inception-v3-compat, {min(spec.is_splits, n)} splits, generated images only",
            "clip": f"mean cosine of CLIPModel image and caption embeddings ({clip_model}) on the "
                    f"{spec.eval_resolution} px images; BK-SDM used open_clip ViT-g/14",
        },
    }


def deviations(spec: ProtocolSpec) -> list[str]:
    """The settings of ``spec`` that differ from BK-SDM's (the seed is not one: theirs are not published)."""
    ref = ProtocolSpec()
    return [f"{k} {getattr(spec, k)} (BK-SDM: {getattr(ref, k)})" for k in
            ("steps", "guidance", "resolution", "eval_resolution", "scheduler", "is_splits")
            if getattr(spec, k) != getattr(ref, k)]


def format_result(result: dict, name: str) -> str:
    """The result next to the published BK-SDM figures (coco.PUBLISHED), with what makes them incomparable."""
    n = result["prompts"]
    lines = [f"BK-SDM zero-shot MS-COCO protocol: {n} of {FULL_PROMPTS} val2014 prompts"]
    if result["subset"]:
        lines.append(f"SUBSET (--limit {n}): FID at {n} images is biased upward; not comparable with the published "
                     f"figures (30K)")
    if result.get("deviations"):
        lines.append("NOT the protocol's settings: " + ", ".join(result["deviations"]))
    lines.append(f"{'model':24s} {'FID':>8s} {'IS':>8s} {'CLIP':>8s}")
    lines.append(f"{name[-24:]:24s} {result['fid']:8.2f} {result['is']:8.2f} {result['clip']:8.4f}")
    for model, fig in PUBLISHED.items():
        lines.append(f"{model + ' (published)':24s} {fig['fid']:8.2f} {fig['is']:8.2f} {fig['clip']:8.4f}")
    lines.append("CLIP: this model's with the given CLIP folder; the published ones with open_clip ViT-g/14 "
                 "(different models, different scales)")
    return "\n".join(lines)


def protocol_pipeline(pipe, spec: ProtocolSpec):
    """``pipe``'s parts with a fresh scheduler of the protocol's class (settings from pipe's config)."""
    cls = getattr(diffusers, spec.scheduler, None)
    if cls is None or not spec.scheduler.endswith("Scheduler"):
        raise BlocksearchError(f"protocol scheduler {spec.scheduler!r} is not a diffusers scheduler class; "
                               f"allowed e.g. PNDMScheduler, DPMSolverMultistepScheduler")
    config = {"skip_prk_steps": True, **dict(pipe.scheduler.config)}  # SD-v1.4's PNDM skips the PRK warm-up
    parts = dict(pipe.components, scheduler=cls.from_config(config))
    out = StableDiffusionPipeline(**parts, requires_safety_checker=False)
    out.set_progress_bar_config(disable=True)
    return out


@torch.no_grad()
def generate(pipe, prompts: list[str], spec: ProtocolSpec, device, batch_size: int, out_dir=None) -> torch.Tensor:
    """uint8 (N, 3, r, r) at ``spec.eval_resolution``; image i depends only on (prompts[i], seed + i)."""
    pipe = protocol_pipeline(pipe, spec).to(device)
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
    size, out = spec.eval_resolution, []
    for i in tqdm(range(0, len(prompts), batch_size), desc="generate", unit="batch", disable=quiet()):
        chunk = prompts[i:i + batch_size]
        gens = [torch.Generator(device).manual_seed(spec.seed + i + j) for j in range(len(chunk))]
        images = pipe(chunk, height=spec.resolution, width=spec.resolution, num_inference_steps=spec.steps,
                      guidance_scale=spec.guidance, generator=gens, output_type="pil").images
        for j, image in enumerate(images):
            small = _resize(image, size)
            if out_dir is not None:
                small.save(Path(out_dir) / f"{i + j:05d}.png")
            out.append(_tensor(small))
    return torch.stack(out)


def _resize(image, size: int):
    return image.convert("RGB").resize((size, size), Image.BICUBIC)


def _tensor(image) -> torch.Tensor:
    x = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    return x.view(image.height, image.width, 3).permute(2, 0, 1).contiguous()


def _load(path: Path, size: int) -> torch.Tensor:
    """A real image squashed to size x size, as BK-SDM's change_img_size."""
    with Image.open(path) as image:
        return _tensor(_resize(image, size))


def _fid_is(images, reference: list[Path], spec: ProtocolSpec, weights, device, cache_dir: Path):
    size, weights = spec.eval_resolution, Path(weights)
    stat = weights.stat()
    ref_key = "blocksearch-coco-" + _sha([str(reference[0].parent.resolve()), [p.name for p in reference], size,
                                         str(weights.resolve()), stat.st_size, int(stat.st_mtime)])
    metrics = torch_fidelity.calculate_metrics(
        input1=ImageSet.of(images), input2=ImageSet(len(reference), lambda i: _load(reference[i], size)),
        fid=True, isc=True, isc_splits=min(spec.is_splits, len(images)), feature_extractor="inception-v3-compat",
        feature_extractor_weights_path=str(weights), cuda=str(device).startswith("cuda"), cache=True,
        cache_root=str(cache_dir / "fidelity"), input2_cache_name=ref_key, verbose=False, save_cpu_ram=True)
    scores = {"fid": float(metrics["frechet_inception_distance"]), "is": float(metrics["inception_score_mean"]),
              "is_std": float(metrics["inception_score_std"])}
    how = {"library": f"torch-fidelity {torch_fidelity.__version__}", "feature_extractor": "inception-v3-compat",
           "weights": str(weights), "generated": len(images),
           "reference": f"{len(reference)} images of {reference[0].parent} squashed to {size}x{size} (PIL bicubic, "
                        f"as BK-SDM; val2014 has 40504)",
           "reference_stats_cache": str(cache_dir / "fidelity" / ref_key)}
    return scores, how


def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]
