import numpy as np
import pytest
import torch

from blocksearch.errors import BlocksearchError
from blocksearch.toy import world as W


def test_sample_batch_is_deterministic_by_seed_and_index():
    x1, c1, s1 = W.sample_batch(8, seed=3, index=5)
    x2, c2, s2 = W.sample_batch(8, seed=3, index=5)
    x3, c3, _ = W.sample_batch(8, seed=3, index=6)
    assert torch.equal(x1, x2) and c1 == c2 and s1 == s2
    assert not torch.equal(x1, x3)
    assert x1.shape == (8, 3, 64, 64) and x1.dtype == torch.float32
    assert x1.min() >= -1 and x1.max() <= 1


def test_captions_and_labels_agree():
    _, captions, scenes = W.sample_batch(64, seed=0)
    assert [s.caption for s in scenes] == captions
    assert all(W.parse_prompt(c) == s for c, s in zip(captions, scenes))
    assert {len(s.objects) for s in scenes} == {1, 2}


def test_grammar_round_trip_covers_every_caption():
    caps = W.all_captions()
    assert len(caps) == len(set(caps)) == 24 + 2 * 12 * 12
    assert all(W.parse_prompt(c).caption == c for c in caps)


def test_layout_matches_relation():
    """The first object really is above / left of the second (colour centroids)."""
    for seed in range(20):
        for rel in W.RELATIONS:
            scene = W.Scene((W.Obj("square", "red"), W.Obj("circle", "blue")), rel)
            img = W.scene_and_image(seed, scene)[1].astype(int)
            red = np.argwhere((img[..., 0] > 150) & (img[..., 2] < 100)).mean(0)
            blue = np.argwhere((img[..., 2] > 150) & (img[..., 0] < 100)).mean(0)
            axis = 0 if rel == "above" else 1  # (row, col)
            assert red[axis] + 24 < blue[axis] and abs(red[1 - axis] - blue[1 - axis]) < 8
            assert red[axis] < 32 < blue[axis]  # each in its own half of the axis


def test_heldout_prompts_fixed_and_valid():
    held = W.heldout_prompts()
    assert held == W.heldout_prompts() and len(held) == 64
    assert len({s for _, s in held}) == 64
    assert all(W.validate_prompt(p) == p for p, _ in held)
    assert held[:3] == [("a small red circle", held[0][1]), ("a small red square", held[1][1]),
                        ("a small red triangle", held[2][1])]


def test_real_images_deterministic_uint8():
    a, b = W.real_images(6, seed=1), W.real_images(6, seed=1)
    assert a.dtype == torch.uint8 and a.shape == (6, 3, 64, 64) and torch.equal(a, b)
    assert not torch.equal(a, W.real_images(6, seed=2))
    assert W.real_images(4, 1, ["a large blue square"]).shape == (4, 3, 64, 64)


@pytest.mark.parametrize("prompt", ["a purple hexagon", "a red circle near a blue square", "photo of a cat"])
def test_unknown_words_error_lists_vocabulary(prompt):
    with pytest.raises(ValueError) as e:
        W.validate_prompt(prompt)
    msg = str(e.value)
    assert isinstance(e.value, BlocksearchError) and "\n" not in msg
    assert "vocabulary: " + " ".join(W.VOCABULARY) in msg


def test_bad_word_order_error():
    with pytest.raises(ValueError, match="does not follow the toy grammar"):
        W.validate_prompt("a circle red")
