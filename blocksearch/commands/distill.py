"""``blocksearch distill``: one KD run of a named design or genome id, or continued from a saved student."""

from __future__ import annotations

from blocksearch.cache import default_cache_dir
from blocksearch.commands.common import TEACHER_HELP


def add_parser(verbs) -> None:
    """Register ``distill``."""
    p = verbs.add_parser(
        "distill", help="cut a design out of the teacher and distil it (BK-SDM feature KD)",
        description="Build a student from the teacher by block removal, train it by a short KD run "
                    "(L = l_task*L_task + l_out*L_out_kd + l_feat*L_feat_kd, BK-SDM), and write DIR/unet or "
                    "DIR/transformer (the teacher family's; diffusers, safetensors), DIR/block_map.json, "
                    "DIR/train_log.jsonl and DIR/distill.json.")
    p.add_argument("--teacher", default="toy", help=TEACHER_HELP + " (default: %(default)s)")
    p.add_argument("--init", default=None, metavar="DIR",
                   help="continue distilling a saved student of any family (a folder written by distill, train "
                        "or export: DIR/unet or DIR/transformer, with its block_map.json; or a bare U-Net folder) "
                        "instead of cutting --design out of the teacher")
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
    """One KD run of ``--design`` (or from ``--init``); write the student and its log: recipe/distill_folder.py."""
    from blocksearch.recipe.distill_folder import distill_folder  # torch, the teacher and the KD run

    return distill_folder(args)
