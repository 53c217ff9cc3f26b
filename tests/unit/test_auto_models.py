"""The models `auto` predicts device time with (issue 11): cross-talk of partial Hadamard cycles,
curvature from a ladder of steps, plateau noise against averaging."""

from __future__ import annotations

import numpy as np
import pytest

from protocols.auto_models import (
    STEP_GRID,
    PlateauCosts,
    cross_talk,
    ladder_curvature,
    predict_fd,
    predict_hadamard,
    sample_counts,
    upper_sum_of_squares,
)
from protocols.estimators import hadamard_directions


def test_cross_talk_is_the_mean_over_offsets_and_vanishes_for_a_whole_cycle() -> None:
    rng = np.random.default_rng(3)
    g = rng.normal(size=6)
    rows = hadamard_directions(6)
    m = rows.shape[0]
    found = cross_talk(rows, g, noise=0.0)
    for r in (1, 3, 5):
        expected = np.mean(
            [
                float(np.sum((((rows[idx].T @ rows[idx]) / r - np.eye(6)) @ g) ** 2))
                for idx in ((o + np.arange(r)) % m for o in range(m))
            ]
        )
        assert found[r - 1] == pytest.approx(expected)
    assert found[m - 1] == 0.0
    assert found[0] == pytest.approx(5 * float(g @ g))


def test_leftover_rows_past_whole_cycles_leak_diluted_cross_talk() -> None:
    """Noise that one cycle of m rows cannot average enough, but m + 1 rows can: the leftover
    row's cross-talk X(1)/(m + 1)² fits the budget, so m + 1 rows are predicted, not 2m."""
    g = np.array([1.0, -2.0, 0.5])
    rows = hadamard_directions(3)
    m = rows.shape[0]
    cross = cross_talk(rows, g, noise=0.0)
    budget = 10 * float(cross[0])
    c = float(STEP_GRID[-1])  # no curvature: the widest step is the least noisy
    k = budget * (m + 0.5)  # the noise term K/r: above the budget at r = m, below at m + 1
    costs = PlateauCosts((1,), (1,), (2 * c**2 * k / 3,), (0.01,))
    spsa = predict_hadamard(costs, 0.0, cross, 3, budget, 1.0, 0, 1000)
    assert spsa is not None
    assert spsa.repeats == m + 1
    assert spsa.error == pytest.approx(
        k / (m + 1) + cross[0] / (m + 1) ** 2
    )  # one row: every other coordinate leaks


def test_ladder_curvature_recovers_a_cubic_and_sees_small_scale_nonlinearity() -> None:
    """D(h) = g + b·h² exactly: K = Σ b². A device whose bias saturates at large steps (a
    narrower pair shows far more curvature than the widest) gets the narrower estimate."""
    b = np.array([2.0, -1.0, 0.5])
    g = np.array([1.0, 2.0, 3.0])
    steps = [0.05, 0.1, 0.2, 0.4]
    sweeps = [g + b * h**2 for h in steps]
    tiny = [1e-12] * 4
    assert ladder_curvature(steps, sweeps, tiny) == pytest.approx(float(b @ b), rel=1e-4)
    saturating = [g + b * min(h, 0.1) ** 2 for h in steps]  # flat beyond 0.1
    narrow = ladder_curvature(steps, saturating, tiny)
    assert narrow == pytest.approx(float(b @ b), rel=1e-4)  # the 0.05–0.1 pair, not the flat one


def test_upper_sum_of_squares_covers_the_truth_under_noise() -> None:
    """Σ b² for b = 0 and unit noise on 50 coordinates: the bound is ≥ 0 (truth) in at least
    95 % of 400 draws (two SEs of an unbiased estimate)."""
    rng = np.random.default_rng(0)
    covered = [upper_sum_of_squares(rng.normal(size=50), np.ones(50)) >= 0.0 for _ in range(400)]
    assert all(covered)  # clipped at 0: the bound never goes below the truth here
    b = np.full(50, 0.5)
    bounds = [upper_sum_of_squares(b + rng.normal(size=50), np.ones(50)) for _ in range(400)]
    assert np.mean(np.array(bounds) >= float(b @ b)) >= 0.95


def test_plateau_costs_fit_white_plus_floor_and_linear_time() -> None:
    costs = PlateauCosts((1, 2, 4, 8, 16), (1, 16), (1.0 + 0.1, 1.0 / 16 + 0.1), (0.006, 0.021))
    assert costs.variance(4) == pytest.approx(0.25 + 0.1)
    assert costs.seconds(4) == pytest.approx(0.009)
    assert sample_counts(100, 10, settable=True) == (1, 2, 4, 8, 16, 32, 64)
    assert sample_counts(100, 10, settable=False) == (10,)


def test_predictions_pick_fewer_evaluations_for_hadamard_under_noise() -> None:
    """At equal noise and no curvature, a whole Hadamard cycle informs every coordinate with
    every row: for d = 7 (m = 8) it needs about 1/7 of central differences' evaluations once
    averaging dominates (leftover rows past the whole cycles leak almost nothing)."""
    d = 7
    costs = PlateauCosts((1,), (1,), (1.0,), (0.01,))
    rows = hadamard_directions(d)
    cross = cross_talk(rows, np.ones(d), noise=0.0)
    fd = predict_fd(costs, 0.0, d, 1e-2, 1.0, 0, 100_000)
    spsa = predict_hadamard(costs, 0.0, cross, d, 1e-2, 1.0, 0, 100_000)
    assert fd is not None
    assert spsa is not None
    assert spsa.seconds / fd.seconds == pytest.approx(1 / d, rel=0.1)
