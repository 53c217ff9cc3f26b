"""DNPU simulator: electrodes, the core network, the readout chain and its defaults."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hil.core import Role
from simulators.dnpu import DNPUDevice

SHARED_SURROGATE = (
    Path(__file__).resolve().parents[3] / "shared" / "data" / "dnpu_surrogate_skynet_test.npz"
)
QUIET = {"white": 0.0, "relative": 0.0, "flicker_psd": 0.0, "drift_std": 0.0}


def make(seed: int = 0, **settings: Any) -> DNPUDevice:
    return DNPUDevice(DNPUDevice.Settings.model_validate(settings), seed=seed)


def box(device: DNPUDevice, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n random (θ, x) points inside the electrode ranges."""
    rng = np.random.default_rng(seed)
    lo_c, hi_c = device.spec.bounds(Role.CONTROL)
    lo_i, hi_i = device.spec.bounds(Role.INPUT)
    theta = rng.uniform(lo_c, hi_c, size=(n, lo_c.size))
    x = rng.uniform(lo_i, hi_i, size=(n, lo_i.size))
    return theta, x


def test_default_electrodes_and_ranges() -> None:
    spec = make().spec
    assert [c.name for c in spec.inputs] == ["E1", "E2"]
    assert [c.name for c in spec.controls] == ["E0", "E3", "E4", "E5", "E6"]
    assert [c.range for c in spec.controls] == [(-1.2, 0.6)] * 3 + [(-0.7, 0.3)] * 2
    assert [(c.name, c.unit) for c in spec.outputs] == [("Iout", "nA")]
    assert spec.output_gain == 28.5
    other = make(input_electrodes=[0, 6]).spec
    assert [c.name for c in other.inputs] == ["E0", "E6"]


def test_settings_refuse_unsafe_or_inconsistent_electrodes() -> None:
    with pytest.raises(ValueError, match="hard limit"):
        make(electrode_ranges=[(-1.7, 0.6)] + [(-1.2, 0.6)] * 6)
    with pytest.raises(ValueError, match="give 7 ranges"):
        make(electrode_ranges=[(-1.2, 0.6)] * 6)
    with pytest.raises(ValueError, match="input_electrodes"):
        make(input_electrodes=[1, 1])
    with pytest.raises(ValueError, match="at least one electrode"):
        make(input_electrodes=list(range(7)))


def test_core_spans_about_the_output_scale_and_is_non_monotonic() -> None:
    device = make(output_scale=100.0)
    theta, x = box(device, 20_000, seed=1)
    current = device.true_output(theta, x)[:, 0]
    assert 60.0 < np.max(np.abs(current)) < 120.0
    # sweep each control through its range at random points: the current turns somewhere
    turns = 0
    sweep = np.linspace(0.0, 1.0, 200)
    lo, hi = device.spec.bounds(Role.CONTROL)
    for j in range(5):
        t = np.tile(theta[j], (200, 1))
        t[:, j] = lo[j] + sweep * (hi[j] - lo[j])
        slope = np.diff(device.true_output(t, np.tile(x[j], (200, 1)))[:, 0])
        turns += int(np.any(slope > 0) and np.any(slope < 0))
    assert turns >= 1


def test_device_seed_selects_the_device_and_seed_only_the_noise() -> None:
    theta, x = box(make(), 50)
    a = make(device_seed=0, seed=1).true_output(theta, x)
    np.testing.assert_array_equal(a, make(device_seed=0, seed=2).true_output(theta, x))
    assert not np.allclose(a, make(device_seed=1).true_output(theta, x))


@pytest.mark.parametrize("activation", ["tanh", "softplus"])
def test_true_gradient_matches_finite_differences(activation: str) -> None:
    device = make(activation=activation)
    theta, x = box(device, 8, seed=3)
    h = 1e-6
    fd = np.empty((8, 5))
    for i in range(5):
        e = np.zeros(5)
        e[i] = h
        fd[:, i] = (device.true_output(theta + e, x) - device.true_output(theta - e, x))[:, 0] / (
            2 * h
        )
    np.testing.assert_allclose(device.true_gradient(theta, x), fd, rtol=1e-5, atol=1e-5)


def test_inverted_output_flips_current_and_gradient() -> None:
    theta, x = box(make(), 5, seed=4)
    plain, inverted = make(), make(inverted_output=True)
    np.testing.assert_allclose(inverted.true_output(theta, x), -plain.true_output(theta, x))
    np.testing.assert_allclose(inverted.true_gradient(theta, x), -plain.true_gradient(theta, x))


def test_weights_file_is_loaded_in_the_surrogate_layout(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    w0, b0 = rng.normal(size=(4, 7)), rng.normal(size=4)
    w1, b1 = rng.normal(size=(1, 4)), rng.normal(size=1)
    np.savez(tmp_path / "net.npz", weight_0=w0, bias_0=b0, weight_1=w1, bias_1=b1)
    device = make(weights_file=tmp_path / "net.npz", weights_scale=2.0)
    theta, x = box(device, 6, seed=6)
    v = device.electrode_voltages(np.hstack([x, theta]))
    expected = 2.0 * (np.maximum(v @ w0.T + b0, 0.0) @ w1.T + b1)
    np.testing.assert_allclose(device.true_output(theta, x), expected, rtol=1e-12)
    np.savez(tmp_path / "bad.npz", weight_0=w0, bias_0=b0)
    with pytest.raises(ValueError, match="7 voltages to 1 current"):
        make(weights_file=tmp_path / "bad.npz")
    with pytest.raises(ValueError, match="no such file"):
        make(weights_file=tmp_path / "missing.npz")


@pytest.mark.skipif(not SHARED_SURROGATE.exists(), reason="shared/data is not beside the clone")
def test_published_surrogate_spans_its_documented_range() -> None:
    device = make(weights_file=SHARED_SURROGATE)
    theta, x = box(device, 20_000, seed=7)
    current = device.true_output(theta, x)[:, 0]
    # shared/data/README.md: over the standard box the output spans about -4.9 … 1.9
    assert -5.5 < current.min() < -3.5
    assert 1.3 < current.max() < 2.5


def test_default_white_noise_is_one_percent_plus_a_tenth_of_a_nanoamp() -> None:
    device = make(
        noise={"flicker_psd": 0.0, "drift_std": 0.0}, cutoff=None, adc_bits=None, dac_bits=None
    )
    theta, x = box(device, 1, seed=8)
    device.set_controls(theta[0])
    current = float(device.true_output(theta[0], x)[0, 0])
    n = 20_000
    out = device.stream(np.tile(x[0], (n, 1)), ["E1", "E2"])[:, 0]
    expected = math.sqrt((0.01 * current) ** 2 + 0.1**2)
    assert abs(out.std(ddof=1) - expected) < 4 * expected / math.sqrt(2 * n)


def test_amplifier_clips_and_the_adc_quantises_at_its_full_scale() -> None:
    device = make(output_scale=400.0, noise=QUIET)
    full_scale = 4.0 * 28.5
    theta, x = box(device, 4000, seed=9)
    truth = device.true_output(theta, x)[:, 0]
    assert np.max(np.abs(truth)) > full_scale  # the core exceeds the amplifier's range
    measured = np.array(
        [_measure(device, t, xi) for t, xi in zip(theta[:300], x[:300], strict=True)]
    )
    assert np.max(np.abs(measured)) <= full_scale
    step = 2 * full_scale / 2**16
    codes = (measured + full_scale) / step
    np.testing.assert_allclose(codes, np.round(codes), atol=1e-6)


def _measure(device: DNPUDevice, theta: np.ndarray, x: np.ndarray) -> float:
    """One ADC sample (a plateau mean would lie between codes)."""
    device.set_controls(theta)
    return float(device.stream(x[np.newaxis, :], ["E1", "E2"])[0, 0])
