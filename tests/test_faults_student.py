"""Corrupt students (issue 35): a saved student's weight file, cut short or with one bit flipped, is found by the
hashes recorded when it was written, before export, the report's samples, evaluate, distill --init or train --init
trust it: one line naming the file and what was wrong, the file moved aside (.corrupt), the student refused."""

import json
import logging
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file

from blocksearch import cache
from blocksearch.cache import CHECKSUM, CORRUPT, CorruptFile
from blocksearch.cli import main
from blocksearch.families.unet.genome import Genome
from blocksearch.families.unet.surgery import build_student
from blocksearch.recipe.student_files import check_student
from blocksearch.report import samples
from blocksearch.report.export import export_study
from blocksearch.search.trial import saved
from tests.conftest import CASE, make_study, make_tiny_pipeline
from tests.test_faults_cache import DAMAGE
from tests.test_train import train_args

pytestmark = pytest.mark.usefixtures("one_thread")
WEIGHTS = "diffusion_pytorch_model.safetensors"


def damaged(path, damage: str) -> None:
    DAMAGE[damage](path)
    cache._VERIFIED.clear()  # as a later process, which hashes the file afresh


@pytest.fixture(scope="module")
def trial_students(tmp_path_factory):
    """A study whose completed trials' students were saved as a search trial saves them (``trial.saved``)."""
    tmp = tmp_path_factory.mktemp("students")
    teacher = make_tiny_pipeline()
    teacher.save_pretrained(tmp / "teacher", safe_serialization=True)
    url = make_study(tmp, teacher=str(tmp / "teacher"))
    for state, _, genome, _ in CASE:
        if state == "COMPLETE":
            saved(build_student(teacher.unet, Genome.from_id(genome)).unet, tmp / "students" / genome / "unet")
    return tmp, url


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_trial_student_is_found_set_aside_and_refused_in_one_line(tmp_path, damage):
    unet = build_student(make_tiny_pipeline().unet, Genome.from_id(CASE[1][2])).unet
    folder = tmp_path / "students" / CASE[1][2] / "unet"
    saved(unet, folder)
    assert json.loads((folder / f"{WEIGHTS}{CHECKSUM}").read_text())["bytes"] == (folder / WEIGHTS).stat().st_size
    assert check_student(folder, then="x") == folder  # sound: passes
    damaged(folder / WEIGHTS, damage)
    with pytest.raises(CorruptFile) as err:
        check_student(folder, then="train it again")
    line = str(err.value)
    assert "\n" not in line and line.startswith(f"student {folder / WEIGHTS} is corrupt: ")
    assert ("were written" in line) if damage == "truncated" else ("SHA-256 differs" in line)
    assert line.endswith(f"moved aside to {WEIGHTS}{CORRUPT}; train it again")
    assert not (folder / WEIGHTS).exists() and (folder / f"{WEIGHTS}{CORRUPT}").is_file()
    with pytest.raises(CorruptFile, match="set aside as corrupt .* by an earlier check"):  # and never trusted after
        check_student(folder, then="x")


def test_a_folder_without_records_has_its_header_and_size_checked(tmp_path):
    """A diffusers folder written by another tool: a whole file passes, a cut one does not; a pipeline folder's
    denoiser is found in its family's subfolder."""
    unet = make_tiny_pipeline().unet
    unet.save_pretrained(tmp_path / "pipe" / "unet", safe_serialization=True)
    assert check_student(tmp_path / "pipe", then="x") == tmp_path / "pipe" / "unet"
    DAMAGE["truncated"](tmp_path / "pipe" / "unet" / WEIGHTS)
    with pytest.raises(CorruptFile, match="safetensors header|header says"):
        check_student(tmp_path / "pipe", then="x")


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_export_refuses_a_damaged_trial_student_and_exports_a_sound_one(trial_students, tmp_path, damage):
    tmp, url = trial_students
    genome = CASE[2 if damage == "truncated" else 3][2]
    damaged(tmp / "students" / genome / "unet" / WEIGHTS, damage)
    number = 2 if damage == "truncated" else 3
    with pytest.raises(CorruptFile, match=rf"student .*{genome}/unet/{WEIGHTS} is corrupt: .* trial {number} is not "
                                          rf"exported; train its design again \(blocksearch train --design {genome}"):
        export_study("unet_blocks-toy", url, tmp_path / "out", trial=number)
    assert not (tmp_path / "out").exists()
    [out] = export_study("unet_blocks-toy", url, tmp_path / "fine", trial=1)  # an untouched student still exports
    assert (out / "unet" / WEIGHTS).is_file() and (out / "unet" / f"{WEIGHTS}{CHECKSUM}").is_file()
    assert check_student(out, then="x") == out / "unet"  # the records travel with the copied weights


def test_the_reports_samples_skip_a_damaged_student_and_say_why(trial_students, caplog):
    tmp, _ = trial_students
    genome = CASE[4][2]
    damaged(tmp / "students" / genome / "unet" / WEIGHTS, "bit-flipped")
    with caplog.at_level(logging.WARNING):
        why = samples._unsound(SimpleNamespace(student_dir=str(tmp / "students" / genome / "unet")))
    assert why == "its student failed its check (its SHA-256 differs from the one recorded when it was written)"
    assert any("is corrupt" in r.getMessage() and genome in r.getMessage() for r in caplog.records)
    assert samples._unsound(SimpleNamespace(student_dir=str(tmp / "students" / CASE[0][2] / "unet"))) is None


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_evaluate_distill_init_and_train_init_refuse_a_damaged_distilled_student(tiny_teacher_folder, tmp_path,
                                                                                  capsys, damage):
    """``distill``'s output records its weights (``distill.json`` and ``.sha256``); each reader says so in one line,
    exit code 2, before any work."""
    student = tmp_path / "student"
    assert main(["distill", "--teacher", tiny_teacher_folder, "--design", "bk_tiny", "--steps", "0", "-o",
                 str(student), "--cache-dir", str(tmp_path / "cache")]) == 0
    records = json.loads((student / "distill.json").read_text())["files"]
    assert f"unet/{WEIGHTS}" in records and not any(k.endswith(CHECKSUM) for k in records)
    (student / "unet" / f"{WEIGHTS}{CHECKSUM}").unlink()  # distill.json's record alone is enough
    damaged(student / "unet" / WEIGHTS, damage)
    capsys.readouterr()
    assert main(["evaluate", str(student), "--prompts", "4", "--cache-dir", str(tmp_path / "cache")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is corrupt: " in err[0] and "nothing was evaluated" in err[0], err
    assert not (student / "metrics.json").exists() and (student / "unet" / f"{WEIGHTS}{CORRUPT}").is_file()
    assert main(["distill", "--teacher", tiny_teacher_folder, "--init", str(student), "--steps", "1", "-o",
                 str(tmp_path / "more"), "--cache-dir", str(tmp_path / "cache")]) == 2
    assert "set aside as corrupt" in capsys.readouterr().err and not (tmp_path / "more").exists()
    args = train_args(tiny_teacher_folder, tmp_path / "trained", 2)
    at = args.index("--design")
    args[at:at + 2] = ["--init", str(student)]
    assert main(args) == 2
    assert "set aside as corrupt" in capsys.readouterr().err and not (tmp_path / "trained" / "unet").exists()


def test_a_sound_distilled_student_is_read_as_before(tiny_teacher_folder, tmp_path):
    student = tmp_path / "student"
    assert main(["distill", "--teacher", tiny_teacher_folder, "--design", "bk_tiny", "--steps", "0", "-o",
                 str(student), "--cache-dir", str(tmp_path / "cache")]) == 0
    assert check_student(student, then="x") == student / "unet"
    save_file({"a": torch.zeros(2)}, student / "unet" / "extra.safetensors")  # unrecorded, whole: its header passes
    assert check_student(student, then="x") == student / "unet"
