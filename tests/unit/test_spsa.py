"""SPSA's Hadamard directions and resample schedules, and second-order SPSA (SPSA2), on quadratic
landscapes whose value, gradient and Hessian are exact.

The landscape is f = ½ Σ λ_i z_i², z = θ − x*, λ log-spaced from 1 to the condition number, with
additive white noise σ per evaluation. On a quadratic a central difference along any direction
is exact, so SPSA's only errors are cross-talk and measurement noise, which the tests predict.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
import scipy.linalg
from pydantic import ValidationError

from hil.core import FloatArray
from protocols.base import Objective
from protocols.estimators import SPSA, SPSA2, hadamard_directions
from protocols.optimizers import SGD
from protocols.tasks import MinimizeOutputTask
from simulators.landscape import LandscapeDevice

from recording import RecordingObjective


def landscape(
    dim: int = 5, noise: float = 0.0, condition: float = 10.0, seed: int = 0, model_seed: int = 0
) -> RecordingObjective:
    settings = LandscapeDevice.Settings(
        dim=dim, noise=noise, condition=condition, model_seed=model_seed
    )
    return RecordingObjective(LandscapeDevice(settings, seed=seed), MinimizeOutputTask())


def device_of(objective: Objective) -> LandscapeDevice:
    assert isinstance(objective.device, LandscapeDevice)
    return objective.device


def roundtrip(state: dict[str, Any]) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(json.dumps(state))
    return loaded


THETA5 = np.array([0.4, -1.1, 1.8, -0.3, 0.9])


# -- Hadamard directions -------------------------------------------------------------------------


@pytest.mark.parametrize("dim", [1, 2, 3, 4, 7, 8, 15, 16, 33])
def test_hadamard_rows_are_balanced_and_orthogonal(dim: int) -> None:
    rows = hadamard_directions(dim)
    m = rows.shape[0]
    assert rows.shape == (m, dim)
    assert m & (m - 1) == 0  # a power of 2
    assert m >= dim + 1 > m // 2  # the smallest ≥ d + 1
    assert set(np.unique(rows)) <= {-1.0, 1.0}
    np.testing.assert_array_equal(rows.sum(axis=0), 0.0)  # orthogonal to the all-ones column
    np.testing.assert_array_equal(rows.T @ rows, m * np.eye(dim))


def test_a_hadamard_cycle_gives_the_exact_gradient_of_a_quadratic() -> None:
    """Over the 8 rows of H_8 (d = 5) Σ_r Δ_rj Δ_ri = 8 δ_ij, so the mean of the estimates
    Σ_j g_j Δ_rj Δ_ri is g exactly (float rounding only). Random ±1 directions leave cross-talk:
    E‖mean − g‖² = (d − 1)‖g‖²/8 over 8 estimates."""
    objective = landscape()
    g = device_of(objective).true_gradient(THETA5)
    hadamard = SPSA(SPSA.Settings(c=0.1, directions="hadamard", measure_loss=False))
    cycle = np.array([hadamard.estimate(objective, THETA5).gradient for _ in range(8)])
    # y = O(10), (y⁺ − y⁻)/(2c_k) with c_k ≥ 0.08: rounding ≲ 1e-13
    np.testing.assert_allclose(cycle.mean(axis=0), g, rtol=0, atol=1e-10)
    assert hadamard.row == 8
    # the directions really were the rows: recovered from the points they were applied at
    plus = np.array(objective.points[0::2])
    steps = np.array([hadamard.perturbation(k) for k in range(8)])
    directions = (plus - THETA5) / steps[:, None]
    np.testing.assert_allclose(directions, hadamard_directions(5), atol=1e-9)
    # resamples = 8 covers the cycle inside one estimate
    whole = SPSA(SPSA.Settings(directions="hadamard", resamples=8)).estimate(objective, THETA5)
    np.testing.assert_allclose(whole.gradient, g, rtol=0, atol=1e-10)

    rademacher = SPSA(SPSA.Settings(c=0.1, measure_loss=False), seed=4)
    random = np.array([rademacher.estimate(objective, THETA5).gradient for _ in range(8)])
    rms = math.sqrt((5 - 1) / 8) * float(np.linalg.norm(g))
    assert np.linalg.norm(random.mean(axis=0) - g) > 0.1 * rms


def test_hadamard_cycle_means_carry_only_measurement_noise() -> None:
    """Noise σ, fixed c (γ = 0), d = 5, m = 8. Per estimate the noise on ĝ_i is
    (n⁺ − n⁻)/(2cΔ_i), variance σ²/(2c²); a cycle mean has E‖ē − g‖² = dσ²/(2c²m) with the
    cross-talk cancelled, whereas 8 Rademacher estimates have ((d − 1)‖g‖² + dσ²/(2c²))/8.
    Each mean squared error is compared with its prediction within 4 standard errors of the
    mean over the 400 cycles (SE from the spread of the per-cycle values)."""
    sigma, c, dim, m, cycles = 0.1, 0.1, 5, 8, 400
    predictions = {}
    g = device_of(landscape()).true_gradient(THETA5)
    predictions["hadamard"] = dim * sigma**2 / (2 * c**2 * m)
    predictions["rademacher"] = ((dim - 1) * float(g @ g) + dim * sigma**2 / (2 * c**2)) / m
    for seed, directions in enumerate(("hadamard", "rademacher")):
        objective = landscape(noise=sigma, seed=10 + seed)
        spsa = SPSA.Settings.model_validate(
            {"c": c, "gamma": 0.0, "directions": directions, "measure_loss": False}
        )
        estimator = SPSA(spsa, seed=20 + seed)
        errors = []
        for _ in range(cycles):
            estimates = np.array([estimator.estimate(objective, THETA5).gradient for _ in range(m)])
            errors.append(float(np.sum((estimates.mean(axis=0) - g) ** 2)))
        mean, se = np.mean(errors), np.std(errors, ddof=1) / math.sqrt(cycles)
        assert abs(mean - predictions[directions]) < 4 * se, (directions, mean, se)
    assert predictions["hadamard"] < predictions["rademacher"] / 100


@pytest.mark.parametrize("directions", ["hadamard", "rademacher"])
def test_a_resumed_spsa_asks_for_the_same_next_points(directions: str) -> None:
    settings = SPSA.Settings.model_validate({"directions": directions, "resamples": 3})
    first = landscape()
    original = SPSA(settings, seed=1)
    for _ in range(2):
        original.estimate(first, THETA5)
    state = roundtrip(original.state_dict())
    if directions == "hadamard":
        assert state["row"] == 6
    resumed = SPSA(settings, seed=2)
    resumed.load_state_dict(state)
    second = landscape()
    first.points.clear()
    for _ in range(3):
        a, b = original.estimate(first, THETA5), resumed.estimate(second, THETA5)
        np.testing.assert_array_equal(a.gradient, b.gradient)
        assert a.extras == b.extras
    np.testing.assert_array_equal(np.array(first.points), np.array(second.points))
    assert resumed.state_dict() == original.state_dict()
    if directions == "hadamard":  # rows 6, 7, then round to 0: consecutive rows of the cycle
        rows = hadamard_directions(5)
        c0 = original.perturbation(2)
        np.testing.assert_allclose((second.points[1] - THETA5) / c0, rows[6], atol=1e-9)
        np.testing.assert_allclose((second.points[5] - THETA5) / c0, rows[0], atol=1e-9)


def test_a_state_saved_before_hadamard_directions_still_loads() -> None:
    old = SPSA(seed=3)
    state = old.state_dict()
    del state["row"]
    spsa = SPSA(SPSA.Settings(directions="hadamard"), seed=4)
    spsa.load_state_dict(state)
    assert spsa.row == 0
    with pytest.raises(ValueError, match=">= 0"):
        spsa.load_state_dict({**state, "row": -1})


# -- resample schedules --------------------------------------------------------------------------


def test_the_resample_schedule_sets_the_evaluations_of_each_estimate() -> None:
    objective = landscape(noise=0.1)
    spsa = SPSA(SPSA.Settings.model_validate({"resamples": {"0": 1, "2": 3, "5": 2}}), seed=0)
    assert spsa.settings.resamples == {0: 1, 2: 3, 5: 2}
    expected = [1, 1, 3, 3, 3, 2, 2, 2]
    for k, n in enumerate(expected):
        assert spsa.resamples() == n
        est = spsa.estimate(objective, THETA5)
        assert est.evaluations == 2 * n + 1, k
        assert est.extras["resamples"] == n
        assert (est.stderr is None) == (n == 1)
    assert SPSA(SPSA.Settings(resamples=4)).resamples(10**6) == 4


@pytest.mark.parametrize(
    ("resamples", "message"),
    [
        (0, ">= 1"),
        ({1: 2}, "from estimate 0"),
        ({0: 1, -3: 2}, "keys must be >= 0"),
        ({0: 1, 10: 0}, "counts must be >= 1"),
        ({}, "from estimate 0"),
    ],
)
def test_bad_resample_schedules_are_refused(resamples: object, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        SPSA.Settings.model_validate({"resamples": resamples})


# -- SPSA on a noisy quadratic -------------------------------------------------------------------


def test_spsa_is_unbiased_on_a_noisy_quadratic_with_the_predicted_spread() -> None:
    """d = 10, σ = 0.1. On a quadratic E ĝ = g exactly; E‖ĝ − g‖² = (d − 1)‖g‖² + dσ²/(2c_k²).
    Mean: each coordinate within 3.5 standard errors (10 coordinates: family-wise false-alarm
    rate ≈ 10 × 4.7e-4 ≈ 0.5%). Spread: the mean squared error within 4 SE of the prediction."""
    objective = landscape(dim=10, noise=0.1, condition=5.0, seed=31)
    theta = np.linspace(-1.5, 1.5, 10)
    g = device_of(objective).true_gradient(theta)
    spsa = SPSA(SPSA.Settings(c=0.1, measure_loss=False), seed=32)
    n = 3000
    estimates = [spsa.estimate(objective, theta) for _ in range(n)]
    grads = np.array([e.gradient for e in estimates])
    stderr = grads.std(axis=0, ddof=1) / math.sqrt(n)
    z = (grads.mean(axis=0) - g) / stderr
    assert np.max(np.abs(z)) < 3.5, z
    squared = np.sum((grads - g) ** 2, axis=1)
    ck = np.array([e.extras["c_k"] for e in estimates])
    predicted = np.mean(9 * float(g @ g) + 10 * 0.1**2 / (2 * ck**2))
    assert abs(squared.mean() - predicted) < 4 * squared.std(ddof=1) / math.sqrt(n)


# -- SPSA2 ---------------------------------------------------------------------------------------


def hessian_sample(f: Any, theta: FloatArray, c: float, d1: FloatArray, d2: FloatArray) -> Any:
    """Spall's four-point Hessian sample, written out independently of the estimator."""
    bracket = (f(theta + c * (d1 + d2)) - f(theta + c * d1)) - (
        f(theta + c * (-d1 + d2)) - f(theta - c * d1)
    )
    return bracket / (2 * c**2) * (np.outer(d1, d2) + np.outer(d2, d1)) / 2


def test_spsa2_averages_four_point_samples_and_preconditions_after_the_delay() -> None:
    """Noise-free, so every measured value is the exact f: rebuild Δ₁, Δ₂ from the points,
    the Hessian samples, their mean H̄, the raw gradient and M⁻¹ĝ with M = sqrtm(H̄²) + reg·I
    (scipy's sqrtm, independent of the estimator's eigendecomposition)."""
    objective = landscape(dim=4)
    device = device_of(objective)
    theta = THETA5[:4]
    delay, reg = 3, 0.01
    settings = SPSA2.Settings(resamples=2, hessian_delay=delay, measure_loss=False)
    spsa2 = SPSA2(settings, seed=5)
    samples: list[FloatArray] = []
    for k in range(8):
        objective.points.clear()
        t0 = device.clock.now()
        est = spsa2.estimate(objective, theta)
        assert est.evaluations == len(objective.points) == 8
        assert est.device_seconds == device.clock.now() - t0
        c = spsa2.perturbation(k)
        assert est.extras["c_k"] == c
        raw = []
        for r in range(2):
            plus, minus, both, cross = objective.points[4 * r : 4 * r + 4]
            d1 = (plus - theta) / c
            d2 = (both - theta) / c - d1
            np.testing.assert_allclose(cross, theta + c * (-d1 + d2), atol=1e-12)
            np.testing.assert_allclose(minus, theta - c * d1, atol=1e-12)
            d1, d2 = np.round(d1), np.round(d2)
            samples.append(hessian_sample(device.true_value, theta, c, d1, d2))
            y_plus, y_minus = device.true_value(plus), device.true_value(minus)
            raw.append((y_plus - y_minus) / (plus - minus))
        hessian = spsa2.hessian
        assert hessian is not None
        np.testing.assert_allclose(hessian, np.mean(samples, axis=0), rtol=1e-10, atol=1e-10)
        g_raw = np.mean(raw, axis=0)
        assert est.extras["raw_gradient_norm"] == pytest.approx(np.linalg.norm(g_raw))
        assert est.extras["hessian_samples"] == len(samples)
        if k < delay:
            assert est.extras["preconditioned"] == 0.0
            np.testing.assert_allclose(est.gradient, g_raw, rtol=1e-12)
        else:
            assert est.extras["preconditioned"] == 1.0
            m = np.real(scipy.linalg.sqrtm(hessian @ hessian)) + reg * np.eye(4)
            np.testing.assert_allclose(spsa2.preconditioner(), m, rtol=1e-6, atol=1e-6)
            np.testing.assert_allclose(est.gradient, np.linalg.solve(m, g_raw), rtol=1e-5)


def test_spsa2_hessian_converges_to_the_true_hessian() -> None:
    """H = diag(λ), d = 4, condition 10, σ = 0.05, fixed c = 0.2 (γ = 0), N = 3000 samples.

    With ξ_a = Δ₁ₐΔ₂ₐ (iid ±1) the noise-free sample is s·(Δ₁Δ₂ᵀ + Δ₂Δ₁ᵀ)/2 with s = Σ λ_a ξ_a,
    and the bracket noise adds variance 4σ²/(2c²)² = σ²/c⁴ times the squared direction factor
    (1 on the diagonal, 1{ξ_i = ξ_j} off it). Hence, per sample,
      Var Ĥ_ii = Σ_{a≠i} λ_a² + σ²/c⁴,   Var Ĥ_ij = ½[(λ_i + λ_j)² + Σ_{a≠i,j} λ_a² + σ²/c⁴],
    and H̄ (the mean of N iid samples) has SE = √(Var/N). Each of the 10 distinct entries lies
    within 4 SE of H (family-wise false-alarm rate ≈ 10 × 6.3e-5)."""
    sigma, c, n_estimates, resamples = 0.05, 0.2, 1000, 3
    objective = landscape(dim=4, noise=sigma, condition=10.0, seed=41)
    lam = device_of(objective).curvatures
    settings = SPSA2.Settings(c=c, gamma=0.0, resamples=resamples, measure_loss=False)
    spsa2 = SPSA2(settings, seed=42)
    for _ in range(n_estimates):
        spsa2.estimate(objective, THETA5[:4])
    n = n_estimates * resamples
    assert spsa2.hessian_samples == n
    noise = sigma**2 / c**4
    variance = np.empty((4, 4))
    for i in range(4):
        for j in range(4):
            others = sum(lam[a] ** 2 for a in range(4) if a not in (i, j))
            variance[i, j] = (
                others + noise if i == j else 0.5 * ((lam[i] + lam[j]) ** 2 + others + noise)
            )
    hessian = spsa2.hessian
    assert hessian is not None
    z = (hessian - np.diag(lam)) / np.sqrt(variance / n)
    assert np.max(np.abs(z)) < 4.0, np.round(z, 2)


def test_spsa2_with_the_true_hessian_reports_the_newton_step() -> None:
    """Loaded with H̄ = H (as if from 10⁹ samples, so it stays put) and a tiny regularisation,
    the reported direction averages to H⁻¹g = θ − x* (noise-free quadratic: E ĝ = g exactly).
    Each coordinate of the mean of 2000 directions is within 4 SE of it (4 coordinates)."""
    objective = landscape(dim=4, condition=10.0)
    device = device_of(objective)
    theta = THETA5[:4]
    spsa2 = SPSA2(SPSA2.Settings(regularization=1e-6, hessian_delay=0, measure_loss=False), seed=1)
    state = spsa2.state_dict()
    state.update(hessian=np.diag(device.curvatures).tolist(), hessian_samples=10**9)
    spsa2.load_state_dict(roundtrip(state))
    directions = np.array([spsa2.estimate(objective, theta).gradient for _ in range(2000)])
    newton = theta - device.minimum
    se = directions.std(axis=0, ddof=1) / math.sqrt(len(directions))
    assert np.all(np.abs(directions.mean(axis=0) - newton) < 4 * se), (directions.mean(0), newton)


def test_spsa2_state_round_trip_gives_the_same_next_estimate() -> None:
    objective = landscape(dim=4, noise=0.1, seed=2)
    spsa2 = SPSA2(SPSA2.Settings(resamples=2, hessian_delay=1), seed=3)
    fresh = SPSA2(seed=4).state_dict()
    assert fresh["hessian"] is None
    assert fresh["hessian_samples"] == 0
    for _ in range(4):
        spsa2.estimate(objective, THETA5[:4])
    state = roundtrip(spsa2.state_dict())
    resumed = SPSA2(SPSA2.Settings(resamples=2, hessian_delay=1), seed=99)
    resumed.load_state_dict(state)
    assert resumed.state_dict() == spsa2.state_dict()
    a_objective, b_objective = landscape(dim=4), landscape(dim=4)
    a = spsa2.estimate(a_objective, THETA5[:4])
    b = resumed.estimate(b_objective, THETA5[:4])
    np.testing.assert_array_equal(np.array(a_objective.points), np.array(b_objective.points))
    np.testing.assert_array_equal(a.gradient, b.gradient)
    assert a.extras == b.extras
    assert resumed.state_dict() == spsa2.state_dict()
    with pytest.raises(ValueError, match="symmetric"):
        resumed.load_state_dict({**state, "hessian": [[1.0, 2.0], [0.0, 1.0]]})
    with pytest.raises(ValueError, match=">= 0"):
        resumed.load_state_dict({**state, "k": -1})
    with pytest.raises(ValueError, match="theta has 5"):
        resumed.estimate(landscape(dim=5), THETA5)


def test_spsa2_near_bounds_moves_the_hessian_stencil_inside_and_counts_it() -> None:
    """At the upper bound the gradient pair is one-sided and the four Hessian points are
    measured around the nearest centre at which they fit (6 evaluations per sample); a pinned
    coordinate gets Δ = 0; a range narrower than the stencil stops the Hessian sampling."""
    objective = landscape(dim=4)
    theta = np.array([5.0, 0.3, -0.2, 1.0])
    objective.lower[3] = objective.upper[3] = 1.0  # pinned
    c = 0.1
    spsa2 = SPSA2(SPSA2.Settings(c=c, gamma=0.0, resamples=2, hessian_delay=0), seed=6)
    est = spsa2.estimate(objective, theta)
    points = objective.points
    assert est.evaluations == len(points) == 1 + 2 * 6
    for p in points:
        assert np.all((p >= objective.lower) & (p <= objective.upper))
        assert p[3] == 1.0
    assert 0 < est.extras["hessian_shift"] <= 2 * c + 1e-12  # (rounding of θ' − θ)
    assert est.extras["hessian_samples"] == 2
    assert est.gradient[3] == 0.0
    for r in range(2):
        plus, minus = points[1 + 6 * r], points[2 + 6 * r]
        stencil = points[3 + 6 * r : 7 + 6 * r]
        assert abs(plus[0] - minus[0]) == pytest.approx(c)  # one-sided at the bound
        centre = (stencil[0] + stencil[1]) / 2  # θ' ± cΔ₁
        assert centre[0] < theta[0]
        np.testing.assert_array_equal(centre[1:], theta[1:])
        d1 = np.round((stencil[0] - centre) / c)
        d2 = np.round((stencil[2] - centre) / c - d1)
        assert d1[3] == d2[3] == 0.0
        np.testing.assert_allclose(stencil[3], centre + c * (-d1 + d2), atol=1e-12)
    hessian = spsa2.hessian
    assert hessian is not None
    np.testing.assert_array_equal(hessian[3], 0.0)
    np.testing.assert_array_equal(hessian[:, 3], 0.0)

    narrow = landscape(dim=4)
    narrow.lower[1], narrow.upper[1] = 0.25, 0.5  # 0.25 wide, the stencil spans 3c = 0.3
    est = SPSA2(SPSA2.Settings(c=c, resamples=2), seed=6).estimate(narrow, np.full(4, 0.3))
    assert est.evaluations == 1 + 2 * 2
    assert est.extras["hessian_samples"] == 0
    assert "hessian_condition" not in est.extras


def test_spsa2_descends_an_ill_conditioned_noisy_quadratic() -> None:
    """d = 5, condition 100, σ = 0.1, from θ = 0 (f = 150). The Hessian is first averaged at
    the start point for `hessian_delay` = 50 estimates (their evaluations count), then SGD takes
    Newton-like steps of 0.1 along M⁻¹ĝ, with regularisation 1 (= the smallest curvature, which
    keeps poorly estimated soft directions from blowing up). Budget 4000 evaluations; the
    noise-free f must drop 100×. Over 30 noise/instance seeds the worst ratio was 3.1e-3
    (median 1.2e-4). A raw-gradient step of 0.1 would diverge (0.1·λ_max = 10 > 2)."""
    objective = landscape(dim=5, noise=0.1, condition=100.0, seed=51, model_seed=1)
    device = device_of(objective)
    ratio = descend_spsa2(objective, seed=52)
    assert ratio < 1e-2, ratio
    assert objective.evaluations < 4000 + 5
    assert device.true_value(np.zeros(5)) > 50


def descend_spsa2(objective: Objective, seed: int, budget: int = 4000) -> float:
    device = device_of(objective)
    delay = 50
    settings = SPSA2.Settings(c=0.2, regularization=1.0, hessian_delay=delay, measure_loss=False)
    spsa2 = SPSA2(settings, seed=seed)
    x0 = np.zeros(objective.dim)
    for _ in range(delay):
        assert spsa2.estimate(objective, x0).extras["preconditioned"] == 0.0
    optimizer = SGD(SGD.Settings(lr=0.1))
    optimizer.start(x0, objective.lower, objective.upper)
    while objective.evaluations < budget:
        est = spsa2.estimate(objective, optimizer.ask())
        assert est.extras["preconditioned"] == 1.0
        optimizer.tell(est.gradient)
    return device.true_value(optimizer.x) / device.true_value(x0)
