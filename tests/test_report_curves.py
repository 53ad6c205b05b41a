"""The report's learning curves: each front student's per-step losses, joined across rungs, drawn as curves.png."""

import json
from types import SimpleNamespace

import numpy as np
import pytest

from blocksearch.report.render import write_report
from blocksearch.report.compute import build_report
from blocksearch.report.curves import front_curves, losses_files, read_losses, smooth
from blocksearch.study import open_study
from tests.conftest import make_study


def write_losses(path, steps, loss=1.0):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"step": s, "loss": loss * s, "loss_task": 0.1}) + "\n" for s in steps))


def test_a_rung_joins_its_students_losses_with_the_study_below(tmp_path):
    runs = tmp_path / "runs"
    g = "L2-1-1_T1-1-1_Mnone"
    write_losses(runs / "s" / "students" / g / "losses.jsonl", range(1, 4))
    write_losses(runs / "s@8" / "students" / g / "losses.jsonl", range(4, 9))
    write_losses(runs / "s@32" / "students" / g / "losses.jsonl", range(9, 33))  # a longer rung: not below @8
    report = SimpleNamespace(study="s@8", attrs={"rung": {"of": "s", "from": "s", "steps": 8}})
    trial = SimpleNamespace(student_dir=str(runs / "s@8" / "students" / g / "unet"))
    files = losses_files(report, trial)
    assert [f.parents[2].name for f in files] == ["s", "s@8"]
    steps, loss = read_losses(files)
    assert steps.tolist() == list(range(1, 9)) and loss[:, 0].tolist() == list(range(1, 9))
    first = SimpleNamespace(study="s", attrs={})
    assert losses_files(first, SimpleNamespace(student_dir=str(runs / "s" / "students" / g / "unet"))) == files[:1]
    assert losses_files(first, SimpleNamespace(student_dir=None)) == []


def test_smooth_is_a_trailing_mean():
    assert smooth(np.array([1.0, 3.0, 5.0, 7.0]), window=2).tolist() == [1.0, 2.0, 4.0, 6.0]


def test_the_report_draws_the_front_and_reference_curves_only_when_losses_exist(tmp_path):
    url = make_study(tmp_path)
    out = write_report("unet_blocks-toy", url, tmp_path / "bare")
    assert not (out / "curves.png").exists() and "Learning curves" not in (out / "README.md").read_text()
    report = build_report(open_study("unet_blocks-toy", url), url)
    drawn = [t for t in report.ranked if t.on_front or t.number in report.reference_trials.values()]
    left_out = [t for t in report.ranked if t not in drawn]
    assert drawn and left_out
    for t in report.ranked:
        write_losses(tmp_path / "students" / t.genome / "losses.jsonl", range(1, 11), loss=t.number + 1)
    curves = front_curves(report)
    assert sorted(curves) == sorted(t.label + (" (front)" if t.on_front else "") for t in drawn)
    out = write_report("unet_blocks-toy", url, tmp_path / "drawn")
    assert (out / "curves.png").stat().st_size > 10_000
    assert "![KD loss per step](curves.png)" in (out / "README.md").read_text()
