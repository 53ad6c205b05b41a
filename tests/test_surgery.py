"""Surgery contract: every move of every space, on tiny SD-v1 / SD-v2 / SDXL-shaped teachers."""

import dataclasses
import json
import subprocess
import sys

import pytest
import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import load_file, save_file

from blocksearch.families.unet.family import FAMILY as UNET
from blocksearch.families.unet.topology import unet_inputs
from blocksearch.families.cost import count_macs, count_params
from blocksearch.errors import BlocksearchError
from blocksearch.families.unet.genome import Genome
from blocksearch.space import load_space
from blocksearch.families.unet.surgery import build_student, teacher_key
from blocksearch.families.unet.topology import architecture, topology_of
from tests.conftest import SPACE_OF, TINY_CONFIGS, tiny_unet


def moves(kind):
    """Each single move of the space applied to the teacher, plus the named designs."""
    bound = load_space(SPACE_OF[kind]).bind(topology_of(teacher_of(kind).config))
    teacher = bound.teacher_genome
    out = {}
    for i, (lc, dc) in enumerate(zip(bound.layer_choices, bound.depth_choices)):
        for k in lc:
            if k != teacher.layers[i]:
                out[f"down_blocks.{i}.layers={k}"] = dataclasses.replace(
                    teacher, layers=teacher.layers[:i] + (k,) + teacher.layers[i + 1:])
        for d in dc:
            if d != teacher.depth[i]:
                out[f"down_blocks.{i}.depth={d}"] = dataclasses.replace(
                    teacher, depth=teacher.depth[:i] + (d,) + teacher.depth[i + 1:])
    for i, uc in enumerate(bound.up_choices):  # an up path that differs from the down path (SSD-1B)
        for choice in uc[1:]:
            ups = ["down"] * len(teacher.layers)
            ups[i] = choice
            out[f"up_blocks of down_blocks.{i}={choice}"] = bound.genome_of(teacher.layers, teacher.depth, teacher.mid, ups)
    for mid in bound.space.mid_block:
        if mid != teacher.mid:
            out[f"mid_block={mid}"] = dataclasses.replace(teacher, mid=mid)
    if bound.removable:
        out["innermost removed"] = Genome(teacher.layers[:-1], teacher.depth[:-1], teacher.mid)
    out.update(bound.named_designs())
    for genome in out.values():
        assert genome in bound
    return out


_TEACHERS = {}


def teacher_of(kind):
    if kind not in _TEACHERS:
        _TEACHERS[kind] = tiny_unet(kind)
    return _TEACHERS[kind]


CASES = [(kind, name, genome) for kind in TINY_CONFIGS for name, genome in moves(kind).items()]


def forward(unet, seed=0):
    torch.manual_seed(seed)
    inputs = unet_inputs(unet.config, batch=2, device="cpu", text_len=7)
    with torch.no_grad():
        return unet(**inputs).sample


def features(unet, modules, with_output=False):
    """Forward once, keeping the outputs of ``modules`` (first element of tuple outputs)."""
    feats = {}
    hooks = [unet.get_submodule(m).register_forward_hook(
        lambda _mod, _inp, out, m=m: feats.__setitem__(m, out[0] if isinstance(out, tuple) else out))
        for m in modules]
    out = forward(unet)
    for hook in hooks:
        hook.remove()
    return (out, feats) if with_output else feats


@pytest.mark.parametrize("kind, move, genome", CASES, ids=[f"{k}:{m}" for k, m, _ in CASES])
def test_every_move_builds_copies_and_reloads(kind, move, genome, tmp_path):
    teacher = teacher_of(kind)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = build_student(teacher, genome)
    # the weight map is complete: every student tensor comes from the teacher, shape-checked, equal
    assert student.fresh == ()
    t_state = teacher.state_dict()
    for key, tensor in student.unet.state_dict().items():
        source = teacher_key(key, genome, topology_of(teacher.config))
        assert torch.equal(tensor, t_state[source]), (key, source)
    # forward shape, and the KD pairs see tensors of equal shape in teacher and student
    t_feats = features(teacher, [t for t, _ in student.kd_pairs])
    out, s_feats = features(student.unet, [s for _, s in student.kd_pairs], with_output=True)
    assert out.shape == (2, 4, 16, 16) and torch.isfinite(out).all()
    for t, s in student.kd_pairs:
        assert t_feats[t].shape == s_feats[s].shape, (t, s)
    # it really is smaller (or the same for a no-op move) and the teacher is untouched: its values are as
    # before, and no student tensor shares its storage (training the student cannot write into the teacher)
    assert count_params(student.unet) < count_params(teacher)
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())
    teacher_storage = {p.untyped_storage().data_ptr() for p in teacher.state_dict().values()}
    assert not any(p.untyped_storage().data_ptr() in teacher_storage for p in student.unet.state_dict().values())
    # save / reload identical
    student.unet.save_pretrained(tmp_path)
    again = UNet2DConditionModel.from_pretrained(tmp_path)
    assert torch.equal(forward(again), out)


def test_pinned_output_slice_of_a_seeded_tiny_student():
    """As diffusers' tests pin slices: a diffusers or torch upgrade that changes the numbers is caught here."""
    teacher = tiny_unet("sd-v1")
    genome = load_space("unet_blocks").bind(topology_of(teacher.config)).design("bk_small")
    out = forward(build_student(teacher, genome).unet)
    expected = torch.tensor([0.173516, 0.450092, 0.134736, 0.370620, 0.024224, -0.103948, 0.223961, 0.182548,
                             -0.008921])
    torch.testing.assert_close(out[0, 0, -3:, -3:].flatten(), expected, atol=1e-4, rtol=0)


def test_bk_weight_map_agrees_with_the_published_map():
    """BK-SDM: down stages keep teacher layer 0; up stages keep 0 and 2; Tiny shifts up stages by one."""
    teacher = tiny_unet("sd-v1")
    space = load_space("unet_blocks").bind(topology_of(teacher.config))
    base = build_student(teacher, space.design("bk_base")).weight_map
    assert base["down_blocks.0.resnets.0"] == "down_blocks.0.resnets.0"
    assert base["down_blocks.1.attentions.0"] == "down_blocks.1.attentions.0"
    assert base["up_blocks.1.resnets.0"] == "up_blocks.1.resnets.0"
    assert base["up_blocks.1.resnets.1"] == "up_blocks.1.resnets.2"
    assert base["up_blocks.3.attentions.1"] == "up_blocks.3.attentions.2"
    assert "mid_block.attentions.0" in base
    tiny = build_student(teacher, space.design("bk_tiny"))
    assert tiny.weight_map["up_blocks.0.resnets.1"] == "up_blocks.1.resnets.2"
    assert tiny.weight_map["up_blocks.2.attentions.0"] == "up_blocks.3.attentions.0"
    assert "down_blocks.2.downsamplers.0" not in tiny.weight_map
    assert not any(k.startswith("mid_block") for k in tiny.weight_map)
    assert tiny.kd_pairs == (
        ("down_blocks.0", "down_blocks.0"), ("down_blocks.1", "down_blocks.1"),
        ("down_blocks.2.attentions.1", "down_blocks.2"),
        ("up_blocks.1", "up_blocks.0"), ("up_blocks.2", "up_blocks.1"), ("up_blocks.3", "up_blocks.2"))


def test_bk_param_counts_on_the_sd_v14_architecture():
    teacher = architecture("sd-v1")
    space = load_space("unet_blocks").bind(topology_of(teacher.config))
    got = {name: round(count_params(build_student(teacher, space.design(name)).unet) / 1e6, 1)
           for name in ("bk_base", "bk_small", "bk_tiny")}
    assert round(count_params(teacher) / 1e6, 1) == 859.5
    assert got == {"bk_base": 579.4, "bk_small": 482.3, "bk_tiny": 323.4}


def test_macs_fall_with_blocks_and_scale_with_resolution():
    teacher = architecture("sd-v1")
    space = load_space("unet_blocks").bind(topology_of(teacher.config))
    small = build_student(teacher, space.design("bk_small")).unet
    assert count_macs(small, family=UNET) < count_macs(teacher, family=UNET)
    ratio = count_macs(teacher, latent_size=32, family=UNET) / count_macs(teacher, latent_size=64, family=UNET)
    assert 0.15 < ratio < 0.3  # convs scale 4x; attention more


def test_genome_that_does_not_fit_the_teacher_is_refused():
    with pytest.raises(BlocksearchError, match="does not fit"):
        build_student(tiny_unet("sd-v1"), Genome((3, 2, 2, 2), (1, 1, 1, 0), "cross_attn"))


def test_students_reload_in_a_process_that_never_imports_blocksearch(tmp_path):
    teacher = tiny_unet("sdxl")
    cases = {name: genome for name, genome in moves("sdxl").items()
             if not name.startswith("down_blocks")}  # the named designs, mid moves, innermost removed
    torch.manual_seed(0)
    inputs = unet_inputs(teacher.config, batch=2, device="cpu", text_len=7)
    save_file({k: v for k, v in inputs.items() if torch.is_tensor(v)} | {
        f"added.{k}": v for k, v in inputs["added_cond_kwargs"].items()}, tmp_path / "inputs.safetensors")
    expected = {}
    for i, genome in enumerate(cases.values()):
        unet = build_student(teacher, genome).unet
        unet.save_pretrained(tmp_path / f"s{i}")
        with torch.no_grad():
            expected[f"s{i}"] = unet(**inputs).sample
    script = f"""
import sys, torch
from safetensors.torch import load_file, save_file
from diffusers import UNet2DConditionModel
torch.set_num_threads({torch.get_num_threads()})  # bit-equal needs this process's CPU reduction order
x = load_file({str(tmp_path / 'inputs.safetensors')!r})
added = {{k[6:]: v for k, v in x.items() if k.startswith('added.')}}
out = {{}}
for i in range({len(cases)}):
    unet = UNet2DConditionModel.from_pretrained({str(tmp_path)!r} + f'/s{{i}}').eval()
    with torch.no_grad():
        out[f's{{i}}'] = unet(x['sample'], x['timestep'], x['encoder_hidden_states'], added_cond_kwargs=added).sample
save_file(out, {str(tmp_path / 'out.safetensors')!r})
assert 'blocksearch' not in sys.modules
"""
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path)
    got = load_file(tmp_path / "out.safetensors")
    for name, value in expected.items():
        assert torch.equal(got[name], value), name
    assert json.loads((tmp_path / "s0" / "config.json").read_text())["_class_name"] == "UNet2DConditionModel"


def test_saved_student_loads_back_with_its_genome_and_kd_pairs(tmp_path):
    """`blocksearch distill --init DIR`: a saved student continues with the pairs a fresh cut would have."""
    from blocksearch.families.unet.surgery import load_student

    teacher = tiny_unet("sd-v1")
    cut = build_student(teacher, Genome((1, 2, 1), (1, 0, 1), "resnet"))
    cut.unet.save_pretrained(tmp_path / "unet")
    again = load_student(tmp_path, teacher)
    assert again.genome == cut.genome and again.kd_pairs == cut.kd_pairs
    assert torch.equal(forward(again.unet), forward(cut.unet))
    with pytest.raises(BlocksearchError, match="not a cut of the teacher"):
        load_student(tmp_path, tiny_unet("sd-v2"))
    with pytest.raises(BlocksearchError, match="no unet/config.json"):
        load_student(tmp_path / "nowhere", teacher)
