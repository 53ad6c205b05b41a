"""A procedural captioned-image world: flat shapes on a plain background, captions from a tiny grammar.

One object:  "a {size} {colour} {shape}"                      e.g. "a small red circle"
Two objects: "a {colour} {shape} {relation} a {colour} {shape}" e.g. "a red circle above a blue square"

Everything is a pure function of a seed, so batches, held-out prompts and FID reference sets are
reproducible. Images are 64x64 RGB, drawn on a 4x supersampled grid for antialiased edges.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch

from blocksearch.errors import BlocksearchError

RESOLUTION = 64
SHAPES = ("circle", "square", "triangle")
COLOURS = ("red", "green", "blue", "yellow")
SIZES = ("small", "large")
RELATIONS = ("above", "left of")
VOCABULARY = ("a", *SIZES, *COLOURS, *SHAPES, "above", "left", "of")

_RGB = {"red": (220, 40, 40), "green": (40, 160, 60), "blue": (40, 80, 220), "yellow": (235, 195, 30)}
_BACKGROUND = (240, 240, 235)
_RADIUS = {"small": 8.0, "large": 17.0, None: 10.0}  # half-extent in pixels; None = two-object scenes
_SUPERSAMPLE = 4
_P_SINGLE = 0.35
_HELDOUT_SEED = 0x70E_5EED


@dataclass(frozen=True)
class Obj:
    """One object of a scene; size is None in two-object scenes (their objects have one size)."""

    shape: str
    colour: str
    size: str | None = None


@dataclass(frozen=True)
class Scene:
    """Labels of one image: one object, or two objects where `objects[0]` is `relation` `objects[1]`."""

    objects: tuple[Obj, ...]
    relation: str | None = None

    @property
    def caption(self) -> str:
        a = self.objects[0]
        if self.relation is None:
            return f"a {a.size} {a.colour} {a.shape}"
        b = self.objects[1]
        return f"a {a.colour} {a.shape} {self.relation} a {b.colour} {b.shape}"


_SINGLE = re.compile(rf"a ({'|'.join(SIZES)}) ({'|'.join(COLOURS)}) ({'|'.join(SHAPES)})")
_PAIR = re.compile(
    rf"a ({'|'.join(COLOURS)}) ({'|'.join(SHAPES)}) ({'|'.join(RELATIONS)}) a ({'|'.join(COLOURS)}) ({'|'.join(SHAPES)})"
)


def parse_prompt(prompt: str) -> Scene:
    """The Scene a prompt describes; ValueError (one line, listing the vocabulary) if outside the grammar."""
    text = " ".join(prompt.lower().split())
    unknown = sorted({w for w in text.split() if w not in VOCABULARY})
    if unknown:
        raise BlocksearchError(
            f"prompt {prompt!r} has words outside the toy grammar: {', '.join(unknown)}; "
            f"vocabulary: {' '.join(VOCABULARY)}"
        )
    if m := _SINGLE.fullmatch(text):
        return Scene((Obj(m[3], m[2], m[1]),))
    if m := _PAIR.fullmatch(text):
        return Scene((Obj(m[2], m[1]), Obj(m[5], m[4])), m[3])
    raise BlocksearchError(
        f"prompt {prompt!r} does not follow the toy grammar: 'a SIZE COLOUR SHAPE' or "
        f"'a COLOUR SHAPE RELATION a COLOUR SHAPE'; vocabulary: {' '.join(VOCABULARY)}"
    )


def validate_prompt(prompt: str) -> str:
    """Return the prompt unchanged if the toy grammar accepts it, else raise a one-line ValueError."""
    parse_prompt(prompt)
    return prompt


def all_captions() -> list[str]:
    """Every caption of the grammar (24 one-object + 288 two-object)."""
    singles = [Scene((Obj(s, c, z),)).caption for z in SIZES for c in COLOURS for s in SHAPES]
    objs = [Obj(s, c) for c in COLOURS for s in SHAPES]
    pairs = [Scene((a, b), r).caption for r in RELATIONS for a in objs for b in objs]
    return singles + pairs


def random_scene(rng: np.random.Generator) -> Scene:
    """Draw scene labels: one object with probability 0.35, else two objects and a relation."""
    if rng.random() < _P_SINGLE:
        return Scene((Obj(rng.choice(SHAPES), rng.choice(COLOURS), rng.choice(SIZES)),))
    a, b = (Obj(rng.choice(SHAPES), rng.choice(COLOURS)) for _ in range(2))
    return Scene((a, b), RELATIONS[rng.integers(len(RELATIONS))])


def _centres(scene: Scene, rng: np.random.Generator) -> list[tuple[float, float]]:
    """Object centres (x, y) in pixels. One object: anywhere. Two: in the two halves of the relation's
    axis (16 and 48 px, +-3 px), near the middle across (32 +-4 px), so a relation is unambiguous."""
    if scene.relation is None:
        r = _RADIUS[scene.objects[0].size] + 2
        return [tuple(rng.uniform(r, RESOLUTION - r, size=2))]
    along = np.array([16.0, 48.0]) + rng.uniform(-3, 3, size=2)
    across = 32 + rng.uniform(-4, 4) + rng.uniform(-1.5, 1.5, size=2)
    if scene.relation == "above":
        return [(across[0], along[0]), (across[1], along[1])]
    return [(along[0], across[0]), (along[1], across[1])]  # left of: the axis is x


def _mask(shape: str, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    """Coverage of one shape as a 64x64 float mask in [0, 1], from a 4x supersampled bounding box."""
    out = np.zeros((RESOLUTION, RESOLUTION), np.float32)
    R = r * 1.2 + 1
    x0, x1 = max(0, int(cx - R)), min(RESOLUTION, int(cx + R) + 1)
    y0, y1 = max(0, int(cy - R)), min(RESOLUTION, int(cy + R) + 1)
    k = _SUPERSAMPLE
    ys, xs = np.mgrid[y0 * k : y1 * k, x0 * k : x1 * k]
    dx, dy = (xs + 0.5) / k - cx, (ys + 0.5) / k - cy
    if shape == "circle":
        inside = dx**2 + dy**2 <= r**2
    elif shape == "square":
        c, s = np.cos(angle), np.sin(angle)
        u, v = c * dx + s * dy, -s * dx + c * dy
        inside = np.maximum(np.abs(u), np.abs(v)) <= r * 0.85
    else:  # upward equilateral triangle with circumradius 1.15 r, centred on (cx, cy)
        t = r * 1.15
        inside = (dy <= t / 2) & (np.sqrt(3) * dx - dy <= t) & (-np.sqrt(3) * dx - dy <= t)
    out[y0:y1, x0:x1] = inside.reshape(y1 - y0, k, x1 - x0, k).mean(axis=(1, 3))
    return out


def render(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """Draw a scene as a uint8 HxWx3 image; positions and small rotations come from rng."""
    img = np.empty((RESOLUTION, RESOLUTION, 3), np.float32)
    img[:] = _BACKGROUND
    for obj, (cx, cy) in zip(scene.objects, _centres(scene, rng)):
        r = _RADIUS[obj.size] * rng.uniform(0.9, 1.1)
        m = _mask(obj.shape, cx, cy, r, rng.uniform(-0.2, 0.2))[..., None]
        img = img * (1 - m) + np.asarray(_RGB[obj.colour], np.float32) * m
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def scene_and_image(seed: int, scene: Scene | None = None) -> tuple[Scene, np.ndarray]:
    """One example from its own seed; pass `scene` to draw a given caption (layout still from the seed)."""
    rng = np.random.default_rng([seed, 1])
    if scene is None:
        scene = random_scene(rng)
    return scene, render(scene, rng)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 NxHxWx3 -> float Nx3xHxW in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1)


def sample_batch(n: int, seed: int, index: int = 0) -> tuple[torch.Tensor, list[str], list[Scene]]:
    """Batch `index` of the endless stream `seed`: images in [-1, 1] (n,3,64,64), captions, scene labels."""
    base = np.random.SeedSequence([seed, index]).generate_state(n, dtype=np.uint64)
    scenes, images = zip(*(scene_and_image(int(s)) for s in base))
    return to_tensor(np.stack(images)), [s.caption for s in scenes], list(scenes)


def heldout_prompts(n: int = 64) -> list[tuple[str, int]]:
    """The fixed evaluation set: (prompt, seed) pairs; all 24 one-object captions, then two-object ones."""
    rng = np.random.default_rng(_HELDOUT_SEED)
    captions = all_captions()
    singles, pairs = captions[:24], captions[24:]
    chosen = singles[: min(n, 24)] + [pairs[i] for i in rng.permutation(len(pairs))[: max(0, n - 24)]]
    seeds = rng.integers(2**31, 2**32 - 1, size=len(chosen))  # fixed; training draws from other seed streams
    return [(p, int(s)) for p, s in zip(chosen, seeds)]


def real_images(n: int, seed: int, prompts: list[str] | None = None) -> torch.Tensor:
    """n real uint8 images (n,3,64,64) for FID references; of given prompts (cycled) or of random scenes."""
    base = np.random.SeedSequence([seed, 0x5EA1]).generate_state(n, dtype=np.uint64)
    out = []
    for i, s in enumerate(base):
        scene = parse_prompt(prompts[i % len(prompts)]) if prompts else None
        out.append(scene_and_image(int(s), scene)[1])
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()
