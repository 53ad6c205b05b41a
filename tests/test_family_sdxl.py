"""The SDXL family (families/sdxl/): surgery of SDXL-shaped U-Nets with their transformer layers (an up path that
differs from the down path, as SSD-1B's), the published students as designs, and SDXL's conditioning."""

import pytest
import torch
from diffusers import UNet2DConditionModel

from blocksearch.errors import BlocksearchError
from blocksearch.families.base import family_name_of, family_of_config, get_family
from blocksearch.families.cost import count_params
from blocksearch.families.sdxl.space import SdxlGenome
from blocksearch.families.unet.describe import layout
from blocksearch.families.unet.genome import Genome
from blocksearch.families.unet.surgery import build_student, load_student, student_config, teacher_key
from blocksearch.families.unet.topology import architecture, topology_of
from blocksearch.space import load_space
from blocksearch.teachers import resolve_teacher, with_denoiser
from blocksearch.toy.tiny_sdxl import POOLED, tiny_sdxl_pipeline
from tests.conftest import TINY_CONFIGS, tiny_unet

SDXL_PARAMS = 2_567_463_684
PUBLISHED = {"ssd_1b": 1_331_334_404, "vega": 745_225_604, "koala_1b": 1_161_184_324, "koala_700m": 782_822_724}


@pytest.fixture(scope="module")
def sdxl():
    teacher = architecture("sdxl")
    return teacher, load_space("unet_blocks_sdxl").bind(topology_of(teacher.config))


def test_published_students_match_their_unet_parameter_counts(sdxl):
    teacher, bound = sdxl
    assert count_params(teacher) == SDXL_PARAMS
    for name, published in PUBLISHED.items():
        assert bound.space.designs[name]["published"] == published
        ours = count_params(build_student(teacher, bound.design(name)).unet)
        assert abs(ours / published - 1) < 0.005, (name, ours, published)


def test_ssd_1b_is_asymmetric_with_a_resnet_mid_block(sdxl):
    teacher, bound = sdxl
    ssd = bound.design("ssd_1b")
    assert isinstance(ssd, SdxlGenome) and ssd.family == "sdxl"
    assert ssd.up_depths == ((0, 0, 0), (2, 1, 1), (4, 4, 10)) and ssd.mid == "resnet"
    config = student_config(teacher.config, ssd)
    assert config["mid_block_type"] == "UNetMidBlock2D"
    assert config["reverse_transformer_layers_per_block"] == ((4, 4, 10), (2, 1, 1), 1)
    assert topology_of(config).up == ssd.up  # the student's config reads back as its genome
    assert SdxlGenome.from_id(ssd.id) == ssd and ssd.id == "L2-2-2_T0-2-4_U0.0.0-2.1.1-4.4.10_Mres"
    assert bound.design("vega").up == ()  # symmetric: no up segment in the id
    assert bound.from_params(bound.to_params(ssd)) == ssd


def test_every_design_replays_through_its_params_and_the_space_counts_each_once(sdxl):
    _, bound = sdxl
    for genome in bound.named_designs().values():
        assert bound.from_params(bound.to_params(genome)) == genome and genome in bound
    every = list(bound)
    assert len(every) == len(set(every)) == len(bound)
    assert sum(1 for g in every if g.up) > 0  # the up-path choices are searched


def test_ssd_1b_weight_map_keeps_the_first_transformer_layers_on_the_tiny_sdxl_unet():
    """Every student tensor from a teacher tensor; up_blocks.0's layers keep the first 4, 4 and all 10 of 10."""
    teacher = tiny_unet("sdxl")
    bound = load_space("unet_blocks_sdxl").bind(topology_of(teacher.config))
    ssd = bound.design("ssd_1b")
    student = build_student(teacher, ssd)
    assert student.fresh == ()
    t_state, topo = teacher.state_dict(), topology_of(teacher.config)
    for key, tensor in student.unet.state_dict().items():
        assert torch.equal(tensor, t_state[teacher_key(key, ssd, topo)]), key
    blocks = lambda unet, path: len(unet.get_submodule(path).transformer_blocks)  # noqa: E731
    assert [blocks(student.unet, f"up_blocks.0.attentions.{j}") for j in range(3)] == [4, 4, 10]
    assert [blocks(student.unet, f"up_blocks.1.attentions.{j}") for j in range(3)] == [2, 1, 1]
    assert [blocks(student.unet, f"down_blocks.2.attentions.{j}") for j in range(2)] == [4, 4]
    assert type(student.unet.mid_block).__name__ == "UNetMidBlock2D"


def test_a_saved_asymmetric_student_loads_back_with_its_up_path(tmp_path):
    teacher = tiny_unet("sdxl")
    bound = load_space("unet_blocks_sdxl").bind(topology_of(teacher.config))
    genome = bound.genome_of((1, 2, 2), (0, 2, 4), "none", ["down", "2.1.1", "4.4.10"])
    assert genome.up_depths == ((0, 0), (2, 1, 1), (4, 4, 10))
    build_student(teacher, genome).unet.save_pretrained(tmp_path / "unet")
    again = load_student(tmp_path, teacher)
    assert again.genome == Genome(genome.layers, genome.depth, genome.mid, genome.up)
    sdxl_again = get_family("sdxl").load_student(tmp_path, teacher)
    assert sdxl_again.genome == genome and sdxl_again.genome.family == "sdxl"


def test_an_asymmetric_teacher_is_read_and_cut_within_its_own_depths():
    """An SSD-1B-shaped teacher: its up path is read per layer, and no student layer may be deeper than its source."""
    config = dict(TINY_CONFIGS["sdxl"], transformer_layers_per_block=[[1], [2, 2], [4, 4]],
                  reverse_transformer_layers_per_block=[[4, 4, 10], [2, 1, 1], 1], mid_block_type="UNetMidBlock2D")
    teacher = UNet2DConditionModel.from_config(config)
    topo = topology_of(teacher.config)
    assert topo.depth == (0, 2, 4) and topo.up_depths == ((0, 0, 0), (2, 1, 1), (4, 4, 10)) and topo.mid == "resnet"
    cut = Genome((2, 1, 1), (0, 1, 2), "none", ((0, 0, 0), (1, 1), (2, 10)))  # up_blocks.0 keeps teacher layers 0, 2
    assert build_student(teacher, cut).fresh == ()
    with pytest.raises(BlocksearchError, match="does not fit"):
        build_student(teacher, Genome((2, 2, 1), (0, 2, 4), "none", ((0, 0, 0), (2, 2, 2), (4, 4))))


@pytest.mark.parametrize("up, message", [(((0, 0, 0), (2, 2), (4, 4, 4)), "layers \\+ 1 depths"),
                                         (((1, 0, 0), (2, 2, 2), (4, 4, 4)), "all 0 where not")])
def test_malformed_up_path_is_one_line(up, message):
    with pytest.raises(BlocksearchError, match=message):
        Genome((2, 2, 2), (0, 2, 4), "none", up)


def test_bad_up_choice_in_a_space_file_names_the_row(tmp_path):
    text = load_space("unet_blocks_sdxl").path.read_text().replace("[[4, 4, 10]]", "[[4, 11, 10]]")
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(BlocksearchError, match="stages.down_blocks.2.up_transformer_depth: \\[4, 11, 10\\] is "
                                               "impossible"):
        load_space(str(path)).bind(topology_of(architecture("sdxl").config))


def test_sdxl_teachers_are_told_apart_by_parts_and_by_config():
    assert family_name_of({"unet", "text_encoder", "text_encoder_2", "vae"}) == "sdxl"
    assert family_name_of({"unet", "text_encoder", "vae"}) == "unet"
    assert family_of_config(architecture("sdxl").config).name == "sdxl"
    assert family_of_config(architecture("sd-v1").config).name == "unet"
    assert resolve_teacher("sdxl").family.name == "sdxl" and resolve_teacher("sd-v2").family.name == "unet"


# -- SDXL's conditioning, on a tiny random SDXL pipeline (blocksearch/toy/tiny_sdxl.py) ------------------------------
@pytest.fixture(scope="module")
def pipe():
    return tiny_sdxl_pipeline()


def test_encode_text_is_the_stock_pipelines_conditioning(pipe):
    family = get_family("sdxl")
    captions = ["a red circle", "two blue squares"]
    cond = family.encode_text(pipe, captions)
    embeds, _, pooled, _ = pipe.encode_prompt(captions, do_classifier_free_guidance=False)
    assert set(cond) == {"encoder_hidden_states", "text_embeds", "time_ids"}
    torch.testing.assert_close(cond["encoder_hidden_states"], embeds)
    torch.testing.assert_close(cond["text_embeds"], pooled)
    stock = pipe._get_add_time_ids((64, 64), (0, 0), (64, 64), torch.float32, text_encoder_projection_dim=POOLED)
    assert torch.equal(cond["time_ids"], stock.expand(2, 6))
    _, negative, _, negative_pooled = pipe.encode_prompt(captions[:1], do_classifier_free_guidance=True)
    empty = family.encode_text(pipe, [""])  # guidance's other branch: zeros (force_zeros_for_empty_prompt)
    assert torch.equal(empty["encoder_hidden_states"], negative) and torch.equal(empty["text_embeds"], negative_pooled)


def test_forward_on_the_cond_is_the_pipelines_call_and_kd_pairs_match_in_shape(pipe):
    family = get_family("sdxl")
    cond = family.encode_text(pipe, ["a red circle", "two blue squares"])
    noisy, t = torch.randn(2, 4, 16, 16), torch.tensor([10, 500])
    added = {"text_embeds": cond["text_embeds"], "time_ids": cond["time_ids"]}
    with torch.no_grad():
        stock = pipe.unet(noisy, t, encoder_hidden_states=cond["encoder_hidden_states"], added_cond_kwargs=added).sample
        assert torch.equal(family.forward(pipe.unet, noisy, t, cond), stock)
    bound = load_space("unet_blocks_sdxl").bind(family.topology(pipe.unet.config))
    for name in ("ssd_1b", "vega", "koala_1b", "koala_700m"):
        student = family.build_student(pipe.unet, bound.design(name))
        feats = {}
        hooks = [model.get_submodule(m).register_forward_hook(
            lambda _m, _i, out, key=(side, m): feats.__setitem__(key, family.kd_feature(out)))
            for side, model in (("t", pipe.unet), ("s", student.denoiser))
            for m in {pair[side == "s"] for pair in student.kd_pairs}]
        with torch.no_grad():
            assert family.forward(student.denoiser, noisy, t, cond).shape == noisy.shape
            family.forward(pipe.unet, noisy, t, cond)
        for hook in hooks:
            hook.remove()
        assert all(feats["t", a].shape == feats["s", b].shape for a, b in student.kd_pairs), name


def test_the_report_words_name_the_up_paths_own_depths(sdxl):
    teacher, bound = sdxl
    family, topo = get_family("sdxl"), bound.topology
    ssd = bound.design("ssd_1b")
    diff = family.architecture_diff(ssd, topo)
    assert "up_blocks.0: transformer depths 4/4/10 of 10/10/10" in diff and "down_blocks.2: transformer depth 4 of 10" in diff
    assert family.removed(ssd, topo)["up_blocks.1"] == "transformer depths 2/2/2 -> 2/1/1"
    table = {row[0]: row[2] for row in family.architecture_table(ssd, topo)}
    assert table["up_blocks.0"] == "3 x (resnet + transformer), depths 4/4/10"
    assert table["mid_block"] == "1 resnet (no attention)"
    vega = family.architecture_diff(bound.design("vega"), topo)
    assert "down_blocks.2/up_blocks.0: transformer depth 2 of 10" in vega  # a mirrored up path: one phrase


def test_a_student_generates_in_the_stock_sdxl_pipeline(pipe):
    family = get_family("sdxl")
    bound = load_space("unet_blocks_sdxl").bind(family.topology(pipe.unet.config))
    student = with_denoiser(pipe, family.build_student(pipe.unet, bound.design("koala_700m")).denoiser, family)
    assert type(student).__name__ == family.pipeline_class == "StableDiffusionXLPipeline"
    image = student("a red circle", num_inference_steps=2, guidance_scale=3.0, output_type="pt",
                    generator=torch.Generator().manual_seed(0), **family.call_kwargs(student)).images
    assert image.shape == (1, 3, 64, 64) and torch.isfinite(image).all()


def test_the_block_diagram_draws_ssd_1b_s_up_path_at_its_own_depths(sdxl):
    """families/unet/describe.layout reads the up path per layer (report diagrams, model cards)."""
    teacher, bound = sdxl
    stages = {s.name: s for s in layout(bound.design("ssd_1b"), topology_of(teacher.config))}
    assert [p.kept_attention for p in stages["up_blocks.0"].parts] == [4, 4, 10]  # of the teacher's 10, 10, 10
    assert [p.kept_attention for p in stages["up_blocks.1"].parts] == [2, 1, 1]
    assert [p.kept_attention for p in stages["down_blocks.2"].parts] == [4, 4]
