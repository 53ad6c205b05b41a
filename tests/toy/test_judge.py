import pytest
import torch
import torch_fidelity
from safetensors.torch import save_file
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from blocksearch.generation import ImageSet
from blocksearch.toy import judge as J
from blocksearch.toy.world import parse_prompt, real_images, sample_batch


@pytest.fixture(scope="module")
def judge_file(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("judge") / "judge.safetensors"
    save_file(J.ToyJudge().state_dict(), path)
    return path


def test_registered_with_torch_fidelity():
    assert FEATURE_EXTRACTORS_REGISTRY["toy-judge"] is J.ToyJudgeFeatureExtractor


def test_fid_through_torch_fidelity(judge_file):
    a, b = real_images(24, seed=1), real_images(24, seed=2)
    m = torch_fidelity.calculate_metrics(
        input1=ImageSet.of(a), input2=ImageSet.of(b), fid=True, feature_extractor="toy-judge",
        feature_extractor_weights_path=str(judge_file), cuda=False, cache=False, verbose=False, save_cpu_ram=True,
    )
    assert m["frechet_inception_distance"] >= 0


def test_features_and_alignment_shapes(judge_file):
    judge = J.load_judge(path=judge_file)
    imgs = real_images(5, seed=0)
    f_uint8 = J.judge_features(imgs, judge)
    f_float = J.judge_features(imgs.float() / 255, judge)
    assert f_uint8.shape == (5, J.FEATURE_DIM) and torch.allclose(f_uint8, f_float, atol=1e-5)
    score = J.text_alignment(imgs, ["a small red circle"] * 5, judge)
    assert 0.0 <= score <= 1.0


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
