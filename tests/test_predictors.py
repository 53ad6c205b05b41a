"""Cheap predictors (predictors.py) and bench fidelity's verdict on them (bench/predictors_report.py)."""

import math

import numpy as np
import pytest

from scipy.stats import kendalltau

from blocksearch.bench.predictors_report import (PredictorRow, choose, kd_seed_noise, predictor_table, text_rule,
                                                 within_noise_of_best)
from blocksearch.bench.predictors import curve_features, extrapolate, loao_ridge
from blocksearch.bench.rank_stats import kendall_tau_gap


def test_extrapolation_recovers_a_saturating_power_law():
    steps = np.arange(1, 121, dtype=float)
    losses = 0.05 + 0.8 * steps ** -0.7
    assert extrapolate(steps, losses, 1920) == pytest.approx(0.05 + 0.8 * 1920 ** -0.7, rel=0.05)
    f = curve_features(list(losses), 1920)
    assert f["train_area"] == pytest.approx(losses.mean()) and f["train_last"] == pytest.approx(losses[-12:].mean())
    assert f["train_slope"] < 0
    assert curve_features([0.3] * 5, 1920) == dict.fromkeys(f)  # too short a curve: no features


def test_combined_predictor_never_sees_the_architecture_it_predicts():
    rng = np.random.default_rng(0)
    genomes = [f"g{i}" for i in range(10)]
    features = {g: list(rng.normal(size=3)) for g in genomes}
    target = {g: float(features[g][0] * 2 + rng.normal(scale=0.1)) for g in genomes}
    base = loao_ridge(features, target)
    assert set(base) == set(genomes)
    moved = loao_ridge(features, target | {"g3": 1e6})  # g3's own target changes: its prediction cannot
    assert moved["g3"] == pytest.approx(base["g3"])
    assert moved["g4"] != pytest.approx(base["g4"])  # every other prediction was fitted with g3 in it
    assert np.corrcoef([base[g] for g in genomes], [target[g] for g in genomes])[0, 1] > 0.9


def _rows(fid_long: dict, align_long: dict, short: dict, kd1: dict | None = None):
    rows, probes = [], []
    for g in fid_long:
        for seed in (0, 1):
            rows.append(dict(genome=g, budget=1920, kd_seed=0, seed=seed, fid=fid_long[g], alignment=align_long[g],
                             params=100, macs=10, kd_s=900.0, eval_s=30.0))
        probes.append(dict(genome=g, budget=30, kd_seed=0, probe_out=short[g], probe_cfg=short[g], probe_guide=1.0,
                           probe_feat=1.0, probe_task=1.0, probe_s=1.0, params=100 + len(g), macs=10, kd_s=15.0))
        if kd1:
            probes.append(dict(probes[-1], kd_seed=1, probe_out=kd1[g], probe_cfg=kd1[g]))
    return rows, probes


def test_predictor_table_separates_the_text_following_architectures_and_chooses_by_cost():
    # 8 architectures; a, b are text-blind (alignment 0) with a probe that ranks them first: over all
    # architectures the probe mis-ranks them, over the text-following ones it is perfect
    fid = dict(a=100.0, b=110.0, c=20.0, d=22.0, e=24.0, f=26.0, g=28.0, h=30.0)
    align = dict(a=0.0, b=0.0, c=0.8, d=0.8, e=0.7, f=0.7, g=0.6, h=0.6)
    short = dict(a=0.01, b=0.02, c=0.1, d=0.2, e=0.3, f=0.4, g=0.5, h=0.6)
    rows, probes = _rows(fid, align, short, kd1={g: v * 1.1 for g, v in short.items()})
    table = predictor_table(rows, probes, [30, 1920], n_boot=200)
    by = {(r.predictor, r.budget): r for r in table}
    out = by["probe_out", 30]
    assert out.n == 8 and out.n_text == 6 and out.tau_text == pytest.approx(1.0) and out.tau < 0.5
    chosen, meets = choose(table, 1920)
    assert chosen.predictor in ("probe_out", "probe_cfg") and meets  # cheapest meeting the target over text-following
    noise = kd_seed_noise(rows, probes, 30, "probe_out")
    assert noise["n"] == 8 and noise["sigma_log"] == pytest.approx(math.log(1.1) / math.sqrt(2))


def test_choose_says_when_nothing_meets_the_target():
    rows = [PredictorRow("probe_out", 30, 0.5, 0.1, 0.8, 10, 0.6, 0.2, 0.9, 8, 16.0),
            PredictorRow("fid", 120, 0.4, 0.0, 0.7, 10, 0.7, 0.3, 0.9, 8, 90.0),
            PredictorRow("params", 0, 0.9, 0.8, 1.0, 10, 0.9, 0.8, 1.0, 8, 0.0),  # a baseline is never chosen
            PredictorRow("probe_cfg", 960, 0.95, 0.9, 1.0, 10, 0.95, 0.9, 1.0, 8, 300.0)]  # over the cost cap
    chosen, meets = choose(rows, 1920)
    assert (chosen.predictor, chosen.budget, meets) == ("fid", 120, False)
    rows.append(PredictorRow("alignment", 120, 0.9, 0.8, 1.0, 10, 0.9, 0.7, 1.0, 8, 90.0))  # a trial has none alone
    rows.append(PredictorRow("probe_task", 120, 0.6, 0.2, 0.9, 10, 0.7, 0.3, 0.9, 8, 70.0))  # ties fid over text:
    assert choose(rows, 1920)[0].predictor == "probe_task"  # ... then the better tau over all wins


def test_of_scores_meeting_the_target_at_one_cost_the_least_noisy_is_chosen():
    cfg = PredictorRow("probe_cfg", 120, 0.83, 0.7, 0.9, 24, 0.83, 0.65, 0.96, 20, 54.4)
    task = PredictorRow("probe_task", 120, 0.83, 0.7, 0.9, 24, 0.80, 0.65, 0.92, 20, 54.4)
    fid = PredictorRow("fid", 480, 0.9, 0.8, 1.0, 24, 0.9, 0.8, 1.0, 20, 211.8)  # meets, but dearer
    assert choose([cfg, task, fid], 1920) == (cfg, True)  # noise unknown: the higher tau
    assert choose([cfg, task, fid], 1920, {cfg: 0.060, task: 0.020}.get) == (task, True)
    cheap = PredictorRow("probe_out", 30, 0.8, 0.6, 0.9, 24, 0.81, 0.61, 0.9, 20, 14.8)
    assert choose([cfg, task, cheap], 1920, {cfg: 0.060, task: 0.020, cheap: 0.3}.get) == (cheap, True)  # cost first
    # tau = 0.8 exactly (152 concordant-minus-discordant of 190 pairs), as scipy computes it: 0.7999999999999999
    on_the_line = PredictorRow("probe_task", 120, 0.83, 0.7, 0.9, 24, math.nextafter(0.8, 0), 0.6517, 0.92, 20, 54.4)
    assert choose([cfg, on_the_line], 1920, {cfg: 0.06, on_the_line: 0.02}.get)[0] == on_the_line


def test_one_standard_error_rule_takes_a_cheaper_predictor_only_when_the_best_leads_by_noise():
    best = PredictorRow("probe_task", 120, 0.8, 0.6, 1.0, 12, 0.72, 0.35, 1.0, 9, 76.7)
    cheap = PredictorRow("probe_task", 30, 0.8, 0.6, 1.0, 12, 0.67, 0.31, 1.0, 9, 20.5)
    cheapest = PredictorRow("probe_out", 0, 0.7, 0.4, 0.9, 12, 0.50, 0.0, 0.9, 9, 2.4)
    fid_row = PredictorRow("fid", 30, 0.5, 0.1, 0.9, 12, 0.67, 0.2, 1.0, 9, 51.1)  # within noise but dearer
    table = [best, cheap, cheapest, fid_row]
    gaps = {cheap: (0.05, 0.10), cheapest: (0.22, 0.10), fid_row: (0.05, 0.10)}
    gap = lambda a, b: gaps[b]  # noqa: E731
    assert within_noise_of_best(best, table, 1920, gap) == (cheap, 0.05, 0.10)  # 0.22 > 1 SE: not the cheapest
    gaps[cheapest] = (0.09, 0.10)
    assert within_noise_of_best(best, table, 1920, gap)[0] == cheapest
    # the text rule: a budget without a separating probe_guide is not taken when the best's budget has one
    assert within_noise_of_best(best, table, 1920, gap, text_ok=lambda b: b != 0)[0] == cheap
    gaps.update({cheap: (0.3, 0.1), cheapest: (0.3, 0.1), fid_row: (0.3, 0.1)})
    assert within_noise_of_best(best, table, 1920, gap) == (best, 0.0, 0.0)  # every lead beyond noise: the best
    # as cheap as the best and within noise of it: the one with the least KD-seed noise
    quiet = PredictorRow("probe_cfg", 120, 0.8, 0.6, 1.0, 12, 0.70, 0.3, 1.0, 9, 76.7)
    gaps[quiet] = (0.02, 0.05)
    sigma = {best: 0.07, quiet: 0.016}
    assert within_noise_of_best(best, [*table, quiet], 1920, gap, noise=sigma.get)[0] == quiet
    sigma[quiet] = 0.2
    assert within_noise_of_best(best, [*table, quiet], 1920, gap, noise=sigma.get)[0] == best


def test_the_paired_gap_resamples_both_predictors_together():
    fid = [float(v) for v in range(1, 11)]
    a = list(fid)  # perfect
    b = fid[:8] + [fid[9], fid[8]]  # one swapped pair
    g, se = kendall_tau_gap(a, b, fid, n_boot=500)
    assert g == pytest.approx(1.0 - kendalltau(b, fid).statistic) and 0 < se  # one swap: a small, noisy lead
    far = fid[::-1]  # the reverse ranking: the lead (2.0) is far beyond its error
    g, se = kendall_tau_gap(a, far, fid, n_boot=500)
    assert g == pytest.approx(2.0) and se < 0.5
    assert kendall_tau_gap(a, a, fid, n_boot=200) == (0.0, 0.0)  # paired: a predictor never differs from itself


def test_text_rule_takes_the_first_text_dependent_probe_score_that_separates():
    fid = dict(a=100.0, b=110.0, c=20.0, d=22.0, e=24.0)
    align = dict(a=0.0, b=0.05, c=0.8, d=0.8, e=0.7)
    rows, probes = _rows(fid, align, short=dict(a=0.7, b=0.66, c=0.2, d=0.5, e=0.3))  # probe_cfg = short
    rule = text_rule(rows, probes, 30, 1920)  # probe_guide is 1.0 everywhere (no text direction yet): probe_cfg
    assert (rule["key"], rule["separates"]) == ("probe_cfg", True)
    assert rule["ceiling"] == pytest.approx((0.5 + 0.66) / 2) and rule["n"] == 5
    for p in probes:
        p["probe_guide"] = 0.3 if align[p["genome"]] > 0.5 else 1.0  # once the text direction separates: it
    assert text_rule(rows, probes, 30, 1920)["key"] == "probe_guide"
    for p in probes:
        p["probe_guide"], p["probe_cfg"] = 1.0, 0.5  # nothing separates: no ceiling, the first key's figures
    rule = text_rule(rows, probes, 30, 1920)
    assert (rule["key"], rule["ceiling"], rule["separates"]) == ("probe_guide", None, False)


def test_a_probe_score_without_a_text_rule_at_its_budget_is_not_chosen():
    """tau is over the text-following architectures: a probe-ranked first stage must screen the others out, so a
    cheap probe score at a budget where no text rule separates is passed over; FID (images, the alignment floor)
    needs no rule."""
    cheap = PredictorRow("probe_task", 30, 0.85, 0.73, 0.94, 24, 0.80, 0.63, 0.92, 20, 14.8)
    task = PredictorRow("probe_task", 120, 0.84, 0.73, 0.92, 24, 0.81, 0.66, 0.93, 20, 54.4)
    fid = PredictorRow("fid", 30, 0.9, 0.8, 1.0, 24, 0.9, 0.8, 1.0, 20, 36.0)
    assert choose([cheap, task], 1920) == (cheap, True)  # every budget has a rule: the cheapest
    ruled = lambda budget: budget == 120  # noqa: E731 - no text rule separates at 30 steps
    assert choose([cheap, task], 1920, text_ok=ruled) == (task, True)
    assert choose([cheap, task, fid], 1920, text_ok=ruled) == (fid, True)  # FID at 30 screens by its images
    assert choose([cheap], 1920, text_ok=ruled) == (None, False)  # nothing screened: nothing to choose
    gap = lambda a, b: (0.01, 0.1)  # noqa: E731 - within noise of the best
    best = PredictorRow("probe_task", 120, 0.84, 0.73, 0.92, 24, 0.7, 0.5, 0.9, 20, 54.4)
    assert within_noise_of_best(best, [best, cheap], 1920, gap, text_ok=ruled)[0] == best
    assert within_noise_of_best(best, [best, cheap], 1920, gap)[0] == cheap


def test_the_report_names_a_cheaper_score_passed_over_for_want_of_a_text_rule():
    from blocksearch.bench.predictors_report import render
    cheap = PredictorRow("probe_task", 30, 0.85, 0.73, 0.94, 24, 0.80, 0.63, 0.92, 20, 14.8)
    task = PredictorRow("probe_task", 120, 0.84, 0.73, 0.92, 24, 0.81, 0.66, 0.93, 20, 54.4)
    text = render([cheap, task], task, True, [], "cmd", passed_over=[cheap])
    assert "**probe_task at 120 KD steps**" in text
    assert "Passed over: probe_task at 30 KD steps, tau +0.80 [+0.63, +0.92], 14.8 s -- it meets the target, but no " \
           "text rule separates the text-following architectures at 30 steps" in text
    assert "Passed over" not in render([cheap, task], task, True, [], "cmd")


def test_every_row_of_the_noise_table_has_as_many_cells_as_its_header():
    from blocksearch.bench.predictors_report import render
    task = PredictorRow("probe_task", 120, 0.84, 0.73, 0.92, 24, 0.81, 0.66, 0.93, 20, 54.4)
    kd = dict(median=0.01, max=0.02, n=20, sigma_log=0.05, tau=[0.9, 0.8, 1.0])
    noise = [dict(budget=30, key="probe_task", kd=kd, gen=dict(median=1.0, max=2.0, n=20)),
             dict(budget=120, key="fid", kd=None, gen=None)]
    lines = render([task], task, True, noise, "cmd").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| budget | score | KD-seed spread"))
    table = lines[start:start + 4]
    assert [line.count("|") for line in table] == [table[0].count("|")] * 4 and table[0].count("|") == 9
    assert "| 30 | probe_task | 0.01 / 0.02 | 20 | 0.050 | +0.90 [+0.80, +1.00] | 1 / 2 | 20 |" == table[2]
