"""Report: the computed front, dominance and hypervolume against a hand-computed study; the files; bad input."""

import csv
import json
import math
from itertools import combinations

import optuna
import pytest

from blocksearch.cli import main
from blocksearch.report.render import write_report
from blocksearch.families.unet.words import architecture_diff, architecture_table
from blocksearch.report.compute import build_report
from blocksearch.teachers import resolve_teacher
from blocksearch.families.unet.genome import Genome
from blocksearch.study import open_study
from tests.conftest import BK, CASE, NOISE_CASE, OBJECTIVES, SEED_SCORES, make_study

optuna.logging.set_verbosity(optuna.logging.WARNING)
def box(p):
    return math.prod(1.0 - x for x in p)


def union(points):
    """Hand inclusion-exclusion over boxes [p, 1]^3 (the normalised hypervolume)."""
    total = 0.0
    for k in range(1, len(points) + 1):
        for subset in combinations(points, k):
            total += (-1) ** (k + 1) * box([max(c) for c in zip(*subset)])
    return total


# -- architectures against the teacher ------------------------------------------------------------
def test_architecture_diff_in_diffusers_names():
    topo = resolve_teacher("toy").topology()
    assert architecture_diff(Genome((2, 2, 2, 2), (1, 1, 1, 0), "cross_attn"), topo) == "teacher (nothing removed)"
    assert architecture_diff(Genome.from_id(BK["bk_tiny"]), topo) == (
        "down_blocks.0: 1 of 2 layers; up_blocks.3: 2 of 3; down_blocks.1: 1 of 2 layers; up_blocks.2: 2 of 3; "
        "down_blocks.2: 1 of 2 layers; up_blocks.1: 2 of 3; mid_block removed; down_blocks.3/up_blocks.0 removed")
    assert architecture_diff(Genome((2, 2, 2, 2), (0, 1, 1, 0), "resnet"), topo) == (
        "down_blocks.0/up_blocks.3: attention removed; mid_block: attention removed")
    table = dict((m, (t, s)) for m, t, s in architecture_table(Genome.from_id(BK["bk_tiny"]), topo))
    assert table["down_blocks.3"] == ("2 x resnet", "removed") and table["up_blocks.0"][1] == "removed"
    assert table["up_blocks.1"] == ("3 x (resnet + transformer depth 1)",
                                    "2 x (resnet + transformer depth 1) (student up_blocks.0)")


# -- the computed report -----------------------------------------------------------------------------
def test_report_front_dominance_hypervolume(tmp_path):
    url = make_study(tmp_path)
    r = build_report(open_study("unet_blocks-toy", url), url)
    assert r.objectives == tuple(OBJECTIVES) and r.front == (2, 3, 1)  # sorted by FID
    assert [t.rank for t in r.trials] == [1, 0, 0, 0, 2, None, None]
    assert r.counts == {"COMPLETE": 5, "PRUNED": 1, "FAIL": 1}
    assert r.reference_trials == {"bk_base": 0, "bk_small": 1}  # bk_tiny never ran
    assert [(d.searched, d.reference) for d in r.dominations] == [(2, "bk_base")]
    assert r.dominations[0].improvement == pytest.approx((0.1, 0.1, 0.1))
    ref = (1.1 * 13.0, 1.1 * 120.0, 1.1 * 12.0)  # 1.1 x the worst completed value per objective
    assert r.reference_point == pytest.approx(ref)
    norm = {n: tuple(v / q for v, q in zip(CASE[n][1], ref)) for n in range(5)}
    assert r.hypervolume == pytest.approx(union([norm[1], norm[2], norm[3]]), abs=1e-12)
    assert r.reference_hypervolume == pytest.approx(union([norm[0], norm[1]]), abs=1e-12)
    assert r.trial(6).error == "non-finite loss at step 7" and r.trial(5).values is None
    assert r.trial(1).architecture.endswith("mid_block removed")


def test_cache_hits_and_infeasible_trials_are_not_ranked(tmp_path):
    case = CASE + [("COMPLETE", (9.0, 90.0, 9.0), CASE[2][2], None, {"cached_from": 2}),
                   ("COMPLETE", (1.0, 1.0, 1.0), "L1-1-2-1_T1-1-1-0_Mattn", None, {"constraints": {"params_budget": 5.0}}),
                   ("FAIL", None, "L1-1-2-1_T1-1-1-0_Mnone", None, {"skipped": True})]
    url = make_study(tmp_path, case=case)
    r = build_report(open_study("unet_blocks-toy", url), url)
    assert r.front == (2, 3, 1) and r.trial(7).rank is None and r.trial(8).rank is None
    assert r.trial(7).cached_from == 2 and not r.trial(8).feasible and r.trial(9).skipped
    assert r.reference_point == pytest.approx((14.3, 132.0, 13.2))  # the unranked trials do not move r
    out = write_report("unet_blocks-toy", url, tmp_path / "report")
    rows = list(csv.DictReader(open(out / "trials.csv")))
    assert rows[7]["cached_from"] == "2" and rows[8]["feasible"] == "False" and rows[8]["rank"] == ""
    text = (out / "README.md").read_text()
    assert "1 cache hits" in text and "1 sampler repeats" in text
    assert "10 trials (7 complete, 1 fail, 1 pruned)" in text  # the skipped repeat (also FAIL) is counted apart


def test_report_explicit_reference_point(tmp_path):
    url = make_study(tmp_path)
    r = build_report(open_study("unet_blocks-toy", url), url, reference_point=(20, 200, 20))
    pts = [tuple(v / q for v, q in zip(CASE[n][1], (20, 200, 20))) for n in (1, 2, 3)]
    assert r.hypervolume == pytest.approx(union(pts), abs=1e-12)


def test_report_files(tmp_path):
    url = make_study(tmp_path)
    out = write_report("unet_blocks-toy", url, tmp_path / "report")
    assert {p.name for p in out.iterdir()} == {"index.html", "pareto.png", "trials.csv", "README.md", "diagrams"}
    rows = list(csv.DictReader(open(out / "trials.csv")))
    assert [r["state"] for r in rows] == [s for s, *_ in CASE]
    assert rows[2]["genome"] == CASE[2][2] and float(rows[2]["fid"]) == 9.0 and rows[2]["on_front"] == "True"
    assert rows[6]["error"] == "non-finite loss at step 7" and rows[0]["timings.kd_s"] == "3.0"
    assert float(rows[4]["metrics.macs"]) == 5e6
    readme = (out / "README.md").read_text()
    assert "![Pareto front](pareto.png)" in readme
    assert "| 2 |  | 9 | 90 | 9.00 ms |" in readme  # the front table, first row (lowest FID)
    assert "trial 2 dominates bk_base on quality, fid better (fid 10.0% lower, params 10.0% lower, " \
           "latency_ms 10.0% lower)" in readme
    assert "**bk_tiny** (`L1-1-1_T1-1-1_Mnone`): no completed trial" in readme
    assert "device: `cpu`" in readme and "blocksearch run --space unet_blocks" in readme
    assert (out / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    page = (out / "index.html").read_text()
    assert "cdn.plot.ly" not in page.split("</script>", 1)[1] and "plotly.js v" in page  # inline, no CDN


def test_no_completed_trials_says_so(tmp_path):
    url = make_study(tmp_path, case=[c for c in CASE if c[0] != "COMPLETE"])
    out = write_report("unet_blocks-toy", url, tmp_path / "report")
    assert "No completed trials yet" in (out / "README.md").read_text()
    assert "No completed trials yet" in (out / "index.html").read_text()
    assert len(list(csv.DictReader(open(out / "trials.csv")))) == 2


def test_a_written_report_holds_no_absolute_path_of_this_machine(tmp_path):
    """Reports travel: student_dir, the storage URL, the space file and every path in the study's settings
    are written relative (to blocksearch's repository, or to the report's folder), never absolute."""
    from blocksearch.report.render import REPOSITORY

    url = make_study(tmp_path)
    study = open_study("unet_blocks-toy", url)
    study.set_user_attr("command", f"blocksearch run --teacher {tmp_path / 'teacher'} --runs-dir {tmp_path}/runs")
    study.set_user_attr("eval", dict(prompts=64, cache_dir=str(tmp_path / "cache"),
                                     judge=str(REPOSITORY / "blocksearch" / "toy" / "assets" / "judge.safetensors")))
    out = write_report("unet_blocks-toy", url, tmp_path / "report")
    for name in ("trials.csv", "README.md", "index.html"):
        text = (out / name).read_text()
        assert str(tmp_path) not in text and str(REPOSITORY) not in text, name
    rows = list(csv.DictReader(open(out / "trials.csv")))
    assert rows[2]["student_dir"] == f"../students/{CASE[2][2]}/unet"
    readme = (out / "README.md").read_text()
    assert "in `sqlite:///../blocksearch.db`" in readme and "(search_spaces/unet_blocks.yaml)" in readme
    assert "--teacher ../teacher --runs-dir ../runs" in readme and "cache_dir=../cache" in readme
    assert "judge=blocksearch/toy/assets/judge.safetensors" in readme


def test_cli_report(tmp_path, capsys):
    url = make_study(tmp_path)
    assert main(["report", "--study", "unet_blocks-toy", "--storage", url, "-o", str(tmp_path / "r")]) == 0
    assert str(tmp_path / "r") in capsys.readouterr().out.strip().splitlines()[-1]
    assert main(["report", "--study", "other", "--storage", url]) == 2
    assert "unknown study 'other'" in capsys.readouterr().err


def test_speed_and_memory_of_the_teacher_and_the_front_and_infeasible_students(tmp_path):
    """The report shows U-Net step and end-to-end latency and memory for the teacher and each front student,
    and lists students that the text-aware rule made infeasible (a failed constraint) apart."""
    case = [c if i != 4 else (*c, {"constraints": {"alignment_floor": 0.3}}) for i, c in enumerate(CASE)]
    url = make_study(tmp_path, case)
    study = optuna.load_study(study_name="unet_blocks-toy", storage=url)
    study.set_user_attr("teacher_metrics", dict(params=8.6e6, latency_ms=40.0, e2e_ms=800.0, memory_mb=34.5,
                                                weights_mb=32.8, alignment=0.8, fid=26.0))
    r = build_report(study, url)
    assert 4 not in r.front and not r.trial(4).feasible
    write_report("unet_blocks-toy", url, tmp_path / "rep")
    md = (tmp_path / "rep" / "README.md").read_text()
    assert "| teacher | 8.60M | 40.00 ms | 800.00 ms | 34.5 MB | 32.8 MB |" in md
    speed = md.split("## Speed and memory")[1].split("##")[0]
    assert all(f"trial {n}" in speed for n in r.front) and speed.count("\n| ") == len(r.front) + 2
    infeasible = md.split("## Infeasible students")[1].split("##")[0]
    assert "| 4 | L2-2-2-2_T0-1-1-0_Mattn |" in infeasible
    page = (tmp_path / "rep" / "index.html").read_text()
    assert "id='speed'" in page and "plot-alignment" in page


# -- noise: dominance beyond the seed spread of the reference designs ---------------------------------
def test_dominations_beyond_noise_and_within_it(tmp_path):
    url = make_study(tmp_path, case=NOISE_CASE, seed_scores=SEED_SCORES)
    r = build_report(open_study("unet_blocks-toy", url), url)
    assert r.noise_measured and r.noise_z == 2.0
    assert r.noise["fid"].sigma == pytest.approx(math.sqrt(0.5)) and r.noise["fid"].seeds == (2, 2)
    assert r.noise["alignment"].sigma == pytest.approx(math.sqrt(0.0002)) and r.noise["params"].sigma == 0.0
    assert r.noise["latency_ms"].sigma == pytest.approx(math.sqrt(math.pi / 4 * (0.1 ** 2 + 0.08 ** 2)))
    assert [(d.searched, d.reference, d.beyond_noise) for d in r.dominations] == [
        (2, "bk_base", False), (3, "bk_base", True), (5, "bk_base", True)]
    assert r.dominations[1].improvement == pytest.approx((-0.1, 0.1, 0.1))  # FID 10% worse, within noise
    # trial 5 is 2.5 lower in FID (beyond the margin of 2.0): on quality; trial 3 wins on params and latency with FID
    # 1.0 higher, within noise: on cost only; trial 2 (FID 1.0 lower, the rest equal) claims nothing
    assert [d.kind for d in r.dominations] == [None, "cost only", "quality"]
    assert r.trial(0).seed_scores == tuple(SEED_SCORES["bk_base"]) and r.trial(2).seed_scores == ()


def test_without_seed_scores_the_noise_is_unknown_and_the_raw_rule_stays(tmp_path):
    url = make_study(tmp_path)  # an older study: no reference design carries seed scores
    r = build_report(open_study("unet_blocks-toy", url), url)
    assert not r.noise_measured and r.noise["fid"].sigma is None
    assert [(d.searched, d.reference, d.beyond_noise, d.kind) for d in r.dominations] == [
        (2, "bk_base", None, "quality")]
    readme = (write_report("unet_blocks-toy", url, tmp_path / "report") / "README.md").read_text()
    assert "Seed noise: not measured for fid" in readme and "(noise not measured: raw values)" in readme
    assert "  - trial 2 dominates bk_base on quality, fid better (fid 10.0% lower," in readme
    assert " ± " not in readme


def test_the_report_shows_spreads_and_splits_dominations_by_noise(tmp_path):
    url = make_study(tmp_path, case=NOISE_CASE, seed_scores=SEED_SCORES)
    out = write_report("unet_blocks-toy", url, tmp_path / "report")
    readme = (out / "README.md").read_text()
    assert "| 5 |  | 7.5 ± 0.7071 | 95 | 9.50 ms | 6.00M | 0.5 ± 0.01414 |" in readme  # the front, FID first
    assert "**bk_base** (trial 0: fid 10 ± 0.7071, params 100, latency_ms 10.00 ms) is dominated beyond noise by " \
           "2 searched design(s) (1 on quality, 1 on cost only):" in readme
    refs = readme.split("## Against the BK-SDM reference designs")[1].split("\n## ")[0]
    assert "fid ± 0.7071, alignment ± 0.01414 (pooled standard deviation of one score over 2 reference design(s) " \
           "x 2 seeds, KD and generation)" in refs and "z = 2" in refs and "params exact" in refs
    assert "on cost only when only a cost is (every quality difference within noise)" in refs
    assert "  - trial 5 dominates bk_base on quality, fid better beyond noise (fid 25.0% lower, params 5.0% lower, " \
           "latency_ms 5.0% lower):" in refs
    assert "  - trial 3 dominates bk_base on cost only (params, latency_ms); fid within noise (fid 10.0% higher " \
           "(within noise), params 10.0% lower, latency_ms 10.0% lower):" in refs
    assert refs.index("  - trial 5 dominates") < refs.index("  - trial 3 dominates")  # quality claims first
    assert "  - within noise, not a claim: trial 2 (fid 10.0% lower (within noise)):" in refs
    assert "**bk_small** (trial 1: fid 12 ± 0.7071, params 80, latency_ms 8.00 ms): no searched design dominates " \
           "it beyond noise." in refs
    page = (out / "index.html").read_text()
    assert "7.5 ± 0.7071" in page and "id='noise'" in page and "z = 2" in page
    rows = list(csv.DictReader(open(out / "trials.csv")))
    assert [r["fid"] for r in json.loads(rows[0]["seed_scores"])] == [10.0, 11.0] and rows[2]["seed_scores"] == ""


def test_a_quality_loss_beyond_noise_is_no_claim_whatever_the_cost(tmp_path):
    # trial 6: FID 12.5, far fewer params, lower latency. Against bk_base (FID 10): 2.5 worse, beyond the margin of
    # 2.0: no claim, not even one within noise. Against bk_small (FID 12): 0.5 worse, within noise: on cost only.
    case = NOISE_CASE + [("COMPLETE", (12.5, 60.0, 6.0), "L1-1-1_T0-1-1_Mres", None)]
    url = make_study(tmp_path, case=case, seed_scores=SEED_SCORES)
    r = build_report(open_study("unet_blocks-toy", url), url)
    assert [(d.searched, d.reference, d.kind) for d in r.dominations if d.searched == 6] == [
        (6, "bk_small", "cost only")]
    refs = (write_report("unet_blocks-toy", url, tmp_path / "rep") / "README.md").read_text().split(
        "## Against the BK-SDM reference designs")[1].split("\n## ")[0]
    assert "**bk_small** (trial 1: fid 12 ± 0.7071, params 80, latency_ms 8.00 ms) is dominated beyond noise by 1 " \
           "searched design(s) (0 on quality, 1 on cost only):" in refs
    assert "  - trial 6 dominates bk_small on cost only (params, latency_ms); fid within noise (fid 4.2% higher " \
           "(within noise), params 25.0% lower, latency_ms 25.0% lower):" in refs
    assert "trial 6 dominates bk_base" not in refs and "trial 6 (" not in refs


def test_a_reference_design_taken_from_the_fidelity_study_is_named_in_the_report(tmp_path):
    """trial.from_study: the report says which reference designs' quality scores are bench fidelity's, where the
    run reproduced them, and that no student of them was written; a study without one says nothing of it."""
    case = [CASE[0] + ({"from_study": {"checked_at": 30, "steps": 120}},), *CASE[1:]]
    url = make_study(tmp_path, case=case)
    r = build_report(open_study("unet_blocks-toy", url), url)
    assert r.trial(0).from_study == {"checked_at": 30, "steps": 120} and r.trial(1).from_study is None
    text = (write_report("unet_blocks-toy", url, tmp_path / "report") / "README.md").read_text()
    assert ("**Taken from bench fidelity's study**: bk_base (trial 0, reproduced after 30 KD steps)" in text
            and "KD seed 0 after 120 steps" in text and "bk_small (trial" not in text)
    (tmp_path / "plain").mkdir()
    plain = make_study(tmp_path / "plain")
    assert "bench fidelity's study" not in (write_report("unet_blocks-toy", plain, tmp_path / "r2") / "README.md"
                                            ).read_text()
