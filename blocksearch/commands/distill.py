"""``blocksearch distill``: one KD run of a named design or genome id, or continued from a saved student."""

from __future__ import annotations

import sys
from pathlib import Path

from blocksearch.cache import default_cache_dir
from blocksearch.commands.common import TEACHER_HELP
from blocksearch.console import quiet
from blocksearch.errors import BlocksearchError


def add_parser(verbs) -> None:
    """Register ``distill``."""
    p = verbs.add_parser(
        "distill", help="cut a design out of the teacher and distil it (BK-SDM feature KD)",
        description="Build a student from the teacher by block removal, train it by a short KD run "
                    "(L = l_task*L_task + l_out*L_out_kd + l_feat*L_feat_kd, BK-SDM), and write DIR/unet "
                    "(diffusers, safetensors), DIR/train_log.jsonl and DIR/distill.json.")
    p.add_argument("--teacher", default="toy", help=TEACHER_HELP + " (default: %(default)s)")
    p.add_argument("--init", default=None, metavar="DIR",
                   help="continue distilling a saved student (DIR/unet or a U-Net folder, e.g. an exported "
                        "pipeline) instead of cutting --design out of the teacher")
    p.add_argument("--design", default="bk_small", help="named design of the space (bk_base, bk_small, "
                   "bk_tiny) or a genome id such as L1-1-1-1_T1-1-1-0_Mnone (default: %(default)s)")
    p.add_argument("--space", default="unet_blocks", help="space that names the designs (default: %(default)s)")
    p.add_argument("--steps", type=int, help="KD steps; 0 = surgery only (default: DistillConfig's)")
    p.add_argument("-o", "--out", required=True, help="output folder for the student")
    p.add_argument("--batch-size", type=int, help="KD batch size (default: 16)")
    p.add_argument("--lr", type=float, help="AdamW learning rate (default: the toy's 5e-4; BK-SDM's 5e-5 for SD "
                                            "teachers)")
    p.add_argument("--lambda-task", type=float, help="weight of the task loss, MSE to the added noise (default: 1, "
                                                     "BK-SDM's)")
    p.add_argument("--lambda-out", type=float, help="weight of the output KD loss, MSE to the teacher's output "
                                                    "(default: 1)")
    p.add_argument("--lambda-feat", type=float, help="weight of the feature KD loss, MSE to the teacher's stage "
                                                     "outputs (default: 1)")
    p.add_argument("--feat-norm", action="store_true", help="LAPTOP-Diff: divide each feature term by the "
                   "teacher feature's mean square")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"),
                   help="mixed precision, a fast path (default: DistillConfig's, full precision)")
    p.add_argument("--seed", type=int, help="seed of the student's data order, noise and timesteps (default: 0)")
    p.add_argument("--data", help="toy (the toy world), or an imagefolder (images + metadata.jsonl/.csv "
                   "with file_name and text) (default: DistillConfig's)")
    p.add_argument("--resolution", type=int, help="px the imagefolder's images are encoded at (default: the "
                   "teacher's own)")
    p.add_argument("--cache-dir", default=None, help=f"teacher cache folder (default: {default_cache_dir()})")
    p.add_argument("--teacher-cache", choices=("auto", "disk", "off"), default="auto",
                   help="teacher outputs on disk where they fit under the cap, else live (auto); disk: refuse "
                        "over the cap; off: always live (default: %(default)s)")
    p.add_argument("--no-teacher-cache", action="store_true", help="the same as --teacher-cache off")
    p.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.set_defaults(handler=main)


def main(args) -> int:
    """One KD run of ``--design`` (or from ``--init``); write the student and its log."""
    import torch

    from blocksearch.recipe.distill import DistillConfig, distill, distill_defaults, resolve_design, write_student
    from blocksearch.teachers import resolve_teacher

    if args.threads:
        torch.set_num_threads(args.threads)
    given = dict(steps=args.steps, batch_size=args.batch_size, lr=args.lr, lambda_task=args.lambda_task,
                 lambda_out=args.lambda_out, lambda_feat=args.lambda_feat, precision=args.precision,
                 seed=args.seed, data=args.data, resolution=args.resolution)
    ref = resolve_teacher(args.teacher)  # --teacher, read once
    defaults = distill_defaults(ref.is_toy)  # BK-SDM's lr for SD teachers
    config = DistillConfig(**(defaults | {k: v for k, v in given.items() if v is not None}), feat_norm=args.feat_norm,
                           cache_dir=args.cache_dir,
                           teacher_cache="off" if args.no_teacher_cache else args.teacher_cache)
    teacher = ref.load(args.device)
    if args.init:  # continue distilling a saved student (e.g. an exported one, at full length)
        if teacher.family.load_student is None:
            raise BlocksearchError(f"--init continues U-Net students only; teacher {args.teacher} is a "
                                   f"{teacher.family.denoiser_name}: distil a --design from it instead")
        student, name = teacher.family.load_student(args.init, teacher.unet), None
        genome = student.genome
    else:
        genome, name = resolve_design(teacher.denoiser, args.design, args.space)
        student = teacher.family.build_student(teacher.denoiser, genome)
    result = distill(teacher, student, config, args.device)
    if config.steps and not quiet():
        print(result.extra["teacher_cache"])
    meta = {"teacher": args.teacher, "design": name, "space": args.space, "distill": config.to_dict(),
            "device": args.device, "torch_threads": torch.get_num_threads(), "command": " ".join(sys.argv)}
    out = write_student(Path(args.out), student, result, meta, teacher.family.subfolder)
    if result.losses:
        first, last = result.losses[0], result.losses[-1]
        print(f"{genome.id}: {config.steps} KD steps in {result.wall_s:.1f} s; loss {first['loss']:.4f} -> "
              f"{last['loss']:.4f} (task {last['loss_task']:.4f}, out {last['loss_kd_out']:.4f}, "
              f"feat {last['loss_kd_feat']:.4f})")
    print(f"student written to {out / teacher.family.subfolder} (log: {out / 'train_log.jsonl'})")
    return 0
