"""The Python API (``from blocksearch import ...``): lazy names, and the notebook path on the bundled toy teacher:
space -> teacher -> design -> surgery -> KD -> evaluation, and a finished study's front."""

import math
import pkgutil
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
import torch

import blocksearch
from blocksearch.recipe import distill as distill_module
from blocksearch import (DistillConfig, EvalConfig, Genome, build_student, distill_student, evaluate_student,
                         load_space, load_study_front, load_teacher, resolve_design)
from blocksearch.report.compute import load_report
from tests.conftest import BK, make_study

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]

LAZY = """
import sys
import blocksearch
assert "torch" not in sys.modules and "blocksearch.recipe.distill" not in sys.modules
from blocksearch import load_space
print(load_space("unet_blocks").name, "torch" in sys.modules)
"""


def test_import_is_lazy_and_the_names_resolve():
    proc = subprocess.run([sys.executable, "-c", LAZY], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["unet_blocks", "False"]  # the space needs no torch
    for name in blocksearch.__all__:
        assert getattr(blocksearch, name) is not None and name in dir(blocksearch)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        blocksearch.nope  # noqa: B018


def test_exported_names_are_not_submodule_names():
    """A package attribute cannot be both: importing ``blocksearch.recipe.distill`` sets it to the module."""
    submodules = {m.name for m in pkgutil.iter_modules(blocksearch.__path__)}
    assert {"recipe", "report", "search", "space"} <= submodules  # the check sees them
    assert set(blocksearch.__all__) & submodules == set()
    assert distill_module.__name__ == "blocksearch.recipe.distill"  # the submodule keeps its name
    assert distill_module.distill is distill_student and blocksearch.distill_student is distill_student


def test_version_from_the_installed_distribution_else_pyproject(monkeypatch):
    assert blocksearch.__version__ == metadata.version("blocksearch")

    def not_installed(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", not_installed)
    expected = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert blocksearch._version() == expected


def test_notebook_path_on_the_toy_teacher(tmp_path):
    space = load_space("unet_blocks")
    assert {"bk_base", "bk_small", "bk_tiny"} <= set(space.designs)
    teacher = load_teacher("toy")
    assert teacher.is_toy
    genome, design = resolve_design(teacher.unet, "bk_small")
    assert (genome, design) == (Genome.from_id(BK["bk_small"]), "bk_small")
    student = build_student(teacher.unet, genome)
    assert student.unet.mid_block is None and len(student.kd_pairs) == 8  # 4 down and 4 up stage outputs
    before = {k: v.clone() for k, v in student.unet.state_dict().items()}
    config = DistillConfig(steps=2, batch_size=2, cache_dir=str(tmp_path / "cache"))
    result = distill_student(teacher, student, config, progress=False)
    assert [r["step"] for r in result.losses] == [1, 2] and all(math.isfinite(r["loss"]) for r in result.losses)
    after = student.unet.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # KD trained the student in place
    fast = dict(prompts=4, steps=2, reference_images=8, latency_warmup=1, latency_repeats=2, latency_min_s=0.0,
                e2e_repeats=1)
    metrics = evaluate_student(teacher, student.unet, EvalConfig(**fast, cache_dir=str(tmp_path / "cache")),
                               progress=False)
    assert metrics.params == sum(p.numel() for p in student.unet.parameters())
    assert metrics.params < sum(p.numel() for p in teacher.unet.parameters())
    assert metrics.fid > 0 and metrics.latency_ms > 0


def test_study_front_reads_the_finished_study(tmp_path):
    url = make_study(tmp_path)  # a real Optuna study (SQLite), written as `blocksearch run` writes one
    front = load_study_front("unet_blocks-toy", url)
    assert [t.number for t in front] == [2, 3, 1]  # the hand-computed front, by FID
    assert [t.genome for t in front] == ["L1-2-1-2_T1-1-1-0_Mattn", "L1-1-1_T1-0-1_Mres", BK["bk_small"]]
    assert [t.metrics["fid"] for t in front] == [9.0, 11.0, 12.0] and front[2].design == "bk_small"
    assert front[0].student_dir == str(tmp_path / "students" / front[0].genome / "unet")
    report = load_report("unet_blocks-toy", url)
    assert all(t.on_front for t in front) and {t.number for t in report.trials if t.on_front} == {2, 3, 1}
    with pytest.raises(blocksearch.BlocksearchError):
        load_study_front("no-such-study", url)
