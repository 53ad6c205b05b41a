"""Rank agreement of short and long runs: tau-b and its bootstrap interval, seed spread, cost, the budget."""

import math

import pytest

from blocksearch.bench.rank_stats import (baselines, cost_per_budget, kendall_tau_ci, rank_table, recommend_budget,
                                    seed_spread)


def test_kendall_tau_of_a_hand_worked_example():
    """10 pairs, one discordant (4, 5): tau = (9 - 1) / 10 = 0.8."""
    tau, lo, hi = kendall_tau_ci([1, 2, 3, 4, 5], [1, 2, 3, 5, 4], n_boot=500, seed=3)
    assert tau == pytest.approx(0.8, abs=1e-12)
    assert -1 <= lo <= tau <= hi <= 1 and lo < hi
    assert kendall_tau_ci([1, 2, 3, 4, 5], [1, 2, 3, 5, 4], n_boot=500, seed=3) == (tau, lo, hi)


def test_perfect_agreement_and_too_few_points():
    assert kendall_tau_ci([1, 2, 3, 4], [10, 20, 30, 40], n_boot=200) == (1.0, 1.0, 1.0)
    assert kendall_tau_ci([3, 2, 1], [1, 2, 3], n_boot=200) == pytest.approx((-1.0, -1.0, -1.0))
    assert all(math.isnan(v) for v in kendall_tau_ci([1], [2]))


def _rows(scores: dict, params: dict, kd: dict, seeds=(0, 1), jitter=0.5):
    """scores: (genome, budget) -> fid; seed s adds s * jitter; kid = fid / 100; alignment = 1 / fid."""
    return [dict(genome=g, budget=b, seed=s, fid=f + s * jitter, kid=(f + s * jitter) / 100,
                 alignment=1 / (f + s * jitter), params=params[g], macs=2 * params[g], kd_s=kd[b], eval_s=3.0 + s)
            for (g, b), f in scores.items() for s in seeds]


PARAMS = {"a": 400, "b": 300, "c": 200, "d": 100}
KD = {0: 0.0, 10: 5.0, 40: 20.0}
#        budget 0: a d b c (one-shot, muddled)    budget 10: a b d c    budget 40: a b c d (by size)
SCORES = {("a", 0): 10, ("b", 0): 30, ("c", 0): 40, ("d", 0): 20,
          ("a", 10): 5, ("b", 10): 6, ("c", 10): 8, ("d", 10): 7,
          ("a", 40): 1, ("b", 40): 2, ("c", 40): 3, ("d", 40): 4}


def test_rank_table_against_the_longest_budget():
    table = rank_table(_rows(SCORES, PARAMS, KD), n_boot=200)
    fid = {r["budget"]: r for r in table if r["objective"] == "fid"}
    assert set(fid) == {0, 10} and fid[0]["n"] == 4
    assert fid[0]["tau"] == pytest.approx(2 / 6)  # pairs: 4 concordant, 2 discordant (b-d, c-d)
    assert fid[10]["tau"] == pytest.approx(4 / 6)  # one discordant pair (c-d)
    assert fid[10]["cost_s"] == 5.0 and fid[10]["eval_s"] == 3.5
    align = {r["budget"]: r["tau"] for r in table if r["objective"] == "alignment"}
    assert align[10] == pytest.approx(fid[10]["tau"])  # alignment = 1 / fid at both budgets: the same ranking


def test_baselines_are_signed_so_that_bigger_predicts_better():
    rows = _rows(SCORES, PARAMS, KD)
    by = {(r["predictor"], r["objective"]): r["tau"] for r in baselines(rows, n_boot=100)}
    assert by[("-params", "fid")] == pytest.approx(1.0)  # at 40 steps FID falls with size exactly
    assert by[("+params", "alignment")] == pytest.approx(1.0) and by[("-macs", "kid")] == pytest.approx(1.0)


def test_recommend_budget_takes_the_cheapest_that_matches():
    rows = [dict(budget=30, objective="fid", tau=0.9, lo=0.5, hi=1.0, cost_s=10),  # interval too wide
            dict(budget=120, objective="fid", tau=0.85, lo=0.65, hi=0.95, cost_s=40),
            dict(budget=480, objective="fid", tau=0.95, lo=0.9, hi=1.0, cost_s=160, eval_s=5),
            dict(budget=0, objective="kid", tau=1.0, lo=1.0, hi=1.0, cost_s=0)]  # not FID
    assert recommend_budget(rows) == 120
    assert recommend_budget(rows, target=0.9, lower=0.7) == 480
    assert recommend_budget(rows, target=0.99) is None
    assert recommend_budget(rows, target=0.9, lower=0.7, max_budget=480) == 480  # a quarter of 1920 steps
    assert recommend_budget(rows, target=0.9, lower=0.7, max_budget=240) is None  # a quarter of 960 steps


def test_seed_spread_and_cost_per_budget():
    rows = _rows(SCORES, PARAMS, KD, jitter=0.5)
    spread = {(r["budget"], r["objective"]): r for r in seed_spread(rows)}
    assert spread[(0, "fid")]["median"] == pytest.approx(0.5) and spread[(0, "fid")]["max"] == pytest.approx(0.5)
    assert spread[(40, "kid")]["max"] == pytest.approx(0.005) and spread[(40, "fid")]["measure"] == "|a - b|"
    # alignment 1/f - 1/(f + 0.5): largest for the smallest f (a at budget 40: 1 - 1/1.5)
    assert spread[(40, "alignment")]["max"] == pytest.approx(1 - 1 / 1.5)
    three = _rows(SCORES, PARAMS, KD, seeds=(0, 1, 2), jitter=1.0)
    assert seed_spread(three)[0]["median"] == pytest.approx(1.0) and seed_spread(three)[0]["measure"] == "std"
    cost = {c["budget"]: c for c in cost_per_budget(rows)}
    assert cost[40] == dict(budget=40, kd_s=20.0, eval_s=3.5, n=4)


def test_seed_means_average_generation_seeds_within_a_kd_seed_then_the_kd_seeds():
    from blocksearch.bench.rank_stats import seed_means
    base = dict(genome="g", budget=8, kid=1.0, alignment=0.5, params=10, macs=20, kd_s=1.0, eval_s=1.0)
    rows = [base | dict(seed=0, fid=10.0), base | dict(seed=1, fid=20.0),  # KD seed 0 (no kd_seed: as before)
            base | dict(kd_seed=1, seed=0, fid=30.0)]                       # KD seed 1, one generation seed
    assert seed_means(rows)[("g", 8)]["fid"] == 22.5  # (15 + 30) / 2, not the flat mean of the rows, 20
    assert seed_means(rows[:2])[("g", 8)]["fid"] == 15.0
