"""The handlers of `blocksearch toy build | sample | check`; toy/cli.py holds their parser and imports this
module only when a verb runs (the parser stays light: a fast `blocksearch --help`)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from PIL import Image

from blocksearch.errors import BlocksearchError
from blocksearch.toy.assets import load_toy_teacher
from blocksearch.toy.build import build
from blocksearch.toy.build_dit import build_dit
from blocksearch.toy.check import compute_figures, format_figures, save_grid
from blocksearch.toy.sample import generate
from blocksearch.toy.world import validate_prompt


def cmd_toy_build(args) -> None:
    t0 = time.perf_counter()
    if getattr(args, "family", "unet") == "dit":
        out = build_dit(args.out, seed=args.seed, budget=args.budget, weights_dtype=args.weights_dtype,
                        threads=args.threads, source=args.source)
        print(f"toy transformer teacher and judge written to {out} ({time.perf_counter() - t0:.0f} s)")
        return
    if getattr(args, "source", None):
        raise BlocksearchError("--from: for --family dit (the parts it reuses); the U-Net teacher trains its own")
    out = build(args.out, seed=args.seed, budget=args.budget, weights_dtype=args.weights_dtype, threads=args.threads)
    print(f"toy teacher and judge written to {out} ({time.perf_counter() - t0:.0f} s)")


def cmd_toy_sample(args) -> None:
    validate_prompt(args.prompt)
    pipe = load_toy_teacher(path=args.teacher)
    img = generate(pipe, [args.prompt], [args.seed], num_steps=args.inference_steps, guidance_scale=args.guidance)[0]
    Image.fromarray(img.permute(1, 2, 0).numpy()).save(args.out)
    print(f"image written to {args.out}")


def cmd_toy_check(args) -> None:
    if args.prompts < 1:
        raise BlocksearchError(f"--prompts must be at least 1, got {args.prompts}")
    f = compute_figures(args.teacher, args.judge, args.per_prompt, args.inference_steps, args.guidance, args.prompts)
    print(format_figures(f))
    if args.grid:  # 16 prompts: every 4th of the first 64, one-object and two-object ones
        idx = [i * args.per_prompt for i in range(0, min(64, args.prompts), 4)]
        prompts = [f["prompts"][i] for i in idx]
        print(f"sample grid written to {save_grid(f['images'][idx], prompts, args.grid)}")
    if args.json:
        skip = ("images", "prompts")
        Path(args.json).write_text(json.dumps({k: v for k, v in f.items() if k not in skip}, indent=2) + "\n")
        print(f"figures written to {args.json}")
