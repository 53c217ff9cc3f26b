"""AnalyticDevice: the oracle is right, the noise has the stated size, time and state are exact."""

from __future__ import annotations

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


def test_model_seed_selects_the_function() -> None:
    theta, x = random_point(3)
    a = make_device(model_seed=0).true_output(theta, x)
    assert not np.allclose(a, make_device(model_seed=1).true_output(theta, x))
    np.testing.assert_array_equal(a, make_device(model_seed=0, seed=99).true_output(theta, x))


def test_noise_free_measure_is_the_true_output() -> None:
    device = make_device()
    theta, x = random_point(4)
    device.set_controls(theta)
    np.testing.assert_allclose(device.measure(x), device.true_output(theta, x), rtol=1e-12)


def test_plateau_noise_is_sigma_over_root_n() -> None:
    sigma, n, cases = 0.02, 16, 4000
    device = make_device(noise={"white": sigma}, timing={"samples_per_plateau": n})
    theta, x = random_point(5, n_cases=cases)
    device.set_controls(theta)
    residual = (device.measure(x) - device.true_output(theta, x))[:, 0]
    expected = sigma / math.sqrt(n)
    # the std of a sample std is ≈ σ/√(2N): 4 standard errors
    assert abs(residual.std(ddof=1) - expected) < 4 * expected / math.sqrt(2 * cases)
    assert abs(residual.mean()) < 4 * expected / math.sqrt(cases)


def test_controls_property_is_a_copy_and_safe_state_zeroes() -> None:
    device = make_device()
    device.set_controls(np.full(5, 0.3))
    controls = device.controls
    controls[0] = 9.0
    assert device.controls[0] == 0.3
    device.safe_state()
    np.testing.assert_array_equal(device.controls, np.zeros(5))


def test_shape_errors_and_closed_device() -> None:
    device = make_device()
    with pytest.raises(ValueError, match="shape"):
        device.set_controls(np.zeros(4))
    with pytest.raises(ValueError, match="shape"):
        device.measure(np.zeros((3, 3)))
    with pytest.raises(ValueError, match="not input or control channels"):
        device.stream(np.zeros((4, 1)), ["out"])
    device.close()
    from hil.core import InstrumentDisconnected

    with pytest.raises(InstrumentDisconnected):
        device.measure(np.zeros((1, 2)))


def test_refused_values_leave_the_controls_alone() -> None:
    device = make_device()
    device.set_controls(np.full(5, 0.2))
    for bad in (1.5, math.nan, -math.inf):
        with pytest.raises(SafetyViolation):
            device.set_controls(np.array([0.0, 0.0, bad, 0.0, 0.0]))
    np.testing.assert_array_equal(device.controls, np.full(5, 0.2))


def test_settings_reject_inconsistent_values() -> None:
    with pytest.raises(ValueError, match="control_min"):
        make_device(control_min=1.0, control_max=0.0)
    with pytest.raises(ValueError, match=r"needs timing\.ramp_time"):
        make_device(max_slew=10.0)
    with pytest.raises(ValueError, match="adc_bits needs saturation"):
        make_device(adc_bits=8)
    with pytest.raises(ValueError, match="whole number of samples"):
        make_device(timing={"sample_rate": 1000.0, "settle_time": 0.0015})
    with pytest.raises(ValueError, match="Extra inputs"):
        make_device(colour="red")


def test_ramp_and_settle_are_charged_on_the_clock() -> None:
    device = make_device(
        max_slew=1000.0, timing={"ramp_time": 0.004, "settle_time": 0.001, "samples_per_plateau": 5}
    )
    assert device.spec.ramp_time == 0.004
    assert device.spec.plateau_time() == pytest.approx(0.004 + 0.001 + 0.005)
    device.measure(np.zeros((3, 2)))
    assert device.clock.now() == pytest.approx(3 * 0.010, rel=1e-12)
