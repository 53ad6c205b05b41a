"""The search's first-stage score (selection.py): bench fidelity's choice, read by the default search."""

import json

import pytest

from blocksearch.search import driver as search
from blocksearch.errors import BlocksearchError
from blocksearch.search.selection import first_stage, read_selection
from blocksearch.settings import PROBE_KEYS, SELECTION_SCORE
from blocksearch.study import SearchConfig

RECORD = {"predictor": "probe_cfg", "budget": 30, "tau_text": 0.84, "lo_text": 0.61, "hi_text": 0.97, "n_text": 9,
          "longest": 1920, "meets_target": True}


def test_auto_takes_the_recorded_choice_for_the_toy_and_fid_for_a_real_teacher(tmp_path):
    path = tmp_path / "selection-score.json"
    path.write_text(json.dumps(RECORD))
    stage = first_stage("auto", toy=True, steps=None, path=path)
    assert (stage.score, stage.steps) == ("probe_cfg", 30) and "tau +0.84 [+0.61, +0.97]" in stage.why
    assert stage.objectives(("fid", "params", "latency_ms")) == ("probe_cfg", "params", "latency_ms")
    assert first_stage("auto", toy=True, steps=60, path=path).steps == 60  # --steps wins
    assert (stage.guide_ceiling, stage.text_key) == (None, "probe_guide")  # no text rule recorded
    path.write_text(json.dumps(RECORD | {"text_rule": {"key": "probe_cfg", "budget": 30, "ceiling": 0.6}}))
    stage = first_stage("auto", toy=True, steps=None, path=path)
    assert (stage.guide_ceiling, stage.text_key) == (0.6, "probe_cfg")  # the rule's own score and ceiling
    assert first_stage("auto", toy=True, steps=120, path=path).guide_ceiling is None  # measured at 30 steps only
    path.write_text(json.dumps(RECORD))
    assert first_stage("auto", toy=False, steps=None, path=path).score == "fid"
    assert first_stage("auto", toy=True, steps=None, path=tmp_path / "none.json").score == "fid"
    path.write_text(json.dumps(RECORD | {"predictor": "combined"}))  # a score no trial computes alone
    assert first_stage("auto", toy=True, steps=None, path=path).score == "fid"
    assert first_stage("probe_out", toy=False, steps=None, path=path).score == "probe_out"
    with pytest.raises(BlocksearchError, match="--score 'clip'; allowed: auto, fid, probe_out"):
        first_stage("clip", toy=True, steps=None, path=path)


def test_the_default_search_ranks_its_first_stage_by_the_score_the_table_chose(tmp_path):
    record = read_selection(SELECTION_SCORE)
    assert record is not None, "bench fidelity's choice is committed with the measured tables"
    cfg = search.resolve(SearchConfig(runs_dir=str(tmp_path)))  # the defaults of `blocksearch run`
    stage = first_stage(cfg.score, toy=True, steps=cfg.steps)
    base = search.first_stage_config(cfg, stage)
    assert stage.score == record["predictor"]
    if record["predictor"] in PROBE_KEYS:
        assert base.objectives == (record["predictor"], "params", "latency_ms") and base.steps == record["budget"]
        assert base.rungs == (480,)  # FID after 480 KD steps ranks the rung
    else:
        assert base.objectives == cfg.objectives
