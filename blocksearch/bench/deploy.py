"""``blocksearch bench deploy``: what a user ships, measured on the deployment target for the teacher and
the named designs at full size, with random weights (nothing is downloaded): the U-Net step latency
relative to the teacher (as trials measure it), the end-to-end latency of one image (text encoder, N
U-Net steps with classifier-free guidance, VAE decode) and the peak memory of one CFG U-Net step, through
the same ``latency.speed_and_memory`` the trials use.

For SD-v1 / SD-v2 the pipeline around the U-Net is built from the published shapes: SD's VAE (4 stages,
128-512 channels), a CLIP text encoder of the teacher's width and depth (SD-v1: ViT-L/14's 12 layers of
768; SD-v2: OpenCLIP ViT-H/14's 23 of 1024), PNDM with 25 steps. Only the tokenizer is the toy's (the CLIP
BPE files are a download): prompts are the toy world's, padded to 77 tokens, so the text encoder does the
same work. On a lent GPU: ``--device cuda`` (fp16 by default); BK-SDM (arXiv 2305.15798) reports about
36 % (Small) and 43 % (Tiny) lower U-Net latency than SD-v1.4.

``--kd-steps N`` then runs one search trial's distillation at that size: bk_small cut from the random
teacher, BK-SDM's KD loss on a synthetic captioned imagefolder at the teacher's resolution (random images,
toy captions: the cost, not the quality), ``--kd-batch`` and ``--kd-precision``, the teacher cache as a
trial decides it (``auto``); it prints the KD step time, the peak GPU memory, and the teacher cache's bytes
per step or that the teacher ran live (the real-size check of a lent GPU).

SDXL, SD3 and Flux (``--teacher sdxl | sd3-medium | flux-dev``) are measured at the denoiser alone:
bench/deploy_denoiser.py.

Memory: one student at a time is alive beside the teacher during the latency phase, and the KD check loads
the teacher from the folder it was saved to after the latency phase's pipeline is freed; each phase ends
with a line of this process's resident memory, now and at its peak so far (``getrusage``'s ``ru_maxrss``).
"""

from __future__ import annotations

import gc
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from PIL import Image
from transformers import CLIPTextConfig, CLIPTextModel

from blocksearch.bench.deploy_denoiser import TEACHERS as DENOISER_ONLY, cmd_deploy_denoiser, memory_line
from blocksearch.recipe.distill import DistillConfig, distill

from blocksearch.errors import BlocksearchError
from blocksearch.recipe.latency import speed_and_memory
from blocksearch.settings import LATENCY_MIN_S
from blocksearch.space import load_space
from blocksearch.families.unet.surgery import build_student
from blocksearch.recipe.teacher_cache import cache_bytes_per_step
from blocksearch.families.unet.topology import ARCHITECTURES, topology_of
from blocksearch.families.base import family_of
from blocksearch.teachers import load_teacher, with_denoiser
from blocksearch.toy.models import make_tokenizer
from blocksearch.toy.world import heldout_prompts

SD_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
              down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
              block_out_channels=(128, 256, 512, 512))
TEXT_ENCODERS = {  # CLIP ViT-L/14 (SD-v1) and OpenCLIP ViT-H/14 (SD-v2), 77 positions
    "sd-v1": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                  projection_dim=768, hidden_act="quick_gelu"),
    "sd-v2": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
                  projection_dim=1024, hidden_act="gelu"),
}
SD_SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True,
                    steps_offset=1)
PUBLISHED = {"bk_small": 0.36, "bk_tiny": 0.43}  # BK-SDM: U-Net latency lower than SD-v1.4's, about


def random_pipeline(name: str, scale: float = 1.0) -> StableDiffusionPipeline:
    """An SD-shaped pipeline with random weights (seed 0) around ``ARCHITECTURES[name]``; ``scale`` < 1
    shrinks every width (tests only: the same code path in seconds)."""
    if name not in TEXT_ENCODERS:
        raise BlocksearchError(f"bench deploy --teacher {name}: allowed: toy, a toy-built folder, "
                               f"{', '.join(TEXT_ENCODERS)} (a whole pipeline), {', '.join(DENOISER_ONLY)} (the "
                               f"denoiser alone: their text encoders are not built here)")
    torch.manual_seed(0)
    unet_config, vae_config, text = dict(ARCHITECTURES[name]), dict(SD_VAE), dict(TEXT_ENCODERS[name])
    if scale != 1.0:
        widths = unet_config.get("block_out_channels", (320, 640, 1280, 1280))
        unet_config["block_out_channels"] = tuple(max(32, int(c * scale) // 32 * 32) for c in widths)
        vae_config["block_out_channels"] = tuple(max(32, int(c * scale) // 32 * 32) for c in SD_VAE["block_out_channels"])
        text.update(hidden_size=max(64, int(text["hidden_size"] * scale) // 64 * 64), num_hidden_layers=2,
                    intermediate_size=max(64, int(text["intermediate_size"] * scale)))
        text["num_attention_heads"] = text["hidden_size"] // 64
        unet_config["cross_attention_dim"] = text["hidden_size"]
    tokenizer = make_tokenizer()
    encoder = CLIPTextModel(CLIPTextConfig(vocab_size=49408, max_position_embeddings=77,  # CLIP BPE vocab
                                           bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                           pad_token_id=tokenizer.pad_token_id, **text))
    tokenizer.model_max_length = 77
    return StableDiffusionPipeline(vae=AutoencoderKL(**vae_config), text_encoder=encoder.eval(), tokenizer=tokenizer,
                                   unet=UNet2DConditionModel(**unet_config).eval(),
                                   scheduler=PNDMScheduler(**SD_SCHEDULER), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)


def cmd_bench_deploy(args) -> int:
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise BlocksearchError(f"--device {args.device}: no CUDA device on this machine; allowed here: cpu")
    dtype = args.dtype or ("fp16" if args.device.startswith("cuda") else "fp32")
    if dtype == "fp16" and not args.device.startswith("cuda"):
        raise BlocksearchError("--dtype fp16 needs --device cuda; on CPU use fp32 or bf16")
    if args.teacher in DENOISER_ONLY:  # SDXL, SD3, Flux: the denoiser alone (bench/deploy_denoiser.py)
        return cmd_deploy_denoiser(args, dtype)
    t0 = time.perf_counter()
    pipe = load_teacher(args.teacher).pipeline if args.teacher not in ARCHITECTURES else \
        random_pipeline(args.teacher, args.scale)
    family = family_of(pipe)
    bound = load_space(args.space or "unet_blocks").bind(topology_of(getattr(pipe, family.subfolder).config))
    print(f"built the teacher and the pipeline around it in {time.perf_counter() - t0:.0f} s (random weights); "
          f"{memory_line('build')}")
    print(table(latency_phase(pipe, bound, args, dtype)))
    print(memory_line("latency"), flush=True)
    if args.kd_steps:
        with tempfile.TemporaryDirectory() as tmp:
            saved = save_teacher(pipe, Path(tmp))
            del pipe  # the KD check loads the teacher from disk: one copy of it, not two
            gc.collect()
            kd_run(saved, bound, args, Path(tmp))
        gc.collect()
        print(memory_line("KD check"))
    return 0


def latency_phase(pipe: StableDiffusionPipeline, bound, args, dtype: str) -> list[tuple[str, str, int, dict]]:
    """The teacher's figures, then each named design's: its student is built, measured and freed before the
    next one is built (one full-size student alive at a time beside the teacher)."""
    family = family_of(pipe)
    teacher = getattr(pipe, family.subfolder).eval()
    latent = teacher.config.sample_size
    prompt = heldout_prompts(1)[0][0]
    designs = [("teacher", bound.teacher_genome)] + list(bound.named_designs().items())
    print(f"measuring {len(designs)} U-Nets on {args.device}, {dtype}: U-Net step at latent {latent}x{latent} "
          f"(batch 2, CFG), one image end to end ({args.inference_steps} steps, guidance {args.guidance}), peak memory "
          f"of one CFG step")
    rows = []
    with tempfile.TemporaryDirectory() as fresh:  # measured now, not read from an earlier run's cache
        for name, genome in designs:
            unet = teacher if name == "teacher" else build_student(teacher, genome).unet.eval()
            metrics, _ = speed_and_memory(with_denoiser(pipe, unet, family), latent, args.inference_steps,
                                          args.guidance, prompt, args.device, dtype, args.warmup, args.repeats,
                                          LATENCY_MIN_S, "auto", fresh, e2e_repeats=args.e2e_repeats,
                                          reference=teacher)
            rows.append((name, genome.id, sum(p.numel() for p in unet.parameters()), metrics))
            del unet  # the student's weights go before the next one is built
            gc.collect()
            print(f"  {name}: step {metrics['latency_ms']:.2f} ms, end to end {metrics['e2e_ms']:.0f} ms, "
                  f"peak {metrics['memory_mb']:.0f} MB", flush=True)
    return rows


def synthetic_imagefolder(folder: Path, images: int, size: int, seed: int = 0) -> Path:
    """A captioned imagefolder of random RGB images (toy-world captions): what a KD step costs does not
    depend on what the images show."""
    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for i, (caption, _) in enumerate(heldout_prompts(images)):
        pixels = torch.randint(0, 256, (size, size, 3), generator=gen, dtype=torch.uint8).numpy()
        Image.fromarray(pixels).save(folder / f"{i:04d}.png")
        rows.append(json.dumps({"file_name": f"{i:04d}.png", "text": caption}))
    (folder / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    return folder


def save_teacher(pipe: StableDiffusionPipeline, tmp: Path) -> Path:
    """The pipeline as a diffusers folder ``tmp/teacher``, which the KD check loads as any teacher."""
    pipe.save_pretrained(tmp / "teacher", safe_serialization=True)
    return tmp / "teacher"


def kd_check(pipe: StableDiffusionPipeline, bound, args) -> dict:
    """One trial's distillation at this size: bk_small from the teacher, ``args.kd_steps`` steps; prints and
    returns the median KD step time, the peak GPU memory and what the teacher cache did."""
    with tempfile.TemporaryDirectory() as tmp:
        return kd_run(save_teacher(pipe, Path(tmp)), bound, args, Path(tmp))


def kd_run(saved: Path, bound, args, tmp: Path) -> dict:
    """``kd_check`` on the teacher saved in ``saved``; its data and caches under ``tmp``."""
    device = args.device
    teacher = load_teacher(str(saved), device)
    resolution = teacher.unet.config.sample_size * teacher.pipeline.vae_scale_factor
    data = synthetic_imagefolder(Path(tmp) / "data", max(args.kd_batch * 4, 32), resolution)
    config = DistillConfig(steps=args.kd_steps, batch_size=args.kd_batch, precision=args.kd_precision,
                           data=str(data), resolution=resolution, cache_dir=str(Path(tmp) / "cache"),
                           lr=5e-5)
    per_step = cache_bytes_per_step(teacher.unet.config, config.batch_size, teacher.unet.config.sample_size, 2,
                                     family=teacher.family)
    student = build_student(teacher.unet, bound.named_designs()["bk_small"])
    stamps = []
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)
    print(f"KD check: bk_small from the {args.teacher} teacher, {config.steps} steps of batch {config.batch_size} "
          f"at {resolution} px, {config.precision}, teacher cache auto ({per_step / 2**20:.1f} MiB per step)",
          flush=True)
    result = distill(teacher, student, config, device=device, progress=False,
                     on_step=lambda step, record: stamps.append(time.perf_counter()))
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
    steps = [b - a for a, b in zip(stamps, stamps[1:])][max(0, len(stamps) // 5):]  # warm steps only
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.startswith("cuda") else None
    out = {"step_s": statistics.median(steps) if steps else None, "peak_mb": peak, "cache_bytes_per_step": per_step,
           "teacher_cache": result.extra["teacher_cache"], "cached": result.cache_path is not None,
           "wall_s": result.wall_s, "teacher_s": result.teacher_s}
    step = f"{out['step_s'] * 1000:.0f} ms" if out["step_s"] is not None else "n/a (too few steps)"
    print(f"KD step (median of the warm steps): {step}; peak GPU memory "
          f"{f'{peak:.0f} MB' if peak is not None else 'n/a (not CUDA)'}; teacher cache: "
          f"{'on disk' if out['cached'] else 'live teacher'} ({out['teacher_cache']}); whole run {result.wall_s:.0f} s, "
          f"of which the teacher (cache build or live forwards) {result.teacher_s:.0f} s")
    return out


def table(rows: list[tuple[str, str, int, dict]]) -> str:
    """The figures side by side, each with how much lower than the teacher's; BK-SDM's published step latency."""
    base = rows[0][3]
    lines = [f"{'model':9s} {'genome':26s} {'params':>8s} {'step ms':>8s} {'lower':>6s} {'e2e ms':>8s} "
             f"{'lower':>6s} {'peak MB':>8s} {'lower':>6s} {'weights MB':>10s}  published step lower"]
    for name, gid, params, m in rows:
        low = {k: 1 - m[k] / base[k] for k in ("latency_ms", "e2e_ms", "memory_mb")}
        published = f"~{PUBLISHED[name]:.0%}" if name in PUBLISHED else ""
        lines.append(f"{name:9s} {gid:26s} {params / 1e6:7.1f}M {m['latency_ms']:8.2f} {low['latency_ms']:6.1%} "
                     f"{m['e2e_ms']:8.0f} {low['e2e_ms']:6.1%} {m['memory_mb']:8.0f} {low['memory_mb']:6.1%} "
                     f"{m['weights_mb']:10.0f}  {published}")
    return "\n".join(lines)
