"""AnalyticDevice: the oracle is right, the noise has the stated size, time and state are exact."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from hil.core import Device, FloatArray, SafetyViolation, Stateful, Streaming
from simulators.analytic import AnalyticDevice


def make_device(seed: int = 1, **overrides: object) -> AnalyticDevice:
    return AnalyticDevice(AnalyticDevice.Settings.model_validate(overrides), seed=seed)


def random_point(seed: int, n_cases: int = 6) -> tuple[FloatArray, FloatArray]:
    """A control vector and input rows inside the default ranges."""
    rng = np.random.default_rng(seed)
    return rng.uniform(-0.9, 0.9, size=5), rng.uniform(-0.9, 0.9, size=(n_cases, 2))


def test_implements_the_device_capabilities() -> None:
    device = make_device()
    assert isinstance(device, Device)
    assert isinstance(device, Streaming)
    assert isinstance(device, Stateful)
    assert [c.name for c in device.spec.inputs] == ["in0", "in1"]
    assert [c.name for c in device.spec.controls] == [f"ctrl{i}" for i in range(5)]
    assert [(c.name, c.unit) for c in device.spec.outputs] == [("out", "V")]


def test_gradient_matches_finite_differences_of_true_output() -> None:
    device = make_device()
    theta, x = random_point(0)
    h = 1e-5  # truncation ~h²·|y'''| ≈ 1e-9, rounding ~1e-16·|y|/h ≈ 1e-10
    fd = np.empty((x.shape[0], 5))
    for i in range(5):
        e = np.zeros(5)
        e[i] = h
        diff = device.true_output(theta + e, x) - device.true_output(theta - e, x)
        fd[:, i] = diff[:, 0] / (2 * h)
    np.testing.assert_allclose(device.true_gradient(theta, x), fd, rtol=0, atol=1e-7)


def test_hessian_matches_finite_differences_of_true_gradient() -> None:
    device = make_device()
    theta, x = random_point(1)
    h = 1e-5
    fd = np.empty((x.shape[0], 5, 5))
    for i in range(5):
        e = np.zeros(5)
        e[i] = h
        diff = device.true_gradient(theta + e, x) - device.true_gradient(theta - e, x)
        fd[:, :, i] = diff / (2 * h)
    hess = device.true_hessian(theta, x)
    np.testing.assert_allclose(hess, fd, rtol=0, atol=1e-7)
    np.testing.assert_array_equal(hess, np.swapaxes(hess, 1, 2))


def test_oracle_accepts_one_theta_per_case() -> None:
    device = make_device()
    theta, x = random_point(2)
    rows = np.tile(theta, (x.shape[0], 1))
    np.testing.assert_allclose(device.true_output(rows, x), device.true_output(theta, x))
    with pytest.raises(ValueError, match="theta"):
        device.true_output(np.zeros(4), x)


def test_identical_seeds_give_identical_measurements() -> None:
    theta, x = random_point(3)
    runs = []
    for seed in (7, 7, 8):
        device = make_device(seed)
        device.set_controls(theta)
        runs.append(device.measure(x))
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2])


def test_model_seed_selects_the_function() -> None:
    theta, x = random_point(4)
    y0 = make_device(model_seed=0).true_output(theta, x)
    np.testing.assert_array_equal(y0, make_device(seed=99, model_seed=0).true_output(theta, x))
    assert not np.allclose(y0, make_device(model_seed=1).true_output(theta, x))


def test_plateau_noise_is_sigma_over_root_n() -> None:
    sigma, n = 0.01, 16
    device = make_device(noise_std=sigma, samples_per_plateau=n)
    theta, _ = random_point(5)
    x = np.random.default_rng(5).uniform(-1, 1, size=(4000, 2))
    device.set_controls(theta)
    residual = (device.measure(x) - device.true_output(theta, x))[:, 0]
    expected = sigma / math.sqrt(n)
    std = residual.std(ddof=1)
    se_std = expected / math.sqrt(2 * (residual.size - 1))  # standard error of a Gaussian std
    assert abs(std - expected) < 4 * se_std
    assert abs(residual.mean()) < 4 * expected / math.sqrt(residual.size)


def test_clock_advances_by_settle_plus_samples_per_plateau() -> None:
    device = make_device(settle_time=2e-3, samples_per_plateau=25, sample_rate=5e3)
    _, x = random_point(6, n_cases=7)
    t = device.clock.now()
    device.measure(x)
    for _ in range(7):  # one advance per plateau, as the device does
        t += 2e-3 + 25 / 5e3
    assert device.clock.now() == t
    assert device.measurements == 7
    device.set_controls(np.zeros(5))  # a DC change alone costs nothing here
    assert device.clock.now() == t


def test_state_round_trip_reproduces_the_future_exactly() -> None:
    theta, x = random_point(7)
    device = make_device(seed=3)
    device.set_controls(theta)
    device.measure(x)
    state = json.loads(json.dumps(device.state_dict()))
    expected = (device.measure(x), device.stream(np.full((20, 1), 0.3), ["in0"]))
    restored = make_device(seed=12345)
    restored.load_state_dict(state)
    np.testing.assert_array_equal(restored.controls, theta)
    assert restored.measurements == x.shape[0]
    got = (restored.measure(x), restored.stream(np.full((20, 1), 0.3), ["in0"]))
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])
    assert restored.clock.now() == device.clock.now()
    assert restored.measurements == device.measurements


@pytest.mark.parametrize("bad", [1.5, -1.01, math.nan, math.inf])
def test_refuses_out_of_range_controls_and_keeps_the_old_ones(bad: float) -> None:
    device = make_device()
    theta, _ = random_point(8)
    device.set_controls(theta)
    request = theta.copy()
    request[3] = bad
    with pytest.raises(SafetyViolation) as info:
        device.set_controls(request)
    assert info.value.channel == "ctrl3"
    np.testing.assert_array_equal(device.controls, theta)


def test_refuses_out_of_range_inputs_before_measuring() -> None:
    device = make_device()
    _, x = random_point(9)
    x[2, 1] = 1.2
    with pytest.raises(SafetyViolation, match="in1"):
        device.measure(x)
    assert device.clock.now() == 0.0
    assert device.measurements == 0


def test_shape_errors_are_value_errors() -> None:
    device = make_device()
    with pytest.raises(ValueError, match="controls"):
        device.set_controls(np.zeros(4))
    with pytest.raises(ValueError, match="inputs"):
        device.measure(np.zeros((3, 3)))


def test_controls_property_is_a_copy_and_safe_state_zeroes() -> None:
    device = make_device()
    theta, _ = random_point(10)
    device.set_controls(theta)
    device.controls[0] = 0.5
    np.testing.assert_array_equal(device.controls, theta)
    with device:
        pass
    np.testing.assert_array_equal(device.controls, np.zeros(5))


def test_stream_mean_matches_measure() -> None:
    sigma, n, samples, plateaus = 0.02, 10, 5000, 500
    device = make_device(noise_std=sigma, samples_per_plateau=n)
    theta, x = random_point(11, n_cases=1)
    device.set_controls(theta)
    t0 = device.clock.now()
    trace = device.stream(np.tile(x, (samples, 1)), ["in0", "in1"])  # controls held at θ
    assert trace.shape == (samples, 1)
    assert device.clock.now() - t0 == samples / 1000.0  # default sample rate
    plateau = device.measure(np.tile(x, (plateaus, 1)))
    se = math.hypot(sigma / math.sqrt(samples), sigma / math.sqrt(n * plateaus))
    assert abs(trace.mean() - plateau.mean()) < 4 * se
    truth = float(device.true_output(theta, x)[0, 0])
    assert abs(trace.mean() - truth) < 4 * sigma / math.sqrt(samples)
    np.testing.assert_array_equal(device.controls, theta)


def test_noise_free_stream_follows_the_waveform_sample_by_sample() -> None:
    device = make_device(noise_std=0.0)
    theta, _ = random_point(12)
    device.set_controls(theta)
    ramp = np.linspace(-0.5, 0.5, 50)
    trace = device.stream(np.column_stack([ramp, -ramp]), ["ctrl1", "in0"])
    rows = np.tile(theta, (50, 1))
    rows[:, 1] = ramp
    x = np.column_stack([-ramp, np.zeros(50)])  # in1 not named: held at zero
    np.testing.assert_allclose(trace, device.true_output(rows, x), rtol=0, atol=1e-12)


def test_stream_refuses_bad_channels_and_fast_slews() -> None:
    device = make_device(max_slew=10.0, ramp_time=0.01, sample_rate=1000.0)
    with pytest.raises(ValueError, match="output"):
        device.stream(np.zeros((3, 1)), ["out"])
    with pytest.raises(KeyError):
        device.stream(np.zeros((3, 1)), ["nope"])
    with pytest.raises(SafetyViolation, match="ctrl0"):
        device.stream(np.array([[0.0], [0.02]]), ["ctrl0"])  # 20 V/s > 10 V/s
    device.stream(np.array([[0.0], [0.005]]), ["ctrl0"])  # 5 V/s is fine


def test_settings_reject_unknown_keys_and_empty_ranges() -> None:
    with pytest.raises(ValueError, match="extra"):
        AnalyticDevice.Settings.model_validate({"noise": 1.0})
    with pytest.raises(ValueError, match="control_min"):
        AnalyticDevice.Settings(control_min=1.0, control_max=1.0)


def test_ramp_time_is_charged_and_required_by_a_slew_limit() -> None:
    with pytest.raises(ValueError, match="needs ramp_time > 0"):
        make_device(max_slew=10.0)
    device = make_device(ramp_time=0.004, settle_time=0.001, samples_per_plateau=5)
    assert device.spec.ramp_time == 0.004
    device.measure(np.zeros((3, 2)))
    assert device.clock.now() == pytest.approx(3 * (0.004 + 0.001 + 5 / 1000.0), rel=1e-12)
