"""``blocksearch run --space dit_blocks`` end to end on a tiny-budget toy transformer teacher, on Ray Tune: trials
(the probe-ranked first stage), a rung, both reports in transformer words, and the front exported as pipelines that
stock diffusers loads and samples from in a fresh process, without blocksearch."""

import json
import os
import subprocess
import sys
import textwrap

import optuna
import pytest

from blocksearch.cli import main
from blocksearch.study import counts
from blocksearch.toy.build_dit import build_dit
from tests.integration.conftest import free_port

# slow (opt-in, --runslow) for the suite's time: 8 named designs + rung + export, ~10 min on the 2-core machine; CI runs
# the transformer family end to end through test_tiny_pipelines_run.py's SD3 case (search, report, export, stock load)
pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_a_dit_search_runs_rungs_reports_and_exports(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("BLOCKSEARCH_CACHE", str(tmp_path / "cache"))  # its own locks: no wait on other processes
    teacher = build_dit(tmp_path / "toy-dit", budget="tiny", threads=1)
    db, runs = f"sqlite:///{tmp_path / 's.db'}", tmp_path / "runs"
    args = ["run", "--space", "dit_blocks", "--teacher", str(teacher), "--trials", "3", "--steps", "2", "--rungs", "4",
            "--batch-size", "2", "--eval-prompts", "4", "--inference-steps", "2", "--latency-repeats", "2",
            "--noise-seeds", "1", "--study", "d", "--storage", db, "--runs-dir", str(runs),
            "--dashboard-port", str(free_port())]
    assert main(args) == 0
    out = capsys.readouterr().out
    base, rung = (optuna.load_study(study_name=name, storage=db) for name in ("d", "d@4"))
    assert counts(base)["done"] == 3 and base.user_attrs["reference_designs"] == {  # the toy's 8 distinct designs
        "tinyfusion_14": "D0-14s2", "flux_lite": "D0-7", "first_10": "D0-9", "first_12": "D0-11", "first_14": "D0-13",
        "last_12": "D4-15", "drop_4_7": "D0-3.8-15", "drop_8_11": "D0-7.12-15"}
    done = rung.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert done and all(t.user_attrs["kd_start_step"] == 2 for t in done)
    assert all(t.user_attrs["student_dir"].endswith(f"{t.user_attrs['genome']}/transformer") for t in done)
    assert "teacher: fid" in out and "transformer step" in out and "rung 4 KD steps" in out
    readme = (tmp_path / "reports" / "d@4" / "README.md").read_text()
    assert "transformer_blocks: 8 of 16 blocks kept (teacher blocks 0-14 step 2); removed 1-15 step 2" in readme
    assert "| transformer params | transformer step |" in readme and "U-Net" not in readme

    exported = tmp_path / "exported"
    assert main(["export", "--study", "d@4", "--storage", db, "--front", "-o", str(exported)]) == 0
    folders = sorted(p for p in exported.iterdir() if p.is_dir())
    assert folders and all(json.loads((f / "model_index.json").read_text())["_class_name"] == "PixArtSigmaPipeline"
                           for f in folders)
    script = textwrap.dedent(f"""
        import sys, torch
        from diffusers import DiffusionPipeline
        for folder in {[str(f) for f in folders]!r}:
            pipe = DiffusionPipeline.from_pretrained(folder)
            image = pipe("a red circle", num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                         output_type="np", max_sequence_length=16, use_resolution_binning=False,
                         clean_caption=False).images
            assert image.shape == (1, 64, 64, 3) and pipe.transformer.config.num_layers < 16
        assert not any(m == "blocksearch" or m.startswith("blocksearch.") for m in sys.modules)
        print("ok")
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0 and run.stdout.strip().endswith("ok"), run.stderr[-2000:]
