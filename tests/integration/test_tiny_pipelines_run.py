"""``blocksearch run`` end to end on tiny random-weight SDXL, SD3 and Flux pipeline folders (blocksearch/toy/
tiny_*.py, diffusers' own pipeline tests' widths; a random toy judge beside each, so that they are scored as the
toy teacher is, offline): two COMPLETE trials, a report, and ``blocksearch export`` whose students load in the stock
pipeline class and generate an image in a fresh process that never imports blocksearch."""

import json
import os
import subprocess
import sys
import textwrap

import optuna
import pytest
import torch
from safetensors.torch import save_file

from blocksearch.cli import main
from blocksearch.toy.assets import JUDGE_FILE
from blocksearch.toy.judge import ToyJudge
from blocksearch.toy.tiny_flux import save_tiny_flux
from blocksearch.toy.tiny_sd3 import save_tiny_sd3
from blocksearch.toy.tiny_sdxl import save_tiny_sdxl
from tests.integration.conftest import free_port

pytestmark = pytest.mark.integration

CASES = {  # tiny folder, its space, its stock pipeline, the call a user makes (the model card's snippet's kwargs)
    "sdxl": (save_tiny_sdxl, "unet_blocks_sdxl", "StableDiffusionXLPipeline", {}),
    "sd3": (save_tiny_sd3, "dit_blocks", "StableDiffusion3Pipeline", {"max_sequence_length": 16}),
    "flux": (save_tiny_flux, "dit_blocks", "FluxPipeline", {"max_sequence_length": 16, "height": 64, "width": 64}),
}


# SD3 runs in CI (the quickest: ~100 s on the loaded 2-core machine); SDXL and Flux (157 s, 332 s there) are
# opt-in (--runslow), to keep the suite's time down: the same code path with the family's own conditioning.
@pytest.mark.parametrize("name", [pytest.param("flux", marks=pytest.mark.slow), "sd3",
                                  pytest.param("sdxl", marks=pytest.mark.slow)])
def test_a_tiny_pipeline_searches_reports_and_exports(name, tmp_path, monkeypatch, capsys):
    save, space, pipeline, call = CASES[name]
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("BLOCKSEARCH_CACHE", str(tmp_path / "cache"))  # its own locks: no wait on other processes
    teacher = save(tmp_path / f"tiny-{name}")
    torch.manual_seed(1)
    save_file({k: v.contiguous() for k, v in ToyJudge().state_dict().items()}, teacher / JUDGE_FILE)
    db = f"sqlite:///{tmp_path / 's.db'}"
    assert main(["run", "--teacher", str(teacher), "--space", space, "--trials", "2", "--steps", "3",
                 "--batch-size", "2", "--eval-prompts", "4", "--inference-steps", "2", "--latency-repeats", "2",
                 "--noise-seeds", "1", "--rungs", "none", "--max-concurrent", "1", "--study", name, "--storage", db,
                 "--runs-dir", str(tmp_path / "runs"), "--dashboard-port", str(free_port())]) == 0
    out = capsys.readouterr().out
    study = optuna.load_study(study_name=name, storage=db)
    assert len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))) == 2, out[-3000:]
    assert "of it conditioning" in out  # the teacher cache's decision with its conditioning's bytes per step
    assert (tmp_path / "reports" / name / "README.md").is_file()

    exported = tmp_path / "exported"
    assert main(["export", "--study", name, "--storage", db, "--front", "-o", str(exported)]) == 0
    folders = sorted(str(p) for p in exported.iterdir() if p.is_dir())
    assert folders and all(json.loads((exported / f / "model_index.json").read_text())["_class_name"] == pipeline
                           for f in folders)
    assert all(repr(call)[1:-1].replace("'", "").replace(": ", "=") in (exported / f / "README.md").read_text()
               for f in folders)  # the model card's snippet makes the call below
    script = textwrap.dedent(f"""
        import sys, torch
        from diffusers import {pipeline}
        for folder in {folders!r}:
            pipe = {pipeline}.from_pretrained(folder, local_files_only=True)
            image = pipe("a red circle", num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                         output_type="np", **{call!r}).images
            assert image.shape == (1, 64, 64, 3), image.shape
        assert not any(m == "blocksearch" or m.startswith("blocksearch.") for m in sys.modules)
        print("ok")
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": ""})
    assert run.returncode == 0 and run.stdout.strip().endswith("ok"), run.stderr[-2000:]
