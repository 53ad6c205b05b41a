"""The bundled assets load fast and offline; a missing or corrupt file is named with the rebuild command."""

import shutil
import time

import pytest
import torch

from blocksearch.cli import main
from blocksearch.toy.assets import ASSETS, JUDGE_FILE, REBUILD, TEACHER_FILES, ToyAssetError, load_toy_teacher
from blocksearch.toy.judge import load_judge


def test_bundled_teacher_loads_fast_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    pipe = load_toy_teacher()
    assert time.perf_counter() - t0 < 5.0
    assert pipe.unet.dtype == torch.float32 and pipe.unet.config.sample_size == 16


def test_bundled_judge_loads():
    judge = load_judge()
    assert not judge.training and next(judge.parameters()).dtype == torch.float32


def test_bundled_assets_are_small():
    size = sum(f.stat().st_size for f in ASSETS.rglob("*.safetensors"))
    assert size <= 25 * 2**20


@pytest.mark.parametrize("name", ["unet/diffusion_pytorch_model.safetensors", "model_index.json"])
@pytest.mark.parametrize("damage", ["missing", "corrupt"])
def test_damaged_teacher_file_is_named(tiny_build, tmp_path, name, damage):
    root = tmp_path / "teacher"
    shutil.copytree(tiny_build, root)
    if damage == "missing":
        (root / name).unlink()
    else:
        (root / name).write_bytes(b"\x00garbage")
    with pytest.raises(ToyAssetError) as e:
        load_toy_teacher(path=root)
    msg = str(e.value)
    assert str(root / name) in msg and damage in msg and REBUILD in msg and "\n" not in msg
    assert name in TEACHER_FILES


def test_damaged_judge_is_named(tmp_path):
    bad = tmp_path / JUDGE_FILE
    bad.write_bytes(b"not safetensors")
    with pytest.raises(ToyAssetError, match="corrupt.*" + REBUILD):
        load_judge(path=bad)
    with pytest.raises(ToyAssetError, match="missing"):
        load_judge(path=tmp_path / "nope.safetensors")


def test_cli_sample_rejects_unknown_words(capsys, tmp_path):
    assert main(["toy", "sample", "a purple hexagon", "-o", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert "purple" in err and "vocabulary: a small large" in err and not (tmp_path / "x.png").exists()


def test_cli_sample_writes_png(tiny_build, tmp_path):
    out = tmp_path / "x.png"
    assert main(["toy", "sample", "a red circle above a blue square", "-o", str(out), "--teacher", str(tiny_build),
                 "--inference-steps", "2"]) == 0
    assert out.stat().st_size > 0


def test_python_m_toy_runs_the_verbs_alone(capsys, tmp_path):
    """`python -m blocksearch.toy VERB`: the toy verbs' own entry point, with the CLI's exit code 2."""
    from blocksearch.toy.cli import main as toy_main

    assert toy_main(["sample", "a purple hexagon", "-o", str(tmp_path / "x.png")]) == 2
    assert "vocabulary: a small large" in capsys.readouterr().err and not (tmp_path / "x.png").exists()
