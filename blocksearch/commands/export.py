"""``blocksearch export``: chosen students of a study as diffusers pipeline folders with a model card
(docs/export.md)."""

from __future__ import annotations

from blocksearch.commands.common import DEFAULT_STUDY, STORAGE_HELP


def add_parser(verbs) -> None:
    """Register ``export``."""
    p = verbs.add_parser(
        "export", help="export chosen students as diffusers StableDiffusionPipeline folders",
        description="Write each chosen student as a folder that StableDiffusionPipeline.from_pretrained loads "
                    "in plain diffusers: the student U-Net, the teacher's VAE, text encoder, tokenizer and "
                    "scheduler, and a model card README.md. --front writes one subfolder per Pareto-optimal "
                    "trial.")
    p.add_argument("--study", default=DEFAULT_STUDY, help="study name (default: %(default)s)")
    p.add_argument("--storage", default=None, help=STORAGE_HELP)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--trial", type=int, help="trial number (a completed trial)")
    which.add_argument("--design", help="a named design's trial, e.g. bk_small")
    which.add_argument("--front", action="store_true", help="every trial on the Pareto front")
    p.add_argument("-o", "--out", required=True, help="output folder (refused if not empty, unless --force)")
    p.add_argument("--force", action="store_true", help="overwrite the pipeline files in a non-empty folder")
    p.set_defaults(handler=main)


def main(args) -> int:
    """Export the chosen trials as pipeline folders; print where they are."""
    from blocksearch.report.export import export_study

    folders = export_study(args.study, args.storage, args.out, trial=args.trial, design=args.design,
                           front=args.front, force=args.force)
    print(f"exported {len(folders)} student(s) to: " + ", ".join(f"{f}/" for f in folders))
    return 0
