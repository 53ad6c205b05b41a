"""The search's first-stage score: which quality score ranks the trials before the rungs, and why.

``bench fidelity`` measures every cheap predictor against FID after a 16x longer KD run (Kendall tau over the
text-following architectures) and writes its choice to ``blocksearch/measured/selection-score.json``: the
cheapest one with tau >= 0.8 (interval low end >= 0.6) at <= 25 % of the long budget, else the best one
measured or, by the one-standard-error rule, a cheaper one whose tau trails it by less than that gap's noise.
With ``--score auto`` the toy teacher's search takes that choice (its score and its KD budget); a real teacher
keeps FID (the table is the toy teacher's; nothing has validated a cheaper score there yet). The choice is per
denoiser family (``Family.selection_file``: ``selection-score.json`` for U-Nets, ``selection-score-dit.json`` for
transformers), since a score that ranks U-Net students need not rank transformer ones; a family whose own study is
not recorded yet takes the default family's choice, and says so.
FID at the longer budgets stays the rungs' score.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from blocksearch.errors import BlocksearchError
from blocksearch.families.base import get_family
from blocksearch.settings import MEASURED_DIR, PROBE_KEYS, SELECTION_SCORE

SCORES = ("fid", *PROBE_KEYS)  # the scores a trial can compute on its own
CHOICES = ("auto", *SCORES)


@dataclass(frozen=True)
class FirstStage:
    """The first stage's quality objective, its KD budget (None: DistillConfig's default) and why."""

    score: str
    steps: int | None
    why: str
    guide_ceiling: float | None = None  # a probe-ranked stage's text rule: text_key <= this (None: no rule)
    text_key: str = "probe_guide"  # the probe score of the text rule (bench fidelity's text_rule)

    def objectives(self, objectives: tuple[str, ...]) -> tuple[str, ...]:
        """The base study's objectives: ``fid`` replaced by the first-stage score."""
        return tuple(self.score if o == "fid" else o for o in objectives)


def read_selection(path: Path = SELECTION_SCORE) -> dict | None:
    """``bench fidelity``'s recorded choice, or None where none was recorded."""
    return json.loads(path.read_text()) if path.is_file() else None


def selection_path(family: str | None = None) -> Path:
    """Where ``bench fidelity`` records its choice for a family's teachers (the default family's: None)."""
    return SELECTION_SCORE if family is None else MEASURED_DIR / get_family(family).selection_file


def first_stage(score: str, toy: bool, steps: int | None, path: Path | None = None,
                family: str | None = None) -> FirstStage:
    """The first stage of a search with ``--score score`` (and ``--steps steps`` if given) on a teacher of
    ``family`` (its own recorded choice, ``selection_path``; ``path`` overrides it)."""
    if score not in CHOICES:
        raise BlocksearchError(f"--score {score!r}; allowed: {', '.join(CHOICES)}")
    if score != "auto":
        return FirstStage(score, steps, f"--score {score}")
    borrow = path is None and family is not None and selection_path(family) != SELECTION_SCORE
    path = path or selection_path(family)
    record = read_selection(path) if toy else None
    borrowed = ""
    if record is None and toy and borrow and SELECTION_SCORE.is_file():
        record = read_selection(SELECTION_SCORE)  # this family's study is not recorded yet: the default family's
        borrowed = (f"; measured on the {record.get('teacher', 'toy')} teacher's family, NOT on this one ({path.name} "
                    f"not recorded yet: bench fidelity --teacher {get_family(family).toy_teacher} writes it)")
        path = SELECTION_SCORE
    if record is None or record.get("predictor") not in SCORES:
        why = ("FID (a real teacher: no cheaper score has been validated on its kind)" if not toy else
               f"FID ({path.name} names no score a trial computes)")
        return FirstStage("fid", steps, why)
    tau = f"tau {record['tau_text']:+.2f} [{record['lo_text']:+.2f}, {record['hi_text']:+.2f}]"
    best = record.get("best")
    verdict = ("meets the target" if record.get("meets_target") else
               "the best measured, below the target (tau >= 0.8)" if not best else
               f"below the target (tau >= 0.8); the best measured, {best['predictor']} after {best['budget']} steps "
               f"(tau {best['tau_text']:+.2f}), leads by {best['gap']:+.2f}, within one standard error "
               f"({best['gap_se']:.2f}), at {best['cost_s'] / max(record['cost_s'], 1e-9):.1f}x the cost")
    why = (f"{record['predictor']} after {record['budget']} KD steps: {tau} against FID after {record['longest']} "
           f"steps over {record['n_text']} text-following architectures ({verdict}; bench fidelity, {path.name}"
           f"{borrowed})")
    rule = record.get("text_rule") or {}
    return FirstStage(record["predictor"], steps if steps is not None else int(record["budget"]), why,
                      rule.get("ceiling") if rule.get("budget") == (steps or record["budget"]) else None,
                      rule.get("key", "probe_guide"))
