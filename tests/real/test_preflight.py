"""Preflight: each check accepts the good input and refuses a bad one in one line that names the path."""

import json
import os
import shutil

import pytest
import torch

from blocksearch.recipe import preflight as P
from blocksearch.errors import BlocksearchError


def refused(check, *args, match: str, path) -> str:
    """Run ``check``; it must raise one line naming ``path`` and matching ``match``."""
    with pytest.raises(BlocksearchError, match=match) as err:
        check(*args)
    message = str(err.value)
    assert "\n" not in message and str(path) in message, message
    return message


@pytest.fixture
def teacher_copy(sd_folder, tmp_path):
    return shutil.copytree(sd_folder, tmp_path / "teacher")


def test_teacher_folder(sd_folder, teacher_copy, tmp_path):
    P.check_teacher_folder(sd_folder)
    refused(P.check_teacher_folder, tmp_path / "nope", match="does not exist", path=tmp_path / "nope")
    shutil.rmtree(teacher_copy / "unet")
    refused(P.check_teacher_folder, teacher_copy, match="has no unet/", path=teacher_copy)


def test_teacher_folder_refuses_pickled_weights(teacher_copy):
    weights = teacher_copy / "unet" / "diffusion_pytorch_model.safetensors"
    weights.rename(weights.with_suffix(".bin"))
    msg = refused(P.check_teacher_folder, teacher_copy, match="only pickled weights", path=teacher_copy)
    assert "diffusion_pytorch_model.bin" in msg
    weights.with_suffix(".bin").unlink()
    refused(P.check_teacher_folder, teacher_copy, match="no weights", path=teacher_copy)


def test_teacher_folder_needs_configs_and_a_supported_unet(teacher_copy):
    (teacher_copy / "scheduler" / "scheduler_config.json").unlink()
    refused(P.check_teacher_folder, teacher_copy, match="no scheduler_config.json", path=teacher_copy)
    (teacher_copy / "model_index.json").write_text("{not json")
    refused(P.check_teacher_folder, teacher_copy, match="not valid JSON", path=teacher_copy / "model_index.json")
    (teacher_copy / "model_index.json").write_text("{}")
    (teacher_copy / "scheduler" / "scheduler_config.json").write_text("{}")
    config = teacher_copy / "unet" / "config.json"
    config.write_text(json.dumps(json.loads(config.read_text()) | {"down_block_types": ["SimpleDown"] * 4}))
    refused(P.check_teacher_folder, config.parent.parent, match="SimpleDown", path=config)


def test_data_folder(data_folder, tmp_path):
    P.check_data_folder(data_folder)
    data = shutil.copytree(data_folder, tmp_path / "data")
    (data / "metadata.jsonl").unlink()
    refused(P.check_data_folder, data, match="has no captions", path=data)
    (data / "metadata.jsonl").write_text(json.dumps({"file_name": "000.png", "text": " "}) + "\n")
    refused(P.check_data_folder, data, match="captions are empty", path=data)
    (data / "metadata.jsonl").write_text(json.dumps({"file_name": "gone.png", "text": "a cat"}) + "\n")
    refused(P.check_data_folder, data, match="missing", path=data / "gone.png")


def test_reference_folder(reference_folder, tmp_path):
    P.check_reference_folder(reference_folder, 32)
    refused(P.check_reference_folder, reference_folder, 33, match="has 32 images.*at least 33", path=reference_folder)
    (tmp_path / "empty").mkdir()
    refused(P.check_reference_folder, tmp_path / "empty", 1, match="has 0 images", path=tmp_path / "empty")
    refused(P.check_reference_folder, tmp_path / "nope", 1, match="does not exist", path=tmp_path / "nope")


def test_reference_imagefolder_counts_its_metadata_rows(data_folder):
    assert P.reference_count(data_folder) == 32


class Marker:
    """A pickle that creates a folder when it is unpickled: it must never be unpickled."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.mkdir, (str(self.path),)


def test_inception_weights_accepts_torch_fidelity_format(inception_file):
    P.check_inception_weights(inception_file)


@pytest.mark.parametrize("content, match", [
    (b"garbage, not a checkpoint", "weights_only=True"),
    ("marker", "weights_only=True"),
    ([torch.zeros(1)], "hold a list"),
    ({"fc.weight": torch.zeros(1008, 2048), "step": 3}, "not a plain dict of tensors"),
    ({"fc.weight": torch.zeros(1008, 2048)}, "missing Conv2d_1a_3x3"),
])
def test_inception_weights_refuses_what_is_not_a_plain_tensor_dict(tmp_path, content, match):
    path, marker = tmp_path / "weights.pth", tmp_path / "unpickled"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(Marker(marker) if content == "marker" else content, path)
    refused(P.check_inception_weights, path, match=match, path=path)
    assert not marker.exists()  # refused without running the pickle


def test_inception_weights_refuses_wrong_keys_and_shapes(inception_file, tmp_path):
    state = torch.load(inception_file, weights_only=True)
    path = tmp_path / "weights.pth"
    torch.save(state | {"extra.weight": torch.zeros(1)}, path)
    refused(P.check_inception_weights, path, match="unexpected extra.weight", path=path)
    torch.save(state | {"fc.weight": torch.zeros(10, 2048)}, path)
    refused(P.check_inception_weights, path, match=r"fc.weight has shape \(10, 2048\)", path=path)
    refused(P.check_inception_weights, tmp_path / "nope.pth", match="do not exist", path=tmp_path / "nope.pth")


def test_clip_model(clip_folder, tmp_path):
    P.check_clip_model(clip_folder)
    refused(P.check_clip_model, tmp_path / "nope", match="does not exist", path=tmp_path / "nope")
    broken = shutil.copytree(clip_folder, tmp_path / "clip")
    (broken / "model.safetensors").unlink()
    refused(P.check_clip_model, broken, match="does not load offline", path=broken)


def test_check_real_inputs_reports_every_problem(sd_folder, data_folder, reference_folder, inception_file,
                                                 clip_folder, tmp_path):
    P.check_real_inputs(sd_folder, data_folder, reference_folder, inception_file, clip_folder, fid_images=32)
    P.check_real_inputs("toy", "toy")
    P.check_real_inputs("sd-v1")
    P.check_real_inputs("CompVis/stable-diffusion-v1-4")  # a hub id: teachers.py resolves it in the HF cache
    with pytest.raises(BlocksearchError) as err:
        P.check_real_inputs(tmp_path / "teacher", data_folder, tmp_path / "ref", inception_file, tmp_path / "clip")
    lines = str(err.value).splitlines()
    assert len(lines) == 3
    for line, path in zip(lines, ["teacher", "ref", "clip"]):
        assert str(tmp_path / path) in line
