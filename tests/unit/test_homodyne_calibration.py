"""Homodyne amplitude calibration: the harmonic rule and the bias–variance optimum."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest

from hil.core import Channel, DeviceSpec, FloatArray, Role
from protocols.base import Objective
from protocols.homodyne import Homodyne
from protocols.tasks import RegressionTask
from protocols.tones import check_plan
from simulators.analytic import AnalyticDevice
from simulators.sampled import Chain, Noise, SampledDevice, SampledSettings, Timing

FS = 1000.0
THETA = np.array([0.3, -0.2, 0.5, -0.6, 0.1])


class TanhDevice(SampledDevice):
    """y = Σ_i tanh(k·θ_i + x): one knob for the curvature.

    At θ = x = 0 the response of control i is tanh(k·θ_i), F' = k, F''' = −2k³, so a tone of
    amplitude A has |H3|/|H1| = A²|F'''|/(24 F') = A²k²/12 to leading order.
    """

    def __init__(self, k: float, *, n_controls: int = 2, sigma: float = 0.0, seed: int = 0):
        self.k = k
        channels = (
            Channel(name="in0", role=Role.INPUT, min=-1.0, max=1.0),
            *(
                Channel(name=f"ctrl{i}", role=Role.CONTROL, min=-1.0, max=1.0)
                for i in range(n_controls)
            ),
            Channel(name="out", role=Role.OUTPUT),
        )
        timing = Timing(sample_rate=FS, ramp_time=0.0, settle_time=1e-3)
        spec = DeviceSpec(
            name="tanh",
            channels=channels,
            sample_rate=FS,
            settle_time=timing.settle_time,
            ramp_time=timing.ramp_time,
            plateau_samples=timing.samples_per_plateau,
        )
        settings = SampledSettings(timing=timing, noise=Noise(white=sigma))
        super().__init__(spec, settings, Chain(), seed)

    def _response(self, levels: FloatArray) -> FloatArray:
        x, theta = levels[:, :1], levels[:, 1:]
        y: FloatArray = np.tanh(self.k * theta + x).sum(axis=1, keepdims=True)
        return y


def tanh_objective(k: float, sigma: float = 0.002) -> Objective:
    device = TanhDevice(k, sigma=sigma, seed=11)
    return Objective(device, RegressionTask.from_arrays([[0.0]], [0.0]))


def third_derivative(device: AnalyticDevice, theta: FloatArray, x: FloatArray) -> FloatArray:
    """∂³y/∂θ_i³ per case, by central differences of the exact Hessian's diagonal."""
    h, d = 1e-4, theta.size
    out = np.zeros((x.shape[0], d))
    for i in range(d):
        e = np.zeros(d)
        e[i] = h
        up, down = device.true_hessian(theta + e, x), device.true_hessian(theta - e, x)
        out[:, i] = (up[:, i, i] - down[:, i, i]) / (2 * h)
    return out


def test_harmonic_rule_picks_a_smaller_amplitude_on_a_more_curved_device() -> None:
    chosen = {}
    for k in (1.0, 4.0):
        objective = tanh_objective(k)
        estimator = Homodyne(Homodyne.Settings(window=0.5))
        cal = estimator.calibrate_amplitudes(objective, np.zeros(2), method="harmonic")
        # Geometric grid 1/32 … 1 of the top, a quarter of the ±1 V range: 0.015625 … 0.5 V.
        np.testing.assert_allclose(cal.grid[:, 0], 0.5 / 2.0 ** np.arange(5, -1, -1))
        # The leading-order crossing A²k²/12 = 0.01 is A* = √0.12/k: 0.346 V (k = 1) and
        # 0.087 V (k = 4), each ≥ 28 % from the nearest grid points. σ = 0.002 puts the noise
        # floor at √(S/T) = 1.3e-4 V; H3 = |F'''|A³/24 is 1.0e-2 V (≈ 80 floors) one grid point
        # above A* and 1.3e-3 V (≈ 10 floors) just below, so the pick is the grid point below A*.
        crossing = math.sqrt(12 * 0.01) / k
        assert np.all(cal.physical <= crossing)
        assert np.all(cal.physical > crossing / 2)
        # The measured ratio at the two bracketing points follows A²k²/12: the noise is ≤ 10 %
        # of H3 there (3 SDs: 30 %), the next order of tanh changes the ratio by < 6 % (Ak ≤ 0.5).
        pick = int(np.flatnonzero(np.isclose(cal.grid[:, 0], cal.physical[0]))[0])
        bracket = cal.grid[pick : pick + 2, 0]
        for i in range(2):
            np.testing.assert_allclose(
                cal.third_ratio[pick : pick + 2, i], bracket**2 * k**2 / 12, rtol=0.3
            )
        np.testing.assert_allclose(estimator.amplitudes(objective), cal.physical)
        chosen[k] = cal.physical
    assert np.all(chosen[4.0] < chosen[1.0])


def test_calibration_plan_keeps_third_harmonics_free_and_counts_the_cost() -> None:
    device = AnalyticDevice(seed=3)
    x = np.random.default_rng(42).uniform(-0.8, 0.8, size=(3, 2))
    objective = Objective(device, RegressionTask.from_arrays(x, np.zeros(3)))
    estimator = Homodyne(Homodyne.Settings(window=0.5, settle_time=0.1, ramp_time=0.05))
    before = device.clock.now()
    cal = estimator.calibrate_amplitudes(objective, THETA)
    tones = list(cal.tones)
    assert check_plan(tones, window=0.5, sample_rate=FS, bandwidth=100.0, harmonics=(3,)) == []
    # The estimation plan would not do: its 3·f0 = 6 Hz meets f1 − f0 = 8 − 2.
    assert check_plan(
        estimator.tones(objective), window=0.5, sample_rate=FS, bandwidth=100.0, harmonics=(3,)
    )
    # 2 noise records + 6 amplitudes × 1 group (parallel), per case (3); each stream is
    # ramp + settle + window + ramp.
    assert cal.evaluations == (2 + 6) * 3 == objective.evaluations
    assert cal.device_seconds == pytest.approx(24 * (0.05 + 0.1 + 0.5 + 0.05))
    assert cal.device_seconds == pytest.approx(device.clock.now() - before)
    # Noise-free, so the second harmonic (where its bin is free) grows linearly with A.
    free = np.isfinite(cal.second_ratio[-1])
    assert free.any()
    growth = cal.second_ratio[-1, free] / cal.second_ratio[-2, free]
    np.testing.assert_allclose(growth, 2.0, rtol=0.2)


def test_optimal_amplitude_matches_the_formula_with_known_noise_and_third_derivative() -> None:
    sigma, window = 0.01, 0.5
    settings = AnalyticDevice.Settings.model_validate({"noise": {"white": sigma}})
    device = AnalyticDevice(settings, seed=2)
    x = np.random.default_rng(42).uniform(-0.8, 0.8, size=(4, 2))
    objective = Objective(device, RegressionTask.from_arrays(x, np.zeros(4)))
    # Sequential sweeps: each control alone, so the fitted slope is ∂³y/∂θ_i³ without cross terms.
    estimator = Homodyne(
        Homodyne.Settings.model_validate(
            {"window": window, "mode": "sequential", "calibration": {"method": "optimal"}}
        )
    )
    cal = estimator.calibrate_amplitudes(objective, THETA)
    true_third = third_derivative(device, THETA, x)  # n_cases × d
    s_white = 2 * sigma**2 / FS  # one-sided density of white noise σ at fs
    expected = (32 * s_white * 4 / (window * np.sum(true_third**2, axis=0))) ** (1 / 6)
    # S per case: 4 bins × 2 noise records × 2 quadratures = 16 degrees of freedom; summed
    # over the 4 cases 64, relative SD √(2/64) = 0.18 (all controls share the 2 Hz tone of the
    # sequential plan, so the same bins), checked to 3 SDs. A sixth of it (3 %) reaches A.
    assert abs(float(np.mean(cal.noise_density)) / s_white - 1) < 3 * math.sqrt(2 / 64)
    # A = (32ΣS/(TΣF'''²))^{1/6}: with F''' SE ≈ 0.1 against |F'''| ≈ 1–4 on the resolved
    # controls, ΣF'''² is good to ≲ 20 % (3 SDs), i.e. 3 % in A; the unmodelled fifth-order bend
    # of the 0.5 V sweep biases F''' by up to ~20 %, i.e. ≤ 8 % in A; S adds 3 × 3 %. Total 0.2.
    resolved = cal.resolved
    assert resolved.sum() >= 3
    np.testing.assert_allclose(cal.optimal_choice[resolved], expected[resolved], rtol=0.2)
    # Unresolved F''' falls back to its upper bound: a conservative (smaller) amplitude.
    assert np.all(cal.optimal_choice[~resolved] <= 1.2 * expected[~resolved])
    np.testing.assert_array_equal(cal.physical, cal.optimal_choice)
    # The fitted F''' itself, where resolved, within 3 SE plus the 20 % fifth-order bend.
    err = np.abs(cal.third_derivative[:, 0, :] - true_third)[:, resolved]
    limit = 3 * cal.third_derivative_se[:, 0, :][:, resolved] + 0.2 * np.abs(
        true_third[:, resolved]
    )
    assert np.all(err < limit)
    # (2 noise records + 6 amplitudes × 5 groups of one control) × 4 cases.
    assert cal.evaluations == (2 + 6 * 5) * 4


def test_unresolved_third_derivative_falls_back_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # σ = 1 buries F''' = −2 (k = 1): the fit SE (≈ 8·√(S/T)/A_top³ ≈ 3) exceeds F'''.
    objective = tanh_objective(1.0, sigma=1.0)
    estimator = Homodyne(Homodyne.Settings(window=0.5))
    with caplog.at_level(logging.WARNING, logger="protocols.homodyne"):
        cal = estimator.calibrate_amplitudes(objective, np.zeros(2), method="optimal")
    assert not cal.resolved.any()
    assert "not resolved" in caplog.text
    assert np.all(cal.optimal_choice <= cal.grid[-1])
    assert np.all(cal.optimal_choice > 0)


def test_calibrated_amplitudes_are_used_and_checkpointed() -> None:
    device = AnalyticDevice(AnalyticDevice.Settings.model_validate({"control_min": -1.0}), seed=1)
    x = np.random.default_rng(0).uniform(-0.8, 0.8, size=(2, 2))
    objective = Objective(device, RegressionTask.from_arrays(x, [0.1, 0.2]), normalized=True)
    settings = Homodyne.Settings.model_validate({"calibration": {"auto": True, "points": 4}})
    estimator = Homodyne(settings)
    theta = np.zeros(5)
    est = estimator.estimate(objective, theta)
    # auto: the first estimate pays for the calibration ((2 noise records + 4 amplitudes) × 2
    # cases) and says so.
    assert est.extras["calibration_evaluations"] == 12
    assert est.evaluations == 12 + 2 + 1
    calibrated = estimator.calibrated_amplitudes
    assert calibrated is not None
    # normalized parameters: the stored amplitudes are in parameter units (V / half-span)
    np.testing.assert_allclose(estimator.amplitudes(objective), calibrated * 1.0)
    again = estimator.estimate(objective, theta)
    assert "calibration_evaluations" not in again.extras
    assert again.evaluations == 3
    state = json.loads(json.dumps(estimator.state_dict()))
    other = Homodyne(Homodyne.Settings())
    other.load_state_dict(state)
    np.testing.assert_array_equal(other.amplitudes(objective), estimator.amplitudes(objective))
    with pytest.raises(ValueError, match="positive"):
        other.load_state_dict({**state, "amplitudes": [0.1, -0.2]})
    # A checkpoint from before amplitude calibration still loads (uncalibrated).
    other.load_state_dict({"tones": None, "phases": None})
    assert other.calibrated_amplitudes is None
