"""`distill --init` and `blocksearch train` (in this process) for a transformer student, through the family hooks:
a saved toy-dit student's kept blocks come back from its block map, a train run exports the teacher's stock
pipeline with a card of the teacher's licence. The 2-worker Ray runs with SIGKILL and resume, for toy-dit and a
tiny SDXL pipeline: tests/integration/test_train_families.py."""

import json
from types import SimpleNamespace

import pytest

from blocksearch.cli import main
from blocksearch.errors import BlocksearchError
from blocksearch.families.base import get_family, student_from_block_map
from blocksearch.families.dit.genome import load_teacher_config
from blocksearch.teachers import load_teacher
from blocksearch.train.loop import TrainJob, model_card

pytestmark = pytest.mark.usefixtures("one_thread")


def test_distill_init_continues_a_saved_transformer_student(tmp_path):
    """Its kept blocks and weights are the saved ones; a folder without a block map is refused in one line."""
    first, second = tmp_path / "first", tmp_path / "second"
    common = ["--teacher", "toy-dit", "--space", "dit_blocks", "--steps", "1", "--batch-size", "2", "--cache-dir",
              str(tmp_path / "cache")]
    assert main(["distill", *common, "--design", "D0-3.8-11", "-o", str(first)]) == 0
    teacher = load_teacher("toy-dit")
    student = student_from_block_map(teacher.family, first / "transformer", teacher.denoiser)
    saved = teacher.family.load_student_denoiser(first, teacher.denoiser).state_dict()
    assert student.genome.id == "D0-3.8-11"
    assert all((student.denoiser.state_dict()[k] == v).all() for k, v in saved.items())
    assert main(["distill", *common, "--init", str(first), "-o", str(second)]) == 0
    assert json.loads((second / "block_map.json").read_text())["arch"] == "D0-3.8-11"
    (first / "block_map.json").unlink()
    with pytest.raises(BlocksearchError, match="no block_map.json beside it"):
        student_from_block_map(teacher.family, first, teacher.denoiser)


def test_train_a_transformer_design_in_this_process(tmp_path):
    out = tmp_path / "tf14"
    assert main(["train", "--teacher", "toy-dit", "--space", "dit_blocks", "--design", "tinyfusion_14", "--workers",
                 "0", "--steps", "2", "--batch-size", "4", "--eval-every", "0", "--cache-dir",
                 str(tmp_path / "cache"), "-o", str(out)]) == 0
    assert [json.loads(line)["step"] for line in (out / "train_log.jsonl").read_text().splitlines()] == [1, 2]
    assert json.loads((out / "model_index.json").read_text())["_class_name"] == "PixArtSigmaPipeline"
    card = (out / "README.md").read_text()
    assert "base_model: blocksearch/toy-dit-teacher" in card and "license: mit" in card
    assert "from diffusers import PixArtSigmaPipeline" in card and "diffusion-transformer" in card
    assert "max_sequence_length=16" in card  # the toy-dit call needs its text length (family.call_kwargs)


@pytest.mark.parametrize("spec, config, header", [
    ("black-forest-labs/FLUX.1-dev", "flux-dev", "license: other\nlicense_name: flux-1-dev-non-commercial-license"),
    ("black-forest-labs/FLUX.1-schnell", "flux-dev", "license: apache-2.0"),
    ("stabilityai/stable-diffusion-3-medium-diffusers", "sd3-medium",
     "license: other\nlicense_name: stabilityai-ai-community"),
])
def test_the_train_card_carries_the_teachers_base_model_and_licence(spec, config, header):
    family = get_family("dit").for_teacher(load_teacher_config(config))
    job = TrainJob(SimpleNamespace(spec=spec), ("design", "flux_lite"), "dit_blocks", {"batch_size": 4, "lr": 5e-5},
                   {"steps": 4, "schedule": "constant", "warmup": 0, "ema": 0.0}, None, "/runs/x", "blocksearch train")
    card = model_card(job, family, "D0-7", "final", None, {})
    assert f"base_model: {spec}\n" in card and header in card
    assert f"from diffusers import {family.pipeline_class}" in card and "## Licence" in card
