"""Disk full (issue 35): ENOSPC injected at each writer -- the write itself fails half-way, as on a full disk. The
command fails with one line naming the folder and the space it needed, leaves no half-written file a later run
would trust, and loses nothing that was complete."""

import builtins
import errno
import io
import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import safetensors.torch
from safetensors import SafetensorError
import torch

from blocksearch import cache
from blocksearch.cache import DiskFull, file_problem, write_text
from blocksearch.recipe import data, distill as distill_mod, latency, teacher_cache
from blocksearch.recipe.data import BatchStream, ImageFolder
from blocksearch.recipe.distill import DistillResult, checkpoint_info, distill, write_student
from blocksearch.recipe.teacher_cache import open_cache
from blocksearch.report.render import write_report
from blocksearch.train.state import save_state
from tests.conftest import make_study, make_tiny_teacher
from tests.test_distill_resume import _config, _student
from tests.test_faults_cache import _imagefolder
from tests.test_faults_checkpoint import _Tiny

pytestmark = pytest.mark.usefixtures("one_thread")
REAL_OPEN, REAL_SAVE = builtins.open, safetensors.torch.save_file
LINE = re.compile(r"^no space left in (?P<folder>\S+): writing (?P<name>\S+) needs [\d,.]+ MiB \((?P<n>\d+) bytes\), "
                  r"[\d,.]+ MiB \(\d+ bytes\) free there; .*nothing complete was lost$")


def _enospc():
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class _FullFile:
    """A file on a full disk: the first write gets half its bytes out, then fails."""

    def __init__(self, f):
        self._f = f

    def write(self, chunk):
        self._f.write(chunk[:len(chunk) // 2])
        self._f.flush()
        raise _enospc()

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


@pytest.fixture
def full_disk(monkeypatch):
    """``full_disk(match)``: from now on, every write to a file whose name holds ``match`` fails with ENOSPC
    half-way: Python's ``open`` (pathlib, csv, matplotlib: OSError ENOSPC) and safetensors' ``save_file`` (its own
    writer, in Rust: a SafetensorError with the OS error, as on a real full disk: ``test_a_real_full_disk``)."""

    def on(match: str = ""):
        def fake_open(file, mode="r", *args, **kwargs):
            f = REAL_OPEN(file, mode, *args, **kwargs)
            return _FullFile(f) if any(c in mode for c in "wax") and match in str(file) else f

        def fake_save(tensors, filename, metadata=None):
            REAL_SAVE(tensors, filename, metadata)
            if match not in str(filename):
                return
            blob = Path(filename).read_bytes()
            Path(filename).write_bytes(blob[:len(blob) // 2])
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

        monkeypatch.setattr(builtins, "open", fake_open)
        monkeypatch.setattr(io, "open", fake_open)
        for module in (safetensors.torch, teacher_cache, data, distill_mod):
            monkeypatch.setattr(module, "save_file", fake_save)

    return on


def _one_line(err, folder: Path) -> int:
    text = str(err.value)
    m = LINE.match(text)
    assert m and "\n" not in text, text
    assert m["folder"] == str(folder)
    return int(m["n"])


def _temp_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if ".tmp" in p.name]


def test_the_helper_removes_the_partial_file_and_keeps_the_complete_one(tmp_path, full_disk):
    write_text(tmp_path / "a.json", '{"kept": 1}')
    full_disk()
    with pytest.raises(DiskFull) as err:
        write_text(tmp_path / "a.json", '{"kept": 2, "padding": "' + "x" * 1000 + '"}')
    assert _one_line(err, tmp_path) == 1026
    assert json.loads((tmp_path / "a.json").read_text()) == {"kept": 1} and _temp_files(tmp_path) == []


def test_teacher_cache(tmp_path, full_disk):
    teacher = make_tiny_teacher(tmp_path)
    stream = BatchStream(teacher.pipeline, "toy", 2, 0, family=teacher.family)
    full_disk()
    with pytest.raises(DiskFull) as err:
        open_cache("tiny", teacher.unet, stream, 2, tmp_path, family=teacher.family)
    assert _one_line(err, tmp_path / "teacher") > 0
    assert list((tmp_path / "teacher").glob("*.safetensors*")) == [] and _temp_files(tmp_path) == []


def test_dataset_encoding(tmp_path, full_disk):
    teacher = make_tiny_teacher(tmp_path)
    root = _imagefolder(tmp_path / "data")
    full_disk()
    with pytest.raises(DiskFull) as err:
        ImageFolder(str(root), teacher.pipeline, tmp_path / "cache", family=teacher.family)
    assert _one_line(err, tmp_path / "cache") > 0
    assert list((tmp_path / "cache").glob("dataset-*")) == [] and _temp_files(tmp_path) == []


def test_measurement_table(tmp_path, full_disk):
    latency.store("a", {"ms": 1.0}, tmp_path)
    full_disk("measurements")
    with pytest.raises(DiskFull) as err:
        latency.store("b", {"ms": 2.0}, tmp_path)
    _one_line(err, tmp_path)
    table = tmp_path / "measurements.json"
    assert file_problem(table, "json") is None and json.loads(table.read_text()) == {"a": {"ms": 1.0}}
    assert latency.cached("a", tmp_path) == {"ms": 1.0} and _temp_files(tmp_path) == []


def test_kd_checkpoint(tmp_path, full_disk):
    """A checkpoint that was complete stays so when its continuation cannot be saved over it."""
    teacher = make_tiny_teacher(tmp_path)
    distill(teacher, _student(teacher), _config(tmp_path, 1, "off"), progress=False, save_to=tmp_path / "ck")
    full_disk()
    with pytest.raises(DiskFull) as err:
        distill(teacher, _student(teacher), _config(tmp_path, 2, "off"), progress=False,
                resume_from=tmp_path / "ck", save_to=tmp_path / "ck")
    _one_line(err, tmp_path / "ck")
    info = checkpoint_info(tmp_path / "ck")
    assert info["step"] == 1 and _temp_files(tmp_path) == []
    assert all(file_problem(tmp_path / "ck" / n, "safetensors", r) is None for n, r in info["files"].items())
    with pytest.raises(DiskFull):
        distill(teacher, _student(teacher), _config(tmp_path, 1, "off"), progress=False, save_to=tmp_path / "new")
    assert checkpoint_info(tmp_path / "new") is None and list((tmp_path / "new").iterdir()) == []


def test_train_checkpoint(tmp_path, full_disk):
    full_disk()
    unet = _Tiny(0)
    with pytest.raises(DiskFull) as err:
        save_state(tmp_path / "step-0000001", unet, torch.optim.AdamW(unet.parameters()),
                   torch.amp.GradScaler("cuda", enabled=False), None, 1, "g", _Tiny(1), {})
    _one_line(err, tmp_path / "step-0000001")
    assert list((tmp_path / "step-0000001").iterdir()) == []


def test_student_folder(tmp_path, full_disk):
    """The student written before stays whole when the next one does not fit."""
    teacher = make_tiny_teacher(tmp_path)
    result = DistillResult([{"step": 1, "loss": 1.0}], 1.0)
    first = _student(teacher)
    write_student(tmp_path / "out", first, result, {"teacher": "tiny"}, "unet", teacher_denoiser=teacher.unet)
    before = {p.name: p.read_bytes() for p in (tmp_path / "out" / "unet").iterdir()}
    full_disk("diffusion_pytorch_model")
    with pytest.raises(DiskFull) as err:
        write_student(tmp_path / "out", _student(teacher, "bk_tiny"), result, {"teacher": "tiny"}, "unet",
                      teacher_denoiser=teacher.unet)
    tiny = _student(teacher, "bk_tiny").unet.state_dict().values()
    assert _one_line(err, tmp_path / "out") == sum(t.numel() * 4 for t in tiny)  # the bytes it was writing
    assert {p.name: p.read_bytes() for p in (tmp_path / "out" / "unet").iterdir()} == before
    assert [p.name for p in (tmp_path / "out").iterdir() if p.name.startswith(".")] == []
    recorded = json.loads((tmp_path / "out" / "distill.json").read_text())["files"]
    assert all(file_problem(tmp_path / "out" / k, None, r) is None for k, r in recorded.items())


@pytest.mark.parametrize("name", ["index.html", "pareto.png", "trials.csv", "README.md"])
def test_report_files(tmp_path, full_disk, name):
    url = make_study(tmp_path)
    out = write_report("unet_blocks-toy", url, tmp_path / "report")
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    full_disk(name)
    with pytest.raises(DiskFull) as err:
        write_report("unet_blocks-toy", url, tmp_path / "report")
    _one_line(err, out)
    assert name in before and {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before  # whole
    cache._VERIFIED.clear()


@pytest.fixture
def small_disk(tmp_path):
    """A 256 KiB tmpfs (needs root or CAP_SYS_ADMIN: skipped where it cannot be mounted)."""
    folder = tmp_path / "small"
    folder.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(folder)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


def test_a_real_full_disk(tmp_path, small_disk):
    """No patching: a student of 0.5 MB and a teacher cache of 0.7 MB on a 256 KiB filesystem."""
    teacher = make_tiny_teacher(tmp_path)
    with pytest.raises(DiskFull) as err:
        write_student(small_disk / "out", _student(teacher), DistillResult([], 1.0), {"teacher": "tiny"}, "unet",
                      teacher_denoiser=teacher.unet)
    _one_line(err, small_disk / "out")
    stream = BatchStream(teacher.pipeline, "toy", 2, 0, family=teacher.family)
    with pytest.raises(DiskFull) as err:
        open_cache("tiny", teacher.unet, stream, 12, small_disk, family=teacher.family)
    _one_line(err, small_disk / "teacher")
    assert [p for p in small_disk.rglob("*") if p.is_file() and not p.name.endswith(".lock")] == []
