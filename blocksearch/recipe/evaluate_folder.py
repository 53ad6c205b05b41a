"""``blocksearch evaluate DIR``'s work, its flags checked (commands/evaluate.py): the search's own evaluation of
the student in DIR (evaluate.py), or BK-SDM's zero-shot MS-COCO protocol (coco.py, arXiv 2305.15798 sec. 4)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from blocksearch.families.unet.topology import load_unet
from blocksearch.recipe import evaluate as evaluation  # .evaluate looked up when called (a test stands in for it)
from blocksearch.recipe.coco import ProtocolSpec, evaluate_protocol, format_result
from blocksearch.recipe.evaluate import EvalConfig, eval_defaults, inception_weights, student_pipeline, toy_prompts_note
from blocksearch.recipe.preflight import check_real_inputs
from blocksearch.recipe.student_files import check_student
from blocksearch.teachers import load_teacher


def evaluate_folder(args, folder: Path, teacher_spec: str, out: Path) -> int:
    """Score the student in ``folder`` against ``teacher_spec`` (``--protocol``'s way) and write its metrics to
    ``out``; print them."""
    if args.threads:
        torch.set_num_threads(args.threads)
    check_student(folder, then="nothing was evaluated; train the student again (blocksearch distill or train)")
    if args.protocol == "bk-sdm":
        return run_bk_sdm(args, folder, teacher_spec, out)
    check_real_inputs(reference=args.reference, inception_weights=args.inception_weights, clip_model=args.clip_model,
                      fid_images=args.prompts or EvalConfig.prompts)
    teacher = load_teacher(teacher_spec, args.device)
    unet = teacher.family.load_student_denoiser(folder, teacher.denoiser)
    given = dict(prompts=args.prompts, steps=args.inference_steps, guidance=args.guidance, seed=args.seed,
                 resolution=args.resolution, reference_images=args.reference_images,
                 latency_repeats=args.latency_repeats)
    config = EvalConfig(**(eval_defaults(teacher.is_toy) | {k: v for k, v in given.items() if v is not None}),
                        reference=args.reference, captions=args.captions, inception_weights=args.inception_weights,
                        clip_model=args.clip_model, cache_dir=args.cache_dir)
    if note := toy_prompts_note("--prompts", config.prompts, teacher):
        print(note)
    metrics = evaluation.evaluate(teacher, unet, config, args.device)
    out.write_text(json.dumps(metrics.to_dict() | {"eval": config.to_dict(), "teacher": teacher.name}, indent=2) + "\n")
    align = "n/a" if metrics.alignment is None else f"{metrics.alignment:.3f}"
    print(f"fid {metrics.fid:.4f}  alignment {align}  params {metrics.params / 1e6:.2f}M  "
          f"MACs {metrics.macs / 1e9:.3f}G  latency {metrics.latency_ms:.2f} ms (cv {metrics.latency_cv:.1%})")
    print("timings: " + ", ".join(f"{k} {v:.1f}" for k, v in metrics.timings.items()))
    print(f"metrics written to {out}")
    return 0


def run_bk_sdm(args, folder: Path, teacher_spec: str, out: Path) -> int:
    """``evaluate --protocol bk-sdm``: coco.evaluate_protocol on the user's val2014 files, printed next to
    the published BK-SDM figures (coco.PUBLISHED)."""
    weights = args.inception_weights or str(inception_weights(EvalConfig()))
    overrides = dict(steps=args.inference_steps, guidance=args.guidance, resolution=args.resolution, seed=args.seed)
    spec = ProtocolSpec(**{k: v for k, v in overrides.items() if v is not None})
    unet = load_unet(folder, what="student folder", expected="a folder written by `blocksearch distill`, a "
                                                             "diffusers U-Net folder or a pipeline folder")
    teacher = load_teacher(teacher_spec, args.device)
    result = evaluate_protocol(student_pipeline(teacher, unet), spec, args.coco_captions, args.coco_images, weights,
                               args.clip_model, limit=args.limit, device=args.device, cache_dir=args.cache_dir)
    out.write_text(json.dumps(result | {"model": str(folder), "teacher": teacher.name}, indent=2, default=str) + "\n")
    print(format_result(result, str(folder)))
    print(f"metrics written to {out}")
    return 0
