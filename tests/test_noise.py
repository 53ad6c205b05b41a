"""noise.py: the pooled seed-to-seed spread of the reference designs' scores, on hand-worked numbers."""

import math

import pytest

from blocksearch.report.noise import estimate_noise, pooled_std, quality_mask, seed_spread

# fid: bk_base 10, 12 (sample variance 2), bk_small 20, 24 (variance 8): pooled sqrt((2 + 8) / 2) = sqrt(5);
# alignment: 0.5, 0.6 (variance 0.005) and 0.7, 0.7 (0): sqrt(0.0025) = 0.05; kid at one seed only: unknown.
# bk_tiny was scored at one seed: it adds nothing.
SEEDS = {"bk_base": [{"seed": 0, "fid": 10.0, "alignment": 0.5, "kid": 0.01},
                     {"seed": 1, "fid": 12.0, "alignment": 0.6}],
         "bk_small": [{"seed": 0, "fid": 20.0, "alignment": 0.7}, {"seed": 1, "fid": 24.0, "alignment": 0.7}],
         "bk_tiny": [{"seed": 0, "fid": 30.0, "alignment": 0.4}]}
# latency: standard error of the median sqrt(pi/2) * cv * latency / sqrt(repeats): 10 ms at cv 0.02 and 20 ms at
# cv 0.01, 4 repeats each, both sqrt(pi/2) * 0.1
METRICS = {"bk_base": {"latency_ms": 10.0, "latency_cv": 0.02, "measured": {"latency": {"repeats": 4}}},
           "bk_small": {"latency_ms": 20.0, "latency_cv": 0.01, "measured": {"latency": {"repeats": 4}}},
           "bk_tiny": {"latency_ms": 5.0}}  # no latency_cv: adds nothing


def test_pooled_std_by_hand():
    assert pooled_std([[10, 12], [20, 24]]) == pytest.approx(math.sqrt(5))
    # unequal seeds weigh by degrees of freedom: (1 x 2 + 2 x 1) / (1 + 2)
    assert pooled_std([[10, 12], [1, 2, 3]]) == pytest.approx(math.sqrt(4 / 3))
    assert pooled_std([[7, 7], [3]]) == 0.0 and pooled_std([[1], []]) is None


def test_seed_spread_of_the_reference_designs():
    fid = seed_spread(SEEDS, "fid")
    assert fid.sigma == pytest.approx(math.sqrt(5)) and fid.seeds == (2, 2) and fid.designs == 2
    assert seed_spread(SEEDS, "alignment").sigma == pytest.approx(0.05)
    assert seed_spread(SEEDS, "kid").sigma is None and seed_spread(SEEDS, "kid").source == "not measured"
    assert seed_spread({}, "fid").sigma is None


def test_every_objective_has_a_spread_or_says_it_is_unknown():
    noise = estimate_noise(METRICS, SEEDS, ["fid", "params", "latency_ms", "macs", "e2e_ms", "memory_mb", "speed"])
    assert noise["fid"].source == "seeds" and noise["fid"].sigma == pytest.approx(math.sqrt(5))
    assert noise["params"].sigma == 0.0 and noise["macs"].source == "exact"
    assert noise["latency_ms"].sigma == pytest.approx(math.sqrt(math.pi / 2) * 0.1)
    assert noise["latency_ms"].source == "latency_cv" and noise["latency_ms"].seeds == (4, 4)
    assert noise["e2e_ms"].sigma == 0.0 and noise["memory_mb"].source == "no spread recorded"
    assert noise["speed"].sigma is None  # an objective of no known kind: unknown, never taken as exact
    assert estimate_noise({}, {}, ["latency_ms"])["latency_ms"].sigma is None
    # repeats not recorded (an older study's measured.latency is text): one repeat, the widest error
    old = {"bk_base": {"latency_ms": 10.0, "latency_cv": 0.02, "measured": {"latency": "median of 20 runs"}}}
    assert estimate_noise(old, {}, ["latency_ms"])["latency_ms"].sigma == pytest.approx(math.sqrt(math.pi / 2) * 0.2)


def test_every_objective_that_is_not_a_cost_is_a_quality_objective():
    # a claim against a reference design rests on these; a rung promotes by the first of them
    assert quality_mask(("fid", "params", "latency_ms")) == (True, False, False)
    assert quality_mask(("params", "probe_cfg", "macs", "e2e_ms", "memory_mb", "kid", "alignment")) == (
        False, True, False, False, False, True, True)
