"""Calibration on noisy test landscapes: σ, perturbation size, learning rate, and their cost."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats

from hil.core import FloatArray, JSONDict
from protocols.base import GradientEstimate, Objective
from protocols.calibration import (
    CalibrationSettings,
    calibrate,
    calibrate_gain,
    calibrate_perturbation,
    measure_noise,
    perturbation_setting,
    set_perturbation,
)
from protocols.estimators import SPSA, CentralDifference
from protocols.optimizers import SGD, Adam
from protocols.tasks import MinimizeOutputTask
from simulators.landscape import LandscapeDevice

EVAL_TIME = 1e-3


def landscape(seed: int = 0, **settings: object) -> tuple[Objective, LandscapeDevice]:
    device = LandscapeDevice(
        LandscapeDevice.Settings.model_validate({"eval_time": EVAL_TIME, **settings}), seed=seed
    )
    return Objective(device, MinimizeOutputTask()), device


def test_measure_noise_recovers_the_configured_sigma() -> None:
    sigma, n = 0.3, 400
    objective, device = landscape(dim=3, noise=sigma)
    theta = np.array([0.5, -1.0, 2.0])
    result = measure_noise(objective, theta, repeats=n)
    # (n−1)σ̂²/σ² ~ χ²(n−1): a 1 − 1e-6 two-sided interval
    q_low, q_high = stats.chi2.ppf([0.5e-6, 1 - 0.5e-6], n - 1)
    assert q_low <= (n - 1) * result.sigma**2 / sigma**2 <= q_high
    assert abs(result.mean - device.true_value(theta)) < 5 * sigma / math.sqrt(n)
    low, high = result.sigma_interval(0.999)
    assert low < sigma < high
    assert result.evaluations == objective.evaluations == n
    assert result.device_seconds == pytest.approx(n * EVAL_TIME)
    with pytest.raises(ValueError, match="repeats >= 2"):
        measure_noise(objective, theta, repeats=1)


def test_calibrated_rate_gives_the_target_first_step_on_a_noisy_quadratic() -> None:
    """E[first step] = target up to the calibration's own sampling error.

    An SPSA estimate has |ĝ_i| = |ΔL|/(2c) on every coordinate, so one first step is
    target·|X|/m̂ with X one fresh |ΔL|/(2c) and m̂ the mean of `samples` others: its mean over
    repetitions is 1·target within 4 standard errors plus Jensen's 1/m̂ bias (≈ CV²/samples).
    """
    target, samples, repetitions = 0.2, 10, 40
    ratios, spent = [], []
    for r in range(repetitions):
        objective, _ = landscape(seed=r, dim=10, noise=0.05, model_seed=r)
        spsa = SPSA(SPSA.Settings(c=0.1), seed=1000 + r)
        sgd = SGD(SGD.Settings(lr=1e-3))
        theta0 = np.zeros(10)
        sgd.start(theta0, objective.lower, objective.upper)
        result = calibrate_gain(objective, spsa, theta0, target, samples, optimizer=sgd)
        assert not result.fallback
        spent.append(result.evaluations)
        sgd.set_learning_rate(result.learning_rate)
        sgd.tell(spsa.estimate(objective, theta0).gradient)
        ratios.append(float(np.mean(np.abs(sgd.x - theta0))) / target)
    ratio = np.array(ratios)
    cv2 = float(ratio.var(ddof=1) / ratio.mean() ** 2)
    tolerance = 4 * ratio.std(ddof=1) / math.sqrt(repetitions) + cv2 / samples
    assert abs(ratio.mean() - 1.0) < tolerance, (ratio.mean(), tolerance)
    assert spent == [3 * samples] * repetitions  # ± pair and the unperturbed loss, each


def test_gain_calibration_counts_and_keeps_spsas_gain_sequence() -> None:
    objective, _ = landscape(dim=4, noise=0.01)
    spsa = SPSA(SPSA.Settings(c=0.1, measure_loss=False))
    result = calibrate_gain(objective, spsa, np.zeros(4), 0.1, samples=7)
    assert result.evaluations == objective.evaluations == 14
    assert result.device_seconds == pytest.approx(14 * EVAL_TIME)
    assert spsa.k == 0  # training starts at c_0 all the same
    assert result.learning_rate == pytest.approx(0.1 / result.gradient_scale)
    assert json.loads(json.dumps(result.as_dict(), allow_nan=False))["samples"] == 7


def test_adam_needs_no_measurement_for_its_rate() -> None:
    objective, _ = landscape(dim=4, noise=0.01)
    result = calibrate_gain(objective, SPSA(), np.zeros(4), 0.07, optimizer=Adam())
    assert (result.learning_rate, result.evaluations, objective.evaluations) == (0.07, 0, 0)
    assert result.as_dict()["gradient_scale"] is None


def test_a_flat_loss_falls_back_to_the_configured_rate() -> None:
    objective, _ = landscape(dim=3, minimum=[0.0, 0.0, 0.0])  # noise-free, at the minimum
    spsa = SPSA(SPSA.Settings(c=0.5))
    result = calibrate_gain(objective, spsa, np.zeros(3), 0.1, samples=3, fallback_lr=0.02)
    assert result.fallback
    assert result.learning_rate == 0.02
    assert "min_gradient" in result.note
    assert "kept lr = 0.02" in result.note
    with pytest.raises(ValueError, match="cannot calibrate the learning rate"):
        calibrate_gain(objective, spsa, np.zeros(3), 0.1, samples=3)


SIGMA = 0.01


@pytest.mark.parametrize(
    ("c0", "sizes"), [(0.01, [0.01, 0.005, 0.02, 0.04, 0.08]), (0.08, [0.08, 0.04])]
)
def test_a_quadratic_has_no_curvature_bias_so_c_grows_to_the_limit(
    c0: float, sizes: list[float]
) -> None:
    """½(θ − 1)²: a symmetric difference is exact at any c, so no size's bias is resolved (each
    comparison has a 0.3 % chance of a false alarm at bias_z = 3) and c doubles to c_max."""
    objective, _ = landscape(dim=1, noise=SIGMA, minimum=[1.0])
    result = calibrate_perturbation(
        objective, np.zeros(1), SIGMA, c0=c0, c_max=0.08, pairs=16, rng=np.random.default_rng(0)
    )
    assert result.c == 0.08
    assert [c for c, _ in result.trials] == sizes
    assert result.converged  # |ΔL| = 2c at the gradient −1 clears 2·√2·σ
    assert result.threshold == pytest.approx(2 * math.sqrt(2) * SIGMA)
    assert result.evaluations == objective.evaluations == 2 * 16 * len(sizes)
    json.dumps(result.as_dict(), allow_nan=False)


def test_more_noise_tolerates_a_larger_perturbation() -> None:
    """Rosenbrock near u = (0.5, 0.5): the symmetric-difference bias grows as c² (third
    derivative ≈ 1200), its resolution limit falls as σ/c, so the chosen c scales as σ^(1/3):
    100× the noise should allow about 4.6× the perturbation (at least 2× on the factor-2
    ladder), and both stay below the limit because the bias is resolved at large c."""
    chosen = {}
    for sigma in (0.001, 0.1):
        device = LandscapeDevice(
            LandscapeDevice.Settings(function="rosenbrock", dim=2, minimum=[0.5, 0.5], noise=sigma),
            seed=4,
        )
        objective = Objective(device, MinimizeOutputTask())
        result = calibrate_perturbation(
            objective, np.zeros(2), sigma, c0=0.5, pairs=16, rng=np.random.default_rng(5)
        )
        assert "halving" in result.note
        chosen[sigma] = result.c
    assert chosen[0.1] >= 2 * chosen[0.001]
    assert chosen[0.1] < 0.5


def test_at_a_minimum_the_differences_are_noise_and_the_result_says_so() -> None:
    objective, _ = landscape(dim=2, noise=SIGMA, minimum=[0.0, 0.0])
    result = calibrate_perturbation(
        objective, np.zeros(2), SIGMA, c0=0.01, c_max=0.08, rng=np.random.default_rng(1)
    )
    assert not result.converged
    assert result.c == 0.08
    assert "flat or noise-dominated" in result.note
    noise_free = calibrate_perturbation(objective, np.zeros(2), 0.0, c0=0.3)
    assert (noise_free.c, noise_free.evaluations) == (0.3, 0)


def test_calibrate_measures_then_sets_c_and_the_rate() -> None:
    objective, _ = landscape(dim=5, noise=0.02)
    spsa = SPSA(SPSA.Settings(c=0.2, resamples=2))
    sgd = SGD(SGD.Settings(lr=0.01))
    sgd.start(np.zeros(5), objective.lower, objective.upper)
    settings = CalibrationSettings(noise_repeats=12, target_step=0.1, perturbation=True)
    report = calibrate(objective, spsa, sgd, np.zeros(5), settings, rng=np.random.default_rng(2))
    assert report.perturbation is not None
    assert report.gain is not None
    assert spsa.settings.c == report.c == report.perturbation.c
    assert spsa.settings.resamples == 2  # the other settings stay
    assert sgd.base_learning_rate == report.learning_rate
    assert report.setting == "c"
    parts = report.noise.evaluations + report.perturbation.evaluations + report.gain.evaluations
    assert report.evaluations == parts == objective.evaluations
    data: JSONDict = json.loads(json.dumps(report.as_dict(), allow_nan=False))
    assert data["sigma"] == report.sigma
    assert data["learning_rate"] == report.learning_rate


def test_central_differences_get_their_h_calibrated_per_coordinate() -> None:
    objective, _ = landscape(dim=3, noise=0.02)
    fd = CentralDifference(CentralDifference.Settings(h=0.4))
    settings = CalibrationSettings(noise_repeats=5, perturbation=True, perturbation_trials=3)
    report = calibrate(objective, fd, None, np.zeros(3), settings, rng=np.random.default_rng(3))
    assert report.setting == "h"
    assert fd.settings.h == report.c
    assert report.gain is None
    with pytest.raises(ValueError, match="no optimizer learning rate"):
        calibrate(objective, fd, None, np.zeros(3), CalibrationSettings(target_step=0.1))


class _Fixed:
    """An estimator without a perturbation setting."""

    def estimate(self, objective: Objective, theta: FloatArray) -> GradientEstimate:
        return GradientEstimate(np.ones(objective.dim), 0.0, 0, 0.0)

    def state_dict(self) -> JSONDict:
        return {}

    def load_state_dict(self, state: JSONDict) -> None:
        pass


def test_perturbation_settings_are_found_by_name() -> None:
    assert perturbation_setting(SPSA()) == "c"
    assert perturbation_setting(CentralDifference()) == "h"
    assert perturbation_setting(_Fixed()) is None
    with pytest.raises(ValueError, match="has no `c` or `h` setting"):
        set_perturbation(_Fixed(), 0.1)
    assert CalibrationSettings.model_validate(True) == CalibrationSettings()
