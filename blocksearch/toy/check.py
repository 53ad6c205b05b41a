"""`blocksearch toy check`: the figures that show the toy teacher and judge are fit for use.

Computes first (`compute_figures`), renders second (`format_figures`, `save_grid`).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from blocksearch.families.base import family_of
from blocksearch.settings import GUIDANCE_SCALE, N_PROMPTS, NUM_STEPS
from blocksearch.toy import models as M
from blocksearch.toy.assets import load_toy_teacher
from blocksearch.toy.judge import attribute_accuracy, load_judge, text_alignment, toy_fid
from blocksearch.toy.sample import generate
from blocksearch.toy.world import heldout_prompts, parse_prompt, real_images, scene_and_image


def judge_accuracy(judge, n_random: int = 1024, n_prompts: int = N_PROMPTS) -> dict[str, dict[str, float]]:
    """Judge attribute accuracy on real images: the held-out (prompt, seed) set, and n_random fresh scenes."""
    held = heldout_prompts(n_prompts)
    scenes = [parse_prompt(p) for p, _ in held]
    imgs = torch.from_numpy(np.stack([scene_and_image(s, sc)[1] for (_, s), sc in zip(held, scenes)]))
    rnd = [scene_and_image(int(s)) for s in np.random.SeedSequence(0xACC).generate_state(n_random, np.uint64)]
    rimgs = torch.from_numpy(np.stack([im for _, im in rnd]))
    return {
        "heldout": attribute_accuracy(imgs.permute(0, 3, 1, 2), scenes, judge),
        f"random{n_random}": attribute_accuracy(rimgs.permute(0, 3, 1, 2), [sc for sc, _ in rnd], judge),
    }


def _split_by_objects(prompts: list[str]) -> dict[str, list[int]]:
    """Indices of one- and two-object prompts."""
    n = [len(parse_prompt(p).objects) for p in prompts]
    return {"one": [i for i, k in enumerate(n) if k == 1], "two": [i for i, k in enumerate(n) if k == 2]}


def compute_figures(teacher: str | None = None, judge_path: str | None = None, per_prompt: int = 1,
                    num_steps: int = NUM_STEPS, guidance_scale: float = GUIDANCE_SCALE, n_prompts: int = N_PROMPTS) -> dict:
    """Judge accuracy, teacher text alignment, toy-FID of teacher / random U-Net / real-vs-real, load time.

    Defaults are the default evaluation settings of `blocksearch evaluate` (settings.py)."""
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    pipe = load_toy_teacher(path=teacher)
    load_s = time.perf_counter() - t0
    judge = load_judge(path=judge_path)
    held = heldout_prompts(n_prompts)
    prompts = [p for p, _ in held for _ in range(per_prompt)]
    seeds = [s + k for _, s in held for k in range(per_prompt)]
    kw = dict(num_steps=num_steps, guidance_scale=guidance_scale, progress=True)
    images = generate(pipe, prompts, seeds, **kw)
    ref, ref2 = real_images(len(prompts), 1, prompts), real_images(len(prompts), 2, prompts)
    sub = family_of(pipe).subfolder  # the toy U-Net's, or the toy transformer's (toy/build_dit.py)
    trained = getattr(pipe, sub)
    torch.manual_seed(0)
    setattr(pipe, sub, (M.make_unet() if sub == "unet" else M.make_transformer()).eval())
    random_images = generate(pipe, prompts, seeds, **kw)
    setattr(pipe, sub, trained)
    return {
        "settings": {"prompts": len(held), "images_per_prompt": per_prompt, "num_steps": num_steps,
                     "guidance_scale": guidance_scale, "sampler": type(pipe.scheduler).__name__},
        "teacher_load_s": load_s,
        "judge_accuracy": judge_accuracy(judge, n_prompts=n_prompts),
        "text_alignment": text_alignment(images, prompts, judge),
        "text_alignment_by_attribute": attribute_accuracy(images, [parse_prompt(p) for p in prompts], judge),
        "text_alignment_by_objects": {
            f"{k}_object": text_alignment(images[idx], [prompts[i] for i in idx], judge)
            for k, idx in _split_by_objects(prompts).items() if len(idx)},
        "text_alignment_random_unet": text_alignment(random_images, prompts, judge),
        "toy_fid": toy_fid(images, ref, judge_path),
        "toy_fid_random_unet": toy_fid(random_images, ref, judge_path),
        "toy_fid_real_floor": toy_fid(ref2, ref, judge_path),
        "images": images,
        "prompts": prompts,
    }


def format_figures(f: dict) -> str:
    """Plain-text report of `compute_figures` output."""
    lines = [f"settings: {f['settings']}", f"teacher load: {f['teacher_load_s']:.2f} s"]
    for k, acc in f["judge_accuracy"].items():
        lines.append(f"judge accuracy on real images ({k}): " + ", ".join(f"{a}={v:.3f}" for a, v in acc.items()))
    lines += [
        f"text alignment: teacher {f['text_alignment']:.3f}, random U-Net {f['text_alignment_random_unet']:.3f}",
        "teacher samples matching their prompt, per attribute: "
        + ", ".join(f"{a}={v:.3f}" for a, v in f.get("text_alignment_by_attribute", {}).items()),
        "text alignment by prompt kind: "
        + ", ".join(f"{k} {v:.3f}" for k, v in f.get("text_alignment_by_objects", {}).items()),
        f"toy-FID: teacher {f['toy_fid']:.4g}, random U-Net {f['toy_fid_random_unet']:.4g}, "
        f"real-vs-real floor {f['toy_fid_real_floor']:.4g} "
        f"(teacher/random = {f['toy_fid'] / f['toy_fid_random_unet']:.3f})",
    ]
    return "\n".join(lines)


def save_grid(images: torch.Tensor, prompts: list[str], path: str | Path, cols: int = 4, scale: int = 3) -> Path:
    """A captioned grid of uint8 (N,3,64,64) images, for the README."""
    w, h, cap = 64 * scale, 64 * scale, 28
    rows = -(-len(images) // cols)
    grid = Image.new("RGB", (cols * w, rows * (h + cap)), "white")
    draw = ImageDraw.Draw(grid)
    for i, (im, p) in enumerate(zip(images, prompts)):
        x, y = (i % cols) * w, (i // cols) * (h + cap)
        grid.paste(Image.fromarray(im.permute(1, 2, 0).numpy()).resize((w, h), Image.NEAREST), (x, y))
        words = p.split()
        half = (len(words) + 1) // 2 if len(p) > 30 else len(words)
        draw.text((x + 3, y + h + 1), " ".join(words[:half]), fill="black")
        draw.text((x + 3, y + h + 14), " ".join(words[half:]), fill="black")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return path
