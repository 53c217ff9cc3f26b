"""Homodyne gradient extraction against the analytic device's exact gradient."""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Sequence

import numpy as np
import pytest
from scipy.stats import chi2

from hil.core import ConfigError, DeviceBase, DeviceSpec, FloatArray, Streaming, VirtualClock
from hil.safety import SafetyGuard, SafetyLimits
from protocols.base import GradientEstimator, Objective
from protocols.diagnostics import oracle_gradient
from protocols.homodyne import (
    Homodyne,
    NoiseFit,
    ProductRule,
    _output_jacobian,
    demodulate,
    fit_noise,
    noise_frequencies,
    synthesize,
)
from protocols.tasks import MinimizeOutputTask, RegressionTask
from protocols.tones import check_plan, near_mains, plan_tones
from simulators.analytic import AnalyticDevice

N_CASES = 4
THETA = np.array([0.3, -0.2, 0.5, -0.6, 0.1])
AMPLITUDE = 0.02
FS = 1000.0  # the analytic device's default sample rate


def make_device(seed: int = 1, **overrides: object) -> AnalyticDevice:
    return AnalyticDevice(AnalyticDevice.Settings.model_validate(overrides), seed=seed)


def make_task(device: AnalyticDevice) -> RegressionTask:
    """Regression onto the device's outputs at another θ, shifted so the residuals are O(1)."""
    rng = np.random.default_rng(42)
    x = rng.uniform(-0.8, 0.8, size=(N_CASES, 2))
    targets = device.true_output(rng.uniform(-0.8, 0.8, size=5), x) + 0.5
    return RegressionTask.from_arrays(x, targets)


def make_estimator(**overrides: object) -> Homodyne:
    return Homodyne(Homodyne.Settings.model_validate({"amplitudes": AMPLITUDE, **overrides}))


def true_loss_gradient(
    device: AnalyticDevice, task: RegressionTask, theta: FloatArray
) -> FloatArray:
    residual = device.true_output(theta, task.inputs) - task.targets
    grad: FloatArray = 2.0 * np.mean(residual * device.true_gradient(theta, task.inputs), axis=0)
    return grad


class RecordingDevice(AnalyticDevice):
    """An analytic device that keeps every streamed waveform."""

    def __init__(self, settings: AnalyticDevice.Settings, seed: int) -> None:
        super().__init__(settings, seed=seed)
        self.waveforms: list[tuple[FloatArray, tuple[str, ...]]] = []

    def stream(self, waveform: FloatArray, channels: Sequence[str]) -> FloatArray:
        self.waveforms.append((np.array(waveform), tuple(channels)))
        return super().stream(waveform, channels)


class PlateauOnly(DeviceBase):
    """A device that measures plateaus but cannot stream."""

    def __init__(self, inner: AnalyticDevice) -> None:
        self._inner = inner

    @property
    def spec(self) -> DeviceSpec:
        return self._inner.spec

    @property
    def clock(self) -> VirtualClock:
        return self._inner.clock

    def set_controls(self, values: FloatArray) -> None:
        self._inner.set_controls(values)

    def measure(self, inputs: FloatArray) -> FloatArray:
        return self._inner.measure(inputs)

    def safe_state(self) -> None:
        self._inner.safe_state()


# -- building blocks -------------------------------------------------------------------------------


def test_synthesized_waveform_starts_and_ends_at_zero_with_whole_periods() -> None:
    tones = [2.0, 8.0, 20.0]
    wave = synthesize(
        np.array([0.5, -0.3, 0.2]),
        np.array([0.05, 0.02, 0.01]),
        tones,
        np.array([0.7, -0.4]),
        control_names=["c0", "c1", "c2"],
        input_names=["i0", "i1"],
        sample_rate=FS,
        window=0.5,
        settle_time=0.1,
        ramp_time=0.05,
    )
    assert wave.channels == ("i0", "i1", "c0", "c1", "c2")
    assert wave.samples.shape == (50 + 100 + 500 + 50, 5)
    assert wave.window == (150, 650)
    np.testing.assert_array_equal(wave.samples[0], 0.0)
    np.testing.assert_array_equal(wave.samples[-1], 0.0)
    a, b = wave.window
    np.testing.assert_allclose(wave.samples[a:b, :2], [[0.7, -0.4]] * 500)
    np.testing.assert_allclose(wave.samples[a:b, 2:].mean(axis=0), [0.5, -0.3, 0.2], atol=1e-12)
    # Demodulating the controls themselves returns their amplitudes in X and nothing in Y.
    x, y = demodulate(wave.samples[a:b, 2:], tones, FS, (a - wave.tone_start) / FS)
    np.testing.assert_allclose(np.diag(x), [0.05, 0.02, 0.01], atol=1e-12)
    np.testing.assert_allclose(x - np.diag(np.diag(x)), 0.0, atol=1e-12)
    np.testing.assert_allclose(y, 0.0, atol=1e-12)


def _one_tone(tone: float, settle_time: float) -> None:
    synthesize(
        np.zeros(1),
        np.ones(1),
        [tone],
        np.zeros(0),
        control_names=["c0"],
        input_names=[],
        sample_rate=FS,
        window=0.5,
        settle_time=settle_time,
        ramp_time=0.01,
    )


def test_incoherent_tone_or_fractional_window_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="whole cycles"):
        _one_tone(2.5, 0.0)
    with pytest.raises(ConfigError, match="whole number of samples"):
        _one_tone(2.0, 1e-4)


def test_noise_frequencies_avoid_tones_and_their_products() -> None:
    tones = [2.0, 8.0, 20.0, 34.0, 58.0]
    noise = noise_frequencies(tones, 0.5, FS, 16)
    assert len(noise) == 16
    bins = [round(f * 0.5) for f in tones]
    products = {abs(i + j) for i in bins + [-b for b in bins] for j in bins + [-b for b in bins]}
    triples = {abs(p + k) for p in products for k in bins + [-b for b in bins]}
    for f in noise:
        m = round(f * 0.5)
        assert m not in set(bins) | products | triples | {0}
        assert abs(f - 50.0 * round(f / 50.0)) >= 2.0 or round(f / 50.0) == 0


def test_noise_bins_follow_the_planners_mains_rule() -> None:
    # T = 10 s: 1/T = 0.1 Hz, so the planner's guard of 0.5 Hz is what keeps bins off mains.
    window, tones = 10.0, [2.0, 60.0]
    noise = np.array(noise_frequencies(tones, window, FS, 500))
    assert noise.size == 500
    assert noise.min() < 45.0
    assert noise.max() > 55.0
    assert not np.any(near_mains(noise, window=window))  # ... but keep the planner's distance
    assert np.min(np.abs(noise - 50.0)) >= 0.5
    # The planner refuses a tone there by the same rule, and accepts one just outside.
    assert check_plan([2.0, 50.3], window=window, sample_rate=FS, bandwidth=100.0)
    assert check_plan([2.0, 50.5], window=window, sample_rate=FS, bandwidth=100.0) == []
    assert near_mains(50.3, window=window)
    assert not near_mains(50.5, window=window)


def test_noise_fit_keeps_the_white_floor_and_recovers_a_power_law() -> None:
    rng = np.random.default_rng(0)
    freqs = np.arange(1.0, 65.0, 4.0)  # 16 bins, 1–61 Hz
    # White: no resolved slope, so each stream's level is the plain average of its bins (the
    # floor the SE used before) and the density is that level at every frequency.
    white = [[rng.exponential(2.0, size=(16, 1))] for _ in range(N_CASES)]
    fit = fit_noise(white, [freqs.tolist()])
    assert fit.exponent[0] == 0.0
    np.testing.assert_allclose(fit.level[:, 0, 0], [w[0].mean() for w in white], rtol=1e-12)
    np.testing.assert_allclose(fit.density(3.0, 0), fit.level[:, 0, :], rtol=1e-12)
    # 1/f, S = 10/f, 8 streams: the exponent within 3.5 of its standard errors; inside the span
    # S averaged over the streams within 3.5 SDs of the fit (the levels' 1/√(16·8) and the
    # slope's SE times the log distance from the bins' geometric mean); held at the edges.
    streams = 8
    flicker = [
        [10.0 / freqs[:, np.newaxis] * rng.exponential(size=(16, 1))] for _ in range(streams)
    ]
    fit = fit_noise(flicker, [freqs.tolist()])
    se_b = float(fit.exponent_se[0])
    assert abs(fit.exponent[0] + 1.0) < 3.5 * se_b
    for f in (3.0, 20.0, 55.0):
        ratio = float(np.mean(fit.density(f, 0)[:, 0])) / (10.0 / f)
        sd = math.sqrt(1 / (16 * streams) + (math.log(f / fit.reference) * se_b) ** 2)
        assert abs(ratio - 1) < 3.5 * sd, (f, ratio, sd)
    np.testing.assert_allclose(fit.density(0.1, 0), fit.density(1.0, 0), rtol=1e-12)
    np.testing.assert_allclose(fit.density(500.0, 0), fit.density(61.0, 0), rtol=1e-12)


def test_noise_band_power_integrates_the_fitted_spectrum() -> None:
    """∫₀^B S df in closed form: S·B for white noise, the held edges outside the span."""
    fit = NoiseFit(
        level=np.array([[[2.0, 2.0, 2.0]]]),
        exponent=np.array([0.0, -1.0, -0.4]),
        exponent_se=np.full(3, 0.1),
        reference=10.0,
        span=np.array([[4.0, 40.0]]),
    )
    for bandwidth in (1.0, 4.0, 25.0, 40.0, 500.0):
        f = np.linspace(0.0, bandwidth, 400_001)
        s = 2.0 * (np.clip(f, 4.0, 40.0)[:, np.newaxis] / 10.0) ** fit.exponent
        np.testing.assert_allclose(
            fit.band_power(bandwidth)[0], np.trapezoid(s, f, axis=0), rtol=1e-6
        )
        assert fit.band_power(bandwidth)[0, 0] == pytest.approx(2.0 * bandwidth)


def test_a_zero_amplitude_control_holds_its_level_whatever_its_tone() -> None:
    wave = synthesize(
        np.array([0.5, -0.3]),
        np.array([0.05, 0.0]),
        [2.0, 0.0],  # the second tone is ignored: not coherent, but silent
        np.zeros(0),
        control_names=["c0", "c1"],
        input_names=[],
        sample_rate=FS,
        window=0.5,
        settle_time=0.0,
        ramp_time=0.01,
    )
    a, b = wave.window
    np.testing.assert_array_equal(wave.samples[a:b, 1], -0.3)
    assert float(np.ptp(wave.samples[a:b, 0])) == pytest.approx(0.1, abs=1e-3)


# -- the demodulated device gradient ---------------------------------------------------------------


def test_noise_free_gradient_matches_true_gradient_up_to_a_squared_bias() -> None:
    errors = []
    for amplitude in (0.04, 0.02, 0.01):
        device = make_device()
        task = make_task(device)
        objective = Objective(device, task)
        measured = make_estimator(amplitudes=amplitude).device_gradient(objective, THETA)
        true = device.true_gradient(THETA, task.inputs)
        errors.append(float(np.max(np.abs(measured.gradient[:, 0, :] - true))))
    assert errors[0] < 5e-3
    # Halving the amplitude quarters the third-order bias.
    for big, small in itertools.pairwise(errors):
        assert 3.5 < big / small < 4.5


def test_white_noise_gradient_is_unbiased_and_its_standard_error_is_calibrated() -> None:
    sigma, repeats, window = 0.01, 30, 0.5
    device = make_device(seed=5, noise={"white": sigma})
    task = make_task(device)
    objective = Objective(device, task)
    estimator = make_estimator(window=window)
    true = device.true_gradient(THETA, task.inputs)
    errors, stderrs = [], []
    for _ in range(repeats):
        measured = estimator.device_gradient(objective, THETA)
        errors.append(measured.gradient[:, 0, :] - true)
        stderrs.append(measured.stderr[:, 0, :])
    err, se = np.array(errors), np.array(stderrs)
    spread = err.std(axis=0, ddof=1)
    z = err.mean(axis=0) / (spread / math.sqrt(repeats))
    assert np.all(np.abs(z) < 3.0), z
    # Reported SE against the empirical spread, pooled over the controls of each case.
    pooled = np.sqrt(np.mean(err**2, axis=(0, 2)))
    ratio = se.mean(axis=(0, 2)) / pooled
    assert np.all((ratio > 1 / 1.3) & (ratio < 1.3)), ratio
    # And both sit at the white-noise limit √(S/T)/A with S = 2σ²/fs.
    limit = math.sqrt(2 * sigma**2 / FS / window) / AMPLITUDE
    assert 0.85 < float(np.sqrt(np.mean(err**2))) / limit < 1.15
    assert 0.9 < float(se.mean()) / limit < 1.1


def test_flicker_noise_standard_errors_follow_the_noise_at_each_tone() -> None:
    """Strong 1/f noise: the SE of the lowest and the highest tone each match the spread.

    The tones lie on a 5 Hz grid (what `plan_tones` gives for T = 0.2 s) and are demodulated
    over T = 1 s, so free bins (every 1 Hz off the 5 Hz grid) lie next to every tone. With
    S(f) = 1.6e-6/f + 2e-9 (units²/Hz; the 1/f corner at 800 Hz) S falls 22-fold from the 5 Hz
    to the 125 Hz tone.

    Over `repeats` estimates the SD of each coordinate is pooled over the cases about each case's
    mean: ν = cases·(repeats − 1) degrees of freedom. If the reported SE (root mean square over
    the repeats; its own scatter, ~17 % per estimate, averages to < 2 %) is right, ν·spread²/SE²
    is χ²_ν, and SE/spread lies within the two-sided 0.1 % quantiles, ≈ [0.92, 1.09] here.
    Measured with this seed: 0.996 at 5 Hz and 0.971 at 125 Hz (a bend the single power law
    does not follow, ~3 % low; another seed 0.95 and 0.98). The band-averaged floor the SE used
    before (`noise_density`: S averaged over the 16 bins, 1–126 Hz) gave 0.67 at 5 Hz and 3.1 at
    125 Hz: far outside.
    """
    repeats, window = 200, 1.0
    tones = [5.0, 25.0, 70.0, 85.0, 125.0]
    noise = {"flicker_psd": 1.6e-7, "flicker_f_ref": 10.0, "white": 0.001}
    device = make_device(seed=3, noise=noise)
    task = make_task(device)
    objective = Objective(device, task)
    estimator = make_estimator(window=window, tones=tones)
    bins = noise_frequencies(tones, window, FS, estimator.settings.noise_bins)
    assert min(bins) < min(tones)  # the bins span the tones
    assert max(bins) > max(tones)
    grads, stderrs, floors = [], [], []
    for _ in range(repeats):
        measured = estimator.device_gradient(objective, THETA)
        assert measured.noise_density is not None
        grads.append(measured.gradient[:, 0, :])
        stderrs.append(measured.stderr[:, 0, :])
        floors.append(np.sqrt(measured.noise_density[:, 0] / window) / AMPLITUDE)
    g, se = np.array(grads), np.array(stderrs)
    dof = N_CASES * (repeats - 1)
    spread = np.sqrt(np.sum((g - g.mean(axis=0)) ** 2, axis=(0, 1)) / dof)
    ratio = np.sqrt(np.mean(se**2, axis=(0, 1))) / spread
    low, high = np.sqrt(dof / chi2.ppf([1 - 5e-4, 5e-4], dof))
    for i in (0, len(tones) - 1):  # the lowest and the highest tone
        assert low < ratio[i] < high, (tones[i], ratio)
    assert float(np.mean(se[:, :, 0]) / np.mean(se[:, :, -1])) > 3.0
    # The old band-averaged floor, one SE for all tones, fails at both ends.
    old = math.sqrt(float(np.mean(np.array(floors) ** 2))) / spread
    assert old[0] < low, old
    assert old[-1] > high, old


def test_phase_calibration_recovers_the_filtered_gradient() -> None:
    estimator = make_estimator()
    probe = make_device()
    tones = np.array(estimator.tones(Objective(probe, make_task(probe))))
    device = make_device(cutoff=2.5 * float(tones.max()))
    task = make_task(device)
    objective = Objective(device, task)
    h = np.asarray(device.lowpass_response(tones))
    true = device.true_gradient(THETA, task.inputs)

    uncalibrated = estimator.device_gradient(objective, THETA).gradient[:, 0, :]
    np.testing.assert_allclose(uncalibrated, true * np.real(h), rtol=0, atol=2e-3)

    phases = estimator.calibrate_phase(objective, THETA)
    np.testing.assert_allclose(phases, np.angle(h), rtol=0, atol=1e-3)
    assert estimator.phases is not None
    calibrated = estimator.device_gradient(objective, THETA).gradient[:, 0, :]
    np.testing.assert_allclose(calibrated, true * np.abs(h), rtol=0, atol=2e-3)
    # The phase correction matters: without it the top tone loses cos φ of its gain.
    assert float(np.max(np.abs(uncalibrated - true * np.abs(h)))) > 1e-2


# -- the estimator ---------------------------------------------------------------------------------


def test_loss_gradient_is_the_chain_rule_of_the_true_gradient() -> None:
    device = make_device()
    task = make_task(device)
    objective = Objective(device, task)
    estimator = make_estimator()
    assert isinstance(estimator, GradientEstimator)
    est = estimator.estimate(objective, THETA)
    expected = true_loss_gradient(device, task, THETA)
    np.testing.assert_allclose(est.gradient, expected, rtol=0, atol=2e-3 * np.abs(expected).max())
    assert est.loss == pytest.approx(task.loss(device.true_output(THETA, task.inputs)))
    assert est.stderr is not None
    assert est.stderr.shape == (5,)


def test_output_jacobian_of_the_mse_is_its_constant_hessian() -> None:
    device = make_device()
    task = make_task(device)
    outputs = device.true_output(THETA, task.inputs)
    jac = _output_jacobian(task, outputs, np.full(outputs.shape, 0.1))
    expected = np.eye(N_CASES).reshape(N_CASES, 1, N_CASES, 1) * 2.0 / N_CASES
    np.testing.assert_allclose(jac, expected, atol=1e-12)
    # a zero step (a noise-free output) leaves its column out
    step = np.full(outputs.shape, 0.1)
    step[1] = 0.0
    np.testing.assert_array_equal(_output_jacobian(task, outputs, step)[:, :, 1], 0.0)


def test_loss_gradient_is_unbiased_and_its_standard_error_includes_the_output_noise() -> None:
    """Repeated estimates: the mean is the true loss gradient, the spread the reported SE.

    Targets 0.05 from the outputs make ∂L/∂y small, so most of the variance comes from the
    noise of the measured outputs ∂L/∂y is evaluated at — the part an SE of
    Σ(∂L/∂y)²SE(∂y/∂θ)² alone would miss.
    """
    repeats = 120
    device = make_device(seed=7, noise={"white": 0.02})
    x = np.random.default_rng(42).uniform(-0.8, 0.8, size=(N_CASES, 2))
    signs = np.array([1.0, -1.0, 1.0, -1.0])[:, np.newaxis]
    task = RegressionTask.from_arrays(x, device.true_output(THETA, x) + 0.05 * signs)
    objective = Objective(device, task)
    estimator = make_estimator()
    runs = [estimator.estimate(objective, THETA) for _ in range(repeats)]
    grads = np.array([r.gradient for r in runs])
    stderr = np.array([r.stderr for r in runs if r.stderr is not None])
    share = float(np.mean([r.extras["output_noise_share"] for r in runs]))
    spread = grads.std(axis=0, ddof=1)
    # Unbiased: the mean within 3.5 standard errors of the mean (5 coordinates; the third-order
    # bias A²F‴/8 ≈ 5e-5·F‴ is far below spread/√repeats ≥ 3e-4).
    true = true_loss_gradient(device, task, THETA)
    z = (grads.mean(axis=0) - true) / (spread / math.sqrt(repeats))
    assert np.all(np.abs(z) < 3.5), z
    # A sample SD over n repeats has relative SD 1/√(2(n−1)) = 0.065 here; the reported SE is
    # averaged over the repeats (its own scatter is negligible). The coordinates share the
    # output noise, so the pooled ratio gets no more degrees of freedom than one coordinate:
    # 3 SDs pooled, 3.5 per coordinate.
    rel = 1 / math.sqrt(2 * (repeats - 1))
    per_coordinate = spread / np.sqrt(np.mean(stderr**2, axis=0))
    pooled = math.sqrt(float(np.sum(spread**2) / np.sum(np.mean(stderr**2, axis=0))))
    assert np.all(np.abs(per_coordinate - 1) < 3.5 * rel), per_coordinate
    assert abs(pooled - 1) < 3 * rel, pooled
    # Without the output-noise term the pooled ratio would be pooled/√(1 − share): far out.
    assert share > 0.5
    assert pooled / math.sqrt(1 - share) - 1 > 3 * rel


def test_sequential_and_grouped_modes_agree_with_parallel_and_cost_more_streams() -> None:
    device = make_device(seed=5, noise={"white": 0.01})
    task = make_task(device)
    objective = Objective(device, task)
    stream = 0.05 + 0.1 + 0.5 + 0.05  # ramp, settle, window, ramp
    plateau = N_CASES * device.spec.plateau_time()  # the loss measurement
    runs = {}
    for mode, groups in (("parallel", 1), ("grouped", 3), ("sequential", 5)):
        estimator = make_estimator(mode=mode, group_size=2)
        assert len(estimator.groups(objective)) == groups
        est = estimator.estimate(objective, THETA)
        assert est.evaluations == N_CASES * groups + 1
        assert est.extras["streams"] == N_CASES * groups
        assert est.device_seconds == pytest.approx(N_CASES * groups * stream + plateau)
        runs[mode] = est
    # One tone per stream: the plan is the lowest bin of the 2/T grid; groups of two need
    # fewer, lower tones.
    assert runs["sequential"].extras["f_max"] == 4.0
    assert runs["grouped"].extras["f_max"] < runs["parallel"].extras["f_max"]
    # Same gradient within noise: each difference is between independent estimates, so its SD
    # is √(SE₁² + SE₂²); 3.5 of those over 10 comparisons. (The cross-term bias of parallel
    # dithering, A²F_ijj/4 ≈ 1e-4·F_ijj, is far below.)
    base = runs["parallel"]
    assert base.stderr is not None
    for mode in ("grouped", "sequential"):
        other = runs[mode]
        assert other.stderr is not None
        z = (other.gradient - base.gradient) / np.hypot(other.stderr, base.stderr)
        assert np.all(np.abs(z) < 3.5), (mode, z)
    # And noise-free, all three agree with the true gradient to the O(A²) bias.
    quiet = make_device()
    quiet_objective = Objective(quiet, make_task(quiet))
    expected = true_loss_gradient(quiet, make_task(quiet), THETA)
    for mode in ("parallel", "grouped", "sequential"):
        got = make_estimator(mode=mode, group_size=2).estimate(quiet_objective, THETA).gradient
        np.testing.assert_allclose(got, expected, rtol=0, atol=2e-3 * np.abs(expected).max())


def test_phase_calibration_works_per_group() -> None:
    device = make_device(cutoff=150.0)
    objective = Objective(device, make_task(device))
    estimator = make_estimator(mode="grouped", group_size=2)
    tones = np.array(estimator.tones(objective))
    phases = estimator.calibrate_phase(objective, THETA)
    np.testing.assert_allclose(phases, np.angle(device.lowpass_response(tones)), atol=1e-3)


def test_normalized_objective_gets_the_gradient_in_parameter_space() -> None:
    device = make_device(control_min=-1.0, control_max=0.6)
    task = make_task(device)
    objective = Objective(device, task, normalized=True)
    theta = objective.parameters(np.array([0.3, -0.2, 0.4, -0.6, 0.1]))
    span = 1.6
    estimator = make_estimator(amplitudes=AMPLITUDE / (span / 2))  # the same 0.02 V tones
    est = estimator.estimate(objective, theta)
    expected = true_loss_gradient(device, task, objective.physical(theta)) * span / 2
    np.testing.assert_allclose(estimator.amplitudes(objective), AMPLITUDE)
    np.testing.assert_allclose(est.gradient, expected, rtol=0, atol=2e-3 * np.abs(expected).max())


def test_evaluations_and_device_seconds_are_accounted() -> None:
    device = make_device()
    objective = Objective(device, make_task(device))
    estimator = make_estimator(window=0.5, settle_time=0.1, ramp_time=0.05)
    before = device.clock.now()
    est = estimator.estimate(objective, THETA)
    assert est.evaluations == N_CASES + 1 == objective.evaluations
    assert est.device_seconds == pytest.approx(device.clock.now() - before)
    streams = N_CASES * (0.05 + 0.1 + 0.5 + 0.05)
    plateaus = N_CASES * device.spec.plateau_time()
    assert est.device_seconds == pytest.approx(streams + plateaus)
    no_loss = make_estimator(measure_loss=False).estimate(objective, THETA)
    assert no_loss.evaluations == N_CASES


def test_streams_start_and_end_at_zero_and_pass_the_safety_guard() -> None:
    settings = AnalyticDevice.Settings.model_validate(
        {"max_slew": 200.0, "timing": {"ramp_time": 0.01}}
    )
    device = RecordingDevice(settings, seed=3)
    guard = SafetyGuard(device, SafetyLimits(max_abs_voltage=1.0))
    assert isinstance(guard, Streaming)
    task = make_task(device)
    objective = Objective(guard, task)
    objective.outputs(THETA)  # leaves the controls at θ and the inputs at the last case
    est = make_estimator().estimate(objective, THETA)
    names = ("in0", "in1", "ctrl0", "ctrl1", "ctrl2", "ctrl3", "ctrl4")
    tones = [(w, c) for w, c in device.waveforms if c == names]
    assert len(tones) == N_CASES
    for waveform, _ in tones:
        np.testing.assert_array_equal(waveform[0], 0.0)
        np.testing.assert_array_equal(waveform[-1], 0.0)
    # The guard parked the held inputs before the first waveform: every transition the device
    # saw, into and within each stream, stays within the slew limit.
    assert len(device.waveforms) == N_CASES + 1
    held = dict.fromkeys(names, 0.0)
    held.update(zip(names[:2], objective.device_inputs[-1], strict=True))
    for waveform, channels in device.waveforms:
        start = np.array([held[c] for c in channels])
        path = np.vstack([start, waveform])
        assert float(np.max(np.abs(np.diff(path, axis=0)))) * FS <= 200.0 * (1 + 1e-9)
        held.update(zip(channels, waveform[-1], strict=True))
    assert np.all(np.isfinite(est.gradient))


def test_a_non_streaming_device_is_a_config_error() -> None:
    device = PlateauOnly(make_device())
    objective = Objective(device, make_task(make_device()))
    with pytest.raises(ConfigError, match="does not stream"):
        make_estimator().estimate(objective, THETA)
    assert objective.evaluations == 0


def test_tones_at_the_edge_shift_the_dc_level_inward() -> None:
    device = make_device()
    objective = Objective(device, make_task(device))
    theta = np.array([1.0, -1.0, 0.0, 0.0, 0.0])
    est = make_estimator().estimate(objective, theta)
    assert est.extras["shifted"] == 2.0


def test_state_dict_round_trips_the_calibrated_phases() -> None:
    device = make_device(cutoff=150.0)
    objective = Objective(device, make_task(device))
    estimator = make_estimator()
    assert estimator.state_dict() == {"tones": None, "phases": None, "amplitudes": None}
    estimator.calibrate_phase(objective, THETA)
    state = json.loads(json.dumps(estimator.state_dict()))
    other = make_estimator()
    other.load_state_dict(state)
    assert other.phases is not None
    assert estimator.phases is not None
    np.testing.assert_array_equal(other.phases, estimator.phases)
    with pytest.raises(ValueError, match="unknown keys"):
        other.load_state_dict({"tones": None, "phases": None, "k": 1})
    # Phases belong to their tones: a different plan refuses them.
    moved = make_estimator(window=1.0, tone_grid=1)
    moved.load_state_dict(state)
    with pytest.raises(ConfigError, match="calibrate_phase"):
        moved.estimate(objective, THETA)


def test_explicit_tones_must_be_one_per_control_and_coherent() -> None:
    device = make_device()
    objective = Objective(device, make_task(device))
    with pytest.raises(ConfigError, match="3 given for 5 controls"):
        make_estimator(tones=[2.0, 8.0, 20.0]).estimate(objective, THETA)
    with pytest.raises(ConfigError, match="coherent"):
        make_estimator(tones=[2.0, 8.0, 20.0, 34.0, 57.5]).estimate(objective, THETA)
    planned_estimator = make_estimator()
    tones = planned_estimator.tones(objective)
    assert all(round(f * 0.5) % 2 == 0 for f in tones)  # the default grid k/T = 2/T = 4 Hz
    explicit = make_estimator(tones=tones).estimate(objective, THETA)
    planned = planned_estimator.estimate(objective, THETA)
    np.testing.assert_allclose(explicit.gradient, planned.gradient, rtol=0, atol=1e-12)


@pytest.mark.parametrize("window", [0.1, 0.2, 0.5, 2.0])
def test_auto_mode_takes_the_fewest_streams_whose_tones_fit_the_window(window: float) -> None:
    """Mode 'auto' on 5 controls: the groups are as even as their count allows, each group's
    plan fits the window on the 2/T grid, and with one stream fewer a group would not fit. It
    estimates the same gradient as parallel dithering would."""
    device = make_device()
    objective = Objective(device, make_task(device))
    estimator = make_estimator(mode="auto", window=window)
    groups = estimator.groups(objective)
    sizes = [len(g) for g in groups]
    assert sorted(itertools.chain.from_iterable(groups)) == list(range(5))
    assert max(sizes) - min(sizes) <= 1
    plan_tones(max(sizes), window=window / 2, sample_rate=FS, bandwidth=100.0)  # else raises
    if len(groups) > 1:  # one stream fewer would put more tones in a group than fit
        with pytest.raises(ValueError, match="tones"):
            plan_tones(
                math.ceil(5 / (len(groups) - 1)), window=window / 2, sample_rate=FS, bandwidth=100.0
            )
    est = estimator.estimate(objective, THETA)
    expected = true_loss_gradient(device, make_task(device), THETA)
    np.testing.assert_allclose(est.gradient, expected, rtol=0, atol=2e-3 * np.abs(expected).max())


def test_a_product_rule_fits_many_controls_in_one_stream_without_visible_bias() -> None:
    """20 controls at 5 mV: every 2nd/3rd-order product is below 0.1 of the noise in a bin, so
    with the rule all 20 share one 0.5 s stream, where planning against every product needs
    several. The one-stream estimate agrees with the exact gradient within its standard errors
    (|z| < 4 on all 20: products on tones would show as a bias)."""
    device = make_device(
        seed=3, n_inputs=0, n_controls=20, noise={"white": 0.05}, timing={"sample_rate": FS}
    )
    objective = Objective(device, MinimizeOutputTask())
    theta = np.random.default_rng(0).uniform(-0.4, 0.4, 20)
    rule = ProductRule(noise_density=2 * 0.05**2 / FS, second=1.0, third=1.0)
    every = make_estimator(window=0.5, amplitudes=0.005, mode="auto")
    ruled = make_estimator(window=0.5, amplitudes=0.005, mode="auto", products=rule)
    assert len(every.groups(objective)) >= 2
    assert len(ruled.groups(objective)) == 1
    est = ruled.estimate(objective, theta)
    truth = oracle_gradient(objective, theta, device).gradient
    assert est.stderr is not None
    z = (est.gradient - truth) / est.stderr
    assert np.all(np.abs(z) < 4), z
