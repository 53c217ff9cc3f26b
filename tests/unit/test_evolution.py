"""Gaussian smoothing, antithetic ES and weight perturbation on noisy test landscapes.

Statistical checks use fixed seeds; their tolerances are a few standard errors of the mean
computed from the estimates themselves, and each such test also asserts that the standard error
is small against the quantity checked, so a wrong scale or sign would be caught.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import pytest

from hil.core import FloatArray
from protocols.base import GradientEstimator, Objective
from protocols.evolution import (
    AntitheticES,
    GaussianSmoothing,
    WeightPerturbation,
    centred_ranks,
)
from protocols.optimizers import SGD, Adam, BoxOptimizer
from protocols.tasks import MinimizeOutputTask
from simulators.landscape import LandscapeDevice

from recording import RecordingObjective

Estimator = GaussianSmoothing | AntitheticES | WeightPerturbation
Factory = Callable[[int], Estimator]


class ExpObjective(Objective):
    """exp(L): a strictly increasing transform of the loss."""

    def __call__(self, theta: FloatArray) -> float:
        return math.exp(super().__call__(theta))


def landscape(seed: int = 0, **settings: Any) -> LandscapeDevice:
    return LandscapeDevice(LandscapeDevice.Settings(**settings), seed=seed)


def spy(seed: int = 0, **settings: Any) -> RecordingObjective:
    return RecordingObjective(landscape(seed, **settings), MinimizeOutputTask())


def device_of(objective: Objective) -> LandscapeDevice:
    assert isinstance(objective.device, LandscapeDevice)
    return objective.device


# name → estimator for a seed; small populations so the box and accounting tests stay fast
ESTIMATORS: dict[str, Factory] = {
    "gs-forward": lambda seed: GaussianSmoothing(
        GaussianSmoothing.Settings(mu=0.1, directions=3), seed=seed
    ),
    "gs-central": lambda seed: GaussianSmoothing(
        GaussianSmoothing.Settings(mu=0.1, directions=3, form="central"), seed=seed
    ),
    "es-none": lambda seed: AntitheticES(AntitheticES.Settings(sigma=0.1, pairs=3), seed=seed),
    "es-ranks": lambda seed: AntitheticES(
        AntitheticES.Settings(sigma=0.1, pairs=3, shaping="ranks"), seed=seed
    ),
    "wp-measured": lambda seed: WeightPerturbation(
        WeightPerturbation.Settings(sigma=0.1, perturbations=3), seed=seed
    ),
    "wp-antithetic": lambda seed: WeightPerturbation(
        WeightPerturbation.Settings(sigma=0.1, perturbations=3, reference="antithetic"),
        seed=seed,
    ),
}


def test_all_implement_the_protocol() -> None:
    for make in ESTIMATORS.values():
        assert isinstance(make(0), GradientEstimator)


def test_centred_ranks_span_the_unit_interval_and_share_ties() -> None:
    np.testing.assert_allclose(centred_ranks(np.array([3.0, -1.0, 10.0])), [0.0, -0.5, 0.5])
    # the two 2.0s hold ordinal ranks 1 and 2 of 0..3 and share 1.5 → 1.5/3 − 0.5 = 0
    np.testing.assert_allclose(centred_ranks(np.array([2.0, 5.0, 2.0, 0.0])), [0, 0.5, 0, -0.5])
    assert centred_ranks(np.array([7.0])).tolist() == [0.0]


# -- unbiasedness on a quadratic ----------------------------------------------------------------

# distinct seeds: gs-central and es-none with one pair are the same estimator
UNBIASED: dict[str, Callable[[], Estimator]] = {
    "gs-forward": lambda: GaussianSmoothing(GaussianSmoothing.Settings(mu=0.1), seed=5),
    "gs-central": lambda: GaussianSmoothing(
        GaussianSmoothing.Settings(mu=0.1, form="central"), seed=6
    ),
    "es-none": lambda: AntitheticES(AntitheticES.Settings(sigma=0.1, pairs=1), seed=7),
    "wp-measured": lambda: WeightPerturbation(WeightPerturbation.Settings(sigma=0.1), seed=8),
    "wp-antithetic": lambda: WeightPerturbation(
        WeightPerturbation.Settings(sigma=0.1, reference="antithetic"), seed=9
    ),
}


@pytest.mark.parametrize("name", sorted(UNBIASED))
def test_mean_estimate_is_the_true_gradient_of_a_quadratic(name: str) -> None:
    """For a quadratic ∇f_μ = ∇f, and the one-sided forms have the two-sided forms' mean.

    Tolerance: each coordinate of the mean of n independent estimates lies within 3 standard
    errors (sample std / √n) of LandscapeDevice.true_gradient. The condition number 10 makes the
    coordinates differ, so an estimator mixing or mis-scaling them fails; the standard error is
    checked to be under 5 % of ‖∇f‖, so a 15 % error of the mean would already be caught.
    """
    device = landscape(seed=3, dim=4, noise=0.1, condition=10.0)
    objective = Objective(device, MinimizeOutputTask())
    theta = device.minimum + np.array([1.0, -0.5, 0.8, -1.2])
    estimator = UNBIASED[name]()
    n = 3000
    grads = np.array([estimator.estimate(objective, theta).gradient for _ in range(n)])
    truth = device.true_gradient(theta)
    stderr = grads.std(axis=0, ddof=1) / math.sqrt(n)
    assert np.all(stderr < 0.05 * np.linalg.norm(truth)), stderr
    assert np.all(np.abs(grads.mean(axis=0) - truth) < 3 * stderr), (grads.mean(0), truth)


def test_weight_perturbation_measured_form_has_a_zero_mean_order_sigma_term() -> None:
    """Noise-free quadratic, exactly: L(θ+π) − L(θ) = gᵀπ + ½πᵀHπ.

    So the measured form returns (gᵀπ)π/σ² + ½(πᵀHπ)π/σ² and the antithetic form (gᵀπ)π/σ².
    With π_i = ±σ and diagonal H, πᵀHπ = σ² tr H, so the extra term is ½ tr H · π: its norm is
    ½ tr H σ √d (O(σ) per estimate), and its mean is 0 because π is symmetric — variance, not
    bias (the previous test finds the measured form unbiased on a noisy quadratic).
    """
    objective = spy(dim=5, condition=4.0)
    device = device_of(objective)
    theta = device.minimum + np.array([0.4, -0.3, 0.2, 0.5, -0.1])
    g, trace = device.true_gradient(theta), float(np.sum(device.curvatures))
    for sigma in (0.05, 0.1):
        measured = WeightPerturbation(WeightPerturbation.Settings(sigma=sigma), seed=1)
        for _ in range(5):
            est = measured.estimate(objective, theta)
            pi = objective.points[-1] - theta
            assert set(np.abs(pi).round(12)) == {sigma}
            np.testing.assert_allclose(
                est.gradient, (g @ pi) * pi / sigma**2 + 0.5 * trace * pi, rtol=0, atol=1e-9
            )
            extra = est.gradient - (g @ pi) * pi / sigma**2
            assert np.linalg.norm(extra) == pytest.approx(0.5 * trace * sigma * math.sqrt(5))
        antithetic = WeightPerturbation(
            WeightPerturbation.Settings(sigma=sigma, reference="antithetic"), seed=1
        )
        for _ in range(5):
            est = antithetic.estimate(objective, theta)
            pi = (objective.points[-2] - objective.points[-1]) / 2.0
            np.testing.assert_allclose(est.gradient, (g @ pi) * pi / sigma**2, rtol=0, atol=1e-9)


def _exact_expectation(
    reference: Literal["measured", "antithetic"], sigma: float, theta: FloatArray
) -> FloatArray:
    """E ĝ on a noise-free 2-D Rosenbrock: the estimate for each of the 4 sign patterns, averaged.

    Noise-free, each pattern's estimate is deterministic; the pattern is read off the points the
    estimator sent (the last one is θ + π for both references).
    """
    objective = spy(function="rosenbrock", dim=2, minimum=[0.0, 0.0])
    settings = WeightPerturbation.Settings(sigma=sigma, reference=reference)
    estimator = WeightPerturbation(settings, seed=7)
    by_pattern: dict[tuple[float, ...], FloatArray] = {}
    for _ in range(60):
        est = estimator.estimate(objective, theta)
        key = tuple(np.sign(objective.points[-1 if reference == "measured" else -2] - theta))
        by_pattern[key] = est.gradient
    assert len(by_pattern) == 4
    mean: FloatArray = np.mean(list(by_pattern.values()), axis=0)
    return mean


def test_weight_perturbation_bias_is_order_sigma_squared_and_the_same_for_both_references() -> None:
    """Off a quadratic both forms have one expectation, ∇f + O(σ²) (Rosenbrock is quartic, so
    the bias is exactly (σ²/6)·(third-derivative term): halving σ quarters it)."""
    device = landscape(function="rosenbrock", dim=2, minimum=[0.0, 0.0])
    theta = np.array([0.3, -0.4])
    truth = device.true_gradient(theta)
    bias = {}
    for sigma in (0.1, 0.05):
        measured = _exact_expectation("measured", sigma, theta)
        antithetic = _exact_expectation("antithetic", sigma, theta)
        np.testing.assert_allclose(measured, antithetic, rtol=1e-9, atol=1e-9)
        bias[sigma] = measured - truth
    assert np.linalg.norm(bias[0.1]) > 1e-3 * np.linalg.norm(truth)  # there is a bias to scale
    np.testing.assert_allclose(bias[0.1], 4.0 * bias[0.05], rtol=1e-6)


# -- rank shaping --------------------------------------------------------------------------------


def test_ranks_are_invariant_under_a_monotone_transform_of_the_loss() -> None:
    """Same device noise and directions: f and exp(f) give the identical rank-shaped estimate,
    while the raw-fitness estimate changes (so the comparison has teeth)."""
    results: dict[str, list[FloatArray]] = {}
    for shaping in ("ranks", "none"):
        for transform in ("identity", "exp"):
            device = landscape(seed=5, dim=6, noise=0.1)
            objective = (
                Objective(device, MinimizeOutputTask())
                if transform == "identity"
                else ExpObjective(device, MinimizeOutputTask())
            )
            es = AntitheticES(AntitheticES.Settings(sigma=0.2, pairs=5, shaping=shaping), seed=9)
            theta = np.full(6, 0.5)
            results[f"{shaping}-{transform}"] = [
                es.estimate(objective, theta).gradient for _ in range(5)
            ]
    for a, b in zip(results["ranks-identity"], results["ranks-exp"], strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(results["none-identity"], results["none-exp"], strict=True):
        assert not np.allclose(a, b)


def test_rank_scale_is_the_expected_length_for_a_locally_linear_loss() -> None:
    """Noise-free, σ = 0.01 ≪ distance to the minimum (locally linear), 200 pairs: the mean
    estimate points along ∇f with length rank_scale. Tolerance 3 %: the finite-population
    deviation of the ranks from Φ is O(1/n) ≈ 0.5 % and the standard error of the mean's
    component along ∇f (checked below) is under 1 %."""
    objective = Objective(landscape(dim=10), MinimizeOutputTask())
    theta = np.zeros(10)
    g = device_of(objective).true_gradient(theta)
    settings = AntitheticES.Settings(sigma=0.01, pairs=200, shaping="ranks", rank_scale=2.0)
    es = AntitheticES(settings, seed=1)
    n = 200
    grads = np.array([es.estimate(objective, theta).gradient for _ in range(n)])
    mean = grads.mean(axis=0)
    projections = grads @ g / np.linalg.norm(g)
    along = float(projections.mean())
    assert projections.std(ddof=1) / math.sqrt(n) < 0.01 * 2.0
    assert along == pytest.approx(2.0, rel=0.03)
    assert along / np.linalg.norm(mean) > 0.999


# -- convergence ---------------------------------------------------------------------------------

CONVERGENCE: dict[str, Callable[[], tuple[Estimator, BoxOptimizer]]] = {
    "gs-forward-sgd": lambda: (
        GaussianSmoothing(GaussianSmoothing.Settings(mu=0.1, directions=4), seed=11),
        SGD(SGD.Settings(lr=0.02)),
    ),
    "gs-central-sgd": lambda: (
        GaussianSmoothing(
            GaussianSmoothing.Settings(mu=0.1, directions=2, form="central"), seed=11
        ),
        SGD(SGD.Settings(lr=0.02)),
    ),
    "es-none-sgd": lambda: (
        AntitheticES(AntitheticES.Settings(sigma=0.1, pairs=4), seed=11),
        SGD(SGD.Settings(lr=0.03)),
    ),
    "es-ranks-adam": lambda: (
        AntitheticES(AntitheticES.Settings(sigma=0.1, pairs=4, shaping="ranks"), seed=11),
        Adam(Adam.Settings(lr=0.05)),
    ),
    "wp-measured-sgd": lambda: (
        WeightPerturbation(WeightPerturbation.Settings(sigma=0.1, perturbations=4), seed=11),
        SGD(SGD.Settings(lr=0.02)),
    ),
    "wp-antithetic-sgd": lambda: (
        WeightPerturbation(
            WeightPerturbation.Settings(sigma=0.1, perturbations=2, reference="antithetic"),
            seed=11,
        ),
        SGD(SGD.Settings(lr=0.02)),
    ),
}


@pytest.mark.parametrize("name", sorted(CONVERGENCE))
def test_reduces_the_noise_free_loss_of_a_noisy_10d_quadratic(name: str) -> None:
    """≥ 50× lower noise-free loss within 1000 evaluations, from θ = 0 (f ≈ 8.3).

    Where the factor comes from: constant-lr SGD on this unit-curvature bowl settles where
    f ≈ lr·tr Cov(ĝ)/4; near the minimum tr Cov(ĝ) ≈ 2dσ_n²/μ² / (directions) ≈ 5–10 here,
    so f ≈ 0.03–0.05, i.e. a 150–300× reduction; 50× leaves a margin of 3 (over 10 other seeds
    the worst run of each configuration reached 110×).
    """
    device = landscape(seed=13, dim=10, noise=0.1)
    objective = Objective(device, MinimizeOutputTask())
    estimator, optimizer = CONVERGENCE[name]()
    optimizer.start(np.zeros(10), objective.lower, objective.upper)
    start = device.true_value(optimizer.ask())
    while objective.evaluations < 1000:
        optimizer.tell(estimator.estimate(objective, optimizer.ask()).gradient)
    final = device.true_value(optimizer.ask())
    assert start > 8.0
    assert final < start / 50, (start, final)


# -- bounds --------------------------------------------------------------------------------------


def _assert_inside(objective: RecordingObjective) -> None:
    for p in objective.points:
        assert np.all(p >= objective.lower), p
        assert np.all(p <= objective.upper), p


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_no_point_leaves_the_box_even_from_the_boundary(name: str) -> None:
    objective = spy(dim=6, noise=0.1)  # the device itself also refuses points outside ±bound
    estimator = ESTIMATORS[name](2)
    b = device_of(objective).settings.bound
    starts = [
        np.full(6, b),  # upper corner
        np.full(6, -b),  # lower corner
        np.array([b, -b, 0.0, b - 0.01, -b + 0.01, 1.0]),  # mixed, some within μ of a bound
    ]
    for theta in starts:
        for _ in range(20):
            est = estimator.estimate(objective, theta)
            assert np.all(np.isfinite(est.gradient))
        assert est.extras["clipped"] > 0
    assert len(objective.points) >= 60 * 4
    _assert_inside(objective)
    # a box narrower than the steps on both sides, and a pinned (zero-width) coordinate
    objective.points.clear()
    objective.lower[:3] = [-0.02, -0.02, 0.3]
    objective.upper[:3] = [0.02, 0.01, 0.3]
    theta = np.array([0.0, 0.0, 0.3, 0.0, 0.0, 0.0])
    for _ in range(20):
        est = estimator.estimate(objective, theta)
        assert est.gradient[2] == 0.0
    assert len(objective.points) >= 20 * 4
    _assert_inside(objective)
    assert all(p[2] == 0.3 for p in objective.points)


def test_no_clipping_away_from_the_bounds() -> None:
    objective = spy(dim=6)
    for make in ESTIMATORS.values():
        assert make(0).estimate(objective, np.zeros(6)).extras["clipped"] == 0.0


def test_at_a_bound_the_applied_perturbation_is_used() -> None:
    """Noise-free, θ on the upper corner: forward ĝ = [L(x) − L(θ)]·(x − θ)/μ² with x the
    projected point, central ĝ = [L(x⁺) − L(x⁻)]·(x⁺ − x⁻)/(4μ²)."""
    objective = spy(dim=4)
    device = device_of(objective)
    theta = np.full(4, device.settings.bound)
    mu = 0.2
    forward = GaussianSmoothing(GaussianSmoothing.Settings(mu=mu), seed=3)
    est = forward.estimate(objective, theta)
    x = objective.points[-1]
    assert np.all(x <= theta)
    dy = device.true_value(x) - device.true_value(theta)
    np.testing.assert_allclose(est.gradient, dy * (x - theta) / mu**2, rtol=1e-12, atol=1e-12)
    central = GaussianSmoothing(GaussianSmoothing.Settings(mu=mu, form="central"), seed=3)
    est = central.estimate(objective, theta)
    x_plus, x_minus = objective.points[-2:]
    dy = device.true_value(x_plus) - device.true_value(x_minus)
    expected = dy * (x_plus - x_minus) / (4 * mu**2)
    np.testing.assert_allclose(est.gradient, expected, rtol=1e-12, atol=1e-12)


# -- accounting, loss, state ---------------------------------------------------------------------

EXPECTED_EVALUATIONS = {
    "gs-forward": 4,  # 3 directions + L(θ)
    "gs-central": 6,
    "es-none": 6,
    "es-ranks": 6,
    "wp-measured": 4,
    "wp-antithetic": 6,
}


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_evaluations_and_device_seconds_match_the_counters(name: str) -> None:
    objective = spy(dim=5, noise=0.1, eval_time=2e-3)
    device = device_of(objective)
    estimator = ESTIMATORS[name](0)
    theta = np.full(5, 0.3)
    for _ in range(3):
        t0, e0 = device.clock.now(), objective.evaluations
        est = estimator.estimate(objective, theta)
        assert est.evaluations == objective.evaluations - e0 == EXPECTED_EVALUATIONS[name]
        assert est.device_seconds == device.clock.now() - t0
        assert est.device_seconds == pytest.approx(est.evaluations * 2e-3, rel=1e-9)
        if name == "es-ranks":
            assert est.stderr is None  # ranks couple the samples
        else:
            assert est.stderr is not None
            assert est.stderr.shape == (5,)
            assert np.all(est.stderr > 0)


def test_measure_loss_costs_one_evaluation_and_reports_the_unperturbed_loss() -> None:
    objective = spy(dim=5)
    device = device_of(objective)
    theta = np.full(5, 0.3)
    truth = device.true_value(theta)
    for estimator in (
        GaussianSmoothing(GaussianSmoothing.Settings(form="central", measure_loss=True), seed=0),
        AntitheticES(AntitheticES.Settings(pairs=2, measure_loss=True), seed=0),
        WeightPerturbation(
            WeightPerturbation.Settings(reference="antithetic", measure_loss=True), seed=0
        ),
    ):
        est = estimator.estimate(objective, theta)
        assert est.loss == pytest.approx(truth, abs=1e-12)
        assert np.array_equal(objective.points[-est.evaluations], theta)
    # one-sided forms measure L(θ) anyway and report it, with no extra evaluation
    for one_sided in (GaussianSmoothing(seed=0), WeightPerturbation(seed=0)):
        est = one_sided.estimate(objective, theta)
        assert est.evaluations == 2
        assert est.loss == pytest.approx(truth, abs=1e-12)
    # otherwise the mean of the perturbed values
    es = AntitheticES(AntitheticES.Settings(pairs=2), seed=0)
    est = es.estimate(objective, theta)
    values = [device.true_value(p) for p in objective.points[-4:]]
    assert est.loss == pytest.approx(float(np.mean(values)), abs=1e-12)
    assert est.loss > truth  # smoothing raises the mean of a convex loss


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_state_round_trip_gives_identical_next_estimates(name: str) -> None:
    objective = spy(dim=5, noise=0.1)
    device = device_of(objective)
    theta = np.full(5, 0.3)
    original = ESTIMATORS[name](21)
    for _ in range(2):
        original.estimate(objective, theta)
    state = json.loads(json.dumps(original.state_dict()))
    device_state = json.loads(json.dumps(device.state_dict()))
    expected = original.estimate(objective, theta)

    device.load_state_dict(device_state)
    restored = ESTIMATORS[name](999)
    restored.load_state_dict(state)
    got = restored.estimate(objective, theta)
    np.testing.assert_array_equal(got.gradient, expected.gradient)
    assert got.loss == expected.loss
    assert restored.state_dict() == original.state_dict()

    device.load_state_dict(device_state)  # without the estimator state the directions differ
    assert not np.allclose(ESTIMATORS[name](999).estimate(objective, theta).gradient, got.gradient)


def test_bad_state_and_theta_are_refused() -> None:
    estimator = GaussianSmoothing(seed=0)
    with pytest.raises(ValueError, match="unknown keys"):
        estimator.load_state_dict({**estimator.state_dict(), "k": 3})
    with pytest.raises(KeyError):
        estimator.load_state_dict({})
    objective = spy(dim=5)
    for make in ESTIMATORS.values():
        with pytest.raises(ValueError, match="theta"):
            make(0).estimate(objective, np.zeros(4))
