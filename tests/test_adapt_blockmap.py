"""block_map.json (adapt/blockmap.py): the family's weight map at module granularity, for every registered family on
tiny random teachers; what it says agrees with the tensors surgery copied; ``blocksearch distill`` writes it."""

import json

import pytest
import torch

from blocksearch.adapt.blockmap import BLOCK_MAP_FILE, block_map, read_block_map, teacher_name, write_block_map
from blocksearch.cli import main
from blocksearch.errors import BlocksearchError
from blocksearch.families.base import FAMILIES, get_family
from blocksearch.families.unet.genome import Genome
from tests.conftest import tiny_unet
from tests.test_families_dit import TINY as TINY_DIT

# family -> (a tiny teacher, an arch id that removes and renames modules)
CASES = {"unet": (lambda: tiny_unet("sd-v1"), "L1-1-1_T1-1-1_Mnone"),  # bk_tiny: the innermost stage goes
         "dit": (TINY_DIT["pixart"], "D1.3"),  # blocks 1 and 3 of 4 become 0 and 1
         "sdxl": (lambda: tiny_unet("sdxl"), "L1-2-1_T0-1-5_Mnone")}  # fewer layers and transformer layers, no mid


def test_every_registered_family_has_a_case():
    assert set(CASES) == set(FAMILIES)


@pytest.fixture(params=sorted(CASES))
def case(request):
    make, arch_id = CASES[request.param]
    torch.manual_seed(0)
    teacher = make().eval()
    family = get_family(request.param).for_teacher({**dict(teacher.config), "_class_name": type(teacher).__name__})
    arch = family.arch_from_id(arch_id)
    return family, teacher, arch, family.build_student(teacher, arch)


def test_the_block_map_follows_the_tensors_surgery_copied(case):
    """Every student tensor equals the teacher tensor the map names for its module (SD3's derived ones aside)."""
    family, teacher, arch, student = case
    doc = block_map(family, teacher, arch, "toy", "a_space")
    t_state = teacher.state_dict()
    for key, tensor in student.denoiser.state_dict().items():
        module, _, leaf = key.rpartition(".")
        if not module or key in getattr(student, "derived", ()):
            continue
        assert torch.equal(tensor, t_state[f"{doc['modules'][module]}.{leaf}"]), key
    s_modules = {k.rpartition(".")[0] for k in student.denoiser.state_dict()} - {""}
    assert set(doc["modules"]) == s_modules and doc["new"] == []
    assert (doc["format"], doc["version"], doc["family"], doc["arch"]) == ("blocksearch-block-map", 1, family.name,
                                                                            arch.id)


def test_removed_and_renamed_are_whole_modules_where_they_can_be(case):
    """``removed`` and ``renamed`` name the shortest prefixes that hold, and agree with ``modules``."""
    family, teacher, arch, _ = case
    doc = block_map(family, teacher, arch, "toy", None)
    t_modules = {k.rpartition(".")[0] for k in teacher.state_dict()} - {""}
    kept = set(doc["modules"].values())
    under = lambda name, p: name == p or name.startswith(p + ".")  # noqa: E731
    assert {t for t in t_modules if any(under(t, p) for p in doc["removed"])} == t_modules - kept
    inverse = {t: s for s, t in doc["modules"].items()}
    for tp, sp in doc["renamed"].items():
        assert all(inverse[t] == sp + t[len(tp):] for t in t_modules if under(t, tp))
    assert {t for t in kept if inverse[t] != t} == {t for t in kept if any(under(t, p) for p in doc["renamed"])}
    if family.name == "dit":
        assert doc["removed"] == ["transformer_blocks.0", "transformer_blocks.2"]
        assert doc["renamed"] == {"transformer_blocks.1": "transformer_blocks.0",
                                  "transformer_blocks.3": "transformer_blocks.1"}
    elif family.name == "sdxl":  # one layer in stages 0 and 2, the mid block gone, 1 of 2 and 5 of 10 transformer layers
        assert {"mid_block", "down_blocks.0.resnets.1", "down_blocks.1.attentions.0.transformer_blocks.1",
                "down_blocks.2.attentions.0.transformer_blocks.5"} <= set(doc["removed"])
    else:  # bk_tiny: stage 3, the mid block and up stage 0 go; up stage 1 becomes 0 with its middle layer cut
        assert {"down_blocks.3", "mid_block", "up_blocks.0", "down_blocks.2.downsamplers",
                "up_blocks.1.resnets.1"} <= set(doc["removed"])
        assert doc["renamed"]["up_blocks.1.resnets.2"] == "up_blocks.0.resnets.1"
        assert doc["renamed"]["up_blocks.1.upsamplers"] == "up_blocks.0.upsamplers"


def test_the_teacher_is_named_without_a_path_of_this_machine(tmp_path):
    folder = tmp_path / "my-teacher"
    folder.mkdir()
    assert teacher_name(str(folder)) == "my-teacher"
    assert teacher_name("stabilityai/sd-turbo") == "stabilityai/sd-turbo" and teacher_name("toy") == "toy"
    doc = block_map(get_family("unet"), tiny_unet(), Genome.from_id("L1-1-1-1_T1-1-1-0_Mnone"), str(folder), None)
    path = write_block_map(tmp_path, doc)
    assert str(tmp_path) not in path.read_text() and read_block_map(tmp_path)["teacher"] == "my-teacher"


def test_a_folder_without_a_block_map_or_of_another_version_is_refused(tmp_path):
    with pytest.raises(BlocksearchError, match="no block_map.json; allowed: a student folder written by"):
        read_block_map(tmp_path)
    (tmp_path / BLOCK_MAP_FILE).write_text(json.dumps({"format": "blocksearch-block-map", "version": 9}))
    with pytest.raises(BlocksearchError, match="version 9; allowed: 'blocksearch-block-map' version 1"):
        read_block_map(tmp_path)


def test_distill_writes_the_block_map_beside_the_student(tiny_teacher_folder, tmp_path):
    out = tmp_path / "student"
    assert main(["distill", "--teacher", tiny_teacher_folder, "--design", "bk_small", "--steps", "0", "-o",
                 str(out), "--cache-dir", str(tmp_path / "cache")]) == 0
    doc = read_block_map(out)
    assert (doc["teacher"], doc["space"], doc["arch"], doc["subfolder"]) == (
        "teacher", "unet_blocks", "L1-1-1-1_T1-1-1-0_Mnone", "unet")
    assert "mid_block" in doc["removed"] and str(tmp_path) not in (out / BLOCK_MAP_FILE).read_text()
