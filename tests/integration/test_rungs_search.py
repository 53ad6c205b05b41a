"""``blocksearch run`` with a rung: the students near the front continue from their KD checkpoints on Ray Tune,
into a study of their own; the continued student is the one a straight run of the longer budget trains."""

import optuna
import pytest
import torch

from blocksearch.cli import main
from blocksearch.recipe.distill import DistillConfig, distill
from blocksearch.report.compute import build_report
from blocksearch.search.promotion import promoted, stopped_references
from blocksearch.families.unet.genome import Genome
from blocksearch.study import counts
from blocksearch.families.unet.surgery import build_student
from blocksearch.search.selection import read_selection
from blocksearch.teachers import load_teacher
from tests.integration.conftest import free_port

pytestmark = pytest.mark.integration


def test_the_students_near_the_front_go_on_to_a_longer_budget(tiny_teacher, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    db, runs = f"sqlite:///{tmp_path / 's.db'}", tmp_path / "runs"
    args = ["run", "--teacher", str(tiny_teacher), "--trials", "4", "--steps", "2", "--rungs", "6", "--eval-prompts",
            "4", "--latency-repeats", "2", "--min-alignment", "0", "--study", "r", "--storage", db, "--runs-dir",
            str(runs), "--dashboard-port", str(free_port())]
    code = main(args)
    out = capsys.readouterr().out
    assert code == 0, out
    base = optuna.load_study(study_name="r", storage=db)
    rung = optuna.load_study(study_name="r@6", storage=db)
    assert counts(base)["done"] == 4 and base.user_attrs["rungs"] == [6]
    # the default first stage is ranked by the score bench fidelity chose (no images), the rung by FID
    assert base.metric_names[0] == base.user_attrs["score"] == read_selection()["predictor"]
    assert rung.metric_names[0] == rung.user_attrs["score"] == "fid"
    assert all(t.user_attrs["metrics"]["fid"] is None for t in base.get_trials(states=(optuna.trial.TrialState.COMPLETE,)))
    report = build_report(base)
    chosen = {t.number: t for t in promoted(report)}
    stopped = stopped_references(report, list(chosen.values()))  # settled below: not trained again (open)
    assert {t.design for t in chosen.values()} | set(stopped) >= {"bk_base", "bk_small", "bk_tiny"}
    assert rung.user_attrs["stopped_references"] == {"r": stopped}
    done = rung.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert sorted(t.user_attrs["promoted_from"] for t in done) == sorted(chosen), out
    for t in done:
        assert t.user_attrs["genome"] == chosen[t.user_attrs["promoted_from"]].genome
        assert t.user_attrs["kd_start_step"] == 2  # continued from the 2-step checkpoint, not from surgery
        assert t.user_attrs["student_dir"].startswith(str(runs / "r@6" / "students"))
    assert rung.user_attrs["distill"]["steps"] == 6 and rung.user_attrs["rung"] == {"of": "r", "from": "r", "steps": 6}
    # checkpoints live only while a rung may continue them: none is left once the rung is done, and the last
    # rung keeps none of its own
    assert not list((runs / "r" / "students").glob("*/kd-checkpoint*"))
    assert not list((runs / "r@6" / "students").glob("*/kd-checkpoint*"))
    assert "rung 6 done: the KD checkpoints of " in out
    assert "rung 6 KD steps: " in out and "the students trained longest" in out
    assert (tmp_path / "reports" / "r@6" / "index.html").is_file() and (tmp_path / "reports" / "r" / "index.html").is_file()
    assert "A rung of study `r`**: every student here trained 6 KD steps" in (tmp_path / "reports" / "r@6" / "README.md").read_text()
    assert "continue to longer budgets in `r@6`" in (tmp_path / "reports" / "r" / "README.md").read_text()
    # the rung's report has the teacher's row too (its scores were measured once, in the study below)
    assert rung.user_attrs["teacher_metrics"] == base.user_attrs["teacher_metrics"]
    assert "| teacher |" in (tmp_path / "reports" / "r@6" / "README.md").read_text()

    # the continued student (2 steps, checkpoint, 4 more) is the straight 6-step run's
    tiny = next(t for t in done if t.user_attrs.get("design") == "bk_tiny")
    teacher = load_teacher(str(tiny_teacher), device="cpu")
    straight = build_student(teacher.unet, Genome.from_id(tiny.user_attrs["genome"]))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the trials ran (--cpus-per-trial 1): another thread count rounds otherwise
    try:
        distill(teacher, straight, DistillConfig.from_dict(rung.user_attrs["distill"]), progress=False)
    finally:
        torch.set_num_threads(threads)
    continued = type(straight.unet).from_pretrained(tiny.user_attrs["student_dir"])
    for name, tensor in straight.unet.state_dict().items():
        torch.testing.assert_close(continued.state_dict()[name], tensor, atol=1e-6, rtol=1e-5,
                                   msg=lambda m, name=name: f"{name}: {m}")

    assert main(args) == 0  # a rerun: every rung done, nothing to train
    assert "nothing to run" in capsys.readouterr().out
    assert len(optuna.load_study(study_name="r@6", storage=db).get_trials()) == len(rung.get_trials())
