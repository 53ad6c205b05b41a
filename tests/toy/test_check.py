import argparse
import inspect

import torch

from blocksearch.cli import main
from blocksearch.recipe.evaluate import EvalConfig
from blocksearch.toy.check import _split_by_objects, compute_figures, format_figures, save_grid
from blocksearch.toy.cli import add_toy_parser


def test_format_figures_and_grid(tmp_path):
    f = {
        "settings": {"prompts": 2}, "teacher_load_s": 0.5,
        "judge_accuracy": {"heldout": {"count": 1.0, "all": 0.97}},
        "text_alignment": 0.9, "text_alignment_random_unet": 0.0,
        "text_alignment_by_attribute": {"colour_a": 0.95, "all": 0.9},
        "text_alignment_by_objects": {"one_object": 1.0, "two_object": 0.8},
        "toy_fid": 2.0, "toy_fid_random_unet": 100.0, "toy_fid_real_floor": 1.0,
    }
    text = format_figures(f)
    assert "teacher/random = 0.020" in text and "all=0.970" in text and "colour_a=0.950" in text and "two_object 0.800" in text
    imgs = torch.zeros(2, 3, 64, 64, dtype=torch.uint8)
    path = save_grid(imgs, ["a small red circle", "a red circle above a blue square"], tmp_path / "g.png", cols=2)
    assert path.stat().st_size > 0


def test_split_by_objects():
    split = _split_by_objects(["a small red circle", "a red circle above a blue square", "a large blue square"])
    assert split == {"one": [0, 2], "two": [1]}


def test_check_defaults_are_the_default_evaluation_settings():
    """`blocksearch toy check` (its flags and compute_figures) scores as `blocksearch evaluate` does by default."""
    cfg = EvalConfig()
    args = add_toy_parser(argparse.ArgumentParser().add_subparsers()).parse_args(["check"])
    assert (args.prompts, args.inference_steps, args.guidance) == (cfg.prompts, cfg.steps, cfg.guidance)
    defaults = {k: p.default for k, p in inspect.signature(compute_figures).parameters.items()}
    assert (defaults["n_prompts"], defaults["num_steps"], defaults["guidance_scale"]) == (
        cfg.prompts, cfg.steps, cfg.guidance)


def test_cli_check_rejects_no_prompts(capsys):
    assert main(["toy", "check", "--prompts", "0"]) == 2
    assert "--prompts must be at least 1, got 0" in capsys.readouterr().err
