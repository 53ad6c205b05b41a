"""A tiny random SDXL pipeline folder (blocksearch/toy/tiny_sdxl.py) through preflight and `blocksearch distill`,
offline: its second text encoder and tokenizer are checked, and a KOALA-700M-shaped student is cut and distilled."""

import json
import shutil

import pytest
from diffusers import UNet2DConditionModel

from blocksearch.cli import main
from blocksearch.errors import BlocksearchError
from blocksearch.recipe.preflight import check_teacher_folder
from blocksearch.toy.tiny_sdxl import save_tiny_sdxl


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return save_tiny_sdxl(tmp_path_factory.mktemp("tiny-sdxl") / "teacher")


def test_preflight_checks_the_parts_model_index_names(folder, tmp_path):
    check_teacher_folder(folder)
    broken = shutil.copytree(folder, tmp_path / "teacher")
    shutil.rmtree(broken / "tokenizer_2")
    with pytest.raises(BlocksearchError, match="has no tokenizer_2/"):
        check_teacher_folder(broken)


def test_distill_a_koala_700m_shaped_student_from_a_tiny_sdxl_folder(folder, tmp_path, one_thread):
    out = tmp_path / "student"
    assert main(["distill", "--teacher", str(folder), "--space", "unet_blocks_sdxl", "--design", "koala_700m",
                 "--steps", "2", "--batch-size", "2", "-o", str(out), "--cache-dir", str(tmp_path / "cache")]) == 0
    unet = UNet2DConditionModel.from_pretrained(out / "unet")
    assert unet.config.layers_per_block == [1, 1, 1] and unet.config.mid_block_type is None
    assert len([json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]) == 2
