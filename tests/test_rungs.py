"""rungs.py: which students go on to a longer KD budget, the rung's study and queue, the flags, the checkpoints."""

from types import SimpleNamespace

import optuna
import pytest

from blocksearch.search import driver as search

from blocksearch.search import trial
from blocksearch.cli import main
from blocksearch.recipe.distill import CHECKPOINT_FILE
from blocksearch.errors import BlocksearchError
from blocksearch.report.compute import build_report
from blocksearch.teachers import resolve_teacher
from blocksearch.report.render_noise import noise_line, reference_md
from blocksearch.search.promotion import (MAX_FRACTION, RUNG_FACTOR, by_contribution, promoted, settled,
                                         stopped_references, whole_rounds)
from blocksearch.search.rungs import (carried_noise, check_rungs, default_rungs, drop_checkpoints, prepare_rung,
                                     rung_plan, study_free)
from blocksearch.families.unet.genome import Genome
from blocksearch.space import load_space
from blocksearch.study import SearchConfig, open_study, rung_name
from blocksearch.families.unet.topology import topology_of
from blocksearch.search.trial import TrialJob, checkpoint_dir
from tests.conftest import BK, CASE, NOISE_CASE, SEED_SCORES, make_study, tiny_unet

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _report(tmp_path, case, seed_scores=None):
    url = make_study(tmp_path, case=case, seed_scores=seed_scores)
    return build_report(open_study("unet_blocks-toy", url), url)


def test_without_noise_the_front_and_the_reference_designs_go_on(tmp_path):
    # CASE: front 2, 3, 1; bk_base (trial 0) is dominated by trial 2 but is a reference design; trial 4 stops
    infeasible = ("COMPLETE", (1.0, 10.0, 1.0), "L2-2-1-1_T1-1-0-0_Mres", None, {"constraints": {"alignment_floor": 0.5}})
    r = _report(tmp_path, CASE + [infeasible])
    assert not r.noise_measured
    # the infeasible trial 7 would dominate all: it stops
    assert [t.number for t in promoted(r, max_fraction=1.0)] == [0, 1, 2, 3]
    # a quarter of the 3 feasible searched students is 0, below one: the cap is the 2 reference designs + 1, the
    # reference designs first, then the better FID of the front's searched students 2 (9.0) and 3 (11.0)
    assert [t.number for t in promoted(r)] == [0, 1, 2]
    with pytest.raises(BlocksearchError, match="max_fraction 0: allowed: a share of the feasible students in"):
        promoted(r, max_fraction=0)


def test_with_noise_students_within_noise_of_the_front_go_on_too(tmp_path):
    # NOISE_CASE: FID margin 2.0, latency ~0.32 ms, params exact. On raw values the front is 1, 3, 5 (5 dominates
    # 0 and 2). Trial 2 (FID 9.0) is within the FID margin of trial 5 (7.5): it may be on the front once the
    # noise is out, so it goes on; trial 4 (13, 120, 11) is dominated by bk_base even with the margins: it stops.
    r = _report(tmp_path, NOISE_CASE, SEED_SCORES)
    assert r.noise_measured and r.front == (5, 3, 1)
    assert [t.number for t in promoted(r, max_fraction=1.0, references="all")] == [0, 1, 2, 3, 5]
    # a quarter of the 4 feasible searched (1) beside bk_base and bk_small, by non-dominated rank among 2, 3, 5 (5
    # dominates 2: rank 0 is {3, 5}) and within the rank the better FID (5: 7.5 before 3: 11)
    assert [t.number for t in promoted(r, references="all")] == [0, 1, 5]
    assert [t.number for t in promoted(r, max_fraction=4 / 6, references="all")] == [0, 1, 3, 5]
    # the default (open): trial 5 dominates bk_base on quality beyond noise (FID 7.5 vs 10, margin 2), which
    # settles bk_base; bk_base is then an ordinary student, beaten even with the margins by 5: it stops, and its
    # place goes to trial 3 (rank 0 with 5)
    assert [t.number for t in promoted(r, max_fraction=1.0)] == [1, 2, 3, 5]
    assert [t.number for t in promoted(r, max_fraction=0.5)] == [1, 3, 5]
    # the default cap, a quarter (1 / RUNG_FACTOR) of the 4 searched: 1 beside bk_small, the best: 5
    assert MAX_FRACTION == 1 / RUNG_FACTOR == 0.25 and [t.number for t in promoted(r)] == [1, 5]


# A first stage ranked by a probe score: objectives (params, probe_cfg, latency_ms), the quality objective second.
# probe_cfg's KD-seed sigma: bk_base 1.0, 1.1 and bk_small 1.2, 1.3 (variance 0.005 each): sqrt(0.005), margin
# z sqrt(2) sigma = 0.2; params exact; latency_cv 0: latency exact. Rows: (values, feasible).
PROBE_SEEDS = {"bk_base": [{"seed": 0, "probe_cfg": 1.0}, {"seed": 1, "probe_cfg": 1.1}],
               "bk_small": [{"seed": 0, "probe_cfg": 1.2}, {"seed": 1, "probe_cfg": 1.3}]}
PROBE_REFS = {"bk_base": "g0", "bk_small": "g1", "bk_tiny": "g2"}
PROBE_CASE = [((100.0, 1.0, 10.0), True),  # 0 bk_base
              ((80.0, 1.2, 8.0), True),  # 1 bk_small
              ((60.0, 1.5, 6.0), True),  # 2 bk_tiny
              ((90.0, 1.05, 9.0), True),  # 3 on the front
              ((105.0, 1.02, 10.5), True),  # 4 bk_base dominates it on raw values (rank 1), not beyond the 0.2 margin
              ((85.0, 1.1, 8.5), True),  # 5 on the front
              ((110.0, 1.3, 11.0), True),  # 6 bk_base dominates it even with the margin (1.0 + 0.2 <= 1.3): stops
              ((95.0, 1.4, 9.5), True),  # 7 trial 3 dominates it even with the margin (1.05 + 0.2 <= 1.4): stops
              ((50.0, 0.5, 5.0), False)]  # 8 infeasible: it would dominate every other


def _probe_report(tmp_path, case, seeds=None):
    url = f"sqlite:///{tmp_path / 'probe.db'}"
    study = optuna.create_study(study_name="probe", storage=url, directions=["minimize"] * 3)
    study.set_metric_names(["params", "probe_cfg", "latency_ms"])
    study.set_user_attr("reference_designs", PROBE_REFS)
    names = {g: n for n, g in PROBE_REFS.items()}
    for i, (values, feasible) in enumerate(case):
        ua = {"genome": f"g{i}", "metrics": {"params": values[0], "latency_ms": values[2], "latency_cv": 0.0}}
        if f"g{i}" in names:
            ua |= {"design": names[f"g{i}"], "seed_scores": (seeds or PROBE_SEEDS).get(names[f"g{i}"], [])}
        study.add_trial(optuna.trial.create_trial(
            values=values, params={"x": float(i)}, distributions={"x": optuna.distributions.FloatDistribution(0, 99)},
            user_attrs=ua, constraints={"max_params": 0.0 if feasible else 1.0}))
    return build_report(study, url)


def test_past_the_cap_the_reference_designs_stay_then_rank_then_the_probe_score(tmp_path):
    r = _probe_report(tmp_path, PROBE_CASE)
    assert r.noise_measured and r.noise["probe_cfg"].sigma == pytest.approx(0.005 ** 0.5)
    assert [t.number for t in r.ranked] == list(range(8)) and [t.rank for t in r.ranked] == [0, 0, 0, 0, 1, 0, 2, 1]
    # within noise of the front: the 3 reference designs and 3, 4, 5 (6 of 8 feasible); the infeasible 8 never
    assert [t.number for t in promoted(r, max_fraction=1.0)] == [0, 1, 2, 3, 4, 5]
    # the cap: the 3 reference designs beside floor(5 searched / 4) = 1. Of 3, 4, 5: rank 0 (3, 5) before rank 1 (4, though
    # its probe_cfg 1.02 is the best: bk_base, which goes on anyway, is no worse anywhere); one place for two of
    # rank 0: by hypervolume contribution to the reference designs' (objectives scaled to [0, 1] over the 8 ranked,
    # reference 1.1): 5 adds 0.054, 3 adds 0.048 -- 5 goes on although 3's probe_cfg (1.05) is better than 5's (1.1)
    assert [t.number for t in promoted(r)] == [0, 1, 2, 5]
    assert [t.number for t in promoted(r, max_fraction=2 / 5)] == [0, 1, 2, 3, 5]  # 2 of the 5 searched
    assert [t.number for t in promoted(r, max_fraction=0.1)] == [0, 1, 2, 5]  # never below the refs + 1


def test_places_left_go_by_hypervolume_contribution_then_quality():
    # two minimised objectives already in [0, 1] (the points span it), reference 1.1. Taken: 0 = (0, 1) and
    # 1 = (1, 0). Exclusive areas: 2 = (0.1, 0.8): [0.1, 1) x [0.8, 1) = 0.18; 3 = (0.2, 0.7): 0.8 x 0.3 = 0.24;
    # 4 = (0.8, 0.1): 0.2 x 0.9 = 0.18. 3 first; then 2 adds [0.1, 0.2) x [0.8, 1) = 0.02 and 4 adds
    # [0.8, 1) x [0.1, 0.7) = 0.12: 4. Quality order (the tier's) would have sent 2 and 3, both at one corner.
    points = {0: (0.0, 1.0), 1: (1.0, 0.0), 2: (0.1, 0.8), 3: (0.2, 0.7), 4: (0.8, 0.1)}
    t = {n: SimpleNamespace(number=n) for n in points}
    picked = by_contribution([t[2], t[3], t[4]], [t[0], t[1]], points, 2)
    assert [p.number for p in picked] == [3, 4]
    assert [p.number for p in by_contribution([t[2], t[3], t[4]], [t[0], t[1]], points, 1)] == [3]
    # equal gains (here 0: both dominated by the taken 0): the tier's order decides
    same = {0: (0.0, 0.0), 1: (1.0, 1.0), 2: (0.5, 1.0), 3: (1.0, 0.5)}
    s = {n: SimpleNamespace(number=n) for n in same}
    assert [p.number for p in by_contribution([s[3], s[2]], [s[0]], same, 1)] == [3]


def test_candidates_within_the_cap_all_go_on(tmp_path):
    # 4 and 5 moved beyond noise of the front (bk_base: 1.0 + 0.2 <= 1.25; trial 3: 1.05 + 0.2 <= 1.3): 4 candidates
    # of 8 feasible, within the cap of 4 -- today's rule unchanged
    case = PROBE_CASE[:4] + [((105.0, 1.25, 10.5), True), ((95.0, 1.3, 9.5), True)] + PROBE_CASE[6:]
    r = _probe_report(tmp_path, case)
    assert [t.number for t in promoted(r)] == [t.number for t in promoted(r, max_fraction=1.0)] == [0, 1, 2, 3]
    assert 8 not in {t.number for t in r.ranked}


def test_a_reference_design_settled_on_quality_stops_unless_all_are_asked_for(tmp_path):
    # trial 9 = (78, 0.86, 7.9) against bk_small (80, 1.2, 8.0): probe_cfg better by 0.34 > the 0.2 margin, no
    # worse in params or latency: a claim on quality, so bk_small's comparison is settled. Against bk_base (100, 1.0,
    # 10) its probe_cfg is better by 0.14, within noise: a claim on cost only, which settles nothing. Trial 9 also
    # beats trial 5 (85, 1.1, 8.5) even with the margins (0.86 + 0.2 <= 1.1), so 5 stops; not 3 (1.06 > 1.05).
    r = _probe_report(tmp_path, PROBE_CASE + [((78.0, 0.86, 7.9), True)])
    kinds = {(d.searched, d.reference): d.kind for d in r.dominations if d.beyond_noise}
    assert kinds[(9, "bk_small")] == "quality" and kinds[(9, "bk_base")] == "cost only"
    assert settled(r) == {1}
    assert [t.number for t in promoted(r, max_fraction=1.0, references="all")] == [0, 1, 2, 3, 4, 9]
    opened = promoted(r, max_fraction=1.0)  # the default: open
    assert [t.number for t in opened] == [0, 2, 3, 4, 9]
    assert stopped_references(r, opened) == {"bk_small": [9]}
    assert stopped_references(r, promoted(r, max_fraction=1.0, references="all")) == {}
    # a third of the 6 searched, 2 places beside bk_base and bk_tiny: two of 3, 4, 9 -- rank 0 (3, 9) before 4
    # (rank 1: bk_base dominates it on raw values); with every reference design kept, still two searched places
    assert [t.number for t in promoted(r, max_fraction=1 / 3)] == [0, 2, 3, 9]
    assert [t.number for t in promoted(r, max_fraction=1 / 3, references="all")] == [0, 1, 2, 3, 9]
    # the default quarter: floor(6 / 4) = 1 searched place beside the 2 open reference designs (9)
    assert [t.number for t in promoted(r)] == [0, 2, 9]
    with pytest.raises(BlocksearchError, match="--rung-references 'some'; allowed: open, all"):
        promoted(r, references="some")


def test_a_rung_report_says_which_reference_design_the_study_below_settled(tmp_path):
    url = f"sqlite:///{tmp_path / 'rung.db'}"
    study = optuna.create_study(study_name="s@480", storage=url, directions=["minimize"] * 3)
    study.set_metric_names(["fid", "params", "latency_ms"])
    study.set_user_attr("reference_designs", BK)
    study.set_user_attr("stopped_references", {"s": {"bk_base": [5, 9]}})
    for i, (name, values) in enumerate([("bk_small", (30.0, 4.8e6, 19.0)), ("bk_tiny", (28.0, 3.2e6, 17.0))]):
        study.add_trial(optuna.trial.create_trial(
            values=values, params={"x": float(i)}, distributions={"x": optuna.distributions.FloatDistribution(0, 9)},
            user_attrs={"genome": BK[name], "design": name}))
    text = "\n".join(reference_md(build_report(study, url)))
    assert ("- **bk_base** (`L1-1-1-1_T1-1-1-0_Mattn`): not trained to this budget: `s` settled it, a searched design "
            "(trial(s) 5, 9 there) dominates it on quality beyond noise") in text
    assert "**bk_small** (trial 0" in text and "no completed trial" not in text


def test_the_places_fill_whole_rounds_of_the_parallel_trials():
    assert [whole_rounds(c, 2) for c in (1, 2, 3, 4, 5, 7)] == [1, 2, 2, 4, 4, 6]
    assert [whole_rounds(c, 4) for c in (3, 4, 5, 9)] == [3, 4, 4, 8]  # one round or less: unchanged
    assert whole_rounds(3, 1) == 3 and whole_rounds(0, 2) == 0


def test_a_partial_last_round_is_dropped_from_the_rung(tmp_path):
    # 9 feasible, 6 of them searched; half of those: bk_base, bk_tiny (open) and three searched -- 5 places on 2
    # lanes is a third round for one trial; in whole rounds: 4, the searched student that adds the least
    # hypervolume stays behind
    r = _probe_report(tmp_path, PROBE_CASE + [((78.0, 0.86, 7.9), True)])
    five = [t.number for t in promoted(r, max_fraction=1 / 2)]
    four = [t.number for t in promoted(r, max_fraction=1 / 2, lanes=2)]
    assert len(five) == 5 and len(four) == 4 and set(four) < set(five) and {0, 2} <= set(four)
    assert [t.number for t in promoted(r, max_fraction=1 / 2, lanes=8)] == five  # one round: unchanged
    # never below the open reference designs + one searched student
    assert len(promoted(r, max_fraction=1 / 6, lanes=2)) == 3


def test_a_reference_design_taken_from_the_study_holds_a_place_but_no_lane(tmp_path):
    # as above, 5 places on 2 lanes: bk_base, bk_tiny and three searched. bk_tiny's rung scores come from bench
    # fidelity's study (trial.from_study: no KD): 4 places are trained, two whole rounds, and all 5 go on
    r = _probe_report(tmp_path, PROBE_CASE + [((78.0, 0.86, 7.9), True)])
    five = [t.number for t in promoted(r, max_fraction=1 / 2)]
    tiny, base = r.reference_trials["bk_tiny"], r.reference_trials["bk_base"]
    assert [t.number for t in promoted(r, max_fraction=1 / 2, lanes=2, free={tiny})] == five
    # both from the study: 3 trained places are rounded to 2, one searched student stays behind
    assert len(promoted(r, max_fraction=1 / 2, lanes=2, free={tiny, base})) == 4
    # which are free: taken from the study below, and the study has every image score at the rung's budget
    rows = {"480": {"g2": [{"kd_seed": 0, "seed": 0, "fid": 30.0, "kid": 0.1, "alignment": 0.5}],
                    "g0": [{"kd_seed": 0, "seed": 0, "fid": 30.0, "alignment": 0.5}]}}  # no kid: trained
    trials = {2: SimpleNamespace(from_study={"checked_at": 30}, genome="g2"),
              0: SimpleNamespace(from_study={"checked_at": 30}, genome="g0"),
              1: SimpleNamespace(from_study=None, genome="g1")}
    report = SimpleNamespace(reference_trials={"bk_tiny": 2, "bk_base": 0, "bk_small": 1}, trial=trials.get)
    job = SimpleNamespace(eval={"images": True, "seed": 0}, distill={"steps": 480}, reference_seeds=rows,
                          score="fid", noise_seeds=1)
    assert study_free(report, job) == {2}
    assert study_free(report, SimpleNamespace(**{**vars(job), "distill": {"steps": 1920}})) == set()
    assert study_free(report, SimpleNamespace(**{**vars(job), "eval": {"images": True, "seed": 1}})) == set()


def test_a_rung_without_reference_designs_takes_their_seed_noise_from_the_study_the_run_reproduced(tmp_path):
    # bk_small is settled (trial 9, as above); its first-stage seed rows came from bench fidelity's study (the run
    # reproduced it there), so the study's seed scores of bk_small at the rung's budget are the rung's FID noise
    seeds = {"bk_base": PROBE_SEEDS["bk_base"],
             "bk_small": [{"seed": 0, "probe_cfg": 1.2}, {"seed": 0, "kd_seed": 1, "probe_cfg": 1.3,
                                                           "from": "bench fidelity"}]}
    r = _probe_report(tmp_path, PROBE_CASE + [((78.0, 0.86, 7.9), True)], seeds)
    stopped = stopped_references(r, promoted(r))
    assert stopped == {"bk_small": [9]}
    table = {"480": {"g1": [{"kd_seed": 0, "seed": 0, "fid": 30.0, "alignment": 0.5}, {"kd_seed": 0, "seed": 1, "fid": 32.0},
                            {"kd_seed": 1, "seed": 0, "fid": 34.0}, {"kd_seed": 0, "probe_task": 0.1}]}}
    carried = carried_noise(r, stopped, table, 480)
    assert carried == {"bk_small": {"genome": "g1", "metrics": {"latency_ms": 8.0, "latency_cv": 0.0}, "seed_scores": [
        {"seed": 0, "kd_seed": 0, "fid": 30.0, "alignment": 0.5, "from": "bench fidelity"},
        {"seed": 1, "kd_seed": 0, "fid": 32.0, "from": "bench fidelity"},
        {"seed": 0, "kd_seed": 1, "fid": 34.0, "from": "bench fidelity"}]}}
    assert carried_noise(r, stopped, table, 1920) == {}  # the study has no row at that budget
    (tmp_path / "own").mkdir()
    assert carried_noise(_probe_report(tmp_path / "own", PROBE_CASE + [((78.0, 0.86, 7.9), True)]), stopped, table,
                         480) == {}  # seeds trained by the run itself: the study was not shown to be this run's
    url = f"sqlite:///{tmp_path / 'rung.db'}"
    study = optuna.create_study(study_name="s@480", storage=url, directions=["minimize"] * 3)
    study.set_metric_names(["fid", "params", "latency_ms"])
    study.set_user_attr("reference_designs", PROBE_REFS)
    study.set_user_attr("stopped_references", {"s": stopped})
    study.set_user_attr("carried_noise", carried)
    for i, values in enumerate([(31.0, 70.0, 7.0), (40.0, 60.0, 6.0)]):
        study.add_trial(optuna.trial.create_trial(
            values=values, params={"x": float(i)}, distributions={"x": optuna.distributions.FloatDistribution(0, 9)},
            user_attrs={"genome": f"s{i}", "metrics": {"latency_ms": values[2], "latency_cv": 0.0}}))
    rung = build_report(study, url)
    assert rung.noise["fid"].sigma == pytest.approx(2.0) and rung.noise["fid"].seeds == (3,)  # std of 30, 32, 34
    assert rung.noise_measured and not rung.reference_trials
    line = noise_line(rung)
    assert "fid ± 2" in line and "bk_small: settled at the study below and not trained here, every seed from" in line
    study.set_user_attr("carried_noise", {})
    assert "the reference designs bk_small were settled at the study below and not trained to this budget" in \
        noise_line(build_report(study, url))


def test_rung_flags_defaults_and_one_line_errors(tmp_path, monkeypatch, capsys):
    assert default_rungs(120) == (480,) and default_rungs(0) == ()
    assert check_rungs((480, 1920), 120) == (480, 1920)
    for bad in ((120,), (480, 240), (60,)):
        with pytest.raises(BlocksearchError, match="--rungs .*: allowed: increasing KD step counts, each above"):
            check_rungs(bad, 120)
    seen = []
    monkeypatch.setattr(search, "run_search", lambda cfg: seen.append(cfg))
    for args in (["--rungs", "480,1920"], ["--rungs", "none"], ["--rungs", "0"], [], ["--rung-references", "all"]):
        assert main(["run", *args]) == 0
    assert [cfg.rungs for cfg in seen] == [(480, 1920), (), (), None, None]
    assert [cfg.rung_references for cfg in seen[-2:]] == ["open", "all"]
    with pytest.raises(BlocksearchError, match="--rung-references 'x': allowed: open, all"):
        search.resolve(SearchConfig(runs_dir=str(tmp_path), rung_references="x"))
    with pytest.raises(SystemExit) as exit_info:  # argparse's own error: usage, then one line
        main(["run", "--rungs", "lots"])
    assert exit_info.value.code == 2
    assert "--rungs: 'lots': allowed: comma-separated KD step counts, or none" in capsys.readouterr().err
    config = tmp_path / "study.yaml"
    config.write_text("rungs: [480, 1920]\nsteps: 120\n")
    assert main(["run", "--config", str(config)]) == 0 and seen[-1].rungs == (480, 1920)


def test_the_plan_continues_each_rung_from_the_one_below(tmp_path):
    unet = tiny_unet("sd-v1")
    bound = load_space("unet_blocks").bind(topology_of(unet.config))
    cfg = search.resolve(SearchConfig(runs_dir=str(tmp_path), storage=f"sqlite:///{tmp_path / 's.db'}", study="s",
                                      steps=10, rungs=(40, 160)))
    job, attrs = search.trial_job(cfg, resolve_teacher(cfg.teacher), bound)
    assert job.checkpoint and job.cache_steps == 160 and attrs["rungs"] == [40, 160]
    plan = rung_plan(cfg, job, attrs)
    assert [(name, below) for name, below, _, _ in plan] == [("s@40", "s"), ("s@160", "s@40")]
    (_, _, j40, a40), (_, _, j160, a160) = plan
    assert j40.distill["steps"] == 40 and j40.resume_dir == job.students_dir and j40.checkpoint
    assert j160.resume_dir == j40.students_dir and not j160.checkpoint  # nothing continues the last rung
    assert a160["rung"] == {"of": "s", "from": "s@40", "steps": 160} and a160["distill"]["steps"] == 160
    with pytest.raises(BlocksearchError, match="--rungs 5"):
        search.trial_job(search.resolve(SearchConfig(runs_dir=str(tmp_path), steps=10, rungs=(5,))), job.teacher, bound)
    job0, attrs0 = search.trial_job(search.resolve(SearchConfig(runs_dir=str(tmp_path), steps=10, rungs=())),
                                    job.teacher, bound)
    assert not job0.checkpoint and attrs0["rungs"] == [] and rung_plan(cfg, job0, attrs0) == []


def test_a_rung_queues_each_promoted_student_once(tmp_path):
    r = _report(tmp_path, CASE)
    chosen = promoted(r, max_fraction=1.0)
    bound = load_space("unet_blocks").bind(resolve_teacher("toy").topology())
    storage = optuna.storages.get_storage(f"sqlite:///{tmp_path / 'blocksearch.db'}")
    for _ in range(2):  # a resume queues nothing twice
        study = prepare_rung(storage, rung_name("unet_blocks-toy", 800), ("fid", "params", "latency_ms"),
                             ["minimize"] * 3, {"rung": {"steps": 800}}, chosen, bound)
    waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert sorted(t.user_attrs["promoted_from"] for t in waiting) == [0, 1, 2, 3]
    assert {t.user_attrs.get("design") for t in waiting} == {"bk_base", "bk_small", None}
    assert study.study_name == "unet_blocks-toy@800" and study.metric_names == ["fid", "params", "latency_ms"]
    assert sorted(bound.from_params(t.system_attrs["fixed_params"]).id for t in waiting) == sorted(r.trial(n).genome for n in (0, 1, 2, 3))


def test_checkpoints_of_students_that_stop_are_deleted(tmp_path):
    for genome in ("a", "b"):
        for seed in (0, 1):
            folder = checkpoint_dir(tmp_path, genome, seed)
            folder.mkdir(parents=True)
            (folder / "w.bin").write_bytes(b"x" * 100)
        (tmp_path / genome / "unet").mkdir()
    assert checkpoint_dir(tmp_path, "a", 1).name == "kd-checkpoint-seed1"
    assert drop_checkpoints(tmp_path, keep={"a"}) == (1, 200)
    assert checkpoint_dir(tmp_path, "a", 0).is_dir() and checkpoint_dir(tmp_path, "a", 1).is_dir()
    assert not checkpoint_dir(tmp_path, "b", 0).exists() and (tmp_path / "b" / "unet").is_dir()  # the student stays


def test_a_rung_trial_continues_the_checkpoint_below_where_there_is_one(tmp_path):
    genome = Genome.from_id(BK["bk_small"])
    below, here = tmp_path / "below", tmp_path / "here"
    job = TrialJob(resolve_teacher("toy"), "cpu", {}, {}, str(here), 1, 1, checkpoint=True, resume_dir=str(below),
                   cache_steps=480)
    assert trial.kd_checkpoints(job, genome, 0) == {"cache_steps": 480, "save_to": checkpoint_dir(here, genome.id)}
    checkpoint_dir(below, genome.id, 1).mkdir(parents=True)
    (checkpoint_dir(below, genome.id, 1) / CHECKPOINT_FILE).write_text("{}")
    assert trial.kd_checkpoints(job, genome, 1)["resume_from"] == checkpoint_dir(below, genome.id, 1)
    plain = TrialJob(resolve_teacher("toy"), "cpu", {}, {}, str(here), 1, 1)
    assert trial.kd_checkpoints(plain, genome, 0) == {"cache_steps": None}


def test_the_noise_line_says_where_the_other_seeds_came_from(tmp_path, monkeypatch):
    from blocksearch.report.render_noise import noise_line

    assert "bench fidelity" not in noise_line(_probe_report(tmp_path, PROBE_CASE))
    borrowed = {n: [rows[0], rows[1] | {"from": "bench fidelity"}] for n, rows in PROBE_SEEDS.items()}
    monkeypatch.setitem(globals(), "PROBE_SEEDS", borrowed)
    (tmp_path / "b").mkdir()
    r = _probe_report(tmp_path / "b", PROBE_CASE)
    assert r.noise["probe_cfg"].sigma == pytest.approx(0.005 ** 0.5)  # the same rows, the same noise
    assert "the other seeds from bench fidelity's study, which this run's own scores reproduce" in noise_line(r)


def test_an_empty_rung_front_is_not_the_front_to_pick_from(tmp_path):
    """The longest rung's students all below the text alignment floor (``--steps 10``: every 40-step student): the
    last line names the study below, whose front exists, and says why the rung's is empty."""
    from blocksearch.search.console import empty_front_why, pick_line

    url = make_study(tmp_path, name="s")
    blind = {"constraints": {"alignment_floor": 0.5}}  # alignment 0.5 (make_study) against the floor 1.0
    make_study(tmp_path, name="s@40", case=[("COMPLETE", (20.0, 100.0, 10.0), BK["bk_base"], "bk_base", blind),
                                            ("COMPLETE", (25.0, 70.0, 12.0), "L1-1-1_T1-0-1_Mres", None, blind)])
    rung = optuna.load_study(study_name="s@40", storage=url)
    rung.set_user_attr("teacher_metrics", {"alignment": 4.0})
    rung.set_user_attr("constraints", {"min_alignment": 0.25, "max_params": None})
    rung.set_user_attr("distill", {"steps": 40})
    base, top = (build_report(open_study(n, url), url) for n in ("s", "s@40"))
    assert base.front and not top.front
    why = ("all 2 of its students are below the text alignment floor (alignment < 1.000: --min-alignment 0.25 x "
           "the teacher's)")
    assert empty_front_why(top) == why
    assert pick_line([base, top]) == ("the front to pick from: study 's' (200 KD steps) (blocksearch export --study s "
                                      f"--front -o DIR); the longest rung, study 's@40', has an empty front: {why}")
    assert pick_line([base]).startswith("the students trained longest, and the front to pick from: study 's' ")
    assert pick_line([top, top]).startswith("no front to pick from: every study's front is empty; ")
    make_study(tmp_path, name="s@80", case=[])
    assert empty_front_why(build_report(open_study("s@80", url), url)) == "no student was promoted to it"


def test_report_cost_line_names_each_picture_part_and_their_sum():
    from blocksearch.search.console import report_cost

    line = report_cost("s", 12.34, {"diagrams_s": 0.5, "samples_s": 2.0, "artifacts_s": 0.25})
    assert line == "report 's': written in 12.3 s, pictures 2.8 s (diagrams 0.5 s, samples 2.0 s, artifacts 0.2 s)"
    assert report_cost("s", 1.0, {}) == "report 's': written in 1.0 s, pictures 0.0 s"
