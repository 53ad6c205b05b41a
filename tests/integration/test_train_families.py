"""``blocksearch train`` for every family, through the family hooks alone: a student distilled from the toy
transformer teacher (toy-dit, a PixArt transformer) and one from a tiny random SDXL pipeline folder
(toy/tiny_sdxl.py) are each continued with ``--init`` on 2 Ray Train workers for 4 steps; the CLI driver is
SIGKILLed after Ray Train registered its first checkpoint, and the same command then continues the curve from the
last registered checkpoint, ending with the student of a straight in-process run (the same global batches:
accumulation, EMA and schedule as the U-Net's, tests/integration/test_train_ray.py). The exported folder loads in
the teacher's stock pipeline class."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import diffusers
import pytest
import ray
from safetensors.torch import load_file

from blocksearch.cli import main
from blocksearch.toy.tiny_flux import save_tiny_flux
from blocksearch.toy.tiny_sd3 import save_tiny_sd3
from blocksearch.toy.tiny_sdxl import save_tiny_sdxl
from blocksearch.train.learning_curve import read_log
from tests.integration.conftest import ROOT, free_port
from tests.test_train import max_diff, mean_diff

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("one_thread")]
# family -> (teacher maker, space, design, the exported denoiser's file, the stock pipeline class)
CASES = {"toy-dit": (lambda tmp: "toy-dit", "dit_blocks", "tinyfusion_14",
                     "transformer/diffusion_pytorch_model.safetensors", "PixArtSigmaPipeline"),
         "tiny-sdxl": (lambda tmp: str(save_tiny_sdxl(tmp / "teacher")), "unet_blocks_sdxl", "koala_700m",
                       "unet/diffusion_pytorch_model.safetensors", "StableDiffusionXLPipeline"),
         "tiny-sd3": (lambda tmp: str(save_tiny_sd3(tmp / "teacher")), "dit_blocks", "tinyfusion_14",
                      "transformer/diffusion_pytorch_model.safetensors", "StableDiffusion3Pipeline"),
         "tiny-flux": (lambda tmp: str(save_tiny_flux(tmp / "teacher")), "dit_blocks", "flux_lite",
                       "transformer/diffusion_pytorch_model.safetensors", "FluxPipeline")}
# Every case is opt-in (--runslow) for the suite's time: each is minutes on the 2-core machine. CI trains a transformer
# student through the same hooks in tests/test_train_families.py, and a U-Net on Ray Train in test_train_ray.py.
PARAMS = [pytest.param(c, marks=pytest.mark.slow) for c in ("toy-dit", "tiny-sdxl", "tiny-sd3", "tiny-flux")]


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the killed drivers (``--address``), token auth off (tests/conftest.py)."""
    os.environ["RAY_AUTH_MODE"] = "disabled"
    ray.init(address="local", num_cpus=2, include_dashboard=True, dashboard_port=free_port(),
             logging_level="WARNING")
    yield
    ray.shutdown()


def train_args(teacher: str, init: Path, out: Path, *extra: str) -> list[str]:
    """4 steps of global batch 4 from ``init``, EMA, warm-up and a cosine schedule, a checkpoint every step."""
    return ["train", "--teacher", teacher, "--init", str(init), "--steps", "4", "--batch-size", "4",
            "--checkpoint-every", "1", "--ema", "0.5", "--warmup", "1", "--schedule", "cosine", "--eval-every", "0",
            "--cache-dir", str(out.parent / "cache"), "-o", str(out), *extra]


@pytest.mark.parametrize("case", PARAMS)
def test_a_killed_two_worker_run_of_each_family_continues_its_curve(case, local_ray, tmp_path):
    make, space, design, weights_file, pipeline_class = CASES[case]
    teacher = make(tmp_path)
    student = tmp_path / "student"
    assert main(["distill", "--teacher", teacher, "--space", space, "--design", design, "--steps", "1",
                 "--batch-size", "2", "-o", str(student), "--cache-dir", str(tmp_path / "cache")]) == 0
    out = tmp_path / "killed"
    args = train_args(teacher, student, out, "--workers", "2", "--address", ray.get_runtime_context().gcs_address)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "RAY_AUTH_MODE": "disabled"}
    command = [sys.executable, "-m", "blocksearch.cli", *args]
    doomed = subprocess.Popen(command, cwd=ROOT, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    snapshot = out / "ray" / "train" / "checkpoint_manager_snapshot.json"  # Ray Train's record of checkpoints
    registered = lambda: snapshot.is_file() and "step-0000001" in snapshot.read_text()  # noqa: E731
    try:
        end = time.time() + 900  # Ray's start and the workers' teacher loads: minutes on a busy 2-core machine
        while doomed.poll() is None and time.time() < end and not registered():
            time.sleep(0.05)
        killed_after_a_checkpoint = registered()
        os.killpg(doomed.pid, signal.SIGKILL)  # the driver: Ray ends its job's Train controller and workers
    finally:
        doomed.wait(30)
    assert killed_after_a_checkpoint and doomed.returncode == -signal.SIGKILL
    assert not (out / "model_index.json").exists()
    rerun = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    start = int(rerun.stdout.split(" from step ")[1].split()[0])
    assert 1 <= start < 4, rerun.stdout[-2000:]  # continued, not restarted
    assert [r["step"] for r in read_log(out / "train_log.jsonl")] == [1, 2, 3, 4]
    assert len((out / "curve.csv").read_text().splitlines()) == 5
    straight = tmp_path / "straight"
    assert main(train_args(teacher, student, straight, "--workers", "0")) == 0
    for a, b in zip(read_log(out / "train_log.jsonl"), read_log(straight / "train_log.jsonl")):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4) and a["lr"] == pytest.approx(b["lr"])
    mine, theirs = load_file(out / weights_file), load_file(straight / weights_file)
    init = load_file(student / weights_file)  # the distilled student it went on from
    # the same training up to float rounding, which AdamW amplifies only where a gradient is ~0 (its update is
    # scale-free: at most one step's lr, 5e-4); a wrong batch split would move every element by ~lr
    assert max_diff(mine, theirs) <= 5e-4 and mean_diff(mine, theirs) < 0.01 * mean_diff(mine, init)
    info = json.loads((out / "train.json").read_text())
    assert info["exported_weights"] == "EMA" and info["split"] == {"workers": 2, "micro_batch_size": 2,
                                                                    "accumulation": 1}
    pipe = getattr(diffusers, pipeline_class).from_pretrained(out)  # the teacher's stock class
    assert type(pipe).__name__ == pipeline_class
    assert f"from diffusers import {pipeline_class}" in (out / "README.md").read_text()
