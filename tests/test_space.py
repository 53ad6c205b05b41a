"""The space files, Genomes, define-by-run sampling, enumeration and named designs."""

import itertools

import optuna
import pytest

from blocksearch.errors import BlocksearchError
from blocksearch.families.dit.genome import load_teacher_config
from blocksearch.families.dit.genome import topology_of as dit_topology
from blocksearch.families.unet.genome import Genome
from blocksearch.space import SPACES_DIR, load_space
from blocksearch.families.unet.topology import architecture, topology_of

SD_V1 = topology_of(architecture("sd-v1").config)


@pytest.mark.parametrize("path", sorted(SPACES_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_space_validates_against_its_reference_teacher(path):
    space = load_space(str(path))
    if space.family == "dit":  # a transformer space: its teacher is a shipped transformer config
        bound = space.bind(dit_topology(load_teacher_config(space.teacher)))
    else:
        bound = space.bind(topology_of(architecture(space.teacher).config))
    assert len(bound) > 1
    for genome in bound.named_designs().values():
        assert genome in bound
    assert path.read_text().startswith("#"), "a space file opens with a comment saying how to run it"


def test_unet_blocks_size_is_the_product_of_its_rows():
    bound = load_space("unet_blocks").bind(SD_V1)
    per_attention_stage = 2 * 2  # layers {1,2} x attention {keep, drop}
    kept = per_attention_stage ** 3 * 2  # + innermost stage layers {1,2}
    removed = per_attention_stage ** 3
    assert len(bound) == (kept + removed) * 3 == 576
    assert len(set(bound)) == len(bound)


def test_bk_designs_are_written_as_in_the_paper():
    designs = load_space("unet_blocks").bind(SD_V1).named_designs()
    assert designs["bk_base"] == Genome((1, 1, 1, 1), (1, 1, 1, 0), "cross_attn")
    assert designs["bk_small"] == Genome((1, 1, 1, 1), (1, 1, 1, 0), "none")
    assert designs["bk_tiny"] == Genome((1, 1, 1), (1, 1, 1), "none")


def test_genome_id_is_stable_and_round_trips():
    genome = Genome((1, 2, 1), (0, 2, 6), "resnet")
    assert genome.id == "L1-2-1_T0-2-6_Mres"
    assert Genome.from_id(genome.id) == genome
    assert hash(genome) == hash(Genome.from_id(genome.id))
    with pytest.raises(BlocksearchError, match="malformed"):
        Genome.from_id("L1-2_banana")


def test_define_by_run_sampling_stays_inside_the_space_and_round_trips():
    bound = load_space("unet_blocks").bind(SD_V1)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(60):
        trial = study.ask()
        genome = bound.suggest(trial)
        assert genome in bound
        assert bound.from_params(trial.params) == genome
        assert bound.to_params(genome) == trial.params
        study.tell(trial, 0.0)
        seen.add(genome)
    assert any(len(g.layers) == 3 for g in seen) and any(g.mid == "none" for g in seen)


def test_enqueued_design_is_suggested_exactly():
    bound = load_space("unet_blocks").bind(SD_V1)
    study = optuna.create_study()
    for name in ("bk_base", "bk_small", "bk_tiny"):
        study.enqueue_trial(bound.to_params(bound.design(name)))
    got = [bound.suggest(study.ask()) for _ in range(3)]
    assert got == [bound.design(n) for n in ("bk_base", "bk_small", "bk_tiny")]


def write(tmp_path, text):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return str(path)


GOOD = """name: t
stages:
  down_blocks.0: {up: up_blocks.3, layers: [1, 2], attention: [keep, drop]}
  down_blocks.1: {up: up_blocks.2, layers: [1, 2]}
  down_blocks.2: {up: up_blocks.1, layers: [1, 2]}
  down_blocks.3: {up: up_blocks.0, layers: [1, 2], removable: true}
mid_block: [cross_attn, none]
designs:
  small: {layers: [1, 1, 1, 1], mid_block: none}
"""


@pytest.mark.parametrize("edit, message", [
    (("down_blocks.1:", "down_blocks.7:"), r"unknown stage 'down_blocks.7'; allowed here: 'down_blocks.1'"),
    (("layers: [1, 2], attention", "layers: [1, 3], attention"), r"layers: keep 3 of 2 is impossible.*allowed 1..2"),
    (("mid_block: none}", "mid_block: resnet}"), r"designs.small: design is outside the space.*mid_block"),
    (("{up: up_blocks.2,", "{up: up_blocks.1,"), r"stages.down_blocks.1.up: .*up_blocks.2"),
    (("mid_block: [cross_attn, none]", "mid_block: [cross_attn, gone]"), r"mid_block: .*allowed.*cross_attn"),
    (("removable: true", "removable: true, colour: red"), r"unknown key 'colour'; allowed"),
    (("down_blocks.1: {up: up_blocks.2, layers: [1, 2]}",
      "down_blocks.1: {up: up_blocks.2, layers: [1, 2], removable: true}"), r"removable.*only on the innermost"),
])
def test_bad_space_files_name_file_key_and_allowed_values(tmp_path, edit, message):
    path = write(tmp_path, GOOD.replace(*edit))
    with pytest.raises(BlocksearchError, match=message) as err:
        load_space(path).bind(SD_V1)
    assert path in str(err.value) and "\n" not in str(err.value)


def test_good_file_binds(tmp_path):
    bound = load_space(write(tmp_path, GOOD)).bind(SD_V1)
    assert len(bound) == (4 * 2 * 2 * 2 + 4 * 2 * 2) * 2  # stage 0: 4 choices; 1-3: 2 layers; 3 removable; 2 mids


def test_malformed_yaml_names_the_line(tmp_path):
    path = write(tmp_path, "name: t\nstages: [unclosed\n")
    with pytest.raises(BlocksearchError, match=r"space.yaml: line \d+: malformed YAML"):
        load_space(path)


def test_space_that_does_not_fit_the_teacher():
    sdxl = topology_of(architecture("sdxl").config)
    with pytest.raises(BlocksearchError, match=r"the space has 4 stages but the teacher has 3"):
        load_space("unet_blocks").bind(sdxl)
    with pytest.raises(BlocksearchError, match=r"teacher's down_blocks.0 has no attention"):
        load_space(str(SPACES_DIR / "unet_blocks.yaml")).bind(
            topology_of(dict(architecture("sd-v1").config, down_block_types=["DownBlock2D"] * 4,
                             up_block_types=["UpBlock2D"] * 4)))


def test_enumeration_matches_itertools_for_sdxl_space():
    sdxl = topology_of(architecture("sdxl").config)
    bound = load_space("unet_blocks_sdxl").bind(sdxl)
    # a stage with attention: each depth with the up path mirroring it or the row's per-layer up path (SSD-1B's)
    up = lambda depths: [(d, u) for d in depths for u in (("down", "list") if d else ("down",))]  # noqa: E731
    depth1, depth2 = up((0, 1, 2)), up((0, 2, 4, 5, 6, 8, 10))
    full = len(list(itertools.product((1, 2), (1, 2), (1, 2), depth1, depth2)))
    removed = len(list(itertools.product((1, 2), (1, 2), depth1)))
    assert len(bound) == (full + removed) * 3 == len(set(bound))
