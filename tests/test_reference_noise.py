"""reference_noise.py: the reference designs' other seeds come from bench fidelity's study only where this run's
own scores reproduce it; then nothing is trained again, else the trial trains them (trial.py)."""

import pytest

from blocksearch.search.reference_noise import (RTOL, SOURCE, agrees, check_budget, probe_row, reproduced, seed_table,
                                         study_scores, table_of)

ROWS = [  # bench fidelity results rows: one per (budget, KD seed, generation seed); a searched one is left out
    {"genome": "g", "design": "bk_base", "budget": 480, "kd_seed": 0, "seed": 0, "fid": 64.0, "alignment": 0.5,
     "kid": 250.0},
    {"genome": "g", "design": "bk_base", "budget": 480, "seed": 1, "fid": 70.0, "alignment": 0.55, "kid": 300.0},
    {"genome": "g", "design": "bk_base", "budget": 480, "kd_seed": 1, "seed": 0, "fid": 85.0, "alignment": 0.57,
     "kid": 550.0},
    {"genome": "s", "design": None, "budget": 480, "kd_seed": 0, "seed": 0, "fid": 40.0, "alignment": 0.7},
]
PROBES = [{"genome": "g", "design": "bk_base", "budget": 120, "kd_seed": k, "probe_task": v, "probe_cfg": 2 * v,
           "train_last": 1.0} for k, v in ((1, 0.1265), (0, 0.1259))]


def test_the_table_holds_the_named_designs_rows_by_budget():
    table = seed_table(ROWS, PROBES)
    assert set(table) == {"480", "120"} and set(table["480"]) == {"g"}  # the searched "s" is not a reference
    assert table["480"]["g"] == [  # a row without kd_seed is KD seed 0's (older studies); sorted by KD seed, seed
        {"kd_seed": 0, "seed": 0, "fid": 64.0, "kid": 250.0, "alignment": 0.5},
        {"kd_seed": 0, "seed": 1, "fid": 70.0, "kid": 300.0, "alignment": 0.55},
        {"kd_seed": 1, "seed": 0, "fid": 85.0, "kid": 550.0, "alignment": 0.57}]
    assert table["120"]["g"] == [{"kd_seed": 0, "probe_task": 0.1259, "probe_cfg": 0.2518},
                                 {"kd_seed": 1, "probe_task": 0.1265, "probe_cfg": 0.253}]


def test_a_reproduced_run_takes_the_studys_other_seeds_with_only_its_own_scores():
    table = seed_table(ROWS, PROBES)
    main = {"seed": 0, "kd_seed": 0, "fid": 64.0 * (1 + RTOL / 2), "alignment": 0.5, "kid": 250.0}
    rows = reproduced(main, table["480"]["g"])
    assert rows == [main, {"seed": 1, "kd_seed": 0, "fid": 70.0, "kid": 300.0, "alignment": 0.55, "from": SOURCE},
                    {"seed": 0, "kd_seed": 1, "fid": 85.0, "kid": 550.0, "alignment": 0.57, "from": SOURCE}]
    assert reproduced(main, table["480"]["g"], kd_seeds=3) is None  # --noise-seeds 3: the study has 2 KD seeds
    # a first stage scored by the probe alone: the probe's other KD seed, no image score
    probe_main = {"seed": 0, "kd_seed": 0, "probe_task": 0.1259}
    assert reproduced(probe_main, table["120"]["g"]) == [
        probe_main, {"seed": 0, "kd_seed": 1, "probe_task": 0.1265, "from": SOURCE}]


@pytest.mark.parametrize("main", [
    {"seed": 0, "kd_seed": 0, "fid": 64.0 * (1 + 3 * RTOL), "alignment": 0.5},  # another recipe: fid moved
    {"seed": 0, "kd_seed": 0, "fid": 64.0, "alignment": 0.6},  # one score of several differs
    {"seed": 5, "kd_seed": 0, "fid": 64.0, "alignment": 0.5},  # another generation seed: nothing to compare
    {"seed": 0, "kd_seed": 0, "probe_out": 0.03},  # a score the study did not measure
])
def test_a_run_the_study_does_not_reproduce_trains_its_seeds(main):
    table = seed_table(ROWS, PROBES)
    assert reproduced(main, table["480"]["g"] + table["120"]["g"]) is None


def test_a_probe_and_image_run_needs_both_reproduced():
    table = seed_table(ROWS, PROBES)
    both = table["480"]["g"] + table["120"]["g"]  # as if at one budget
    main = {"seed": 0, "kd_seed": 0, "fid": 64.0, "alignment": 0.5, "probe_task": 0.1259}
    assert [r["kd_seed"] for r in reproduced(main, both)] == [0, 0, 1, 1]
    assert reproduced(main | {"probe_task": 0.2}, both) is None


def test_the_table_is_used_only_for_the_teacher_it_was_measured_on():
    record = {"teacher": "toy", "reference_seed_scores": {"120": {"g": []}}}
    assert table_of(record, "toy") == {"120": {"g": []}}
    assert table_of(record, "toy-dit") == {} and table_of(None, "toy") == {}
    assert table_of({"predictor": "probe_task"}, "toy") == {}  # an older record: no seed scores


def test_the_studys_own_kd_seed_and_where_a_trial_checks_it():
    """study_reuse.reuse's lookups: KD seed 0's scores at a budget (images at the trial's generation seed, probes
    from the probe row; None unless every key asked for is there), the longest budget below a trial's with its
    probe scores (the check), and the check itself (every shared score within RTOL)."""
    table = seed_table(ROWS, PROBES + [dict(PROBES[1], budget=30), dict(PROBES[1], budget=0)])
    assert study_scores(table, 480, "g", 0, ("fid", "kid", "alignment")) == {"fid": 64.0, "kid": 250.0,
                                                                             "alignment": 0.5}
    assert study_scores(table, 480, "g", 1, ("fid",)) == {"fid": 70.0}  # the row at generation seed 1
    assert study_scores(table, 480, "g", 2, ("fid",)) is None  # no row at that seed
    assert study_scores(table, 120, "g", 0, ("probe_cfg",)) == {"probe_cfg": 0.2518}  # KD seed 0's, not 1's
    assert study_scores(table, 120, "g", 0, ("probe_cfg", "probe_out")) is None  # one key missing: none
    assert study_scores(table, 120, "g", 0, ()) is None and study_scores(table, 120, "s", 0, ("fid",)) is None
    assert check_budget(table, 480, "g") == 120 and check_budget(table, 120, "g") == 30
    assert check_budget(table, 30, "g") is None  # 0 steps checks no training: never a check
    assert probe_row(table, 30, "g") == {"probe_task": 0.1259, "probe_cfg": 0.2518} and probe_row(table, 480, "g") == {}
    mine = {"probe_task": 0.1259 * (1 + RTOL / 2), "probe_cfg": 0.2518, "fid": 3.0}
    assert agrees(mine, {"probe_task": 0.1259, "probe_cfg": 0.2518})
    assert not agrees(mine, {"probe_task": 0.1259 * (1 + 2 * RTOL)})  # one score beyond RTOL
    assert not agrees(mine, {"probe_out": 0.03}) and not agrees(mine, None)  # nothing shared
