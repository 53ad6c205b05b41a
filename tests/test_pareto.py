"""pareto.py: dominance, the front (non-dominated sorting) and exact hypervolume on hand-worked cases."""

import math
from itertools import product

import numpy as np
import pytest

from blocksearch.report.pareto import (claim, dominates, dominates_beyond_noise, dominates_despite_noise, hypervolume,
                                noise_margins, non_dominated_sort, pareto_front, pareto_mask)

# Hand-worked 2-D case (both minimised): B and E are equal, D is dominated by B (and by E), F trades a
# worse first objective for a better second one, so it stays on the front.
A, B, C, D, E, F = (1, 4), (2, 2), (3, 1), (3, 3), (2, 2), (5, 0.5)


def test_dominance_and_sorting():
    assert dominates((1, 2), (1, 3)) and not dominates((1, 2), (1, 2)) and not dominates((0, 3), (1, 2))
    assert non_dominated_sort([(1, 1), (2, 2), (1, 1), (3, 0), (3, 3)]) == [[0, 2, 3], [1], [4]]
    assert pareto_front([]) == [] and non_dominated_sort([]) == []


def test_front_of_the_hand_worked_case():
    points = [A, B, C, D, E, F]
    assert non_dominated_sort(points) == [[0, 1, 2, 4, 5], [3]]
    assert pareto_front(points) == [0, 1, 2, 4, 5]
    assert pareto_mask(np.array(points)).tolist() == [True, True, True, False, True, True]
    with pytest.raises(ValueError, match="2-D"):
        pareto_mask(np.array([1.0, 2.0]))


def test_hypervolume_of_the_hand_worked_case():
    # reference (6, 5); the staircase sorted by the first objective, one rectangle per front point:
    # A (6-1)*(5-4) = 5, B (6-2)*(4-2) = 8, C (6-3)*(2-1) = 3, F (6-5)*(1-0.5) = 0.5; D and E add nothing
    assert hypervolume([A, B, C, D, E, F], (6, 5)) == 16.5
    assert hypervolume([A, B, C, F], (6, 5)) == 16.5
    # 3-D, reference (4, 4, 4), by inclusion-exclusion over the boxes [p, r]:
    # |P1| = 3*2*2 = 12, |P2| = 2*3*2 = 12, |P3| = 1*1*3 = 3; pairwise 8, 2, 2; all three 2: 12+12+3-8-2-2+2 = 17
    assert hypervolume([(1, 2, 2), (2, 1, 2), (3, 3, 1)], (4, 4, 4)) == 17.0


def test_hypervolume_hand_cases():
    assert hypervolume([(1, 3), (2, 2), (3, 1)], (4, 4)) == 6.0  # staircase 1 + 2 + 3
    # boxes 3*3*1 + 2*2*3 - overlap 2*2*1 = 17; (3,3,3) is dominated and (5,0,0) lies beyond r
    assert hypervolume([(1, 1, 3), (2, 2, 1), (3, 3, 3), (5, 0, 0)], (4, 4, 4)) == 17.0
    assert hypervolume([], (1, 1)) == 0.0
    with pytest.raises(ValueError):
        hypervolume([(1, 2)], (1, 2, 3))


def test_hypervolume_matches_optuna():
    compute = pytest.importorskip("optuna._hypervolume").compute_hypervolume
    rng = np.random.default_rng(0)
    for d in (2, 3):
        pts = rng.random((25, d))
        assert hypervolume(pts.tolist(), (1.1,) * d) == pytest.approx(compute(pts, np.full(d, 1.1)), abs=1e-12)


# Dominance beyond noise, by hand: (fid, params), fid with sigma 1 / (2 sqrt 2), so that its margin z sqrt(2) sigma
# is 1.0 at z = 2; params exact (sigma 0, margin 0). The reference b = (10, 100).
SIGMA = (1 / (2 * math.sqrt(2)), 0.0)


def test_dominance_beyond_noise_by_hand():
    b = (10.0, 100.0)
    assert noise_margins(SIGMA) == pytest.approx((1.0, 0.0)) and noise_margins((1.0,), z=1.0) == (math.sqrt(2),)
    # 0.5 lower FID, same params: dominates on raw values, but within the FID margin of 1.0
    assert dominates((9.5, 100.0), b) and not dominates_beyond_noise((9.5, 100.0), b, SIGMA)
    # 1.5 lower FID: beyond noise
    assert dominates_beyond_noise((8.5, 100.0), b, SIGMA)
    # 0.8 higher FID (worse, within noise) and 10 fewer params (exact, better): a domination beyond noise that
    # the raw rule misses; 1.2 higher FID is worse beyond noise: none
    assert not dominates((10.8, 90.0), b) and dominates_beyond_noise((10.8, 90.0), b, SIGMA)
    assert not dominates_beyond_noise((11.2, 90.0), b, SIGMA)
    # a wider z: 1.5 lower FID is within 2 x the margin
    assert not dominates_beyond_noise((8.5, 100.0), b, SIGMA, z=4.0)


def test_dominance_beyond_zero_noise_is_dominance():
    values = (0.0, 1.0, 2.0)
    for a, b in product(product(values, repeat=3), repeat=2):
        assert dominates_beyond_noise(a, b, (0.0, 0.0, 0.0)) == dominates(a, b), (a, b)


def test_dominance_despite_noise_by_hand():
    """SIGMA's FID margin is 1.0, params exact: ``a`` dominates ``b`` for sure only when a's FID + 1.0 is still
    no worse than b's; a student within that margin of its dominator may be on the front once the noise is out."""
    b = (10.0, 100.0)
    assert dominates_despite_noise((8.5, 100.0), b, SIGMA)  # 1.5 lower FID: beyond the margin
    assert not dominates_despite_noise((9.5, 100.0), b, SIGMA) and dominates((9.5, 100.0), b)  # within it
    assert dominates_despite_noise((9.0, 90.0), b, SIGMA)  # exactly the margin lower, fewer params
    assert not dominates_despite_noise((10.0, 90.0), b, SIGMA)  # same FID: b may be the better one in truth
    for a, c in product(product((0.0, 1.0, 2.0), repeat=3), repeat=2):
        assert dominates_despite_noise(a, c, (0.0, 0.0, 0.0)) == dominates(a, c), (a, c)


def test_a_claim_is_on_quality_on_cost_only_or_none_by_hand():
    """SIGMA: FID margin 1.0 (a quality objective), params exact (a cost); b = (FID 10, 100 params)."""
    b, quality = (10.0, 100.0), (True, False)
    assert claim((8.5, 100.0), b, SIGMA, quality) == "quality"  # FID 1.5 lower: beyond noise
    assert claim((8.5, 90.0), b, SIGMA, quality) == "quality"
    assert claim((9.5, 90.0), b, SIGMA, quality) == "cost only"  # FID 0.5 lower, within noise; 10 fewer params
    assert claim((10.8, 90.0), b, SIGMA, quality) == "cost only"  # FID 0.8 higher, within noise
    assert claim((11.2, 90.0), b, SIGMA, quality) is None  # FID 1.2 higher: worse beyond noise, fewer params or not
    assert claim((9.5, 100.0), b, SIGMA, quality) is None  # better within noise only: nothing to claim
    assert claim((8.5, 101.0), b, SIGMA, quality) is None  # one more param (exact): worse beyond noise
    assert claim((8.5, 100.0), b, SIGMA, (False, False)) == "cost only"  # no quality objective: cost only
    exact = (0.0, 0.0)
    assert claim((9.9, 100.0), b, exact, quality) == "quality" and claim((10.0, 99.0), b, exact, quality) == "cost only"
    # two quality objectives (FID; alignment negated to be minimised, margin 0.1): FID within noise, alignment
    # 0.2 better beyond its margin -> quality; alignment 0.2 worse -> none, however many fewer params
    sigmas, both = (SIGMA[0], 0.1 / (2 * math.sqrt(2)), 0.0), (True, True, False)
    assert claim((10.5, -0.7, 90.0), (10.0, -0.5, 100.0), sigmas, both) == "quality"
    assert claim((9.5, -0.3, 50.0), (10.0, -0.5, 100.0), sigmas, both) is None
    for a, c in product(product((9.0, 10.0, 11.0), repeat=2), repeat=2):  # a claim is dominance beyond noise
        assert (claim(a, c, SIGMA, quality) is not None) == dominates_beyond_noise(a, c, SIGMA), (a, c)
