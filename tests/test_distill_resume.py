"""KD continuation: 0->k then k->n trains the same student as 0->n (weights, AdamW state, batch order)."""

import json

import pytest
import torch
from safetensors.torch import load_file

from blocksearch.recipe.distill import CHECKPOINT_FILE, OPTIMIZER_FILE, DistillConfig, distill, resolve_design
from blocksearch.errors import BlocksearchError
from blocksearch.families.unet.surgery import build_student
from tests.conftest import make_tiny_teacher

pytestmark = pytest.mark.usefixtures("one_thread")


def _student(teacher, design="bk_small"):
    return build_student(teacher.unet, resolve_design(teacher.unet, design)[0])


def _config(tmp_path, steps, mode):
    return DistillConfig(steps=steps, batch_size=2, cache_dir=str(tmp_path / "cache"), teacher_cache=mode)


@pytest.mark.parametrize("mode", ["off", "auto"])
def test_continued_run_equals_a_straight_run(tmp_path, mode):
    teacher = make_tiny_teacher(tmp_path)
    straight = _student(teacher)
    whole = distill(teacher, straight, _config(tmp_path, 4, mode), progress=False)
    parts = _student(teacher)
    first = distill(teacher, parts, _config(tmp_path, 1, mode), progress=False, save_to=tmp_path / "ck1")
    rest = distill(teacher, _student(teacher), _config(tmp_path, 4, mode), progress=False,
                   resume_from=tmp_path / "ck1", save_to=tmp_path / "ck4")
    assert [r["step"] for r in first.losses + rest.losses] == [1, 2, 3, 4] and rest.extra["start_step"] == 1
    for a, b in zip(whole.losses, first.losses + rest.losses):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    continued = _student(teacher)
    distill(teacher, continued, _config(tmp_path, 4, mode), progress=False, resume_from=tmp_path / "ck4")
    for (name, a), b in zip(straight.unet.state_dict().items(), continued.unet.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name
    assert not torch.allclose(straight.unet.conv_out.weight, parts.unet.conv_out.weight, atol=1e-6)


def test_checkpoint_is_safetensors_and_json(tmp_path):
    teacher = make_tiny_teacher(tmp_path)
    distill(teacher, _student(teacher), _config(tmp_path, 2, "off"), progress=False, save_to=tmp_path / "ck")
    info = json.loads((tmp_path / "ck" / CHECKPOINT_FILE).read_text())
    assert info["step"] == 2 and info["genome"] == "L1-1-1-1_T1-1-1-0_Mnone"
    assert info["optimizer"]["param_groups"][0]["lr"] == DistillConfig.lr
    slots = {k.rsplit(".", 1)[1] for k in load_file(tmp_path / "ck" / OPTIMIZER_FILE)}
    assert slots == {"step", "exp_avg", "exp_avg_sq"}  # AdamW's full state


def test_a_checkpoint_of_other_settings_is_refused(tmp_path):
    teacher = make_tiny_teacher(tmp_path)
    distill(teacher, _student(teacher), _config(tmp_path, 2, "off"), progress=False, save_to=tmp_path / "ck")
    other = DistillConfig(steps=3, batch_size=2, lr=1e-3, teacher_cache="off")
    with pytest.raises(BlocksearchError, match="its distill differs"):
        distill(teacher, _student(teacher), other, progress=False, resume_from=tmp_path / "ck")
    with pytest.raises(BlocksearchError, match="its genome differs"):
        distill(teacher, _student(teacher, "bk_tiny"), _config(tmp_path, 3, "off"), progress=False,
                resume_from=tmp_path / "ck")
    with pytest.raises(BlocksearchError, match="past the run's 1 steps"):
        distill(teacher, _student(teacher), _config(tmp_path, 1, "off"), progress=False, resume_from=tmp_path / "ck")
