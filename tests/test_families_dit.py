"""The dit family: genome ids, the dit_blocks space, surgery on tiny PixArt / SD3 / Flux / DiT transformers, and
the shipped teacher configs' exact sizes against the published ones (Flux.1-Lite-8B, TinyFusion's TinyDiT-D14)."""

import itertools
import math
import random

import optuna
import pytest
import torch
from diffusers import (DiTTransformer2DModel, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel,
                       PixArtTransformer2DModel, SD3Transformer2DModel)

from blocksearch.cli import main
from blocksearch.errors import BlocksearchError
from blocksearch.families.base import get_family
from blocksearch.families.dit.cost import count_params, meta_model, paper_params
from blocksearch.families.dit.family import FAMILY
from blocksearch.families.dit.pipeline import forward_inputs
from blocksearch.families.dit.surgery import block_feature, build_student, describe, model_topology, student_config
from blocksearch.families.dit.pipeline import prediction
from blocksearch.families.dit.genome import (TEACHERS, DitGenome, decode_runs, encode_runs, load_teacher_config,
                                             topology_of)
from blocksearch.space import load_space

TINY = {  # seeded in the fixture; a few blocks of small width, the real classes' block topology
    "pixart": lambda: PixArtTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4,
                                               out_channels=8, num_layers=4, cross_attention_dim=16, sample_size=8,
                                               caption_channels=12, use_additional_conditions=False),
    "sd3": lambda: SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, num_layers=4, attention_head_dim=8,
                                         num_attention_heads=2, joint_attention_dim=12, caption_projection_dim=16,
                                         pooled_projection_dim=8, out_channels=4, pos_embed_max_size=8),
    "flux": lambda: FluxTransformer2DModel(patch_size=1, in_channels=8, num_layers=3, num_single_layers=4,
                                           attention_head_dim=8, num_attention_heads=2, joint_attention_dim=12,
                                           pooled_projection_dim=8, guidance_embeds=True, axes_dims_rope=(2, 2, 4)),
    "dit": lambda: DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
                                         num_layers=4, sample_size=8, norm_num_groups=4),
}
CUTS = {"pixart": "D1.3", "sd3": "D0.2", "flux": "D0.2_S1.3", "dit": "D0.2"}  # SD3: the last block is an inner one


@pytest.fixture(params=sorted(TINY))
def tiny(request):
    torch.manual_seed(0)
    model = TINY[request.param]().eval()
    with torch.no_grad():  # non-zero everywhere (diffusers zero-inits some output layers): outputs then differ
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return request.param, model


def _inputs(model, seed=1):
    torch.manual_seed(seed)
    return forward_inputs({**dict(model.config), "_class_name": type(model).__name__}, batch=2, latent_size=8,
                          device="cpu", text_len=5)


def _out(model, inputs):
    with torch.no_grad():
        return model(**inputs).sample


# -- genome ids ------------------------------------------------------------------------------------
def test_ids_encode_runs_and_round_trip():
    assert encode_runs((0, 1, 2, 3, 5, 7, 8, 9)) == "0-3.5.7-9"
    assert encode_runs(tuple(range(0, 28, 2))) == "0-26s2"
    assert encode_runs((0, 2, 4, 6, 8, 10, 12, 14, 17, 19, 21, 23, 25, 27)) == "0-14s2.17-27s2"  # TinyFusion's oracle
    assert encode_runs((0, 2, 5)) == "0.2.5"
    rng = random.Random(0)
    for _ in range(200):
        kept = tuple(sorted(rng.sample(range(40), rng.randint(1, 40))))
        assert decode_runs(encode_runs(kept)) == kept
    genome = DitGenome((("transformer_blocks", tuple(range(8))), ("single_transformer_blocks", tuple(range(38)))))
    assert genome.id == "D0-7_S0-37" and DitGenome.from_id(genome.id) == genome and not genome.attention_free
    assert len({DitGenome.from_id("D0-3"), DitGenome.from_id("D0.1.2.3")}) == 1


@pytest.mark.parametrize("text", ["L1-1_T1-1_Mnone", "D", "D3-1", "X0-3", "S0-3_D0-3", "D0-4s0", "D1.1"])
def test_malformed_ids_are_one_line(text):
    with pytest.raises(BlocksearchError) as err:
        DitGenome.from_id(text)
    assert "\n" not in str(err.value) and "D0-7_S0-37" in str(err.value)


# -- the space file --------------------------------------------------------------------------------
# Exact counts of valid masks with every group keeping 25%..100% of its blocks (sum of binomials).
SIZES = {"flux-dev": 519_252 * 274_650_025_940, "sd3-medium": 16_721_761, "pixart-sigma": 267_936_278,
         "dit-xl": 267_936_278}


@pytest.mark.parametrize("teacher", TEACHERS)
def test_dit_blocks_binds_to_every_shipped_teacher(teacher):
    bound = load_space("dit_blocks").bind(topology_of(load_teacher_config(teacher)))
    n = bound.topology.depth("transformer_blocks")
    assert len(bound) == bound.size == SIZES[teacher]
    assert bound.mask("transformer_blocks").count() == sum(math.comb(n, k) for k in range(math.ceil(n / 4), n + 1))
    designs = bound.named_designs()
    assert all(g in bound for g in designs.values())
    assert designs["tinyfusion_14"].blocks("transformer_blocks") == tuple(range(0, n, 2))
    assert designs["flux_lite"].blocks("transformer_blocks") == tuple(range(8))
    assert len(designs) == (17 if teacher == "flux-dev" else 11)  # the single-stream patterns are Flux's only
    for genome in [*designs.values(), *itertools.islice(bound, 50)]:  # Optuna params replay to the same genome
        assert bound.from_params(bound.to_params(genome)) == genome


def test_suggest_is_define_by_run_and_stays_in_the_space():
    bound = load_space("dit_blocks").bind(topology_of(load_teacher_config("flux-dev")))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(40):
        trial = study.ask()
        genome = bound.suggest(trial)
        assert genome in bound and set(trial.params) == {f"transformer_blocks.{i}" for i in range(19)} | {
            f"single_transformer_blocks.{i}" for i in range(38)}
        seen.add(genome)
    assert len(seen) == 40
    assert DitGenome.from_id("D0-17_S0-37") in bound and DitGenome.from_id("D0-3_S0-37") not in bound  # 4 < 5


GOOD = """# a test space
name: t
family: dit
teacher: flux-dev
groups:
  transformer_blocks: {kept: [4, 100%], window: {keep: 1, size: 2}, pin: [first]}
  single_transformer_blocks: {optional: true, kept: [50%, 30]}
designs:
  lite: {transformer_blocks: "every:2"}
"""


@pytest.mark.parametrize("edit, message", [
    (("family: dit", "family: dit\nstages: {}"), "unknown key 'stages'; allowed: ['designs', 'family', 'groups'"),
    (("transformer_blocks: {", "double_blocks: {"), "unknown block group 'double_blocks'; allowed: "),
    (("kept: [4, 100%]", "kept: [0, 100%]"), "groups.transformer_blocks.kept: [0, '100%']; allowed: [min, max]"),
    (("kept: [4, 100%]", "kept: [4, 120%]"), "kept: [4, '120%']; allowed: [min, max], each a block count >= 1"),
    (("{keep: 1, size: 2}", "{keep: 2, size: 2}"), "window: {'keep': 2, 'size': 2}; allowed: {keep: k, size: n}"),
    (("pin: [first]", "pin: [middle]"), "pin: ['middle']; allowed: a list of 'first', 'last' or block indices"),
    (("kept: [4, 100%]", "first: [8]"), "unknown key 'first'; allowed: ['kept', 'optional', 'pin', 'window']"),
    (('"every:2"', '"every:two"'), "designs.lite.transformer_blocks: 'every:two'; allowed: a pattern all, first:K"),
    (('"every:2"', '"first:8"'), "designs.lite: design is outside the space: genome D0-7_S0-37: transformer_blocks"),
    (("teacher: flux-dev", "teacher: flux-pro"), "teacher: 'flux-pro'; allowed: pixart-sigma, sd3-medium"),
    (("lite: {", "lite: {published: {teacher: flux-dev}, "), "designs.lite.published: "),
])
def test_bad_space_file_is_one_line_exit_2(tmp_path, capsys, edit, message):
    path = tmp_path / "bad.yaml"
    path.write_text(GOOD.replace(*edit))
    assert main(["space", "show", str(path), "--teacher", "flux-dev"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("blocksearch: error: ") and str(path) in err and message in err, err
    assert "\n" not in err and "Traceback" not in err


@pytest.mark.parametrize("teacher, edit, message", [
    ("flux-dev", ("kept: [4, 100%]", "kept: [4, 20]"), "kept 4..20; allowed 1 <= min <= max <= 19"),
    ("flux-dev", ("pin: [first]", "pin: [0, 1]"), "window 0-1 keeps 1 but pins more"),
    ("flux-dev", ("kept: [4, 100%]", "kept: [4, 9]"), "its windows keep 10 blocks, outside kept 4..9"),
    ("flux-dev", ("[50%, 30]", "[50%, 30], pin: [40]"), "pin [40]; allowed block indices 0..37"),
    ("pixart-sigma", ("{optional: true, ", "{"), "the teacher (PixArtTransformer2DModel) has no single_transformer_bl"),
])
def test_a_row_impossible_on_the_teacher_is_one_line(tmp_path, capsys, teacher, edit, message):
    path = tmp_path / "bad.yaml"
    path.write_text(GOOD.replace(*edit))
    assert main(["space", "show", str(path), "--teacher", teacher]) == 2
    err = capsys.readouterr().err
    assert message in err and str(path) in err and err.count("\n") == 1, err


def test_unknown_dit_teacher_is_one_line(capsys):
    assert main(["space", "show", "dit_blocks", "--teacher", "flux-pro"]) == 2
    err = capsys.readouterr().err
    assert "unknown dit teacher 'flux-pro'; allowed: pixart-sigma, sd3-medium, flux-dev, dit-xl" in err


# -- surgery on tiny transformers ----------------------------------------------------------------------
def test_surgery_copies_every_tensor_from_the_block_it_keeps(tiny):
    name, teacher = tiny
    genome = DitGenome.from_id(CUTS[name])
    student = build_student(teacher, genome)
    t_state, s_state = teacher.state_dict(), student.denoiser.state_dict()
    for group in genome.groups:
        assert len(getattr(student.denoiser, group)) == len(genome.blocks(group))
    derived = set(student.derived)
    for key, tensor in s_state.items():
        parts = key.split(".")
        if parts[0] in genome.groups:  # student block i <- teacher block kept[i]
            parts[1] = str(genome.blocks(parts[0])[int(parts[1])])
        source = t_state[".".join(parts)]
        if key in derived:  # SD3: the pre-only text norm is (scale, shift) of the teacher's AdaLayerNormZero
            shift, scale = source.chunk(6)[:2]
            source = torch.cat([scale, shift])
        assert torch.equal(tensor, source), key
    assert bool(derived) == (name == "sd3") and all("norm1_context.linear" in k for k in derived)
    assert student.fresh == ()
    assert student.weight_map["transformer_blocks.1"] == f"transformer_blocks.{genome.blocks('transformer_blocks')[1]}"


def test_kd_pairs_and_description_follow_the_kept_blocks(tiny):
    name, teacher = tiny
    genome = DitGenome.from_id(CUTS[name])
    student = build_student(teacher, genome)
    final = "proj_out_2" if name == "dit" else "proj_out"
    expected = [(f"{g}.{t}", f"{g}.{i}") for g in genome.groups for i, t in enumerate(genome.blocks(g))]
    assert student.kd_pairs == tuple(expected) + ((final, final),)
    config = {**dict(teacher.config), "_class_name": type(teacher).__name__}
    assert describe(genome, config) == [(s, t) for t, s in expected]
    assert FAMILY.kd_pairs(genome, model_topology(teacher)) == student.kd_pairs
    teacher_modules, student_modules = dict(teacher.named_modules()), dict(student.denoiser.named_modules())
    assert all(t in teacher_modules and s in student_modules for t, s in student.kd_pairs)


def test_student_runs_with_forward_inputs_and_matches_the_teacher_output_shape(tiny):
    name, teacher = tiny
    student = build_student(teacher, DitGenome.from_id(CUTS[name])).denoiser
    inputs = _inputs(teacher)
    out, ref = _out(student, inputs), _out(teacher, inputs)
    assert out.shape == ref.shape and torch.isfinite(out).all() and not torch.equal(out, ref)


def test_a_student_keeping_every_block_is_the_teacher(tiny):
    _, teacher = tiny
    every = DitGenome(tuple((g, tuple(range(n))) for g, n in model_topology(teacher).depths))
    student = build_student(teacher, every)
    inputs = _inputs(teacher)
    assert torch.equal(_out(student.denoiser, inputs), _out(teacher, inputs))


def test_sd3_last_block_from_an_inner_block_keeps_its_image_stream():
    """SD3's last block skips the text branch; cut from teacher block 2 of 4, it must compute teacher block 2's
    image tokens exactly (the derived norm1_context modulates the text tokens as the teacher's did)."""
    torch.manual_seed(0)
    teacher = TINY["sd3"]().eval()
    student = build_student(teacher, DitGenome.from_id("D0-2")).denoiser
    feats = {}
    teacher.transformer_blocks[2].register_forward_hook(lambda m, a, out: feats.setdefault("t", block_feature(out)))
    student.transformer_blocks[2].register_forward_hook(lambda m, a, out: feats.setdefault("s", block_feature(out)))
    assert student.transformer_blocks[2].context_pre_only and not teacher.transformer_blocks[2].context_pre_only
    inputs = _inputs(teacher)
    _out(teacher, inputs), _out(student, inputs)
    assert torch.allclose(feats["s"], feats["t"], atol=1e-6)


def test_export_reloads_in_stock_diffusers_with_the_same_output(tiny, tmp_path):
    name, teacher = tiny
    student = build_student(teacher, DitGenome.from_id(CUTS[name])).denoiser
    student.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").is_file()
    reloaded = type(teacher).from_pretrained(tmp_path).eval()
    inputs = _inputs(teacher)
    assert torch.equal(_out(reloaded, inputs), _out(student, inputs))


def test_genome_that_does_not_fit_the_teacher_is_refused(tiny):
    name, teacher = tiny
    with pytest.raises(BlocksearchError, match="does not fit the teacher"):
        build_student(teacher, DitGenome.from_id("D0-9" if name != "flux" else "D0-9_S0-3"))


# -- the family object -------------------------------------------------------------------------------
def test_family_interface():
    family = get_family("dit")
    assert family is FAMILY and family.subfolder == "transformer"
    pipelines = {t: family.for_teacher(load_teacher_config(t)).pipeline_class for t in TEACHERS}
    assert pipelines == {"pixart-sigma": "PixArtSigmaPipeline", "sd3-medium": "StableDiffusion3Pipeline",
                         "flux-dev": "FluxPipeline", "dit-xl": "DiTPipeline"}
    with pytest.raises(BlocksearchError, match="follows the teacher"):
        family.pipeline_class
    latents, noise = torch.randn(2, 16, 4, 4), torch.randn(2, 16, 4, 4)
    target = family.training_target(FlowMatchEulerDiscreteScheduler(), latents, noise, torch.tensor([0.3, 0.7]))
    assert torch.equal(target, noise - latents)
    sigma = torch.randn(2, 8, 4, 4)  # PixArt / DiT predict noise and variance: the target matches the first half
    assert torch.equal(prediction(load_teacher_config("dit-xl"), sigma), sigma[:, :4])
    flux = load_teacher_config("flux-dev")
    inputs = family.forward_inputs(flux, batch=2)  # meta device: 1024 px -> 64x64 packed tokens of 64 channels
    assert inputs["hidden_states"].shape == (2, 4096, 64) and inputs["img_ids"].shape == (4096, 3)
    assert inputs["encoder_hidden_states"].shape == (2, 512, 4096) and inputs["guidance"].shape == (2,)


def test_student_config_is_the_teacher_config_with_fewer_blocks():
    flux = load_teacher_config("flux-dev")
    config = student_config(flux, DitGenome.from_id("D0-7_S0-37"))
    assert config["num_layers"] == 8 and config["num_single_layers"] == 38
    assert {k: v for k, v in config.items() if k not in ("num_layers",)} == {
        k: v for k, v in flux.items() if not k.startswith("_") and k != "num_layers"}
    sd35 = {**load_teacher_config("sd3-medium"), "dual_attention_layers": list(range(13))}  # SD3.5-medium's layout
    assert student_config(sd35, DitGenome.from_id("D0-23s2"))["dual_attention_layers"] == tuple(range(7))


# -- the shipped teachers and the published sizes -----------------------------------------------------
EXACT = {"flux-dev": 11_901_408_320, "sd3-medium": 2_028_328_000, "pixart-sigma": 610_856_096,
         "dit-xl": 749_826_464}


@pytest.mark.parametrize("teacher", TEACHERS)
def test_shipped_teacher_configs_count_as_published(teacher):
    config = load_teacher_config(teacher)
    model = meta_model(config)
    assert count_params(model) == EXACT[teacher]
    assert abs(paper_params(model) / config["_published_params"] - 1) < 0.02  # "~0.6B", "2B", "11.9B", "675M"


def test_flux_lite_and_tinyfusion_match_their_published_sizes():
    flux = load_teacher_config("flux-dev")
    lite = load_space("dit_blocks").bind(topology_of(flux)).design("flux_lite")
    params = count_params(meta_model(student_config(flux, lite), "FluxTransformer2DModel"))
    assert params == 8_163_264_064 and abs(params / 8.16e9 - 1) < 0.005  # Freepik/flux.1-lite-8B: 8.16B
    near = {k: count_params(meta_model({**flux, "num_layers": k})) for k in (7, 9)}
    assert all(abs(p / 8.16e9 - 1) > 0.005 for p in near.values())  # 8 double blocks is the only count that fits
    dit = load_teacher_config("dit-xl")
    d14 = load_space("dit_blocks").bind(topology_of(dit)).design("tinyfusion_14")
    assert len(d14.blocks("transformer_blocks")) == 14
    model = meta_model(student_config(dit, d14), "DiTTransformer2DModel")
    assert count_params(model) == 376_269_728 and paper_params(model) == 340_162_592
    assert abs(paper_params(model) / 340e6 - 1) < 0.005  # TinyDiT-D14: 340M (embedders counted once, as DiT does)


@pytest.mark.parametrize("teacher, lines", [
    ("flux-dev", {"teacher": "11.90G (100.0%)", "flux_lite": "8.16G ( 68.6%)", "tinyfusion_14": "D0-18s2_S0-37"}),
    ("dit-xl", {"teacher": "749.83M (100.0%)", "tinyfusion_14": "376.27M ( 50.2%)"}),
    ("sd3-medium", {"teacher": "2.03G (100.0%)"}),
    ("pixart-sigma", {"teacher": "610.86M (100.0%)"}),
])
def test_space_show_prints_exact_params_per_teacher(capsys, teacher, lines):
    assert main(["space", "show", "dit_blocks", "--teacher", teacher]) == 0
    out = capsys.readouterr().out
    for name, text in lines.items():
        line = next(line for line in out.splitlines() if line.startswith(name + " "))
        assert text in line, line
    assert f"distinct architectures: {SIZES[teacher]}" in out
    if teacher == "flux-dev":
        lite = next(line for line in out.splitlines() if line.startswith("flux_lite"))
        assert "8.16G (+0.04%) Freepik/flux.1-lite-8B" in lite
    if teacher == "dit-xl":
        assert "tinyfusion_14 340.2M" in out and "teacher 674.8M" in out


def test_block_groups_product_size():
    bound = load_space("dit_blocks").bind(topology_of(load_teacher_config("flux-dev")))
    per_group = [m.count() for m in bound.masks]
    assert per_group == [519_252, 274_650_025_940] and len(bound) == math.prod(per_group)
    first = list(itertools.islice(iter(bound), 200))  # lazy: 1.4e17 genomes are never listed
    assert len(set(first)) == 200 and all(g in bound for g in first)
