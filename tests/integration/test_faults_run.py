"""Issue 35's first fault as a user meets it: the teacher cache cut to half its size (bit rot, an interrupted rsync)
under ``blocksearch run --trials 2 --steps 2``. Before, both trials failed on the SafetensorError and the run exited
0; now the driver finds the file bad, says so in one line, moves it aside and builds it again, and both trials
complete (exit 0)."""

import logging

import optuna
import pytest

from blocksearch import cache
from blocksearch.cache import CORRUPT, file_problem
from blocksearch.cli import main
from blocksearch.recipe.distill import DistillConfig, distill_defaults, prepare_teacher_cache
from blocksearch.teachers import resolve_teacher
from tests.integration.conftest import FAST, free_port
from tests.test_faults_cache import truncate

# slow (opt-in) for the suite's time; CI covers the rebuild of each damaged cache in tests/test_faults_cache.py
pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_a_truncated_teacher_cache_is_rebuilt_and_the_search_completes(tiny_teacher, tmp_path, monkeypatch, capsys,
                                                                      caplog):
    monkeypatch.setenv("BLOCKSEARCH_CACHE", str(tmp_path / "cache"))  # this test's own cache (and the workers')
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    teacher = resolve_teacher(str(tiny_teacher))
    built, _ = prepare_teacher_cache(teacher.load("cpu"), DistillConfig(**(distill_defaults(teacher.is_toy) |
                                                                          {"steps": 2})))  # as the run's driver does
    path = built.path
    del built  # its file handle
    truncate(path)
    cache._VERIFIED.clear()
    db = f"sqlite:///{tmp_path / 's.db'}"
    with caplog.at_level(logging.WARNING):
        code = main(["run", "--teacher", str(tiny_teacher), "--trials", "2", *FAST, "--study", "cut", "--storage", db,
                     "--runs-dir", str(tmp_path / "runs"), "--dashboard-port", str(free_port())])
    out = capsys.readouterr().out
    assert code == 0, out[-3000:]
    [line] = [r.getMessage() for r in caplog.records if "is corrupt" in r.getMessage()]
    assert line.startswith(f"blocksearch: {path} is corrupt: ") and "rebuilding it" in line, line
    assert path.with_name(path.name + CORRUPT).is_file() and file_problem(path) is None  # set aside; rebuilt whole
    assert path in path.parent.glob("*.safetensors")  # the run used the file that was cut (the probe has its own)
    states = [t.state.name for t in optuna.load_study(study_name="cut", storage=db).get_trials()
              if t.state.name != "WAITING"]
    assert states == ["COMPLETE", "COMPLETE"], out[-3000:]
    assert "0 complete" not in out
