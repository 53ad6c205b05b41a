"""The toy judge: a small CNN that reads a toy-world image's labels back.

It supplies (a) 64-d image features for FID, registered with torch-fidelity as "toy-judge" (the toy
stand-in for Inception), and (b) text alignment: the fraction of images whose every predicted
attribute matches its prompt (the toy stand-in for CLIP score).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torch_fidelity
from safetensors.torch import load_file
from torch import nn
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

from blocksearch.recipe.generation import ImageSet
from blocksearch.toy.assets import ASSETS, JUDGE_FILE, asset_error, check_asset
from blocksearch.toy.world import COLOURS, RELATIONS, RESOLUTION, SHAPES, SIZES, Obj, Scene, parse_prompt

FEATURE_DIM = 64
# head name -> classes; "count" is 1 or 2 objects, "*_a" is the first object of the caption
HEADS = {
    "count": (1, 2),
    "relation": RELATIONS,
    "shape_a": SHAPES,
    "colour_a": COLOURS,
    "size_a": SIZES,
    "shape_b": SHAPES,
    "colour_b": COLOURS,
}


def scene_targets(scene: Scene) -> dict[str, int]:
    """Class index per head; heads that do not apply to this scene get -1 (ignored)."""
    a = scene.objects[0]
    two = scene.relation is not None
    b = scene.objects[1] if two else None
    return {
        "count": int(two),
        "relation": RELATIONS.index(scene.relation) if two else -1,
        "shape_a": SHAPES.index(a.shape),
        "colour_a": COLOURS.index(a.colour),
        "size_a": -1 if two else SIZES.index(a.size),
        "shape_b": SHAPES.index(b.shape) if two else -1,
        "colour_b": COLOURS.index(b.colour) if two else -1,
    }


class ToyJudge(nn.Module):
    """4 stride-2 conv stages with GroupNorm (64 -> 4 px), a 64-d feature layer, one linear head per attribute."""

    def __init__(self, width: int = 16):
        super().__init__()
        chans = (3, width, 2 * width, 4 * width, 4 * width)
        layers = []
        for cin, cout in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(8, cout), nn.SiLU(),
                       nn.Conv2d(cout, cout, 3, stride=2, padding=1), nn.GroupNorm(8, cout), nn.SiLU()]
        self.conv = nn.Sequential(*layers)
        self.feature = nn.Linear(chans[-1] * (RESOLUTION // 16) ** 2, FEATURE_DIM)
        self.heads = nn.ModuleDict({k: nn.Linear(FEATURE_DIM, len(v)) for k, v in HEADS.items()})

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """x: float (N,3,64,64) in [-1, 1] -> (N, 64) features (flattened spatial map keeps layout)."""
        return self.feature(self.conv(x).flatten(1))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = F.silu(self.features(x))
        return {k: head(f) for k, head in self.heads.items()}


def loss(judge: ToyJudge, x: torch.Tensor, scenes: Sequence[Scene]) -> torch.Tensor:
    """Sum of per-head cross-entropies over the heads that apply to each scene."""
    logits = judge(x)
    targets = [scene_targets(s) for s in scenes]
    return sum(
        F.cross_entropy(logits[k], torch.tensor([t[k] for t in targets]), ignore_index=-1) for k in HEADS
    )


def degrade(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Training augmentation: per image a random Gaussian blur (sigma 0-1.5 px), contrast/brightness
    jitter and pixel noise, so the judge reads the soft edges and tints of generated images, not only
    the world's crisp renders. x: float (N,3,H,W) in [-1, 1]."""
    n = len(x)
    sigma = torch.rand(n, generator=gen) * 1.5
    r = torch.arange(-3, 4, dtype=x.dtype)
    k = torch.exp(-(r[None] ** 2) / (2 * sigma[:, None].clamp(min=1e-3) ** 2))
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(3, 0)  # (3n, 7) separable kernel per channel
    y = x.reshape(1, 3 * n, *x.shape[-2:])
    y = F.conv2d(F.pad(y, (3, 3, 0, 0), mode="replicate"), k[:, None, None, :], groups=3 * n)
    y = F.conv2d(F.pad(y, (0, 0, 3, 3), mode="replicate"), k[:, None, :, None], groups=3 * n)
    y = y.reshape(x.shape)
    scale = 1 + (torch.rand(n, 1, 1, 1, generator=gen) - 0.5) * 0.3
    shift = (torch.rand(n, 3, 1, 1, generator=gen) - 0.5) * 0.2
    noise = torch.randn(x.shape, generator=gen) * torch.rand(n, 1, 1, 1, generator=gen) * 0.1
    return (y * scale + shift + noise).clamp(-1, 1)


def to_judge_input(images) -> torch.Tensor:
    """uint8 (N,3,H,W) | float (N,3,H,W) in [0, 1] (diffusers output_type="pt") | list of PIL -> [-1, 1] 64x64."""
    if isinstance(images, (list, tuple)):
        images = torch.from_numpy(np.stack([np.asarray(im.convert("RGB")) for im in images])).permute(0, 3, 1, 2)
    if images.dtype == torch.uint8:
        x = images.float() / 255
    elif images.is_floating_point():
        x = images.float()
    else:
        raise ValueError(f"judge input must be uint8 or float in [0, 1], got dtype {images.dtype}")
    if x.shape[-2:] != (RESOLUTION, RESOLUTION):
        x = F.interpolate(x, size=(RESOLUTION, RESOLUTION), mode="bilinear", antialias=True, align_corners=False)
    return x * 2 - 1


def load_judge(device: str = "cpu", path: str | Path | None = None) -> ToyJudge:
    """The toy judge (eval mode, fp32) from `path` (a .safetensors file) or the bundled assets."""
    file = Path(path) if path is not None else ASSETS / JUDGE_FILE
    check_asset(file)
    state = {k: v.float() for k, v in load_file(file).items()}
    judge = ToyJudge()
    try:
        judge.load_state_dict(state)
    except RuntimeError as e:
        raise asset_error(file, f"not a toy judge ({str(e).splitlines()[0][:80]})") from None
    return judge.eval().requires_grad_(False).to(device)


def _judge(judge: ToyJudge | None) -> ToyJudge:
    return load_judge() if judge is None else judge


@torch.no_grad()
def judge_features(images, judge: ToyJudge | None = None, batch_size: int = 256) -> torch.Tensor:
    """(N, 64) toy-judge features of images (see `to_judge_input` for accepted formats)."""
    judge = _judge(judge)
    x = to_judge_input(images)
    dev = next(judge.parameters()).device
    return torch.cat([judge.features(x[i : i + batch_size].to(dev)).cpu() for i in range(0, len(x), batch_size)])


@torch.no_grad()
def predict_scenes(images, judge: ToyJudge | None = None, batch_size: int = 256) -> list[Scene]:
    """The judge's reading of each image as a Scene."""
    judge = _judge(judge)
    x = to_judge_input(images)
    dev = next(judge.parameters()).device
    preds: dict[str, list[int]] = {k: [] for k in HEADS}
    for i in range(0, len(x), batch_size):
        for k, v in judge(x[i : i + batch_size].to(dev)).items():
            preds[k] += v.argmax(1).tolist()
    scenes = []
    for i in range(len(x)):
        p = {k: HEADS[k][preds[k][i]] for k in HEADS}
        if p["count"] == 1:
            scenes.append(Scene((Obj(p["shape_a"], p["colour_a"], p["size_a"]),)))
        else:
            scenes.append(Scene((Obj(p["shape_a"], p["colour_a"]), Obj(p["shape_b"], p["colour_b"])), p["relation"]))
    return scenes


def text_alignment(images, prompts: Sequence[str], judge: ToyJudge | None = None) -> float:
    """Fraction of images whose predicted scene equals the scene their prompt describes (all attributes)."""
    if len(images) != len(prompts):
        raise ValueError(f"text_alignment got {len(images)} images but {len(prompts)} prompts")
    wanted = [parse_prompt(p) for p in prompts]
    return float(np.mean([a == b for a, b in zip(predict_scenes(images, judge), wanted)]))


def attribute_accuracy(images, scenes: Sequence[Scene], judge: ToyJudge | None = None) -> dict[str, float]:
    """Per-head accuracy over the scenes a head applies to, plus "all": every attribute of the scene right."""
    predicted = predict_scenes(images, judge)
    out = {}
    for k in HEADS:
        pairs = [(scene_targets(p)[k], scene_targets(s)[k]) for p, s in zip(predicted, scenes) if scene_targets(s)[k] >= 0]
        out[k] = float(np.mean([a == b for a, b in pairs]))
    out["all"] = float(np.mean([p == s for p, s in zip(predicted, scenes)]))
    return out


class ToyJudgeFeatureExtractor(FeatureExtractorBase):
    """torch-fidelity feature extractor "toy-judge": uint8 (N,3,H,W) -> ("features",) of shape (N, 64).

    Weights: `feature_extractor_weights_path` (a judge safetensors file) or the bundled asset.
    """

    def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
        super().__init__(name, features_list)
        self.judge = load_judge(path=feature_extractor_weights_path)

    @staticmethod
    def get_provided_features_list():
        return ("features",)

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return {"fid": "features", "kid": "features", "prc": "features"}[metric]

    @staticmethod
    def can_be_compiled():
        return False

    @staticmethod
    def get_dummy_input_for_compile():
        return torch.zeros(1, 3, RESOLUTION, RESOLUTION, dtype=torch.uint8)

    def forward(self, x):
        if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"toy-judge expects uint8 (N,3,H,W) images, got {x.dtype} {tuple(x.shape)}")
        feats = self.judge.features(to_judge_input(x).to(next(self.judge.parameters()).device))
        return (feats.double(),)


if "toy-judge" not in FEATURE_EXTRACTORS_REGISTRY:
    register_feature_extractor("toy-judge", ToyJudgeFeatureExtractor)


def toy_fid(images1: torch.Tensor, images2: torch.Tensor, judge_path=None, cuda: bool = False) -> float:
    """FID between two uint8 (N,3,H,W) image sets via torch-fidelity's "toy-judge" extractor (default: bundled judge)."""
    m = torch_fidelity.calculate_metrics(
        input1=ImageSet.of(images1), input2=ImageSet.of(images2), fid=True, feature_extractor="toy-judge",
        cuda=cuda, cache=False, verbose=False, save_cpu_ram=True,
        feature_extractor_weights_path=None if judge_path is None else str(judge_path),
    )
    return float(m["frechet_inception_distance"])
