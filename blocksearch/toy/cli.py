"""`blocksearch toy build | sample | check`: `add_parser(subparsers)` registers them (blocksearch/cli.py's table of
verbs); `main` runs the verbs alone (`python -m blocksearch.toy`).

The handlers live in toy/commands.py, imported only when a verb runs: building the parser must stay light
(`blocksearch --help` would otherwise load torch, diffusers and torch-fidelity).
"""

from __future__ import annotations

import argparse
import sys

from blocksearch.console import add_renamed
from blocksearch.errors import BlocksearchError
from blocksearch.settings import GUIDANCE_SCALE, N_PROMPTS, NUM_STEPS

DESCRIPTION = "The toy text-to-image world, its teacher pipeline and its judge."


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add `toy` and its verbs to a top-level argparse subparsers object; each verb sets `handler`."""
    toy = subparsers.add_parser("toy", help="build, sample and check the bundled toy teacher",
                                description=DESCRIPTION)
    add_toy_verbs(toy)
    return toy


add_toy_parser = add_parser  # its earlier name


def main(argv: list[str] | None = None) -> int:
    """The toy verbs as their own command; bad input is one line on stderr and exit code 2."""
    parser = argparse.ArgumentParser(prog="python -m blocksearch.toy", description=DESCRIPTION)
    add_toy_verbs(parser)
    args = parser.parse_args(argv)
    try:
        return args.handler(args) or 0
    except BlocksearchError as err:
        print(f"blocksearch: error: {err}", file=sys.stderr)
        return 2


def add_toy_verbs(toy: argparse.ArgumentParser) -> None:
    """The verbs build, sample and check under ``toy``; each sets `handler`."""
    verbs = toy.add_subparsers(dest="toy_command", required=True, metavar="VERB")

    b = verbs.add_parser("build", help="train the toy teacher and judge into a folder",
                         description="Train VAE, judge, then text encoder + U-Net; write a diffusers pipeline "
                                     "folder plus judge.safetensors and build.json. --family dit trains the toy "
                                     "transformer teacher instead: a PixArt-style transformer on the toy U-Net "
                                     "teacher's VAE, text encoder and judge (a PixArtSigmaPipeline folder).")
    b.add_argument("-o", "--out", required=True, help="output folder (the bundled ones: blocksearch/toy/assets, "
                                                      "blocksearch/toy/assets_dit for --family dit)")
    b.add_argument("--family", choices=("unet", "dit"), default="unet",
                   help="unet: the toy U-Net teacher; dit: the toy transformer teacher (default: unet)")
    b.add_argument("--from", dest="source", default=None,
                   help="--family dit: the toy U-Net teacher folder whose VAE, text encoder and judge it reuses "
                        "(default: the bundled one)")
    b.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    b.add_argument("--budget", choices=("tiny", "full"), default="full",
                   help="tiny: seconds, exercises every code path (CI); full: the real teacher (~55 min on 2 CPU cores; "
                        "dit: ~45 min)")
    b.add_argument("--weights-dtype", choices=("fp16", "fp32"), default="fp16",
                   help="dtype of stored weights (loaded as fp32); fp16 keeps the bundled assets small")
    b.add_argument("--threads", type=int, default=2,
                   help="torch CPU threads (default 2; on a shared, loaded machine 1 can be several times faster)")
    b.set_defaults(handler=run_verb)

    s = verbs.add_parser("sample", help="generate one image from a prompt of the toy grammar",
                         description="Generate one 64x64 image with the toy teacher.")
    s.add_argument("prompt", help='e.g. "a red circle above a blue square" or "a small green triangle"')
    add_renamed(s, "-o", "--out", old="--output", required=True, help="PNG file to write")
    s.add_argument("--seed", type=int, default=0, help="generation seed (default 0)")
    s.add_argument("--teacher", default=None, help="pipeline folder (default: bundled assets)")
    _sampling_args(s)
    s.set_defaults(handler=run_verb)

    c = verbs.add_parser("check", help="print judge accuracy, text alignment and toy-FID figures",
                         description="Evaluate the teacher on the held-out prompts against a random-U-Net "
                                     "baseline and the real-vs-real floor.")
    c.add_argument("--teacher", default=None, help="pipeline folder (default: bundled assets)")
    c.add_argument("--judge", default=None, help="judge .safetensors (default: bundled assets)")
    c.add_argument("--prompts", type=int, default=N_PROMPTS,
                   help=f"held-out prompts, the 24 one-object ones first (default {N_PROMPTS}, as blocksearch evaluate)")
    c.add_argument("--per-prompt", type=int, default=1, help="images per held-out prompt (default 1)")
    c.add_argument("--grid", default=None, help="also save a captioned grid of the first 16 samples here")
    c.add_argument("--json", default=None, help="also write the figures as JSON here")
    _sampling_args(c)
    c.set_defaults(handler=run_verb)


def _sampling_args(p) -> None:
    add_renamed(p, "--inference-steps", old="--steps", type=int, default=NUM_STEPS,
                help=f"denoising steps per image (default {NUM_STEPS})")
    p.add_argument("--guidance", type=float, default=GUIDANCE_SCALE, help=f"CFG scale (default {GUIDANCE_SCALE})")


def run_verb(args) -> None:
    """The verb's handler, toy/commands.py's ``cmd_toy_<verb>``, imported only when it runs."""
    from blocksearch.toy import commands

    getattr(commands, f"cmd_toy_{args.toy_command}")(args)
