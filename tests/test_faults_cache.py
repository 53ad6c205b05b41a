"""Corrupt caches (issue 35): a truncated or bit-flipped cache file is found on read, reported in one line,
moved aside and rebuilt -- with the same numbers."""

import json
import logging

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from blocksearch import cache
from blocksearch.cache import CHECKSUM, CORRUPT, checked, checked_archives, file_problem, write_checked
from blocksearch.recipe import latency, teacher_cache
from blocksearch.recipe.data import BatchStream, ImageFolder
from blocksearch.recipe.teacher_cache import open_cache
from tests.conftest import make_tiny_teacher

pytestmark = pytest.mark.usefixtures("one_thread")


def truncate(path, where: float = 0.5):
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * where)])


def flip_bit(path, where: float = 0.75):
    data = bytearray(path.read_bytes())
    data[int(len(data) * where)] ^= 0x10
    path.write_bytes(bytes(data))


DAMAGE = {"truncated": truncate, "bit-flipped": flip_bit}


def corrupt_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "is corrupt" in r.getMessage()]


def _tensors():
    return {"a": torch.arange(4096, dtype=torch.float32).reshape(64, 64), "b": torch.ones(3, dtype=torch.int64)}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_checked_file_is_found_and_set_aside_in_one_line(tmp_path, damage, caplog):
    path = write_checked(tmp_path / "x.safetensors", lambda tmp: save_file(_tensors(), tmp))
    assert file_problem(path) is None and json.loads((tmp_path / f"x.safetensors{CHECKSUM}").read_text())["bytes"] > 0
    DAMAGE[damage](path)
    cache._VERIFIED.clear()
    problem = file_problem(path)
    assert problem is not None
    assert ("were written" in problem) if damage == "truncated" else ("SHA-256" in problem)
    with caplog.at_level(logging.WARNING):
        assert checked(path) is False
    assert not path.exists() and (tmp_path / f"x.safetensors{CORRUPT}").exists()
    assert not (tmp_path / f"x.safetensors{CHECKSUM}").exists()
    (line,) = corrupt_lines(caplog)
    assert str(path) in line and problem in line and "\n" not in line


def test_a_file_without_a_record_has_its_header_checked_and_is_then_recorded(tmp_path):
    """Caches written before the records: a whole file is trusted and recorded, a cut one is not."""
    path = tmp_path / "old.safetensors"
    save_file(_tensors(), path)
    assert checked(path) and (tmp_path / f"old.safetensors{CHECKSUM}").is_file()
    save_file(_tensors(), tmp_path / "cut.safetensors")
    truncate(tmp_path / "cut.safetensors")
    assert "header says" in file_problem(tmp_path / "cut.safetensors")
    (tmp_path / "bad.json").write_text("{\"a\": 1")
    assert "not JSON" in file_problem(tmp_path / "bad.json", "json")


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_teacher_cache_is_rebuilt_with_identical_numbers(tmp_path, damage, monkeypatch, caplog):
    teacher = make_tiny_teacher(tmp_path)
    stream = BatchStream(teacher.pipeline, "toy", 2, 0, family=teacher.family)
    first = open_cache("tiny", teacher.unet, stream, 3, tmp_path, family=teacher.family)
    before = [first[i] for i in range(3)]
    calls = []
    real = teacher_cache._compute
    monkeypatch.setattr(teacher_cache, "_compute", lambda *a, **k: calls.append(1) or real(*a, **k))
    DAMAGE[damage](first.path)
    del first
    cache._VERIFIED.clear()  # another process: it hashes the file afresh
    with caplog.at_level(logging.WARNING):
        again = open_cache("tiny", teacher.unet, stream, 3, tmp_path, family=teacher.family)
    assert calls == [1] and len(corrupt_lines(caplog)) == 1
    assert again.path.with_name(again.path.name + CORRUPT).exists()
    for (b0, out0, f0), (b1, out1, f1) in zip(before, (again[i] for i in range(3))):
        assert torch.equal(b0.noisy, b1.noisy) and torch.equal(out0, out1)
        assert f0.keys() == f1.keys() and all(torch.equal(f0[k], f1[k]) for k in f0)
    open_cache("tiny", teacher.unet, stream, 3, tmp_path, family=teacher.family)
    assert calls == [1]  # the rebuilt file is trusted


def _imagefolder(root):
    root.mkdir()
    rows = []
    for i in range(3):
        Image.new("RGB", (64, 64), (40 * i, 90, 200 - 30 * i)).save(root / f"{i}.png")
        rows.append(json.dumps({"file_name": f"{i}.png", "text": f"a red circle {i}"}))
    (root / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    return root


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_dataset_encoding_is_rebuilt_with_identical_numbers(tmp_path, damage, caplog):
    teacher = make_tiny_teacher(tmp_path)
    root = _imagefolder(tmp_path / "data")
    folder = ImageFolder(str(root), teacher.pipeline, tmp_path / "cache", family=teacher.family)
    latents, cond = folder.latents.clone(), {k: v.clone() for k, v in folder.cond.items()}  # not the file's pages
    del folder
    (path,) = (tmp_path / "cache").glob("dataset-*.safetensors")
    DAMAGE[damage](path)
    cache._VERIFIED.clear()
    with caplog.at_level(logging.WARNING):
        again = ImageFolder(str(root), teacher.pipeline, tmp_path / "cache", family=teacher.family)
    assert len(corrupt_lines(caplog)) == 1 and path.with_name(path.name + CORRUPT).exists()
    assert torch.equal(latents, again.latents)
    assert cond.keys() == again.cond.keys() and all(torch.equal(cond[k], again.cond[k]) for k in cond)


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_measurement_table_is_set_aside_and_counted_again(tmp_path, damage, caplog):
    teacher = make_tiny_teacher(tmp_path)
    latency._COSTS.clear()  # this process's memo: the table is read and written only past it
    counted = latency.cost(teacher.unet, 16, tmp_path, family=teacher.family)
    table = tmp_path / "measurements.json"
    assert table.is_file() and (tmp_path / f"measurements.json{CHECKSUM}").is_file()
    DAMAGE[damage](table)
    latency._COSTS.clear()
    cache._VERIFIED.clear()
    with caplog.at_level(logging.WARNING):
        again = latency.cost(teacher.unet, 16, tmp_path, family=teacher.family)
    assert again == counted and len(corrupt_lines(caplog)) == 1
    assert file_problem(table, "json") is None and json.loads(table.read_text())  # rebuilt, recorded


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_fid_statistics_file_is_set_aside_for_torch_fidelity_to_recompute(tmp_path, damage, caplog):
    """torch-fidelity's cache files are torch.save zip archives: a CRC-32 per member shows a cut or a flip."""
    folder = tmp_path / "fidelity"
    folder.mkdir()
    stats = {"mu": torch.randn(2048, dtype=torch.float64), "sigma": torch.randn(64, 64, dtype=torch.float64)}
    torch.save(stats, folder / "blocksearch-ref-abc-inception-stat-fid.pt")
    torch.save(stats, folder / "blocksearch-ref-other-stat.pt")
    checked_archives(folder, "blocksearch-ref-abc")
    assert (folder / "blocksearch-ref-abc-inception-stat-fid.pt").exists()  # a whole file stays
    DAMAGE[damage](folder / "blocksearch-ref-abc-inception-stat-fid.pt", 0.5)
    DAMAGE[damage](folder / "blocksearch-ref-other-stat.pt", 0.5)
    with caplog.at_level(logging.WARNING):
        checked_archives(folder, "blocksearch-ref-abc")
    assert len(corrupt_lines(caplog)) == 1
    assert not (folder / "blocksearch-ref-abc-inception-stat-fid.pt").exists()
    assert (folder / f"blocksearch-ref-abc-inception-stat-fid.pt{CORRUPT}").exists()
    assert (folder / "blocksearch-ref-other-stat.pt").exists()  # another reference's: not this check's
