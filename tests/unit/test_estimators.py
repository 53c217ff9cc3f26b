"""Finite differences and SPSA against exact gradients: the analytic device's loss gradient and
the noisy quadratic landscapes; costs, projections, state and convergence under noise.

SPSA's direction options and second-order SPSA have their own file, test_spsa.py.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hil.core import FloatArray
from protocols.base import GradientEstimator, Objective
from protocols.estimators import SPSA, SPSA2, CentralDifference, ForwardDifference
from protocols.optimizers import SGD
from protocols.tasks import MinimizeOutputTask, RegressionTask
from simulators.analytic import AnalyticDevice
from simulators.landscape import LandscapeDevice

from recording import RecordingObjective

N_CASES = 6
THETA = np.array([0.3, -0.2, 0.5, -0.6, 0.1])


def make_objective(noise_std: float = 0.0, seed: int = 0) -> RecordingObjective:
    """Regression onto the device's own outputs at another θ, so the residuals are O(1)."""
    device = AnalyticDevice(
        AnalyticDevice.Settings.model_validate({"noise": {"white": noise_std}}), seed=seed
    )
    rng = np.random.default_rng(42)
    x = rng.uniform(-1, 1, size=(N_CASES, 2))
    targets = device.true_output(rng.uniform(-1, 1, size=5), x) + 0.5
    return RecordingObjective(device, RegressionTask.from_arrays(x, targets))


def device_of(objective: Objective) -> AnalyticDevice:
    assert isinstance(objective.device, AnalyticDevice)
    return objective.device


def true_loss(objective: Objective, theta: FloatArray) -> float:
    return objective.task.loss(device_of(objective).true_output(theta, objective.task.inputs))


def true_loss_gradient(objective: Objective, theta: FloatArray) -> FloatArray:
    """Chain rule of the MSE: ∇L = (2/N) Σ_n (y_n − t_n) ∂y_n/∂θ."""
    assert isinstance(objective.task, RegressionTask)
    device = device_of(objective)
    x = objective.task.inputs
    residual = device.true_output(theta, x) - objective.task.targets  # N × 1
    grad: FloatArray = 2.0 * np.mean(residual * device.true_gradient(theta, x), axis=0)
    return grad


def test_all_implement_the_protocol() -> None:
    assert isinstance(CentralDifference(), GradientEstimator)
    assert isinstance(ForwardDifference(), GradientEstimator)
    assert isinstance(SPSA(seed=0), GradientEstimator)
    assert isinstance(SPSA2(seed=0), GradientEstimator)


def test_true_loss_gradient_helper_is_right() -> None:
    """The reference the other tests rely on, checked against differences of the true loss."""
    objective = make_objective()
    h = 1e-6
    fd = [
        (true_loss(objective, THETA + h * e) - true_loss(objective, THETA - h * e)) / (2 * h)
        for e in np.eye(5)
    ]
    np.testing.assert_allclose(true_loss_gradient(objective, THETA), fd, rtol=0, atol=1e-7)


def test_central_difference_error_is_second_order_in_h() -> None:
    objective = make_objective()
    truth = true_loss_gradient(objective, THETA)
    errors = []
    for h in (0.04, 0.02):
        fd = CentralDifference(CentralDifference.Settings(h=h)).estimate(objective, THETA)
        errors.append(float(np.linalg.norm(fd.gradient - truth)))
    # Halving h quarters the O(h²) truncation error (the O(h⁴) rest moves it a little).
    assert 0.2 < errors[1] / errors[0] < 0.3
    assert errors[1] < 1e-2 * np.linalg.norm(truth)


def test_central_difference_counts_evaluations_and_device_time() -> None:
    objective = make_objective()
    device = device_of(objective)
    per_evaluation = N_CASES * device.spec.plateau_time()
    for measure_loss, expected in ((True, 11), (False, 10)):
        estimator = CentralDifference(CentralDifference.Settings(measure_loss=measure_loss))
        t0, e0 = device.clock.now(), objective.evaluations
        est = estimator.estimate(objective, THETA)
        assert est.evaluations == expected == objective.evaluations - e0
        assert est.device_seconds == device.clock.now() - t0
        assert est.device_seconds == pytest.approx(expected * per_evaluation, rel=1e-9)
        assert est.stderr is None


def test_central_difference_reports_the_unperturbed_or_mean_loss() -> None:
    objective = make_objective()
    measured = CentralDifference().estimate(objective, THETA)
    assert measured.loss == pytest.approx(true_loss(objective, THETA), abs=1e-12)
    objective.points.clear()
    mean = CentralDifference(CentralDifference.Settings(measure_loss=False))
    est = mean.estimate(objective, THETA)
    expected = np.mean([true_loss(objective, p) for p in objective.points])
    assert est.loss == pytest.approx(expected, abs=1e-12)


def test_central_difference_is_one_sided_at_a_bound() -> None:
    objective = make_objective()
    theta = THETA.copy()
    theta[0], theta[1] = 1.0, -1.0  # upper bound of ctrl0, lower bound of ctrl1
    h = 0.05
    est = CentralDifference(CentralDifference.Settings(h=h)).estimate(objective, theta)
    for p in objective.points:
        assert np.all(p >= objective.lower)
        assert np.all(p <= objective.upper)
    e = np.eye(5)
    left = (true_loss(objective, theta) - true_loss(objective, theta - h * e[0])) / h
    right = (true_loss(objective, theta + h * e[1]) - true_loss(objective, theta)) / h
    assert est.gradient[0] == pytest.approx(left, abs=1e-10)
    assert est.gradient[1] == pytest.approx(right, abs=1e-10)


def test_a_pinned_coordinate_gets_zero_and_is_not_measured() -> None:
    objective = make_objective()
    objective.lower[2] = objective.upper[2] = THETA[2]  # a frozen electrode
    est = CentralDifference().estimate(objective, THETA)
    assert est.gradient[2] == 0.0
    assert est.evaluations == 2 * 4 + 1
    spsa = SPSA(SPSA.Settings(resamples=3), seed=1).estimate(objective, THETA)
    assert spsa.gradient[2] == 0.0
    assert all(p[2] == THETA[2] for p in objective.points)


def test_spsa_mean_matches_the_true_loss_gradient() -> None:
    """Unbiased up to O(c²): the mean of many estimates is within 3 standard errors."""
    objective = make_objective(noise_std=0.01, seed=5)
    spsa = SPSA(SPSA.Settings(measure_loss=False), seed=6)
    n = 3000
    grads = np.array([spsa.estimate(objective, THETA).gradient for _ in range(n)])
    truth = true_loss_gradient(objective, THETA)
    stderr = grads.std(axis=0, ddof=1) / math.sqrt(n)
    assert np.all(np.abs(grads.mean(axis=0) - truth) < 3 * stderr), (grads.mean(0), truth, stderr)


def test_spsa_counts_evaluations_time_and_schedule() -> None:
    objective = make_objective()
    device = device_of(objective)
    settings = SPSA.Settings(c=0.1, gamma=0.5, resamples=3)
    spsa = SPSA(settings, seed=2)
    for k in range(3):
        t0 = device.clock.now()
        est = spsa.estimate(objective, THETA)
        assert est.evaluations == 2 * 3 + 1
        assert est.device_seconds == device.clock.now() - t0
        assert est.extras["c_k"] == pytest.approx(0.1 / math.sqrt(k + 1))
        assert est.stderr is not None
        assert est.stderr.shape == (5,)
        assert np.all(est.stderr >= 0)
    assert spsa.k == 3
    single = SPSA(SPSA.Settings(measure_loss=False), seed=2).estimate(objective, THETA)
    assert single.evaluations == 2
    assert single.stderr is None


def test_spsa_points_are_projected_and_use_the_actual_separation() -> None:
    objective = make_objective()
    theta = THETA.copy()
    theta[0] = 1.0
    spsa = SPSA(SPSA.Settings(c=0.05, measure_loss=False), seed=3)
    est = spsa.estimate(objective, theta)
    x_plus, x_minus = objective.points
    for p in (x_plus, x_minus):
        assert np.all((p >= -1.0) & (p <= 1.0))
    assert abs(x_plus[0] - x_minus[0]) == pytest.approx(0.05)  # one-sided: c, not 2c
    dy = true_loss(objective, x_plus) - true_loss(objective, x_minus)
    np.testing.assert_allclose(est.gradient, dy / (x_plus - x_minus), rtol=1e-12)


def test_spsa_state_round_trip_gives_the_same_next_estimate() -> None:
    objective = make_objective()
    spsa = SPSA(seed=11)
    for _ in range(3):
        spsa.estimate(objective, THETA)
    state = json.loads(json.dumps(spsa.state_dict()))
    expected = spsa.estimate(objective, THETA)
    restored = SPSA(seed=999)
    restored.load_state_dict(state)
    got = restored.estimate(objective, THETA)
    np.testing.assert_array_equal(got.gradient, expected.gradient)
    assert got.extras == expected.extras
    assert restored.state_dict() == spsa.state_dict()


def test_central_difference_has_empty_state() -> None:
    fd = CentralDifference()
    assert json.loads(json.dumps(fd.state_dict())) == {}
    fd.load_state_dict({})
    with pytest.raises(ValueError, match="no state"):
        fd.load_state_dict({"k": 1})


def test_theta_of_the_wrong_length_is_refused() -> None:
    objective = make_objective()
    with pytest.raises(ValueError, match="theta"):
        CentralDifference().estimate(objective, np.zeros(4))
    with pytest.raises(ValueError, match="theta"):
        SPSA(seed=0).estimate(objective, np.zeros(6))


# -- landscapes: a quadratic with exact value and gradient --------------------------------------


def landscape(
    dim: int = 5, noise: float = 0.0, condition: float = 10.0, seed: int = 0, model_seed: int = 0
) -> RecordingObjective:
    """f = ½ Σ λ_i (θ_i − x*_i)², λ log-spaced from 1 to `condition`, box ±5, noise σ."""
    device = LandscapeDevice(
        LandscapeDevice.Settings(dim=dim, noise=noise, condition=condition, model_seed=model_seed),
        seed=seed,
    )
    return RecordingObjective(device, MinimizeOutputTask())


def landscape_of(objective: Objective) -> LandscapeDevice:
    assert isinstance(objective.device, LandscapeDevice)
    return objective.device


def test_forward_difference_bias_is_half_h_times_the_curvature() -> None:
    """For f = ½ Σ λ_i z_i², (f(θ + s e_i) − f(θ))/s = λ_i z_i + λ_i s/2 exactly, s = ±h."""
    objective = landscape()
    device = landscape_of(objective)
    theta = np.array([0.3, -1.2, 2.0, 0.0, -0.7])
    h = 0.1
    est = ForwardDifference(ForwardDifference.Settings(h=h)).estimate(objective, theta)
    expected = device.true_gradient(theta) + device.curvatures * h / 2
    # y is O(10); differences of doubles divided by h = 0.1 are good to ~1e-13
    np.testing.assert_allclose(est.gradient, expected, rtol=0, atol=1e-10)
    assert est.loss == device.true_value(theta)  # noise-free, L(θ) measured once
    halved = ForwardDifference(ForwardDifference.Settings(h=h / 2)).estimate(objective, theta)
    bias = est.gradient - device.true_gradient(theta)
    np.testing.assert_allclose(halved.gradient - device.true_gradient(theta), bias / 2, atol=1e-10)


def test_forward_difference_counts_d_plus_one_evaluations_and_device_time() -> None:
    objective = landscape(dim=6, noise=0.1, seed=3)
    device = landscape_of(objective)
    theta = np.linspace(-1.0, 1.0, 6)
    t0, e0 = device.clock.now(), objective.evaluations
    est = ForwardDifference().estimate(objective, theta)
    assert est.evaluations == 7 == objective.evaluations - e0
    assert est.device_seconds == device.clock.now() - t0
    assert est.device_seconds == pytest.approx(7 * device.settings.eval_time, rel=1e-12)
    assert est.stderr is None
    # the first point measured is θ itself, and it is the reported loss
    np.testing.assert_array_equal(objective.points[0], theta)


def test_forward_difference_steps_back_at_the_upper_bound_and_stays_in_the_box() -> None:
    objective = landscape()
    device = landscape_of(objective)
    h = 0.1
    theta = np.array([5.0, 5.0 - h / 4, -5.0, 0.5, 1.0])  # at, near the top; at the bottom
    objective.lower[3], objective.upper[3] = 0.49, 0.52  # narrower than h: 0.02 up, 0.01 down
    objective.lower[4] = objective.upper[4] = 1.0  # pinned
    est = ForwardDifference(ForwardDifference.Settings(h=h)).estimate(objective, theta)
    for p in objective.points:
        assert np.all((p >= objective.lower) & (p <= objective.upper)), p
    assert est.evaluations == 1 + 4  # the pinned coordinate is not measured
    g, lam = device.true_gradient(theta), device.curvatures
    steps = np.array([-h, -h, h, 0.52 - 0.5, 0.0])  # backwards twice, forwards, the wider side
    expected = g + lam * steps / 2
    expected[4] = 0.0
    np.testing.assert_allclose(est.gradient, expected, rtol=0, atol=1e-9)


def test_forward_difference_has_empty_state() -> None:
    fd = ForwardDifference()
    assert json.loads(json.dumps(fd.state_dict())) == {}
    fd.load_state_dict({})
    with pytest.raises(ValueError, match="no state"):
        fd.load_state_dict({"k": 1})
    with pytest.raises(ValueError, match="theta"):
        fd.estimate(make_objective(), np.zeros(3))


# -- every evaluated point lies in the box ------------------------------------------------------


def _estimator(kind: str, step: float) -> GradientEstimator:
    if kind == "central":
        return CentralDifference(CentralDifference.Settings(h=step))
    if kind == "forward":
        return ForwardDifference(ForwardDifference.Settings(h=step))
    if kind == "spsa2":
        return SPSA2(SPSA2.Settings(c=step, resamples=2, hessian_delay=0), seed=1)
    settings = SPSA.Settings.model_validate({"c": step, "resamples": 3, "directions": kind})
    return SPSA(settings, seed=1)


@st.composite
def boxes(draw: st.DrawFn) -> tuple[FloatArray, FloatArray, FloatArray]:
    """A sub-box of ±5 per coordinate (some pinned, some at a bound) and a point in it.

    Ranges are 0 or at least 1e-6 V wide: a range of, say, 1e-308 V would make any difference
    quotient overflow, and no channel is like that.
    """
    dim = draw(st.integers(1, 4))
    lower, upper, theta = np.zeros(dim), np.zeros(dim), np.zeros(dim)
    for i in range(dim):
        centre = draw(st.floats(-5.0, 5.0))
        width = draw(st.one_of(st.just(0.0), st.floats(1e-6, 10.0)))
        lo, hi = max(-5.0, centre - width / 2), min(5.0, centre + width / 2)
        where = draw(st.one_of(st.sampled_from([0.0, 1.0]), st.floats(0.0, 1.0)))
        lower[i], upper[i] = lo, hi
        theta[i] = min(max(lo + where * (hi - lo), lo), hi)
    return lower, upper, theta


@settings(max_examples=60, deadline=None)
@given(
    box=boxes(),
    kind=st.sampled_from(["central", "forward", "rademacher", "hadamard", "spsa2"]),
    step=st.floats(0.001, 4.0),
)
def test_no_estimator_asks_for_a_point_outside_the_box(
    box: tuple[FloatArray, FloatArray, FloatArray], kind: str, step: float
) -> None:
    lower, upper, theta = box
    objective = landscape(dim=theta.size, noise=0.1, seed=2)
    objective.lower[:], objective.upper[:] = lower, upper
    est = _estimator(kind, step).estimate(objective, theta)
    assert len(objective.points) == est.evaluations
    for p in objective.points:
        assert np.all((p >= lower) & (p <= upper)), (p, lower, upper)
    assert np.all(np.isfinite(est.gradient))
    assert np.all(est.gradient[lower == upper] == 0.0)  # pinned coordinates


# -- convergence on a noisy 10-D quadratic ------------------------------------------------------
#
# f = ½‖θ − x*‖² in 10-D (condition 1), x* ~ U[±2]^10 (model_seed 0: f(0) = 8.3), noise σ = 0.1
# per evaluation, plain projected SGD from θ = 0 with a constant learning rate a until the
# budget of evaluations is spent. Score: the noise-free f of the last iterate over f(0).
# With a constant rate the iterate ends in a noise floor (per coordinate, stationary
# E z² ≈ a·v/2 for gradient-noise variance v), e.g. central FD, h = 0.2: v = σ²/(2h²) = 0.125,
# floor ≈ ½·10·(0.1·0.125/2) ≈ 0.03, i.e. a ratio ≈ 4e-3; forward FD also keeps its O(h) bias
# (z → −h/2: ½·10·0.01 = 0.05) and a common-mode noise from the shared L(θ).
# The factors asserted are ≥ 3.5× looser than the worst of 30 noise/instance seeds run with these
# exact settings (worst ratios: SPSA 0.011, Hadamard SPSA 0.0094, forward 0.042, central 0.010;
# medians 0.0055, 0.0059, 0.010, 0.0037).

CONVERGENCE_BUDGET = 3000


def descend(objective: Objective, estimator: GradientEstimator, lr: float) -> float:
    """Projected SGD until the budget is spent; the final noise-free f over the initial one."""
    device = landscape_of(objective)
    optimizer = SGD(SGD.Settings(lr=lr))
    optimizer.start(np.zeros(objective.dim), objective.lower, objective.upper)
    f0 = device.true_value(optimizer.x)
    while objective.evaluations < CONVERGENCE_BUDGET:
        optimizer.tell(estimator.estimate(objective, optimizer.ask()).gradient)
    return device.true_value(optimizer.x) / f0


@pytest.mark.parametrize(
    ("name", "lr", "factor"),
    [
        ("spsa", 0.03, 0.05),
        ("hadamard", 0.03, 0.05),
        ("forward", 0.03, 0.15),
        ("central", 0.1, 0.05),
    ],
)
def test_estimators_descend_a_noisy_quadratic(name: str, lr: float, factor: float) -> None:
    objective = landscape(dim=10, noise=0.1, condition=1.0, seed=7)
    estimator: GradientEstimator
    if name == "spsa":
        estimator = SPSA(SPSA.Settings(c=0.2, measure_loss=False), seed=8)
    elif name == "hadamard":
        estimator = SPSA(SPSA.Settings(c=0.2, directions="hadamard", measure_loss=False))
    elif name == "forward":
        estimator = ForwardDifference(ForwardDifference.Settings(h=0.2))
    else:
        estimator = CentralDifference(CentralDifference.Settings(h=0.2, measure_loss=False))
    ratio = descend(objective, estimator, lr)
    assert objective.evaluations < CONVERGENCE_BUDGET + 2 * objective.dim + 1
    assert ratio < factor, f"{name}: f_final / f_0 = {ratio:.3g}"
