import numpy as np
import pytest
import torch
import torch_fidelity
from safetensors.torch import save_file
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from blocksearch.recipe.generation import ImageSet
from blocksearch.toy import judge as J
from blocksearch.toy.world import heldout_prompts, parse_prompt, real_images, sample_batch


@pytest.fixture(scope="module")
def judge_file(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("judge") / "judge.safetensors"
    save_file(J.ToyJudge().state_dict(), path)
    return path


def test_registered_with_torch_fidelity():
    assert FEATURE_EXTRACTORS_REGISTRY["toy-judge"] is J.ToyJudgeFeatureExtractor


def frechet(f1: torch.Tensor, f2: torch.Tensor) -> float:
    """FID from features, computed here (float64; tr sqrt(S1 S2) as the eigenvalues of S1^1/2 S2 S1^1/2)."""
    x1, x2 = f1.double().numpy(), f2.double().numpy()
    m1, m2 = x1.mean(0), x2.mean(0)
    s1, s2 = np.cov(x1, rowvar=False), np.cov(x2, rowvar=False)
    w, v = np.linalg.eigh(s1)
    root1 = (v * np.sqrt(w.clip(min=0))) @ v.T
    tr_sqrt = np.sqrt(np.linalg.eigvalsh(root1 @ s2 @ root1).clip(min=0)).sum()
    return float(((m1 - m2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt)


def test_fid_through_torch_fidelity(judge_file):
    """torch-fidelity with the "toy-judge" extractor gives the Frechet distance of the judge's features."""
    judge = J.load_judge(path=judge_file)
    a, b = real_images(96, seed=1), real_images(96, seed=2)
    noise = torch.randint(0, 256, a.shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(0))

    def fid(x, y):
        return torch_fidelity.calculate_metrics(
            input1=ImageSet.of(x), input2=ImageSet.of(y), fid=True, feature_extractor="toy-judge",
            feature_extractor_weights_path=str(judge_file), cuda=False, cache=False, verbose=False,
            save_cpu_ram=True)["frechet_inception_distance"]

    real = fid(a, b)
    assert real == pytest.approx(frechet(J.judge_features(a, judge), J.judge_features(b, judge)), rel=1e-3)
    assert real < fid(noise, b)


def test_features_and_alignment_shapes(judge_file):
    judge = J.load_judge(path=judge_file)
    imgs = real_images(5, seed=0)
    f_uint8 = J.judge_features(imgs, judge)
    f_float = J.judge_features(imgs.float() / 255, judge)
    assert f_uint8.shape == (5, J.FEATURE_DIM) and torch.allclose(f_uint8, f_float, atol=1e-5)


def test_alignment_of_the_bundled_judge_reads_the_prompt():
    """Images of their own prompts align; the same images under other prompts do not."""
    prompts = [p for p, _ in heldout_prompts(32)]
    imgs = real_images(32, seed=3, prompts=prompts)
    judge = J.load_judge()
    assert J.text_alignment(imgs, prompts, judge) >= 0.9
    assert J.text_alignment(imgs, prompts[1:] + prompts[:1], judge) <= 0.1


def test_scene_targets_mark_unused_heads():
    one = J.scene_targets(parse_prompt("a large green triangle"))
    two = J.scene_targets(parse_prompt("a red circle left of a blue square"))
    assert one["relation"] == one["shape_b"] == -1 and one["size_a"] == 1
    assert two["size_a"] == -1 and two["relation"] == 1 and two["colour_b"] == 2


def test_degrade_blurs_and_perturbs_within_range_and_is_seeded():
    x, _, _ = sample_batch(8, seed=1)
    y1 = J.degrade(x, torch.Generator().manual_seed(0))
    y2 = J.degrade(x, torch.Generator().manual_seed(0))
    assert torch.equal(y1, y2) and y1.shape == x.shape
    assert y1.min() >= -1 and y1.max() <= 1
    diff = (y1 - x).abs().mean((1, 2, 3))
    assert (diff > 0.005).all() and (diff < 0.2).all()  # changed, yet still the same picture
