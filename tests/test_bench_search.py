"""bench search: equal trial counts, distinct architectures, hypervolume bounded by the table's optimum."""

import numpy as np
import pytest

from blocksearch import bench_search as B
from blocksearch.pareto import hypervolume, normalised_hypervolume, pareto_mask
from blocksearch.space import load_space
from blocksearch.teachers import topology_of
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
