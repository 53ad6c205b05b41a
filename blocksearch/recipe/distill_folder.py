"""``blocksearch distill``'s work, its flags read (commands/distill.py): one KD run (BK-SDM's feature KD, arXiv
2305.15798) of a design cut out of the teacher, or of a saved student (``--init``), written to a folder."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from blocksearch.console import quiet
from blocksearch.errors import BlocksearchError
from blocksearch.recipe.distill import DistillConfig, distill, distill_defaults, resolve_design, write_student
from blocksearch.recipe.student_files import check_student
from blocksearch.teachers import resolve_teacher


def distill_folder(args) -> int:
    """One KD run of ``--design`` (or from ``--init``) with the KD flags given, else the defaults that follow the
    teacher; write the student and its log to ``--out``."""
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
            raise BlocksearchError(f"--init: the {teacher.family.name} family cannot read a saved student back; "
                                   f"teacher {args.teacher} is a {teacher.family.denoiser_name}: distil a --design "
                                   f"from it instead")
        check_student(args.init, then="--init cannot continue from it; pass another student, or --design")
        student, name = teacher.family.load_student(args.init, teacher.denoiser), None
        genome = student.genome
    else:
        genome, name = resolve_design(teacher.denoiser, args.design, args.space)
        student = teacher.family.build_student(teacher.denoiser, genome)
    result = distill(teacher, student, config, args.device)
    if config.steps and not quiet():
        print(result.extra["teacher_cache"])
    meta = {"teacher": args.teacher, "design": name, "space": args.space, "distill": config.to_dict(),
            "device": args.device, "torch_threads": torch.get_num_threads(), "command": " ".join(sys.argv)}
    out = write_student(Path(args.out), student, result, meta, teacher.family.subfolder,
                        teacher_denoiser=teacher.denoiser)
    if result.losses:
        first, last = result.losses[0], result.losses[-1]
        print(f"{genome.id}: {config.steps} KD steps in {result.wall_s:.1f} s; loss {first['loss']:.4f} -> "
              f"{last['loss']:.4f} (task {last['loss_task']:.4f}, out {last['loss_kd_out']:.4f}, "
              f"feat {last['loss_kd_feat']:.4f})")
    print(f"student written to {out / teacher.family.subfolder} (log: {out / 'train_log.jsonl'})")
    return 0
