"""``bench fidelity``: the architectures it picks, what a rerun still has to do, and a small run end to end."""

import json

import pytest
import torch
from safetensors.torch import save_file

import blocksearch.bench.search as B
from blocksearch.bench.fidelity import (ATTENTION_FREE, SPREAD, Arch, choose_architectures, mix_cell, pending,
                                        pending_ladders, pick_random, random_genomes)
from blocksearch.families.unet.mixes import MIX_CELLS
from blocksearch.cli import main
from blocksearch.families.unet.genome import Genome
from blocksearch.space import load_space
from blocksearch.families.unet.topology import topology_of
from tests.conftest import make_tiny_teacher

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def bound(tmp_path):
    return load_space("unet_blocks").bind(topology_of(make_tiny_teacher(tmp_path).unet.config))


def test_random_picks_spread_over_size_with_attention_free_ones(bound):
    pool = random_genomes(bound, 512, seed=0)
    assert len(pool) > 200 and all(g in bound for g in pool)
    assert [g.id for g in random_genomes(bound, 512, seed=0)] == [g.id for g in pool]  # seeded
    size = lambda g: sum(g.layers) * 10 + sum(g.depth)  # noqa: E731 - a stand-in for params
    picks = pick_random(pool, size, 9)
    assert len({g.id for g in picks}) == 9 and sum(g.attention_free for g in picks) >= ATTENTION_FREE
    assert not Genome.from_id("L1-1-1_T0-0-0_Mattn").attention_free  # the mid block's transformer counts
    sizes = sorted(map(size, pool))
    assert size(picks[0]) <= sizes[len(sizes) // 4] and size(picks[-1]) >= sizes[3 * len(sizes) // 4]  # spread


def test_choose_architectures_designs_first_then_random(tmp_path, bound, monkeypatch):
    monkeypatch.setenv("BLOCKSEARCH_CACHE", str(tmp_path / "cache"))
    teacher_unet = make_tiny_teacher(tmp_path).unet
    archs = choose_architectures(bound, teacher_unet, 8, seed=1, draws=64)
    assert [a.design for a in archs[:3]] == ["bk_base", "bk_small", "bk_tiny"]
    assert [a.source for a in archs] == ["design"] * 3 + ["random"] * 5 and len({a.genome for a in archs}) == 8
    assert sum(Genome.from_id(a.genome).attention_free for a in archs) >= ATTENTION_FREE
    assert all(a.params > 0 and a.macs > 0 for a in archs)
    assert choose_architectures(bound, teacher_unet, 8, seed=1, draws=64) == archs
    assert [a.design for a in choose_architectures(bound, teacher_unet, 2, seed=1)] == ["bk_base", "bk_small"]
    front = [Genome.from_id(archs[5].genome), bound.design("bk_tiny")]  # a study's front: new Genomes only
    with_front = choose_architectures(bound, teacher_unet, 4, seed=1, front=front, draws=64)
    assert [(a.genome, a.source) for a in with_front][2:] == [(archs[2].genome, "design"), (archs[5].genome, "front")]


def test_past_the_spread_the_study_grows_by_mixes_and_keeps_what_it_had(tmp_path, bound, monkeypatch):
    monkeypatch.setenv("BLOCKSEARCH_CACHE", str(tmp_path / "cache"))
    teacher_unet = make_tiny_teacher(tmp_path).unet
    small = choose_architectures(bound, teacher_unet, SPREAD, seed=0, draws=256)
    grown = choose_architectures(bound, teacher_unet, SPREAD + 12, seed=0, draws=256)
    assert grown[:SPREAD] == small  # extending a study keeps its architectures
    mixes = grown[SPREAD:]
    assert [a.source for a in mixes] == ["mix"] * 12 and len({a.genome for a in grown}) == SPREAD + 12
    cells = [mix_cell(Genome.from_id(a.genome), bound) for a in mixes]
    assert cells == list(MIX_CELLS)  # one per cell: first stage's layers x innermost stage x mid-block kind
    half = cells[:6]  # a study grown 6 at a time stays balanced: every factor's levels equally often
    assert sum(c[0] for c in half) == 3 and sum(c[1] for c in half) == 3
    assert sorted(c[2] for c in half) == sorted(["none", "resnet", "cross_attn"] * 2)


def test_named_architectures_join_after_the_chosen_ones_once(tmp_path, bound, monkeypatch):
    from blocksearch.bench.fidelity import named_architectures
    from blocksearch.errors import BlocksearchError

    monkeypatch.setenv("BLOCKSEARCH_CACHE", str(tmp_path / "cache"))
    teacher_unet = make_tiny_teacher(tmp_path).unet
    chosen = choose_architectures(bound, teacher_unet, 3, seed=0, draws=64)  # the three designs
    extra = "L2-1-1_T1-1-1_Mnone,L1-1-1-1_T1-1-1-0_Mnone, L2-1-1_T1-1-1_Mnone"  # bk_small and a repeat: once
    named = named_architectures(bound, teacher_unet, extra, chosen)
    assert [(a.genome, a.source) for a in named] == [("L2-1-1_T1-1-1_Mnone", "named")] and named[0].params > 0
    assert named_architectures(bound, teacher_unet, None, chosen) == []
    with pytest.raises(BlocksearchError, match="--also L9-9-9_T1-1-1_Mnone: not an architecture of this space"):
        named_architectures(bound, teacher_unet, "L9-9-9_T1-1-1_Mnone", chosen)


def test_pending_leaves_out_what_is_done():
    archs = [Arch("A", None, "random", 1, 1), Arch("B", "bk_tiny", "design", 1, 1)]
    rows = [dict(genome="A", budget=b, seed=s) for b in (0, 5) for s in (0, 1)] + [dict(genome="B", budget=5, seed=1)]
    work = pending(archs, [5, 0], [0, 1], rows)
    assert [(a.genome, todo) for a, todo in work] == [("B", [(0, [0, 1]), (5, [0])])]


def test_more_kd_seeds_climb_the_studied_architectures_only():
    archs = [Arch("A", None, "random", 1, 1), Arch("N", None, "named", 1, 1)]
    rows = [dict(genome=g, budget=b, seed=s) for g in "AN" for b in (0, 5) for s in (0, 1)]
    work = pending_ladders(archs, [0, 5], [0, 1], rows, kd_seeds=[0, 1])
    # A's KD seed 1 climbs to 5 (no budget 0: surgery has no KD seed) at the first generation seed; --also's N none
    assert [(a.genome, k, todo) for a, k, todo in work] == [("A", 1, [(5, [0], False)])]
    assert pending_ladders(archs, [0, 5], [0, 1], [], kd_seeds=[0, 1])[-1][:2] == (archs[1], 0)


def test_full_seed_archs_take_the_extra_kd_seed_to_the_longest_budget():
    archs = [Arch("A", None, "random", 1, 1), Arch("B", None, "random", 1, 1)]
    rows = [dict(genome=g, budget=b, seed=s) for g in "AB" for b in (0, 5, 20) for s in (0, 1)]
    rows += [dict(genome=g, kd_seed=1, budget=5, seed=0) for g in "AB"]
    # KD seed 1 stopped at 5 on both; listing B takes B's (only) on to 20, the longest budget
    assert pending_ladders(archs, [0, 5, 20], [0, 1], rows, kd_seeds=[0, 1], extra_budgets=[5]) == []
    work = pending_ladders(archs, [0, 5, 20], [0, 1], rows, kd_seeds=[0, 1], extra_budgets=[5],
                           full_archs=frozenset({"B"}))
    assert [(a.genome, k, todo) for a, k, todo in work] == [("B", 1, [(20, [0], False)])]


@pytest.fixture
def toy_teacher_folder(tmp_path):
    """A toy-topology pipeline folder with a judge (random seeded weights), as tests/integration builds it."""
    from blocksearch.toy import models as M
    from blocksearch.toy.assets import JUDGE_FILE
    from blocksearch.toy.build import make_pipeline
    from blocksearch.toy.judge import ToyJudge

    torch.manual_seed(0)
    tokenizer = M.make_tokenizer()
    pipe = make_pipeline(M.make_vae(), tokenizer, M.make_text_encoder(tokenizer), M.make_unet())
    pipe.save_pretrained(tmp_path / "teacher", safe_serialization=True)
    save_file({k: v.contiguous() for k, v in ToyJudge().state_dict().items()}, tmp_path / "teacher" / JUDGE_FILE)
    return "teacher"


def test_cli_runs_resumes_and_writes_no_absolute_path(tmp_path, toy_teacher_folder, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BLOCKSEARCH_CACHE", str(tmp_path / "cache"))
    args = ["bench", "fidelity", "--teacher", toy_teacher_folder, "--archs", "3", "--budgets", "0,1,2", "--seeds",
            "0,1", "--eval-prompts", "4", "--boot", "200", "--out", "out", "--csv", "summary.csv"]
    assert main(args + ["--workers", "1"]) == 0
    out = capsys.readouterr().out
    rows = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 18 and {(r["budget"], r["seed"]) for r in rows} == {(b, s) for b in (0, 1, 2) for s in (0, 1)}
    assert {r["design"] for r in rows} == {"bk_base", "bk_small", "bk_tiny"} and all(r["kid"] is not None for r in rows)
    kd = {(r["genome"], r["budget"]): r["kd_s"] for r in rows}
    assert all(kd[g, 0] == 0 < kd[g, 1] < kd[g, 2] for g, _ in kd)  # cumulative KD seconds
    assert "cheapest budget whose FID ranking matches the 2-step ranking" in out
    probes = [json.loads(line) for line in (tmp_path / "out" / "probes.jsonl").read_text().splitlines()]
    assert sorted((p["design"], p["budget"]) for p in probes) == sorted((d, b) for d in ("bk_base", "bk_small", "bk_tiny")
                                                                         for b in (0, 1))  # every budget but the longest
    assert all(p["probe_out"] > 0 and p["probe_guide"] > 0 and p["kd_seed"] == 0 for p in probes)
    assert "| probe_cfg | 0 |" in (tmp_path / "out" / "predictors.md").read_text()
    written = ["index.md", "fidelity.csv", "results.jsonl", "settings.json", "short_vs_long.png"]
    assert all((tmp_path / "out" / f).is_file() for f in written)
    table = (tmp_path / "blocksearch" / "measured" / "fidelity-toy.csv").read_text()  # bench search's table
    assert table.startswith("# measured by: blocksearch bench fidelity") and "FID at 2 KD steps" in table
    assert len(B.read_table(tmp_path / "blocksearch" / "measured" / "fidelity-toy.csv").values) == 3
    summary = (tmp_path / "summary.csv").read_text()
    assert summary.startswith("# measured by: blocksearch bench fidelity") and "0,fid,score," in summary
    for text in [summary] + [(tmp_path / "out" / f).read_text() for f in written[:4]]:
        assert str(tmp_path) not in text and "/tmp" not in text and str(tmp_path.home()) not in text

    results = (tmp_path / "out" / "results.jsonl").read_text()
    assert main(args + ["--workers", "0"]) == 0  # nothing left: trains and scores nothing
    assert "nothing to train or score" in capsys.readouterr().out
    assert (tmp_path / "out" / "results.jsonl").read_text() == results
    assert main(args + ["--workers", "0", "--kd-seeds", "0,1", "--full-seed-archs", "L9-9-9_T1-1-1_Mnone"]) == 2
    assert "--full-seed-archs L9-9-9_T1-1-1_Mnone: not one of the study's architectures" in capsys.readouterr().err
    assert (tmp_path / "out" / "results.jsonl").read_text() == results  # nothing trained

    tiny = [r for r in rows if r["design"] == "bk_tiny" and r["budget"] == 2]  # lost rows and checkpoint: redone
    (tmp_path / "out" / "results.jsonl").write_text("".join(
        json.dumps(r) + "\n" for r in rows if not (r["design"] == "bk_tiny" and r["budget"] == 2)))
    for kd_file in (tmp_path / "cache" / "bench" / "fidelity").glob(f"*/{tiny[0]['genome']}/2/kd.json"):
        kd_file.unlink()
    assert main(args + ["--report-only"]) == 0  # a run in progress: summarised as it stands, nothing trained
    assert "2 of 3 ladders complete" in capsys.readouterr().out
    assert "2 of 3 ladders reached 2 steps" in (tmp_path / "out" / "index.md").read_text()
    assert len((tmp_path / "out" / "results.jsonl").read_text().splitlines()) == 16
    assert main(args + ["--workers", "0"]) == 0
    assert "2 (architecture, budget, seed) to score and 0 to probe in 1 ladders" in capsys.readouterr().out
    again = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()[-2:]]
    assert [r["fid"] for r in again] == pytest.approx([r["fid"] for r in tiny], rel=1e-6)  # continued from step 1
