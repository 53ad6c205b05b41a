"""One contract, every registered denoiser family (families/base.py ``FAMILIES``), on tiny random teachers: surgery
shapes, every student tensor accounted for, KD pairs that name real modules, a forward on ``Batch.cond`` from
``encode_text``, a save/load round trip, and the stock diffusers pipeline loading a student pipeline."""

from __future__ import annotations

import json

import diffusers
import pytest
import torch

from blocksearch.families.base import FAMILIES, get_family
from blocksearch.recipe.data import Batch
from blocksearch.space import load_space
from blocksearch.teachers import load_teacher, with_denoiser
from blocksearch.toy.build_dit import build_dit
from blocksearch.toy.tiny_sdxl import save_tiny_sdxl
from tests.conftest import make_tiny_teacher

# family -> (space file, a named design that cuts something)
CASES = {"unet": ("unet_blocks", "bk_small"), "dit": ("dit_blocks", "tinyfusion_14"), "sdxl": ("unet_blocks_sdxl", "ssd_1b")}


def test_every_registered_family_has_a_case():
    assert set(CASES) == set(FAMILIES)


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    """A tiny random teacher pipeline per family (the toy transformer at its tiny budget; SDXL's saved and loaded
    back: its family is told from the folder's parts)."""
    folder = tmp_path_factory.mktemp("toy-dit") / "teacher"
    build_dit(folder, budget="tiny", threads=1)
    sdxl = save_tiny_sdxl(tmp_path_factory.mktemp("tiny-sdxl") / "teacher")
    return {"unet": make_tiny_teacher(tmp_path_factory.mktemp("tiny-unet")), "dit": load_teacher(str(folder)),
            "sdxl": load_teacher(str(sdxl))}


@pytest.fixture(params=sorted(FAMILIES))
def case(request, teachers):
    name = request.param
    teacher, family = teachers[name], get_family(name)
    space, design = CASES[name]
    config = dict(teacher.denoiser.config)
    bound = load_space(space).bind(family.topology(config))
    arch = bound.design(design)
    return teacher, family.for_teacher(config), arch, family.build_student(teacher.denoiser, arch)


def test_the_teacher_is_of_its_family(case):
    teacher, family, arch, _ = case
    assert teacher.family.name == family.name == arch.family
    assert family.arch_from_id(arch.id) == arch


def test_surgery_gives_the_student_config(case):
    teacher, family, arch, student = case
    expected = family.student_config(dict(teacher.denoiser.config), arch)
    own = dict(student.denoiser.config)
    assert all(own[k] == (list(v) if isinstance(v, tuple) and isinstance(own[k], list) else v)
               for k, v in expected.items() if k in own)
    assert sum(p.numel() for p in student.denoiser.parameters()) < sum(p.numel() for p in teacher.denoiser.parameters())


def test_every_student_tensor_is_copied_or_reported(case):
    _, _, _, student = case
    reported = set(student.fresh) | set(getattr(student, "derived", ()))
    for key in student.denoiser.state_dict():
        copied = any(key == m or key.startswith(m + ".") for m in student.weight_map)
        assert copied or key in reported, key


def test_kd_pairs_name_real_modules(case):
    teacher, family, arch, student = case
    t_mods, s_mods = dict(teacher.denoiser.named_modules()), dict(student.denoiser.named_modules())
    assert student.kd_pairs and all(t in t_mods and s in s_mods for t, s in student.kd_pairs)
    topo = family.topology(dict(teacher.denoiser.config))
    assert {t for t, _ in student.kd_pairs} <= set(family.kd_teacher_modules(topo))


def test_forward_on_the_family_cond(case):
    teacher, family, _, student = case
    config = teacher.denoiser.config
    cond = family.encode_text(teacher.pipeline, ["a red circle", "two blue squares"])
    assert isinstance(cond, dict) and all(len(v) == 2 for v in cond.values())
    noisy = torch.randn(2, config.in_channels, config.sample_size, config.sample_size)
    batch = Batch(noisy, torch.tensor([10, 500]), cond, noisy)
    empty = family.encode_text(teacher.pipeline, [""])
    with torch.no_grad():
        for b in (batch, batch.unconditional(empty)):
            for model in (teacher.denoiser.eval(), student.denoiser.eval()):
                assert family.forward(model, b.noisy, b.timesteps, b.cond).shape == noisy.shape


def test_save_load_round_trip(case, tmp_path):
    _, family, _, student = case
    student.denoiser.save_pretrained(tmp_path / family.subfolder, safe_serialization=True)
    again = type(student.denoiser).from_pretrained(tmp_path / family.subfolder)
    mine, theirs = student.denoiser.state_dict(), again.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)


def test_the_stock_pipeline_loads_a_student_pipeline(case, tmp_path):
    teacher, family, _, student = case
    with_denoiser(teacher.pipeline, student.denoiser, family).save_pretrained(tmp_path, safe_serialization=True)
    pipe = getattr(diffusers, family.pipeline_class).from_pretrained(tmp_path)
    plain = lambda config: json.loads(json.dumps(  # noqa: E731 - JSON reads tuples, nested ones too, as lists
        {k: v for k, v in dict(config).items() if not k.startswith("_")}))
    assert plain(getattr(pipe, family.subfolder).config) == plain(student.denoiser.config)
