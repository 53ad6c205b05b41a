"""The teacher cache: it stores exactly the teacher features KD can ask for, once, under a lock, capped."""

import threading

import pytest
import torch

from blocksearch.recipe import teacher_cache
from blocksearch.recipe.data import BatchStream
from blocksearch.recipe.distill import resolve_design
from blocksearch.errors import BlocksearchError
from blocksearch.space import load_space
from blocksearch.families.unet.surgery import build_student, kd_pairs, kd_teacher_modules
from blocksearch.recipe.teacher_cache import open_cache
from blocksearch.families.unet.topology import topology_of
from blocksearch.teachers import resolve_teacher
from tests.conftest import SPACE_OF, TINY_CONFIGS, make_tiny_teacher, tiny_unet

pytestmark = pytest.mark.usefixtures("one_thread")


def _student(teacher, design="bk_small"):
    genome, _ = resolve_design(teacher.unet, design)
    return build_student(teacher.unet, genome)


@pytest.mark.parametrize("kind", sorted(TINY_CONFIGS))
def test_cached_modules_are_exactly_what_kd_pairs_name(kind):
    """Every Genome of the space pairs only with cached teacher modules, and every cached one is used."""
    topo = topology_of(tiny_unet(kind).config)
    cached = kd_teacher_modules(topo)
    named = set()
    for genome in load_space(SPACE_OF[kind]).bind(topo):
        teacher_side = {t for t, _ in kd_pairs(genome, topo)}
        assert teacher_side <= set(cached), genome.id
        named |= teacher_side
    assert named == set(cached) and len(cached) == len(set(cached))


def test_toy_space_cache_holds_every_feature_kd_asks_for(tmp_path):
    """On the toy teacher's topology: the features in a real cache file cover every Genome of the toy space."""
    teacher = make_tiny_teacher(tmp_path)
    topo = topology_of(teacher.unet.config)
    assert topo == resolve_teacher("toy").topology()  # the tiny teacher stands in for the toy one
    _, _, feats = open_cache("tiny", teacher.unet, BatchStream(teacher.pipeline, "toy", 1, 0, family=teacher.family), 1, tmp_path, family=teacher.family)[0]
    bound = load_space("unet_blocks").bind(topo)
    assert len(bound) > 500
    for genome in bound:
        assert {t for t, _ in kd_pairs(genome, topo)} <= set(feats), genome.id


def test_cache_covers_every_design_and_is_reused(tmp_path, monkeypatch):
    teacher = make_tiny_teacher(tmp_path)
    modules = set(kd_teacher_modules(topology_of(teacher.unet.config)))
    for design in ("bk_base", "bk_small", "bk_tiny"):
        assert {t for t, _ in _student(teacher, design).kd_pairs} <= modules
    stream = BatchStream(teacher.pipeline, "toy", 2, 0, family=teacher.family)
    calls = []
    real = teacher_cache._compute
    monkeypatch.setattr(teacher_cache, "_compute", lambda *a, **k: calls.append(1) or real(*a, **k))
    threads = [threading.Thread(target=open_cache, args=("tiny", teacher.unet, stream, 2, tmp_path),
                                kwargs={"family": teacher.family})
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1  # the second opener waited on the lock, then read the file
    cache = open_cache("tiny", teacher.unet, stream, 2, tmp_path, family=teacher.family)
    assert len(calls) == 1 and len(cache) == 2
    assert not list((tmp_path / "teacher").glob("*.tmp"))
    batch, out, feats = cache[1]
    assert torch.equal(batch.noisy, stream[1].noisy) and set(feats) == modules


def test_cache_evicts_least_recently_used(tmp_path, caplog):
    teacher = make_tiny_teacher(tmp_path)
    paths = [open_cache("tiny", teacher.unet, BatchStream(teacher.pipeline, "toy", 2, seed, family=teacher.family), 1, tmp_path, family=teacher.family).path
             for seed in (0, 1)]
    size = paths[0].stat().st_size
    third = open_cache("tiny", teacher.unet, BatchStream(teacher.pipeline, "toy", 2, 2, family=teacher.family), 1, tmp_path,
                       cap_gb=2.5 * size / 2**30, family=teacher.family)
    assert not paths[0].exists() and paths[1].exists() and third.path.exists()
    assert "evicting least recently used" in caplog.text
    with pytest.raises(BlocksearchError, match="teacher cache of this run needs"):
        open_cache("tiny", teacher.unet, BatchStream(teacher.pipeline, "toy", 2, 3, family=teacher.family), 1, tmp_path,
                   cap_gb=0.5 * size / 2**30, family=teacher.family)
