"""bench fidelity and bench search on transformer students: one-shot picks and scores, the block-mask stand-in,
the warm start (``--init one-shot``), and the first-stage choice recorded per family and read by the trial."""

import argparse
import dataclasses
import json
import math

import numpy as np
import optuna
import pytest
import torch

import blocksearch.search.selection as selection
from blocksearch.bench import fidelity as F
from blocksearch.bench import search as B
from blocksearch.bench.fidelity import choose_architectures, random_genomes
from blocksearch.bench.predictors_report import predictor_table
from blocksearch.bench.rank_stats import kendall_tau_ci
from blocksearch.errors import BlocksearchError
from blocksearch.families.base import get_family
from blocksearch.families.cost import count_macs, count_params
from blocksearch.families.dit import oneshot
from blocksearch.families.dit.genome import DitGenome, DitTopology
from blocksearch.families.dit.importance import BlockScore
from blocksearch.search import driver
from blocksearch.search.warm_start import ONE_SHOT_FILE, check_init, one_shot_archs
from blocksearch.space import load_space
from blocksearch.study import SearchConfig, prepare_study
from blocksearch.teachers import resolve_teacher

pytestmark = pytest.mark.usefixtures("one_thread")
TOPOLOGY = DitTopology("PixArtTransformer2DModel", (("transformer_blocks", 16),))  # toy-dit's
DIT = get_family("dit")


def table(skip=None, influence=None) -> list[BlockScore]:
    """A hand-made importance table: skip MSE rising with the index but for block 0, the most important."""
    skip = skip or [10.0] + [0.1 * (i + 1) for i in range(1, 16)]
    influence = influence or [1.0 / (i + 1) for i in range(16)]
    rank = lambda v: {i: r for r, i in enumerate(sorted(range(16), key=lambda i: (-v[i], i)), 1)}  # noqa: E731
    sr, ir = rank(skip), rank(influence)
    return [BlockScore("transformer_blocks", i, skip[i], influence[i], sr[i], ir[i]) for i in range(16)]


@pytest.fixture(scope="module")
def bound():
    return load_space("dit_blocks").bind(TOPOLOGY)


def test_one_shot_picks_keep_the_most_important_blocks_at_each_size(bound):
    picks = oneshot.picks(table(), bound, fractions=(0.5, 0.25))
    by = dict(picks)
    assert by["skip_mse@50%"].blocks("transformer_blocks") == (0, 9, 10, 11, 12, 13, 14, 15)  # block 0, then the top 7
    assert by["influence@50%"].blocks("transformer_blocks") == tuple(range(8))  # influence falls with the index
    assert by["skip_mse@25%"].blocks("transformer_blocks") == (0, 13, 14, 15)
    assert all(g in bound for _, g in picks) and len({g for _, g in picks}) == len(picks)
    assert [label for label, _ in picks][:2] == ["skip_mse@50%", "influence@50%"]  # by size first: sizes interleave
    # the named designs are left out of the warm start (influence@50% keeps blocks 0-7: flux_lite)
    warm = one_shot_archs(DIT, table(), bound, (0.5, 0.25))
    assert bound.design("flux_lite") not in [g for _, g in warm] and len(warm) == len(picks) - 1
    with pytest.raises(BlocksearchError, match="one-shot kept fraction 1.5; allowed: 0 < f <= 1"):
        oneshot.picks(table(), bound, fractions=(1.5,))


def test_a_pick_outside_the_space_is_repaired_into_it(tmp_path):
    space = tmp_path / "pinned.yaml"
    space.write_text("name: pinned\nfamily: dit\ngroups:\n  transformer_blocks:\n    kept: [4, 16]\n"
                     "    pin: [first, last]\ndesigns:\n  half: {transformer_blocks: 'drop_span:4-7'}\n")
    pinned = load_space(str(space)).bind(TOPOLOGY)
    (_, genome), = oneshot.picks(table(), pinned, fractions=(0.25,), measures=("influence",))
    assert genome in pinned and genome.blocks("transformer_blocks")[-1] == 15  # pinned last block kept


def test_one_shot_scores_sum_the_removed_blocks_importance():
    genome = DitGenome((("transformer_blocks", tuple(range(12))),))  # removes 12..15
    got = oneshot.scores(table(), genome)
    assert got["oneshot_skip_mse"] == pytest.approx(sum(0.1 * (i + 1) for i in range(12, 16)))
    assert got["oneshot_influence"] == pytest.approx(sum(1.0 / (i + 1) for i in range(12, 16)))


def test_the_block_mask_standin_is_exact_and_additive(tmp_path, monkeypatch):
    monkeypatch.setenv("BLOCKSEARCH_CACHE", str(tmp_path / "cache"))
    config = dict(resolve_teacher("toy-dit").denoiser_config(), num_layers=4)  # toy-dit with 4 blocks: fast MACs
    space = tmp_path / "small.yaml"  # 11 masks: kept 2..4 of 4
    space.write_text("name: small\nfamily: dit\ngroups:\n  transformer_blocks:\n    kept: [2, 4]\n"
                     "designs:\n  first_2: {transformer_blocks: 'first:2'}\n")
    small = load_space(str(space)).bind(DitTopology("PixArtTransformer2DModel", (("transformer_blocks", 4),)))
    family = DIT.for_teacher(config)
    model_class = getattr(__import__("diffusers"), family.model_class)

    def costs(arch):
        with torch.device("meta"):
            model = model_class.from_config(family.student_config(config, arch))
        return count_params(model), count_macs(model, config["sample_size"], family=family)
    four = table()[:4]
    values = oneshot.standin(four, small, costs)
    assert len(values) == len(small) == 11
    for genome in [small.design("first_2"), DitGenome((("transformer_blocks", (1, 3)),)),
                   DitGenome((("transformer_blocks", (0, 2, 3)),))]:
        fid, p, m = values[genome.id]
        assert (p, m) == costs(genome)  # additive over blocks, and exact
        assert fid == pytest.approx(oneshot.scores(four, genome)["oneshot_skip_mse"])


def test_architectures_of_a_transformer_study_are_designs_one_shot_picks_then_random_over_size(bound, monkeypatch):
    kept = lambda g: len(g.blocks("transformer_blocks"))  # noqa: E731 - sizes stand in for params and MACs here
    monkeypatch.setattr(F, "params_table", lambda teacher, bound: kept)
    monkeypatch.setattr(F, "arch_cost", lambda teacher, g: (kept(g), 2 * kept(g)))
    teacher = None
    picks = one_shot_archs(DIT, table(), bound, (0.375, 0.625))
    archs = choose_architectures(bound, teacher, 16, seed=0, one_shot=picks, draws=256)
    sources = [a.source for a in archs]
    n_designs = len(bound.named_designs())
    assert len(archs) == 16 and len({a.genome for a in archs}) == 16
    assert sources == ["design"] * n_designs + ["one-shot"] * len(picks) + ["random"] * (16 - n_designs - len(picks))
    assert [a.genome for a in archs if a.source == "one-shot"] == [g.id for _, g in picks]
    assert archs == choose_architectures(bound, teacher, 16, seed=0, one_shot=picks, draws=256)  # seeded
    kept = sorted(len(DitGenome.from_id(a.genome).blocks("transformer_blocks")) for a in archs if a.source == "random")
    assert kept[0] <= 6 and kept[-1] >= 12  # random masks spread over the size range, not around 8 of 16
    pool = random_genomes(bound, 256, seed=0, any_size=True)
    assert {len(g.blocks("transformer_blocks")) for g in pool} >= set(range(4, 17))


def test_one_shot_scores_are_ranked_once_at_no_kd_cost():
    fid = {"a": 10.0, "b": 20.0, "c": 30.0, "d": 40.0}
    rows = [dict(genome=g, budget=b, seed=0, kd_seed=0, fid=f * (1 + b / 100), alignment=0.9, params=1, macs=1,
                 kd_s=b, eval_s=1.0) for g, f in fid.items() for b in (0, 2, 4)]
    extra = {"oneshot_skip_mse": {"a": 1.0, "b": 3.0, "c": 2.0, "d": 4.0}}
    got = [r for r in predictor_table(rows, [], [0, 2, 4], n_boot=50, extra=extra) if r.predictor == "oneshot_skip_mse"]
    assert [(r.budget, r.cost_s, r.n) for r in got] == [(0, 0.0, 4)]
    assert got[0].tau == pytest.approx(kendall_tau_ci([1, 3, 2, 4], [10, 20, 30, 40], 50)[0]) == pytest.approx(2 / 3)


def test_the_first_stage_choice_is_per_family_and_read_by_the_trial(tmp_path, monkeypatch):
    record = {"predictor": "probe_out", "budget": 30, "tau_text": 0.81, "lo_text": 0.62, "hi_text": 0.9, "n_text": 12,
              "longest": 1920, "meets_target": True, "text_rule": {"key": "probe_cfg", "budget": 30, "ceiling": 0.5}}
    default = dict(record, predictor="probe_cfg", budget=120, text_rule=None)
    monkeypatch.setattr(selection, "MEASURED_DIR", tmp_path)
    monkeypatch.setattr(selection, "SELECTION_SCORE", tmp_path / "selection-score.json")
    (tmp_path / "selection-score.json").write_text(json.dumps(default))
    cfg = driver.resolve(SearchConfig(space="dit_blocks", runs_dir=str(tmp_path / "runs")))
    ref = resolve_teacher(cfg.teacher)
    borrowed = driver.first_stage_of(cfg, ref)  # no transformer study recorded: the U-Net's, said so
    assert (borrowed.score, borrowed.steps) == ("probe_cfg", 120) and "NOT on this one" in borrowed.why
    (tmp_path / DIT.selection_file).write_text(json.dumps(record))
    stage = driver.first_stage_of(cfg, ref)
    assert (stage.score, stage.steps, stage.text_key, stage.guide_ceiling) == ("probe_out", 30, "probe_cfg", 0.5)
    base = driver.first_stage_config(cfg, stage)
    bound, denoiser = driver.bind_space(load_space(cfg.space), ref)
    job, attrs = driver.trial_job(base, ref, bound, denoiser)
    assert (job.score, job.distill["steps"], attrs["score"]) == ("probe_out", 30, "probe_out")  # what the trial runs
    unet = driver.resolve(SearchConfig(runs_dir=str(tmp_path / "runs")))  # the U-Net family's: its own file
    assert driver.first_stage_of(unet, resolve_teacher(unet.teacher)).score == "probe_cfg"
    (tmp_path / DIT.selection_file).write_text(json.dumps(dict(record, predictor="fid", budget=60, text_rule=None)))
    fid = driver.first_stage_config(cfg, driver.first_stage_of(cfg, ref))  # FID chosen: at the study's budget
    assert (fid.score, fid.steps) == ("fid", 60), "the run trained 120 steps where the study chose FID after 60"
    assert driver.trial_job(fid, ref, bound, denoiser)[0].distill["steps"] == 60
    given = driver.resolve(SearchConfig(space="dit_blocks", steps=7, runs_dir=str(tmp_path / "runs")))
    assert driver.first_stage_config(given, driver.first_stage_of(given, ref)).steps == 7  # --steps wins


def test_init_one_shot_enqueues_the_picks_once_after_the_designs(bound, tmp_path):
    storage = optuna.storages.InMemoryStorage()
    cfg = SearchConfig(space="dit_blocks", study="s", objectives=("fid", "params"))
    warm = one_shot_archs(DIT, table(), bound, (0.5,))
    for _ in range(2):  # a resume enqueues nothing twice
        study = prepare_study(storage, cfg, bound, {}, out=None, warm=warm)
    waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert [bound.from_params(t.system_attrs["fixed_params"]) for t in waiting] == [*bound.named_designs().values(), *(g for _, g in warm)]
    assert [t.user_attrs.get("warm") for t in waiting[-len(warm):]] == [label for label, _ in warm]
    check_init("one-shot", DIT)
    with pytest.raises(BlocksearchError, match="--init one-shot: the unet family has no one-shot block importance"):
        check_init("one-shot", get_family("unet"))
    with pytest.raises(BlocksearchError, match="--init 'best'; allowed: designs, one-shot"):
        driver.resolve(SearchConfig(space="dit_blocks", init="best", runs_dir=str(tmp_path)))


def test_bench_search_from_a_fidelity_report_with_and_without_the_warm_start(bound, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BLOCKSEARCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(B, "count_macs", lambda model, size, family: 3 * count_params(model))  # fast; exactness: above
    report = tmp_path / "fidelity-toy-dit"
    report.mkdir()
    (report / ONE_SHOT_FILE).write_text(json.dumps({"blocks": oneshot.to_rows(table()), "archs": {}}))
    designs = list(bound.named_designs().values())
    (report / "measured.csv").write_text("# measured by: a test\ngenome,fid,params,latency_ms\n" + "".join(
        f"{g.id},{100 - 5 * len(g.blocks('transformer_blocks'))},{len(g.blocks('transformer_blocks'))},\n"
        for g in designs))
    args = argparse.Namespace(sampler="tpe", trials="12", seeds=1, table=None, teacher="toy", space="dit_blocks",
                              report=str(report), init="designs,one-shot")
    assert B.cmd_bench_search(args) == 0
    out = capsys.readouterr().out
    assert f"table: {report / 'measured.csv'} ({len(designs)} measured architectures" in out
    assert "summed one-shot skip MSE of the removed blocks" in out
    for name in ("tpe", "tpe+one-shot", "random+one-shot"):
        assert f"| {name} | 12 |" in out
    assert "hypervolume ratio tpe+one-shot / random" in out
    warm = [g for _, g in one_shot_archs(DIT, table(), bound)]
    values = B.search_once(B.Table({g.id: (1.0, 1.0, 1.0) for g in bound}, "flat"), bound, "tpe",
                           len(designs) + len(warm) + 1, 0, warm)
    assert len(values) == len(designs) + len(warm) + 1
    with pytest.raises(BlocksearchError, match="--init 'warm': allowed: designs, one-shot, or both"):
        B.cmd_bench_search(argparse.Namespace(**{**vars(args), "init": "warm"}))
    assert math.isfinite(B.front_hypervolume(B.tables(argparse.Namespace(**{**vars(args), "teacher": "toy-dit"}))[2],
                                             [designs[0].id]))


def test_run_init_one_shot_picks_from_the_teachers_block_importance(bound, monkeypatch, tmp_path):
    seen = {}

    def importance(spec, teacher, device, data, cache_dir, resolution):
        seen["args"] = (spec, device, data)
        return table()
    monkeypatch.setattr(driver, "importance_table", importance)
    cfg = driver.resolve(SearchConfig(space="dit_blocks", init="one-shot", runs_dir=str(tmp_path)))
    ref = resolve_teacher(cfg.teacher)
    job, _ = driver.trial_job(cfg, ref, bound)
    lines = []
    picks = driver.warm_picks(cfg, ref, job, bound, type("Out", (), {"write": lambda self, t: lines.append(t)})())
    assert picks == one_shot_archs(DIT, table(), bound) and seen["args"] == ("toy-dit", "cpu", "toy")
    assert f"--init one-shot: {len(picks)} one-shot picks after the named designs" in "".join(lines)
    assert driver.warm_picks(dataclasses.replace(cfg, init="designs"), ref, job, bound, None) == []


def test_nondominated_is_the_pareto_front_of_a_large_table_fast():
    from blocksearch.report.pareto import normalised_hypervolume, pareto_mask  # noqa: PLC0415 - this test's only
    rng = np.random.default_rng(0)
    x = rng.random((300, 3))
    x[5] = x[7]  # a duplicate counts once
    front = B.nondominated(x)
    assert sorted(map(tuple, front)) == sorted(set(map(tuple, x[pareto_mask(x)])))
    lo, hi = x.min(0), x.max(0)
    assert normalised_hypervolume(front, lo, hi) == pytest.approx(normalised_hypervolume(x, lo, hi))
