"""bench search: equal trial counts, distinct architectures, hypervolume bounded by the table's optimum."""

import argparse
import functools
import multiprocessing
import time

import numpy as np
import optuna
import pytest

from blocksearch.bench import search as B
from blocksearch.search import samplers
from blocksearch.report.pareto import hypervolume, normalised_hypervolume, pareto_mask
from blocksearch.space import load_space
from blocksearch.families.unet.topology import topology_of
from tests.conftest import tiny_unet


@pytest.fixture(scope="module")
def bound_and_table():
    bound = load_space("unet_blocks").bind(topology_of(tiny_unet("sd-v1").config))
    values = {}
    for g in bound:  # a synthetic trade-off: fewer blocks -> smaller, faster, worse
        size = sum(g.layers) + sum(d > 0 for d in g.depth) + {"cross_attn": 2, "resnet": 1, "none": 0}[g.mid]
        values[g.id] = (1.0 / size + 0.01 * (sum(map(ord, g.id)) % 7), float(size), float(size + len(g.layers)))
    return bound, B.Table(values, "synthetic")


def test_search_once_spends_exactly_the_trials_on_distinct_architectures(bound_and_table):
    bound, table = bound_and_table
    # the same table with a tiny offset per architecture: every row distinct, so distinct rows = distinct Genomes
    table = B.Table({g: (*v[:2], v[2] + i * 1e-9) for i, (g, v) in enumerate(table.values.items())}, "distinct")
    evaluated = B.search_once(table, bound, "tpe", 8, seed=0)
    assert len(evaluated) == 8 and len({tuple(v) for v in evaluated}) == 8
    designs = [table.values[g.id] for g in bound.named_designs().values()]
    assert all(any(np.allclose(d, e) for e in evaluated) for d in designs)  # BK designs come first


def test_compare_reports_ratio_and_bounded_hypervolumes(bound_and_table):
    bound, table = bound_and_table
    out = B.compare(table, bound, "tpe", 8, seeds=2)
    assert len(out["tpe"]) == len(out["random"]) == 2
    assert all(0 < hv <= out["optimum"] + 1e-12 for hv in out["tpe"] + out["random"])
    assert out["ratio"] == pytest.approx(np.mean(out["tpe"]) / np.mean(out["random"]))
    assert out["random_final"] == pytest.approx(np.mean(out["random"]))
    assert all(r is None or 1 <= r <= 8 - 3 for r in out["reach"]["tpe"] + out["reach"]["random"])
    assert all(r is None or 1 <= r <= 8 for r in out["reach_random"]["tpe"])


def test_table_csv_round_trip_and_errors(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("genome,fid,params,latency_ms\nL1-1-1-1_T1-1-1-0_Mnone,1.5,10,2\n")
    assert B.read_table(path).values == {"L1-1-1-1_T1-1-1-0_Mnone": (1.5, 10.0, 2.0)}
    path.write_text("genome,fid\nx,1\n")
    with pytest.raises(B.BlocksearchError, match="columns"):
        B.read_table(path)


def test_normalised_hypervolume_and_mask():
    pts = np.array([[1.0, 3.0, 2.0], [2.0, 2.0, 2.0], [3.0, 3.0, 3.0], [1.0, 3.0, 2.0]])
    assert pareto_mask(pts).tolist() == [True, True, False, True]
    # scaled to [0, 1] with lower (1,2,2) and upper (3,3,3): (0,1,0), (0.5,0,0), (1,1,1); reference 1.1
    expected = hypervolume([[0, 1, 0], [0.5, 0, 0], [1, 1, 1]], [1.1] * 3)
    assert normalised_hypervolume(pts, [1, 2, 2], [3, 3, 3]) == pytest.approx(expected)
    assert expected == pytest.approx(1.1 * 0.1 * 1.1 + 0.6 * 1.1 * 1.1 - 0.6 * 0.1 * 1.1)


def test_calibrate_maps_the_standin_onto_measured_values():
    standin = B.Table({"a": (1.0, 10.0, 100.0), "b": (2.0, 20.0, 200.0), "c": (3.0, 30.0, 300.0)}, "s")
    measured = B.Table({"a": (5.0, 10.0, 1.0), "b": (7.0, 20.0, 2.0)}, "m")
    out = B.calibrate(standin, measured)
    assert out.values["a"] == (5.0, 10.0, 1.0) and out.values["b"] == (7.0, 20.0, 2.0)
    assert out.values["c"] == pytest.approx((9.0, 30.0, 3.0))
    with pytest.raises(B.BlocksearchError, match="fewer than 2"):
        B.calibrate(standin, B.Table({"a": (1.0, 1.0, 1.0)}, "m"))


def test_a_blank_latency_column_comes_from_the_standin(tmp_path):
    """The fidelity study's table measures FID and params, not latency: its blank column keeps the stand-in's
    values (for the measured architectures too), and its Kendall tau says "not measured"."""
    path = tmp_path / "fidelity-toy.csv"
    path.write_text("# measured by: test\ngenome,fid,params,latency_ms\na,5,10,\nb,7,20,\n")
    measured = B.read_table(path)
    assert "latency_ms not measured: from the stand-in" in measured.source
    standin = B.Table({"a": (1.0, 10.0, 100.0), "b": (2.0, 20.0, 200.0), "c": (3.0, 30.0, 300.0)}, "s")
    out = B.calibrate(standin, measured)
    assert out.values["a"] == (5.0, 10.0, 100.0) and out.values["c"] == pytest.approx((9.0, 30.0, 300.0))
    taus = B.rank_agreement(standin, measured)
    assert taus["fid"] == 1.0 and taus["params"] == 1.0 and np.isnan(taus["latency_ms"]) and taus["n"] == 2


def test_kendall_tau_b_on_hand_made_rankings():
    assert B.kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx((5 - 1) / 6)  # one discordant pair of 6
    assert B.kendall_tau([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    # ties: x has one tied pair, so 5 of its 6 pairs are untied, all concordant: 5 / sqrt(5 * 6) (scipy agrees)
    assert B.kendall_tau([1, 1, 2, 3], [1, 2, 3, 4]) == pytest.approx(5 / np.sqrt(30))
    with pytest.raises(B.BlocksearchError, match="same >= 2"):
        B.kendall_tau([1, 2], [1])


def test_bench_search_prints_the_kendall_tau_of_the_standin_and_the_table_it_used(bound_and_table, tmp_path,
                                                                                   monkeypatch, capsys):
    bound, standin = bound_and_table
    ids = [g.id for g in bound][:4]
    measured = tmp_path / "m.csv"  # stand-in fid ranks these 4 as given; measured swaps the last two
    fids = sorted(standin.values[g][0] for g in ids)
    standin = B.Table({**standin.values, **{g: (f, *standin.values[g][1:]) for g, f in zip(ids, fids)}}, "s")
    measured.write_text("genome,fid,params,latency_ms\n" + "".join(
        f"{g},{fid},{standin.values[g][1]},{standin.values[g][2]}\n" for g, fid in zip(ids, [1, 2, 4, 3])))
    monkeypatch.setattr(B, "_bound", lambda space, teacher: bound)
    monkeypatch.setattr(B, "standin_table", lambda teacher, space: standin)
    args = argparse.Namespace(sampler="tpe", trials=6, seeds=1, table=str(measured), teacher="toy", space="unet_blocks")
    assert B.cmd_bench_search(args) == 0
    out = capsys.readouterr().out
    assert f"table: {measured} (4 measured architectures)" in out
    assert "over the 4 measured architectures: fid +0.667" in out
    assert "trials-to-reach ratio tpe / random" in out and "until the hypervolume random search ends with" in out


def test_default_table_prefers_the_fidelity_study(tmp_path, monkeypatch):
    monkeypatch.setattr(B, "FIDELITY", tmp_path / "fidelity-toy.csv")
    monkeypatch.setattr(B, "MEASURED", tmp_path / "toy.csv")
    assert B.default_measured("toy") is None
    (tmp_path / "toy.csv").write_text("x")
    assert B.default_measured("toy") == tmp_path / "toy.csv"
    (tmp_path / "fidelity-toy.csv").write_text("x")
    assert B.default_measured("toy") == tmp_path / "fidelity-toy.csv"
    assert B.default_measured("sd-v1") is None  # the shipped tables were measured on the toy teacher


def test_trials_to_reach_counts_trials_after_the_designs():
    lower, upper = [0.0, 0.0], [1.0, 1.0]
    designs = [[0.5, 0.5]]
    target = B.normalised_hypervolume(np.array(designs), lower, upper)  # 0.6 * 0.6
    found = [[0.9, 0.9], [0.2, 0.8], [0.8, 0.2], [0.1, 0.1]]  # 0.04, then 0.27, then 0.48 >= 0.36
    assert B.trials_to_reach(np.array(designs + found), target, lower, upper, skip=1) == 3
    assert B.trials_to_reach(np.array(designs + found[:2]), target, lower, upper, skip=1) is None
    assert B.trials_to_reach(np.array(designs + [[0.5, 0.5]]), target, lower, upper, skip=1) == 1


class _Stubborn(optuna.samplers.BaseSampler):
    """Always proposes the first choice of every parameter: the same Genome, every time."""

    def infer_relative_search_space(self, study, trial):
        return {}

    def sample_relative(self, study, trial, search_space):
        return {}

    def sample_independent(self, study, trial, name, distribution):
        return distribution.choices[0]


class _FirstChoice:
    def suggest_categorical(self, name, choices):
        return choices[0]


def test_search_once_applies_the_searchs_repeat_rule(bound_and_table, monkeypatch):
    bound, table = bound_and_table
    calls, rule = [], samplers.untrained_genome

    def recording(bound_, trained, seed, attempt):
        genome = rule(bound_, trained, seed, attempt)
        calls.append((attempt, genome.id))
        return genome

    monkeypatch.setattr(samplers, "make_sampler", lambda name, seed, trials, designs=0: _Stubborn())
    monkeypatch.setattr(samplers, "untrained_genome", recording)
    evaluated = B.search_once(table, bound, "tpe", 9, seed=3)
    assert len(evaluated) == 9
    # 3 BK designs, the stubborn Genome once, then every other trial is the fallback after 3 repeats
    assert [a for a, _ in calls] == [samplers.REPEATS_BEFORE_FALLBACK] * 5
    stubborn = bound.suggest(_FirstChoice())
    designs = {g.id for g in bound.named_designs().values()}
    assert len({g for _, g in calls} | designs | {stubborn.id}) == 9
    assert [tuple(v) for v in evaluated[4:]] == [table.values[g] for _, g in calls]


def _slow_build(marker):
    with open(marker, "a") as f:
        f.write("built\n")
    time.sleep(0.5)
    return {"L1-1-1-1_T1-1-1-0_Mnone": (1.5, 10.0, 2.0)}


def test_two_benchmarks_started_together_build_the_table_once(tmp_path):
    cache, marker = tmp_path / "bench" / "standin-x.csv", tmp_path / "builds.txt"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=B.cached_table, args=(cache, functools.partial(_slow_build, marker)))
             for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    assert [p.exitcode for p in procs] == [0, 0]
    assert marker.read_text() == "built\n"
    assert B.cached_table(cache, lambda: pytest.fail("rebuilt")) == {"L1-1-1-1_T1-1-1-0_Mnone": (1.5, 10.0, 2.0)}
    assert not list(cache.parent.glob("*.partial"))


def test_front_scores_each_reports_front_on_the_table(bound_and_table, tmp_path, monkeypatch, capsys):
    """--front: a report's front genomes looked up in the table; a front that adds a non-dominated design
    scores higher, and a report without the columns is a one-line error."""
    bound, table = bound_and_table
    best = min(table.values, key=lambda g: table.values[g][0])
    small = min(table.values, key=lambda g: table.values[g][1])
    one, two = tmp_path / "one.csv", tmp_path / "two.csv"
    one.write_text(f"number,genome,on_front\n0,{best},True\n1,{small},False\n")
    two.write_text(f"number,genome,on_front\n0,{best},True\n1,{small},True\n")
    assert B.front_genomes(one) == [best]
    assert B.front_hypervolume(table, [best, small]) > B.front_hypervolume(table, [best]) > 0
    monkeypatch.setattr(B, "standin_table", lambda teacher, space: table)
    args = argparse.Namespace(front=[str(one), str(two)], table=None, teacher="x", space="x")
    assert B.cmd_bench_search(args) == 0
    out = capsys.readouterr().out
    assert f"{one}: 1 on the front, hypervolume {B.front_hypervolume(table, [best]):.4f}" in out
    assert f"{two}: 2 on the front" in out
    (tmp_path / "bad.csv").write_text("number,fid\n0,1\n")
    with pytest.raises(B.BlocksearchError, match="no genome/on_front columns"):
        B.front_genomes(tmp_path / "bad.csv")
    with pytest.raises(B.BlocksearchError, match="not in the table"):
        B.front_hypervolume(table, ["L9_T9_Mnone"])
