"""Central differences and SPSA against the analytic device's true loss gradient."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from hil.core import FloatArray
from protocols.base import GradientEstimator, Objective
from protocols.estimators import SPSA, CentralDifference
from protocols.tasks import RegressionTask
from simulators.analytic import AnalyticDevice

N_CASES = 6
THETA = np.array([0.3, -0.2, 0.5, -0.6, 0.1])


class RecordingObjective(Objective):
    """An objective that remembers every control vector it was asked to measure."""

    def __init__(self, device: AnalyticDevice, task: RegressionTask) -> None:
        super().__init__(device, task)
        self.points: list[FloatArray] = []

    def outputs(self, theta: FloatArray) -> FloatArray:
        self.points.append(np.array(theta, dtype=float))
        return super().outputs(theta)


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


def test_both_implement_the_protocol() -> None:
    assert isinstance(CentralDifference(), GradientEstimator)
    assert isinstance(SPSA(seed=0), GradientEstimator)


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
