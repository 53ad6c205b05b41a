"""``blocksearch evaluate DIR``: FID, KID, text alignment, params, MACs, latency and memory of a student folder, or
BK-SDM's MS-COCO protocol (``--protocol bk-sdm``, docs/real-teachers.md)."""

from __future__ import annotations

import json
from pathlib import Path

from blocksearch.cache import default_cache_dir
from blocksearch.commands.common import TEACHER_HELP
from blocksearch.console import add_renamed
from blocksearch.errors import BlocksearchError


def add_parser(verbs) -> None:
    """Register ``evaluate``."""
    p = verbs.add_parser(
        "evaluate", help="score a student folder: FID, text alignment, params, MACs, latency",
        description="Generate the fixed prompt set with fixed seeds using the student U-Net in the "
                    "teacher's pipeline, then compute FID (torch-fidelity), text alignment, params, MACs "
                    "and latency; print them and write DIR/metrics.json. Defaults follow the teacher: the "
                    "toy's settings for the toy, BK-SDM's for SD teachers (guidance 7.5, 25 steps of the "
                    "teacher's own scheduler, its own resolution). --protocol bk-sdm runs BK-SDM's zero-shot "
                    "MS-COCO evaluation instead and prints it next to the published figures.")
    p.add_argument("dir", help="a folder written by `blocksearch distill` (or any diffusers U-Net or pipeline folder)")
    p.add_argument("--teacher", default=None, help=TEACHER_HELP + " (default: the one in DIR/distill.json, else toy)")
    p.add_argument("--protocol", choices=("search", "bk-sdm"), default="search",
                   help="search: the search's own evaluation (EvalConfig); bk-sdm: BK-SDM's MS-COCO protocol "
                        "(30K val2014 captions, PNDM 25 steps, guidance 7.5, 512 px resized to 256, FID/IS/CLIP) "
                        "on --coco-captions and --coco-images (default: %(default)s)")
    p.add_argument("--prompts", type=int, help="number of prompts (default: EvalConfig's)")
    add_renamed(p, "--inference-steps", old="--sampler-steps", type=int,
                help="denoising steps per image (default: the toy's 10; 25 for SD teachers and the bk-sdm protocol)")
    p.add_argument("--guidance", type=float,
                   help="classifier-free guidance scale (default: the toy's 3; BK-SDM's 7.5 for SD teachers)")
    p.add_argument("--resolution", type=int, help="generated image size in px (default: the teacher's own; 512 "
                                                  "for the bk-sdm protocol)")
    p.add_argument("--seed", type=int, help="generation seed, added to every prompt's own seed (default: 0)")
    p.add_argument("--reference-images", type=int, help="toy: real images behind the FID reference statistics")
    p.add_argument("--latency-repeats", type=int, help="timed repeats of the latency measurement")
    p.add_argument("--reference", default=None, help="real teachers: folder of reference images (an imagefolder's "
                                                     "captions are the prompts)")
    p.add_argument("--captions", default=None, help="real teachers: imagefolder whose captions are the prompts "
                                                    "(default: --reference's)")
    p.add_argument("--inception-weights", default=None, help="real teachers: path to "
                   "weights-inception-2015-12-05-6726825d.pth (torch-fidelity's Inception)")
    p.add_argument("--clip-model", default=None, help="real teachers: local CLIP model folder for alignment")
    p.add_argument("--coco-captions", default=None, metavar="FILE", help="bk-sdm: captions_val2014.json")
    p.add_argument("--coco-images", default=None, metavar="DIR", help="bk-sdm: the val2014 image folder")
    p.add_argument("--limit", type=int, default=None, metavar="N",
                   help="bk-sdm: the first N of the 30K prompts, a cheaper subset that says it is one")
    p.add_argument("--cache-dir", default=None, help=f"cache folder (default: {default_cache_dir()})")
    p.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("-o", "--out", default=None, help="metrics JSON path (default DIR/metrics.json; bk-sdm: "
                                                     "DIR/metrics-bk-sdm.json)")
    p.set_defaults(handler=main)


def metrics_path(out: str | None, folder: Path, name: str) -> Path:
    """Where evaluate writes its metrics, decided before anything is computed: ``-o`` as a file path, or a folder
    that exists (then ``<folder>/name``); default ``<DIR>/name``. One-line error for a path whose folder is missing."""
    if not out:
        return folder / name
    path = Path(out)
    if path.is_dir():
        return path / name
    if not path.parent.is_dir():
        raise BlocksearchError(f"-o {out}: folder {path.parent} does not exist; allowed: a JSON file path in an "
                               f"existing folder, or an existing folder (the metrics go to <folder>/{name})")
    return path


def main(args) -> int:
    """Check the flags, then score the student in DIR (or run ``--protocol bk-sdm``): recipe/evaluate_folder.py."""
    folder = Path(args.dir)
    info = json.loads((folder / "distill.json").read_text()) if (folder / "distill.json").is_file() else {}
    teacher_spec = args.teacher or info.get("teacher", "toy")
    if args.protocol == "bk-sdm":
        check_bk_sdm_flags(args)
    out = metrics_path(args.out, folder, "metrics-bk-sdm.json" if args.protocol == "bk-sdm" else "metrics.json")
    from blocksearch.recipe.evaluate_folder import evaluate_folder  # torch, the teacher and the evaluation

    return evaluate_folder(args, folder, teacher_spec, out)


def check_bk_sdm_flags(args) -> None:
    """``--protocol bk-sdm`` needs BK-SDM's MS-COCO files and a CLIP folder, and takes none of the search's prompt
    and reference flags; one line each."""
    needed = {"--coco-captions": args.coco_captions, "--coco-images": args.coco_images,
              "--clip-model": args.clip_model}
    missing = [flag for flag, value in needed.items() if value is None]
    if missing:
        raise BlocksearchError(f"--protocol bk-sdm needs {', '.join(missing)}: BK-SDM's MS-COCO val2014 captions "
                               f"file and images, and a local CLIP folder for the CLIP score")
    unused = [f"--{k.replace('_', '-')}" for k in ("prompts", "reference", "captions", "reference_images")
              if getattr(args, k) is not None]
    if unused:
        raise BlocksearchError(f"{', '.join(unused)}: not used by --protocol bk-sdm (its prompts and reference "
                               f"are MS-COCO's; --limit N takes a subset)")
