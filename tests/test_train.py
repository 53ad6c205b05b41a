"""blocksearch train in this process (``--workers 0``; the Ray Train runs: tests/integration/test_train_ray.py):
the schedule, EMA and batch split (closed forms), gradient accumulation, kill and resume, evaluation with its
learning curve and exported pipeline, experiment tracking, a study's trial as the student, bad input; and the
search's per-step loss files and trial folder names."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import load_file

from blocksearch.recipe import evaluate as evaluate_module
from blocksearch.search import trial
from blocksearch.cli import main
from blocksearch.recipe.data import Batch
from blocksearch.recipe.distill import resolve_design
from blocksearch.errors import BlocksearchError
from blocksearch.families.unet.surgery import build_student
from blocksearch.train.learning_curve import read_log
from blocksearch.search.ray_tune import trial_dirname
from blocksearch.teachers import load_teacher, resolve_teacher
from blocksearch.recipe.schedules import Ema, lr_at
from blocksearch.train.state import micro_batch, split
from tests.conftest import CASE, make_study, make_tiny_pipeline, save_tiny_teacher

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]
UNET = "unet/diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> str:
    return save_tiny_teacher(tmp_path_factory.mktemp("train-teacher"))


def train_args(teacher: str, out: Path, steps: int, *extra: str) -> list[str]:
    """``blocksearch train`` in this process: bk_small on the tiny teacher, global batch 4, no evaluation."""
    return ["train", "--teacher", teacher, "--design", "bk_small", "--workers", "0", "--steps", str(steps),
            "--batch-size", "4", "--eval-every", "0", "--cache-dir", str(out.parent / "cache"), "-o", str(out),
            *extra]


def weights(folder: Path, name: str = UNET) -> dict[str, torch.Tensor]:
    return load_file(folder / name)


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def mean_diff(a: dict, b: dict) -> float:
    return float(torch.cat([(a[k] - b[k]).abs().flatten() for k in a]).mean())


def assert_same_student(a: dict, b: dict, init: dict) -> None:
    """The same training up to float rounding, which AdamW amplifies only where a gradient is ~0 (its update is
    scale-free): a few elements in 10^4 differ, by at most 1e-4 (a fifth of one step's lr, 5e-4), the mean by
    <= 1e-7; a wrong batch split moves every element, by ~lr (the weights' mean move from init, > 1e-5)."""
    assert max_diff(a, b) <= 1e-4 and mean_diff(a, b) <= 1e-7 < 1e-5 < mean_diff(a, init)


def initial_student(teacher: str) -> dict[str, torch.Tensor]:
    t = load_teacher(teacher)
    unet = build_student(t.unet, resolve_design(t.unet, "bk_small")[0]).unet
    return {k: v.detach().clone() for k, v in unet.state_dict().items()}


# -- the pieces, in closed form ---------------------------------------------------------------------------
def test_learning_rate_schedules():
    base = 1e-3
    assert [lr_at(s, base, 2, 6, "constant") for s in range(6)] == pytest.approx([5e-4, 1e-3, 1e-3, 1e-3, 1e-3, 1e-3])
    assert [lr_at(s, base, 2, 6, "linear") for s in range(2, 6)] == pytest.approx([1e-3, 7.5e-4, 5e-4, 2.5e-4])
    cosine = [lr_at(s, base, 2, 6, "cosine") for s in range(2, 6)]
    assert cosine == pytest.approx([base * 0.5 * (1 + math.cos(math.pi * p)) for p in (0, 0.25, 0.5, 0.75)])
    assert lr_at(0, base, 0, 4, "cosine") == base and lr_at(3, base, 0, 4, "linear") == pytest.approx(2.5e-4)
    with pytest.raises(BlocksearchError, match="allowed: constant, linear, cosine"):
        lr_at(0, base, 0, 4, "step")


def test_ema_is_the_closed_form_of_a_known_sequence():
    """ema_n = d^n w_0 + (1 - d) sum_k d^(n-k) w_k."""
    model, d, w0, seq = torch.nn.Linear(2, 1), 0.8, 0.25, [1.0, -2.0, 3.0, 0.5]
    with torch.no_grad():
        model.weight.fill_(w0)
        model.bias.fill_(2 * w0)
    ema = Ema(model, d)
    for w in seq:
        with torch.no_grad():
            model.weight.fill_(w)
            model.bias.fill_(2 * w)
        ema.update(model)
    n = len(seq)
    expected = d ** n * w0 + (1 - d) * sum(d ** (n - k) * w for k, w in enumerate(seq, 1))
    assert float(ema.model.weight[0, 0]) == pytest.approx(expected, abs=1e-6)
    assert float(ema.model.bias[0]) == pytest.approx(2 * expected, abs=1e-6)
    assert float(model.weight[0, 0]) == 0.5  # the model itself is untouched
    with pytest.raises(BlocksearchError, match="--ema 1.0"):
        Ema(model, 1.0)


def test_the_global_batch_is_the_same_samples_for_any_number_of_workers():
    rows = torch.arange(8)
    batch = Batch(rows[:, None].float(), rows, {"encoder_hidden_states": rows[:, None, None].float()}, rows[:, None].float())
    for world, micro in ((1, None), (1, 2), (2, None), (2, 1), (4, 2), (8, 1)):
        micro, accum = split(8, world, micro)
        assert world * micro * accum == 8
        seen = [int(r) for rank in range(world) for a in range(accum)
                for r in micro_batch(batch, rank, world, a, micro).timesteps]
        assert sorted(seen) == list(range(8)), (world, micro)
    for world, micro in ((3, None), (2, 3)):
        with pytest.raises(BlocksearchError, match="is not a multiple"):
            split(8, world, micro)


# -- runs in this process ---------------------------------------------------------------------------------
def test_accumulation_steps_train_the_same_student_as_one_batch(teacher, tmp_path):
    """4 micro-batches of 1 accumulated = one batch of 4 (fp32): the same losses and weights up to float
    rounding (``assert_same_student``)."""
    assert main(train_args(teacher, tmp_path / "one", 3, "--micro-batch-size", "4")) == 0
    assert main(train_args(teacher, tmp_path / "four", 3, "--micro-batch-size", "1")) == 0
    one, four = read_log(tmp_path / "one" / "train_log.jsonl"), read_log(tmp_path / "four" / "train_log.jsonl")
    assert [r["step"] for r in one] == [1, 2, 3]
    for a, b in zip(one, four):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    assert_same_student(weights(tmp_path / "one"), weights(tmp_path / "four"), initial_student(teacher))
    info = json.loads((tmp_path / "four" / "train.json").read_text())
    assert info["split"] == {"workers": 1, "micro_batch_size": 1, "accumulation": 4}


def test_ema_and_schedule_are_applied_in_a_run(teacher, tmp_path):
    """The exported weights are the EMA of the run's weights (the closed form over the checkpoints of steps 1
    and 2), and each step's logged learning rate is the schedule's."""
    out = tmp_path / "ema"
    assert main(train_args(teacher, out, 2, "--ema", "0.5", "--checkpoint-every", "1", "--warmup", "1",
                           "--schedule", "linear", "--lr", "1e-3")) == 0
    assert [r["lr"] for r in read_log(out / "train_log.jsonl")] == pytest.approx([1e-3, 1e-3])
    w0, w1 = initial_student(teacher), weights(out / "checkpoints" / "step-0000001", "unet.safetensors")
    w2 = weights(out / "checkpoints" / "step-0000002", "unet.safetensors")
    expected = {k: 0.25 * w0[k] + 0.5 * (0.5 * w1[k] + w2[k]) for k in w0}
    exported = weights(out)
    assert max_diff(exported, expected) < 1e-6
    assert max_diff(exported, weights(out / "checkpoints" / "step-0000002", "ema.safetensors")) == 0
    assert max_diff(exported, w2) > 1e-5  # the EMA, not the last weights
    info = json.loads((out / "train.json").read_text())
    assert info["exported_weights"] == "EMA" and info["steps"] == 2


def test_a_run_evaluates_draws_its_curve_and_exports_a_pipeline(teacher, tmp_path):
    out = tmp_path / "eval"
    assert main(train_args(teacher, out, 4, "--eval-every", "2", "--eval-prompts", "4", "--warmup", "2",
                           "--schedule", "cosine")) == 0
    lines = (out / "curve.csv").read_text().splitlines()
    header = lines[0].split(",")
    rows = [dict(zip(header, line.split(","))) for line in lines[1:]]
    assert header == ["step", "loss", "loss_task", "loss_kd_out", "loss_kd_feat", "lr", "fid", "kid", "alignment"]
    assert [r["step"] for r in rows] == ["1", "2", "3", "4"]
    assert [bool(r["fid"]) for r in rows] == [False, True, False, True] and float(rows[3]["fid"]) > 0
    assert [float(r["lr"]) for r in rows] == pytest.approx([lr_at(s, 5e-4, 2, 4, "cosine") for s in range(4)])
    assert (out / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "plotly" in (out / "curve.html").read_text()[:200000].lower()
    pipe = StableDiffusionPipeline.from_pretrained(out)
    saved = weights(out / "checkpoints" / "step-0000004", "unet.safetensors")
    assert max_diff({k: v.detach() for k, v in pipe.unet.state_dict().items()}, saved) == 0
    assert "trained by `blocksearch train`" in (out / "README.md").read_text()
    assert json.loads((out / "block_map.json").read_text())["modules"]  # the cut, for adapters (adapt/blockmap.py)


def test_a_killed_run_resumes_from_its_last_checkpoint(teacher, tmp_path, capsys):
    """SIGKILL after the first checkpoint, then the same command: it continues from the last checkpoint (at most
    one interval lost), the logs hold every step once, and the student equals a straight run's."""
    out = tmp_path / "killed"
    args = train_args(teacher, out, 12, "--checkpoint-every", "2")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "blocksearch.cli", *args], cwd=ROOT, env=env,
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = out / "checkpoints" / "step-0000002" / "checkpoint.json"
    try:
        end = time.time() + 180
        while not first.is_file() and proc.poll() is None and time.time() < end:
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(30)
    assert first.is_file() and proc.returncode == -signal.SIGKILL
    assert not (out / "model_index.json").exists()  # killed before the end
    reached = max(int(p.name.split("-")[1]) for p in (out / "checkpoints").glob("step-*"))
    capsys.readouterr()
    assert main(args) == 0
    assert f"from step {reached} to 12" in capsys.readouterr().out
    assert [r["step"] for r in read_log(out / "train_log.jsonl")] == list(range(1, 13))
    assert len((out / "curve.csv").read_text().splitlines()) == 13
    assert main(train_args(teacher, tmp_path / "straight", 12, "--checkpoint-every", "2")) == 0
    for a, b in zip(read_log(out / "train_log.jsonl"), read_log(tmp_path / "straight" / "train_log.jsonl")):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6)
    assert max_diff(weights(out), weights(tmp_path / "straight")) <= 1e-6


def test_report_to_tensorboard_writes_events_tensorboard_reads(teacher, tmp_path):
    pytest.importorskip("tensorboard", reason="--report-to tensorboard needs the tensorboard package")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "tb"
    assert main(train_args(teacher, out, 2, "--report-to", "tensorboard")) == 0
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    logged = read_log(out / "train_log.jsonl")
    scalars = events.Scalars("train/loss")
    assert [e.step for e in scalars] == [r["step"] for r in logged]
    assert [e.value for e in scalars] == pytest.approx([r["loss"] for r in logged], rel=1e-6)
    assert {"train/lr", "train/loss_kd_feat"} <= set(events.Tags()["scalars"])


def test_report_to_mlflow_records_the_run(teacher, tmp_path, monkeypatch):
    pytest.importorskip("mlflow", reason="--report-to mlflow needs the mlflow (or mlflow-skinny) package")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "ml"
    assert main(train_args(teacher, out, 2, "--report-to", "mlflow")) == 0
    run_id = json.loads((out / "tracking.json").read_text())["mlflow"]
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    history = client.get_metric_history(run_id, "train/loss")
    logged = read_log(out / "train_log.jsonl")
    assert [m.step for m in history] == [r["step"] for r in logged]
    assert [m.value for m in history] == pytest.approx([r["loss"] for r in logged])
    assert client.get_run(run_id).data.params["train.steps"] == "2"


def test_bad_input_is_one_line_before_anything_runs(teacher, tmp_path, capsys):
    cases = [(["--micro-batch-size", "3"], "is not a multiple of 1 worker(s) x --micro-batch-size 3"),
             (["--precision", "fp16"], "--precision fp16 needs GPUs"),
             (["--ema", "1.5"], "--ema 1.5: allowed"),
             (["--warmup", "9"], "--warmup 9: allowed: at most --steps")]
    try:
        import wandb  # noqa: F401
    except ImportError:
        cases.append((["--report-to", "wandb"], "--report-to wandb needs `pip install wandb`"))
    for extra, message in cases:
        assert main(train_args(teacher, tmp_path / "bad", 2, *extra)) == 2, extra
        assert message in capsys.readouterr().err, extra
        assert not (tmp_path / "bad").exists()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "file.txt").write_text("x")
    assert main(train_args(teacher, tmp_path / "other", 1)) == 2
    assert "is not empty and holds no blocksearch train run" in capsys.readouterr().err
    assert main(train_args(teacher, tmp_path / "done", 1)) == 0
    assert main(train_args(teacher, tmp_path / "done", 1, "--lr", "1e-3")) == 2
    assert "holds a run of other settings (its lr (0.0005))" in capsys.readouterr().err


def test_a_real_teachers_run_evaluates_only_with_a_reference(tmp_path, capsys):
    """A teacher without the toy judge is scored as a real one (FID against --reference): without a reference the
    default evaluation is off, said in one line, and an explicit --eval-every is refused before anything runs;
    its KD defaults are BK-SDM's (lr 5e-5)."""
    folder = tmp_path / "real"
    make_tiny_pipeline().save_pretrained(folder, safe_serialization=True)
    args = train_args(str(folder), tmp_path / "out", 1, "--batch-size", "2")
    del args[args.index("--eval-every"):args.index("--eval-every") + 2]  # the default
    assert main(args + ["--eval-every", "2"]) == 2
    assert "needs --reference" in capsys.readouterr().err and not (tmp_path / "out").exists()
    assert main(args) == 0
    assert "evaluation during training off" in capsys.readouterr().out
    assert [r["lr"] for r in read_log(tmp_path / "out" / "train_log.jsonl")] == [5e-5]
    assert not (tmp_path / "out" / "evals.jsonl").exists()


def test_a_studys_trial_is_trained_with_the_studys_settings(teacher, tmp_path):
    """--trial N: the trial's saved student, the study's teacher and KD settings (lr 1e-4 here)."""
    url = make_study(tmp_path, teacher=teacher)
    number, genome = 1, CASE[1][2]  # bk_small's trial
    t = load_teacher(teacher)
    student = build_student(t.unet, resolve_design(t.unet, genome)[0]).unet
    with torch.no_grad():
        student.conv_out.weight.add_(0.5)  # not the teacher's cut: the trial's own student
    student.save_pretrained(tmp_path / "students" / genome / "unet", safe_serialization=True)
    out = tmp_path / "finished"
    assert main(["train", "--study", "unet_blocks-toy", "--storage", url, "--trial", str(number), "--workers", "0",
                 "--steps", "1", "--batch-size", "2", "--eval-every", "0", "-o", str(out)]) == 0
    info = json.loads((out / "train.json").read_text())
    assert info["student"]["kind"] == "trial" and info["genome"] == genome
    assert info["job"]["teacher"] == teacher and [r["lr"] for r in read_log(out / "train_log.jsonl")] == [1e-4]
    trained = weights(out)["conv_out.weight"]
    assert float((trained - student.conv_out.weight).abs().max()) < 1e-3  # one small step from the trial's
    assert main(["train", "--study", "unet_blocks-toy", "--storage", url, "--trial", "5", "--workers", "0",
                 "-o", str(tmp_path / "x")]) == 2  # PRUNED: not a finished student


# -- the search's side: per-step losses of every trial, short trial folders -------------------------------
def test_each_trial_keeps_its_per_step_losses(tmp_path, monkeypatch):
    """<students>/<genome>/losses.jsonl holds every KD step's losses, as the trial's report saw them; a rung
    (another students folder, continuing a checkpoint) keeps its own."""
    ref = resolve_teacher(save_tiny_teacher(tmp_path))
    teacher = ref.load()
    monkeypatch.setattr(trial, "cached_teacher", lambda ref, device: teacher)
    monkeypatch.setattr(evaluate_module, "speed_and_memory", lambda *a, **k: (
        {"latency_ms": 1.0, "latency_cv": 0.0, "e2e_ms": None, "memory_mb": None, "weights_mb": None}, {}))
    genome = resolve_design(teacher.unet, "bk_tiny")[0]
    evaluation = {"prompts": 2, "steps": 2, "reference_images": 8, "cache_dir": str(tmp_path / "c")}
    kd = {"steps": 3, "batch_size": 2, "teacher_cache": "off"}
    seen = []
    job = trial.TrialJob(ref, "cpu", kd, evaluation, str(tmp_path / "s"), 1, 1, checkpoint=True)
    trial._train_candidate(genome, job, lambda step, losses: seen.append(losses))
    logged = read_log(tmp_path / "s" / genome.id / trial.LOSSES_FILE)
    assert [r["step"] for r in logged] == [1, 2, 3] and logged == seen
    assert set(logged[0]) == {"step", "loss", "loss_task", "loss_kd_out", "loss_kd_feat"}
    rung = trial.TrialJob(ref, "cpu", kd | {"steps": 5}, evaluation, str(tmp_path / "s@5"), 1, 1,
                          resume_dir=str(tmp_path / "s"))
    trial._train_candidate(genome, rung, lambda step, losses: None)
    assert [r["step"] for r in read_log(tmp_path / "s@5" / genome.id / trial.LOSSES_FILE)] == [4, 5]


def test_tune_trial_folders_are_named_by_number_and_genome():
    from ray.tune.experiment import Trial

    made = Trial("trainable", config={"_number": 7, "_genome": "L1-1-1_T1-1-1_Mnone"}, stub=True,
                 trial_dirname_creator=trial_dirname)
    assert made.custom_dirname == "7_L1-1-1_T1-1-1_Mnone"
    assert trial_dirname(SimpleNamespace(config={}, trial_id="ab12")) == "ab12_candidate"


def test_train_trial_of_a_design_taken_from_the_fidelity_study_names_what_trains_it(tmp_path):
    """trial.from_study wrote no student: train --trial says so and names --design instead."""
    from blocksearch.train.job import _from_study
    from tests.conftest import CASE, make_study

    url = make_study(tmp_path, case=[CASE[0] + ({"from_study": {"checked_at": 30, "steps": 120}},), *CASE[1:]])
    with pytest.raises(BlocksearchError, match=r"trial 0 of study unet_blocks-toy \(bk_base\) took its scores from "
                                               r"bench fidelity's study .* --design bk_base"):
        _from_study("unet_blocks-toy:0", url, None)
