"""Corrupt checkpoints (issue 35): a KD or train checkpoint that fails its check is never resumed from; the run
goes back to surgery (KD) or to the last good checkpoint (train), and says so in one line."""

import json
import logging

import pytest
import torch

from blocksearch import cache
from blocksearch.cache import CORRUPT
from blocksearch.recipe.distill import (CHECKPOINT_FILE, OPTIMIZER_FILE, WEIGHTS_FILE, DistillConfig, checkpoint_info,
                                        distill)
from blocksearch.train.state import load_state, save_state
from tests.test_distill_resume import _config, _student
from tests.test_faults_cache import DAMAGE
from tests.conftest import make_tiny_teacher

pytestmark = pytest.mark.usefixtures("one_thread")


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and "blocksearch" in r.getMessage()]


def test_a_checkpoint_records_the_size_and_hash_of_its_files(tmp_path):
    teacher = make_tiny_teacher(tmp_path)
    distill(teacher, _student(teacher), _config(tmp_path, 1, "off"), progress=False, save_to=tmp_path / "ck")
    files = json.loads((tmp_path / "ck" / CHECKPOINT_FILE).read_text())["files"]
    assert set(files) == {WEIGHTS_FILE, OPTIMIZER_FILE}
    assert files[WEIGHTS_FILE]["bytes"] == (tmp_path / "ck" / WEIGHTS_FILE).stat().st_size
    assert len(files[WEIGHTS_FILE]["sha256"]) == 64


@pytest.mark.parametrize("damage,name", [("bit-flipped", WEIGHTS_FILE), ("truncated", OPTIMIZER_FILE)])
def test_a_corrupt_kd_checkpoint_is_never_resumed_from(tmp_path, damage, name, caplog):
    """The continued run trains from surgery instead: the same losses as a straight run, step 1 on."""
    teacher = make_tiny_teacher(tmp_path)
    straight = distill(teacher, _student(teacher), _config(tmp_path, 3, "off"), progress=False)
    distill(teacher, _student(teacher), _config(tmp_path, 1, "off"), progress=False, save_to=tmp_path / "ck")
    DAMAGE[damage](tmp_path / "ck" / name)
    cache._VERIFIED.clear()
    with caplog.at_level(logging.WARNING):
        again = distill(teacher, _student(teacher), _config(tmp_path, 3, "off"), progress=False,
                        resume_from=tmp_path / "ck")
    assert again.extra["start_step"] == 0 and [r["step"] for r in again.losses] == [1, 2, 3]
    for a, b in zip(straight.losses, again.losses):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    (line,) = _warnings(caplog)
    assert f"KD checkpoint {tmp_path / 'ck'} failed its check: {name}" in line
    assert "not resumed from: training from surgery (step 0)" in line
    assert checkpoint_info(tmp_path / "ck") is None  # no later run takes it for a checkpoint
    assert (tmp_path / "ck" / f"{name}{CORRUPT}").exists()
    assert (tmp_path / "ck" / f"{CHECKPOINT_FILE}{CORRUPT}").exists()


def test_an_unreadable_checkpoint_json_is_no_checkpoint(tmp_path, caplog):
    teacher = make_tiny_teacher(tmp_path)
    distill(teacher, _student(teacher), _config(tmp_path, 1, "off"), progress=False, save_to=tmp_path / "ck")
    DAMAGE["truncated"](tmp_path / "ck" / CHECKPOINT_FILE)
    with caplog.at_level(logging.WARNING):
        assert checkpoint_info(tmp_path / "ck") is None
    (line,) = _warnings(caplog)
    assert "checkpoint.json is corrupt: it is not JSON" in line


class _Tiny(torch.nn.Module):
    def __init__(self, seed):
        super().__init__()
        torch.manual_seed(seed)
        self.lin = torch.nn.Linear(4, 4)


def _train_checkpoint(folder, seed, step):
    unet, teacher = _Tiny(seed), _Tiny(99)
    opt = torch.optim.AdamW(unet.parameters())
    unet.lin(torch.ones(1, 4)).sum().backward()
    opt.step()
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    save_state(folder, unet, opt, scaler, None, step, "g", teacher, {"s": 1})
    return unet


def test_a_corrupt_train_checkpoint_goes_back_to_the_last_good_one(tmp_path, caplog):
    root = tmp_path / "checkpoints"
    good = _train_checkpoint(root / "step-0000002", 1, 2)
    _train_checkpoint(root / "step-0000004", 2, 4)
    DAMAGE["bit-flipped"](root / "step-0000004" / WEIGHTS_FILE)
    cache._VERIFIED.clear()
    unet, teacher = _Tiny(3), _Tiny(99)
    opt = torch.optim.AdamW(unet.parameters())
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    with caplog.at_level(logging.WARNING):
        step = load_state(root / "step-0000004", unet, opt, scaler, None, "g", teacher, {"s": 1})
    assert step == 2 and torch.equal(unet.lin.weight, good.lin.weight)
    (line,) = _warnings(caplog)
    assert "step-0000004 failed its check" in line and "going back to" in line and "step-0000002 (step 2)" in line
    assert not (root / "step-0000004" / CHECKPOINT_FILE).exists()  # a rerun's newest checkpoint is the good one
    DAMAGE["truncated"](root / "step-0000002" / OPTIMIZER_FILE)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert load_state(root / "step-0000002", _Tiny(3), opt, scaler, None, "g", teacher, {"s": 1}) == 0
    assert "training from surgery (step 0)" in _warnings(caplog)[0]
