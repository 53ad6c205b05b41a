"""Distillation: the BK-SDM loss, the teacher cache, the data stream, bad input, and a real toy KD run."""

import json

import pytest
import torch

from blocksearch.cli import main
from blocksearch.recipe.data import BatchStream
from blocksearch.recipe.distill import DistillConfig, Distiller, distill, feature_loss, resolve_design
from blocksearch.errors import BlocksearchError
from blocksearch.families.unet.surgery import build_student
from blocksearch.teachers import load_teacher
from tests.conftest import make_tiny_teacher


pytestmark = pytest.mark.usefixtures("one_thread")


def _student(teacher, design="bk_small"):
    genome, _ = resolve_design(teacher.unet, design)
    return build_student(teacher.unet, genome)


def test_loss_is_the_bk_sdm_sum(tmp_path):
    teacher = make_tiny_teacher(tmp_path)
    student = _student(teacher)
    config = DistillConfig(steps=1, batch_size=2, lambda_task=0.5, lambda_out=2.0, lambda_feat=3.0)
    recipe = Distiller(teacher, student, config)
    batch = BatchStream(teacher.pipeline, "toy", 2, 0, family=teacher.family)[0]
    t_out, t_feats = recipe.teacher_targets(batch)
    assert set(t_feats) == {t for t, _ in student.kd_pairs}
    terms = recipe.losses(batch, t_out, t_feats)
    expected = 0.5 * terms["loss_task"] + 2.0 * terms["loss_kd_out"] + 3.0 * terms["loss_kd_feat"]
    assert torch.allclose(terms["loss"], expected)
    with torch.no_grad():
        pred = student.unet(batch.noisy, batch.timesteps, batch.cond["encoder_hidden_states"]).sample
    assert torch.allclose(terms["loss_task"], torch.mean((pred - batch.target) ** 2), atol=1e-6)
    assert torch.allclose(terms["loss_kd_out"], torch.mean((pred - t_out) ** 2), atol=1e-6)
    recipe.close()


def test_feature_loss_normalised_by_teacher_feature():
    s, t = torch.ones(2, 3) * 2, torch.ones(2, 3) * 4
    assert feature_loss(s, t, norm=False) == pytest.approx(4.0)
    assert feature_loss(s, t, norm=True) == pytest.approx(4.0 / 16.0)  # LAPTOP-Diff: / mean(F_t^2)
    assert feature_loss(10 * s, 10 * t, norm=True) == pytest.approx(feature_loss(s, t, norm=True))


def test_cached_and_live_teacher_give_the_same_run(tmp_path):
    teacher = make_tiny_teacher(tmp_path)
    runs = []
    for cached in (True, False):
        config = DistillConfig(steps=2, batch_size=2, cache_dir=str(tmp_path / "cache"), teacher_cache=cached)
        runs.append(distill(teacher, _student(teacher), config, progress=False))
    for a, b in zip(*(r.losses for r in runs)):
        assert a["loss"] == pytest.approx(b["loss"], rel=2e-3)  # the cache stores fp16 features
    assert runs[0].cache_path and runs[1].cache_path is None


def test_v_prediction_target(tmp_path):
    teacher = make_tiny_teacher(tmp_path, prediction_type="v_prediction")
    stream = BatchStream(teacher.pipeline, "toy", 2, 0, family=teacher.family)
    batch = stream[0]
    assert stream.prediction_type == "v_prediction"
    alpha = stream.scheduler.alphas_cumprod[batch.timesteps].view(-1, 1, 1, 1)
    # x_t = sqrt(a) x0 + sqrt(1-a) eps and v = sqrt(a) eps - sqrt(1-a) x0  =>  x0 = sqrt(a) x_t - sqrt(1-a) v
    x0 = alpha.sqrt() * batch.noisy - (1 - alpha).sqrt() * batch.target
    eps = (batch.noisy - alpha.sqrt() * x0) / (1 - alpha).sqrt()
    assert torch.allclose(alpha.sqrt() * eps - (1 - alpha).sqrt() * x0, batch.target, atol=1e-4)
    assert not torch.allclose(batch.target, eps, atol=1e-2)  # it is not the noise
    student = _student(teacher)
    with torch.no_grad():
        pred = student.unet(batch.noisy, batch.timesteps, batch.cond["encoder_hidden_states"]).sample
    result = distill(teacher, student, DistillConfig(steps=1, batch_size=2, cache_dir=str(tmp_path)), progress=False)
    # the student's task loss is against v, not the noise (step 1 is scored before the weights move)
    loss_task = result.losses[0]["loss_task"]
    assert loss_task == pytest.approx(torch.mean((pred - batch.target) ** 2).item(), rel=1e-4)
    assert loss_task != pytest.approx(torch.mean((pred - eps) ** 2).item(), rel=1e-2)


def test_non_finite_loss_names_the_step(tmp_path):
    teacher = make_tiny_teacher(tmp_path)
    student = _student(teacher)
    seen = []
    with torch.no_grad():
        student.unet.conv_out.weight.fill_(float("nan"))
    with pytest.raises(BlocksearchError, match="non-finite loss at step 1"):
        distill(teacher, student, DistillConfig(steps=3, batch_size=2, cache_dir=str(tmp_path)),
                on_step=lambda s, r: seen.append(s), progress=False)
    assert seen == []


def test_cli_distill_writes_a_student_or_nothing(tiny_teacher_folder, tmp_path, capsys):
    folder = tiny_teacher_folder
    out = tmp_path / "student"
    common = ["distill", "--teacher", folder, "--design", "bk_tiny", "--batch-size", "2", "--cache-dir",
              str(tmp_path / "cache")]
    assert main(common + ["--steps", "2", "-o", str(out)]) == 0
    info = json.loads((out / "distill.json").read_text())
    assert info["design"] == "bk_tiny" and info["genome"] == "L1-1-1_T1-1-1_Mnone"
    assert len((out / "train_log.jsonl").read_text().splitlines()) == 2
    assert (out / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert "student written to" in capsys.readouterr().out
    bad = tmp_path / "bad"
    assert main(common + ["--steps", "4", "--lr", "1e30", "-o", str(bad)]) == 2
    assert "non-finite loss at step" in capsys.readouterr().err
    assert not bad.exists()


def test_imagefolder_needs_captions(tmp_path):
    from PIL import Image

    teacher = make_tiny_teacher(tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    for i in range(3):
        Image.new("RGB", (80, 70), (40 * i, 100, 200)).save(data / f"{i}.png")
    with pytest.raises(BlocksearchError, match="has no captions"):
        BatchStream(teacher.pipeline, str(data), 2, 0, tmp_path, family=teacher.family)
    (data / "metadata.jsonl").write_text("".join(json.dumps({"file_name": f"{i}.png", "text": "a red circle"}) + "\n"
                                                 for i in range(3)))
    batch = BatchStream(teacher.pipeline, str(data), 2, 0, tmp_path / "cache", family=teacher.family)[0]
    assert batch.noisy.shape == (2, 4, 16, 16) and batch.cond["encoder_hidden_states"].shape == (2, teacher.pipeline.tokenizer.model_max_length, 16)
    assert list((tmp_path / "cache").glob("dataset-*.safetensors"))  # encoded once, reused
    (data / "metadata.jsonl").unlink()
    (data / "metadata.csv").write_text("file_name,label\n0.png,x\n")
    with pytest.raises(BlocksearchError, match="caption column"):
        BatchStream(teacher.pipeline, str(data), 2, 0, tmp_path, family=teacher.family)


def test_unknown_precision_is_refused():  # (the teacher-lookup errors: tests/test_teachers.py)
    with pytest.raises(BlocksearchError, match="precision"):
        DistillConfig(precision="fp8")


def test_real_kd_run_on_the_toy_teacher_lowers_the_loss(tmp_path):
    """A real KD run on the bundled toy teacher: the loss falls (first steps vs last steps)."""
    from blocksearch.toy.assets import ASSETS

    if not (ASSETS / "unet" / "diffusion_pytorch_model.safetensors").exists():
        pytest.skip("toy teacher assets are not built (blocksearch toy build --out blocksearch/toy/assets)")
    teacher = load_teacher("toy")
    result = distill(teacher, _student(teacher, "bk_small"),
                     DistillConfig(steps=24, batch_size=8, cache_dir=str(tmp_path)), progress=False)
    losses = [r["loss"] for r in result.losses]
    assert sum(losses[-6:]) / 6 < 0.8 * sum(losses[:3]) / 3
