"""The dit family's block-mask space (families/dit/mask.py, space.py): exact counts against brute force, every mask
of a constrained space satisfies its constraints, the repair rule, ids and Optuna params that round-trip, and
``space show``'s size per teacher."""

import itertools
import math
import random
from pathlib import Path

import optuna

import pytest

from blocksearch.cli import main
from blocksearch.errors import BlocksearchError
from blocksearch.families.dit.genome import TEACHERS, DitGenome, load_teacher_config, topology_of
from blocksearch.families.dit.mask import GroupMask
from blocksearch.search import samplers
from blocksearch.space import load_space

# (n, low, high, window, pins): plain ranges, TinyFusion's 1:2 and 2:4 windows with a short last window, pins
RULES = [(9, 1, 9, None, ()), (9, 3, 6, None, (0, 8)), (10, 5, 5, (1, 2), ()), (11, 1, 11, (2, 4), (0, 10)),
         (7, 2, 4, (1, 3), (6,))]


def _brute(mask: GroupMask) -> list[tuple[int, ...]]:
    """Every subset of the group's blocks that satisfies the rules, checked directly (not by ``reason``)."""
    out = []
    for bits in itertools.product((0, 1), repeat=mask.n):
        kept = tuple(i for i, b in enumerate(bits) if b)
        windows_ok = mask.window is None or all(
            sum(lo <= i < hi for i in kept) == min(mask.window[0], hi - lo)
            for lo, hi in ((s, min(s + mask.window[1], mask.n)) for s in range(0, mask.n, mask.window[1])))
        if kept and mask.low <= len(kept) <= mask.high and set(mask.pinned) <= set(kept) and windows_ok:
            out.append(kept)
    return out


@pytest.mark.parametrize("rules", RULES)
def test_count_and_enumeration_equal_brute_force(rules):
    mask = GroupMask("transformer_blocks", *rules)
    valid = _brute(mask)
    listed = list(mask)
    assert mask.count() == len(valid) == len(listed) == len(set(listed)) and set(listed) == set(valid)
    assert all(mask.reason(k) is None for k in valid)
    assert sum(mask.reason(tuple(i for i, b in enumerate(bits) if b)) is None
               for bits in itertools.product((0, 1), repeat=mask.n)) == len(valid)  # reason() refuses the rest


@pytest.mark.parametrize("rules", RULES)
def test_repair_gives_a_valid_mask_and_keeps_a_valid_one(rules):
    mask = GroupMask("transformer_blocks", *rules)
    rng = random.Random(0)
    for _ in range(300):
        bits = [rng.random() < rng.choice((0.1, 0.5, 0.9)) for _ in range(mask.n)]
        kept = mask.repair(bits)
        assert mask.reason(kept) is None, (bits, kept)
        assert mask.repair([i in kept for i in range(mask.n)]) == kept  # identity on a valid mask
    for kept in mask:
        assert mask.repair([i in kept for i in range(mask.n)]) == kept


def test_repair_rule_drops_from_the_end_and_adds_from_the_start():
    plain = GroupMask("g", 8, 3, 5, None, (7,))
    assert plain.repair([1] * 8) == (0, 1, 2, 3, 7)  # 8 kept > 5: the last unpinned ones go
    assert plain.repair([0, 0, 0, 0, 0, 1, 0, 0]) == (0, 5, 7)  # 2 kept < 3: the first dropped one comes back
    paired = GroupMask("g", 5, 1, 5, (1, 2), ())
    assert paired.repair([1, 1, 0, 0, 0]) == (0, 2, 4)  # per window of 2: keep exactly one; the short last keeps 1


def test_impossible_rules_are_one_line():
    for args, message in [((4, 0, 2, None, ()), "allowed 1 <= min <= max <= 4"),
                          ((4, 1, 1, None, (0, 3)), "2 pinned blocks but at most 1 kept"),
                          ((4, 1, 4, (1, 2), (0, 1)), "window 0-1 keeps 1 but pins more"),
                          ((4, 3, 4, (1, 2), ()), "its windows keep 2 blocks, outside kept 3..4")]:
        with pytest.raises(BlocksearchError, match=message) as err:
            GroupMask("g", *args)
        assert "\n" not in str(err.value)


CONSTRAINED = """# TinyFusion's 1:2 on the double-stream blocks, first and last pinned; half to all of the single blocks
name: c
family: dit
groups:
  transformer_blocks: {kept: [1, 100%], window: {keep: 1, size: 2}, pin: [first, last]}
  single_transformer_blocks: {optional: true, kept: [50%, 100%], pin: [0]}
"""


@pytest.mark.parametrize("teacher", TEACHERS)
def test_every_suggested_mask_of_a_constrained_space_satisfies_it(tmp_path, teacher):
    path = tmp_path / "c.yaml"
    path.write_text(CONSTRAINED)
    bound = load_space(str(path)).bind(topology_of(load_teacher_config(teacher)))
    n = bound.topology.depth("transformer_blocks")
    windows = [(s, min(s + 2, n)) for s in range(0, n, 2)]
    for sampler in (optuna.samplers.RandomSampler(seed=1), optuna.samplers.TPESampler(seed=1, n_startup_trials=5)):
        study = optuna.create_study(sampler=sampler)
        for _ in range(25):
            trial = study.ask()
            genome = bound.suggest(trial)
            study.tell(trial, len(genome.blocks("transformer_blocks")))
            double = genome.blocks("transformer_blocks")
            assert {0, n - 1} <= set(double) and all(sum(lo <= i < hi for i in double) == 1 for lo, hi in windows)
            if "single_transformer_blocks" in genome.groups:
                single = genome.blocks("single_transformer_blocks")
                assert 0 in single and len(single) >= 19
            assert genome in bound and bound.from_params(trial.params) == genome
            assert DitGenome.from_id(genome.id) == genome and bound.from_params(bound.to_params(genome)) == genome
    free = sum(1 for lo, hi in windows if not ({0, n - 1} & set(range(lo, hi)))) if n % 2 == 0 else None
    if free is not None:  # even depth: the first and last windows are pinned, each other window keeps one of 2
        assert bound.mask("transformer_blocks").count() == 2 ** free


def test_mask_ids_round_trip_and_read_as_the_kept_blocks():
    bound = load_space("dit_blocks").bind(topology_of(load_teacher_config("flux-dev")))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(100):
        genome = bound.suggest(study.ask())
        assert DitGenome.from_id(genome.id) == genome and bound.from_id(genome.id) == genome
        assert len(genome.id) < 120  # 57 binary choices in one short line
    assert DitGenome.from_id("D0-3.8-15_S0-36s2").blocks("transformer_blocks") == (*range(4), *range(8, 16))


def test_a_genome_outside_the_space_says_why():
    bound = load_space("dit_blocks").bind(topology_of(load_teacher_config("pixart-sigma")))
    with pytest.raises(BlocksearchError, match=r"transformer_blocks is outside .*dit_blocks.yaml: keeps 3 blocks; "
                                               r"allowed 7..28"):
        bound.check(DitGenome.from_id("D0-2"))
    assert DitGenome.from_id("D0-6") in bound and DitGenome.from_id("D0-5") not in bound


@pytest.mark.parametrize("teacher, size, groups", [
    ("pixart-sigma", "267936278 (~2.679e+08)", ["transformer_blocks               28    7-28    2.679e+08"]),
    ("sd3-medium", "16721761 (~1.672e+07)", ["transformer_blocks               24    6-24    1.672e+07"]),
    ("flux-dev", f"{519_252 * 274_650_025_940} (~1.426e+17)",
     ["transformer_blocks               19    5-19       519252", "single_transformer_blocks        38   10-38    2.747e+11"]),
])
def test_space_show_prints_the_size_of_the_space(capsys, teacher, size, groups):
    assert main(["space", "show", "dit_blocks", "--teacher", teacher]) == 0
    out = capsys.readouterr().out
    assert f"distinct architectures: {size}" in out
    assert all(g in out for g in groups), out
    assert math.prod(m.count() for m in load_space("dit_blocks").bind(
        topology_of(load_teacher_config(teacher))).masks) == int(size.split()[0])


@pytest.mark.parametrize("teacher", ["pixart-sigma", str(Path(__file__).parents[1] / "blocksearch" / "toy" / "assets_dit")])
def test_the_repeat_fallback_draws_from_a_space_too_large_to_list(teacher, monkeypatch):
    bound = load_space("dit_blocks").bind(topology_of(load_teacher_config(teacher)))
    monkeypatch.setattr(type(bound), "__iter__", lambda self: pytest.fail("the fallback listed the space"))
    assert len(bound) > samplers.ENUMERATE_UP_TO  # listing 2.7e8 masks would hang the search
    trained = {g.id for g in bound.named_designs().values()}
    drawn = samplers.untrained_genome(bound, trained, seed=0, attempt=0)
    assert drawn in bound and drawn.id not in trained
    assert samplers.untrained_genome(bound, trained, seed=0, attempt=0) == drawn  # seeded
    assert samplers.untrained_genome(bound, trained, seed=0, attempt=1) != drawn
