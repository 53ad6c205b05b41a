"""Who goes on to a rung: successive halving's cut (Jamieson & Talwalkar, AISTATS 2016) on noisy scores.

The students on or within noise of a study's front, and the reference designs it left open, at most a quarter of
its feasible searched students (Hyperband's coupling, Li et al., JMLR 2018), past that cap by non-dominated rank and
hypervolume contribution (SMS-EMOA's selection, Beume et al., EJOR 2007, as MO-ASHA uses it, Schmucker et al. 2021).
The rung loop that uses them is :mod:`blocksearch.search.rungs`.
"""

from __future__ import annotations

import math

import numpy as np

from blocksearch.errors import BlocksearchError
from blocksearch.report.compute import ParetoReport, TrialPoint
from blocksearch.report.noise import quality_mask
from blocksearch.report.pareto import dominates, dominates_despite_noise, normalised_hypervolume

RUNG_FACTOR = 4  # the default rung: 4 x the search's KD steps (the fidelity ladder's step from 120 to 480)
# A rung takes at most this share of the feasible searched students below it (the open reference designs go on
# beside them): 1 / RUNG_FACTOR, Hyperband's coupling (Li et al., JMLR 2018; eta = 4 as in ASHA's experiments): a
# rung's students x its budget is the stage's below, so each rung costs about as much KD as the first stage.
MAX_FRACTION = 1 / RUNG_FACTOR
REFERENCES = ("open", "all")  # run --rung-references: which reference designs a rung always continues


def settled(report: ParetoReport) -> set[int]:
    """The reference designs' trials whose comparison this study already settles: a searched student dominates
    them beyond noise *on quality* (``pareto.claim``: better beyond noise in a quality objective, worse beyond
    noise in none) at the study's budget. Training them longer would re-test a verdict already reached on the
    stage's own noise; the rung's places go to what is still open (the default, ``--rung-references open``)."""
    return {d.reference_trial for d in report.dominations if d.beyond_noise and d.kind == "quality"}


def stopped_references(report: ParetoReport, chosen: list[TrialPoint]) -> dict[str, list[int]]:
    """The reference designs of ``report`` that ``chosen`` leaves behind because the study settled them
    (:func:`settled`): name -> the searched trials that dominate it on quality beyond noise."""
    left = settled(report) - {t.number for t in chosen}
    return {name: sorted({d.searched for d in report.dominations if d.reference_trial == n and d.beyond_noise
                          and d.kind == "quality"})
            for name, n in report.reference_trials.items() if n in left}


def whole_rounds(cap: int, lanes: int) -> int:
    """``cap`` places rounded down to whole rounds of ``lanes`` trials in parallel (unchanged at or below one
    round): the last, partial round would hold the rung for a whole trial's time while the other lanes idle."""
    return cap if lanes <= 1 or cap <= lanes else lanes * (cap // lanes)


def promoted(report: ParetoReport, max_fraction: float = MAX_FRACTION, references: str = "open",
             lanes: int = 1, free: frozenset[int] | set[int] = frozenset()) -> list[TrialPoint]:
    """The students of ``report`` that go on to the next rung, by trial number: successive halving's cut
    (Jamieson & Talwalkar, AISTATS 2016) on noisy scores.

    1. Candidates: the reference designs' students that the study left open (``references`` "open": not
       :func:`settled`; "all": every one), and every feasible completed student on or within noise of the
       front: one that no other dominates even with both moved by their noise margins
       (``pareto.dominates_despite_noise``, on the noise measured for each objective, the first-stage score's
       included; any objective's noise unmeasured: the plain front). A settled reference design is an ordinary
       student here: it goes on only from within noise of the front.
    2. Cap: floor(``max_fraction`` x the feasible searched students) -- successive halving's cut among the
       students the search proposed; the reference designs go on beside them, as the comparison --, the places
       trained rounded down to whole rounds of the ``lanes`` trials the cluster runs in parallel
       (:func:`whole_rounds`), but never below the reference designs plus one searched student (a rung that
       re-trained the baselines alone would test nothing the search found). A reference design in ``free`` (its
       rung scores come from ``bench fidelity``'s study, rungs.study_free) takes no lane: it is not counted in
       the rounds. Candidates within the cap all go on.
    3. Past the cap the reference designs stay (the comparison at the longer budget), and the searched candidates
       fill the places left by the report's non-dominated sorting rank (Deb et al. 2002, over every feasible
       student: one that a reference design dominates ranks behind one that nothing dominates); a rank with more
       candidates than places left gives them by hypervolume contribution (:func:`by_contribution`), ties by the
       quality objective (the first objective that is not a cost, ``noise.COSTS``: fid, or the first stage's
       probe score), then by trial number."""
    if not 0 < max_fraction <= 1:
        raise BlocksearchError(f"max_fraction {max_fraction}: allowed: a share of the feasible students in (0, 1]")
    sign = [1.0 if d == "minimize" else -1.0 for d in report.directions]
    points = {t.number: tuple(s * v for s, v in zip(sign, t.values)) for t in report.ranked}
    sigmas = [report.noise[o].sigma if o in report.noise else None for o in report.objectives]
    known = all(s is not None for s in sigmas)

    def beaten(n: int) -> bool:
        return any(m != n and (dominates_despite_noise(p, points[n], sigmas) if known else dominates(p, points[n]))
                   for m, p in points.items())

    if references not in REFERENCES:
        raise BlocksearchError(f"--rung-references {references!r}; allowed: {', '.join(REFERENCES)}")
    refs = set(report.reference_trials.values()) - (settled(report) if references == "open" else set())
    chosen = [t for t in report.ranked if t.number in refs or not beaten(t.number)]
    kept = [t for t in chosen if t.number in refs]
    untrained = sum(t.number in free for t in kept)
    trained = len(kept) - untrained  # reference designs that take a lane
    searched = sum(t.number not in report.reference_trials.values() for t in report.ranked)
    places = math.floor(max_fraction * searched + 1e-9)
    cap = max(whole_rounds(places + trained, lanes), trained + 1) + untrained
    if len(chosen) <= cap:
        return chosen
    q = next((i for i, quality in enumerate(quality_mask(report.objectives)) if quality), 0)
    others = sorted((t for t in chosen if t.number not in refs), key=lambda t: (t.rank, points[t.number][q], t.number))
    taken = list(kept)
    for rank in sorted({t.rank for t in others}):
        tier = [t for t in others if t.rank == rank]
        room = cap - len(taken)
        taken += tier if len(tier) <= room else by_contribution(tier, taken, points, room)
        if len(taken) >= cap:
            break
    return sorted(taken, key=lambda t: t.number)


def by_contribution(tier: list[TrialPoint], taken: list[TrialPoint], points: dict, room: int) -> list[TrialPoint]:
    """``room`` of ``tier`` (in its order: quality first), greedily by hypervolume contribution to what is
    ``taken`` (SMS-EMOA's selection, Beume et al., EJOR 2007; MO-ASHA's, Schmucker et al. 2021): each pick the
    one that adds the most to the hypervolume of the minimised objectives, normalised to [0, 1] over all the
    report's ranked students (``points``), reference 1.1; a tie, by the order of ``tier``. A front's best-quality
    students are often near each other in cost: this sends its spread to the longer budget instead."""
    everything = np.array(list(points.values()), dtype=float)
    lower, upper = everything.min(axis=0), everything.max(axis=0)
    picked, rest = [], list(tier)
    base = [points[t.number] for t in taken]
    while rest and len(picked) < room:
        current = [*base, *(points[t.number] for t in picked)]
        volume = normalised_hypervolume(np.array(current), lower, upper) if current else 0.0
        gains = [normalised_hypervolume(np.array([*current, points[t.number]]), lower, upper) - volume for t in rest]
        best = max(range(len(rest)), key=lambda i: (round(gains[i], 12), -i))  # float dust is a tie
        picked.append(rest.pop(best))
    return picked
