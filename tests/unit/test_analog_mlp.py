"""AnalogMLPDevice: quantised interfaces, the stated fixed pattern and noise, time and state exact.

Statistical checks allow Z standard errors of the estimate (a false failure ~1e-4 per check); the
standard errors come from the number of independent columns or samples.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from hil.core import (
    Device,
    FloatArray,
    InstrumentDisconnected,
    NodePerturbable,
    Role,
    SafetyViolation,
    Stateful,
    Streaming,
)
from hil.safety import SafetyGuard, SafetyLimits
from simulators.analog_mlp import AnalogMLPDevice
from simulators.noise import flicker_poles

Z = 4.0
STATION = Path(__file__).resolve().parents[2] / "configs" / "stations" / "sim-analog.yaml"

#: Every random and analog non-ideality off (quantisation and the rails stay: they are the chip).
QUIET: dict[str, Any] = {
    "mismatch": {"gain": 0.0, "offset": 0.0},
    "noise": {"membrane": 0.0, "flicker_psd": 0.0, "drift_std": 0.0},
    "timing": {"tau": None},
}


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def build(settings: dict[str, Any], *, seed: int = 1, quiet: bool = False) -> AnalogMLPDevice:
    """A device from settings; quiet: every analog non-ideality off unless `settings` says so."""
    full = merge(QUIET, settings) if quiet else settings
    return AnalogMLPDevice(AnalogMLPDevice.Settings.model_validate(full), seed=seed)


def make(seed: int = 1, *, quiet: bool = False, **settings: Any) -> AnalogMLPDevice:
    return build(settings, seed=seed, quiet=quiet)


def random_weights(device: AnalogMLPDevice, rng: np.random.Generator) -> FloatArray:
    w_max = int(device.spec.controls[0].max)
    codes = rng.integers(-w_max, w_max + 1, size=len(device.spec.controls))
    return codes.astype(float)


def random_inputs(device: AnalogMLPDevice, rng: np.random.Generator, n: int) -> FloatArray:
    return rng.integers(0, 32, size=(n, len(device.spec.inputs))).astype(float)


def reference_forward(
    x: FloatArray, weights: list[FloatArray], gains: tuple[float, ...], shift: int = 2
) -> FloatArray:
    """hxtorch's nominal MAC chain written out independently: floor, int8 rails, converting ReLU
    (layers here have ≤ 128 inputs, so one pass per layer)."""
    h = x
    for i, w in enumerate(weights):
        y = np.clip(np.floor(gains[i] * (h @ w)), -128, 127)
        h = np.clip(np.floor(np.clip(y, 0, 127) / 2**shift), 0, 31)
    return y


# -- spec ------------------------------------------------------------------------------------------


def test_spec_channels_units_ranges_and_capabilities() -> None:
    device = make(layers=[3, 4, 2])
    spec = device.spec
    assert isinstance(device, Device)
    assert isinstance(device, Stateful)
    assert not isinstance(device, Streaming)
    assert [c.name for c in spec.inputs] == ["x0", "x1", "x2"]
    assert all((c.min, c.max, c.unit) == (0.0, 31.0, "LSB") for c in spec.inputs)
    names = [c.name for c in spec.controls]
    assert len(names) == 3 * 4 + 4 * 2
    assert names[:5] == ["w0_0_0", "w0_0_1", "w0_0_2", "w0_0_3", "w0_1_0"]
    assert names[12:14] == ["w1_0_0", "w1_0_1"]
    assert all((c.min, c.max, c.unit) == (-31.0, 31.0, "LSB") for c in spec.controls)
    assert [(c.name, c.min, c.max, c.unit) for c in spec.outputs] == [
        ("y0", -128.0, 127.0, "LSB"),
        ("y1", -128.0, 127.0, "LSB"),
    ]
    assert spec.ramp_time == 0.0
    assert spec.plateau_samples is None
    assert spec.plateau_time() == device.evaluation_time == pytest.approx(2 * 7e-6, rel=1e-12)


def test_interface_widths_follow_the_bit_settings() -> None:
    spec = make(layers=[2, 1], input_bits=4, weight_bits=7, output_bits=10).spec
    assert spec.inputs[0].max == 15.0
    assert spec.controls[0].range == (-63.0, 63.0)
    assert spec.outputs[0].range == (-512.0, 511.0)


def test_default_n_sends_put_typical_outputs_in_a_quarter_of_the_range() -> None:
    device = make(layers=[4, 8, 2], quiet=True)
    assert device.n_sends == (24, 55)
    assert device.layer_gains == (0.002 * 24, 0.002 * 55)
    assert make(layers=[128, 10]).n_sends == (4,)
    # Uniform full-range weights and inputs: first-layer output σ ≈ 32 LSB, rarely at the rails.
    one = make(layers=[4, 256], quiet=True)
    rng = np.random.default_rng(0)
    one.set_controls(random_weights(one, rng))
    y = one.measure(random_inputs(one, rng, 200))
    assert 28.0 < float(np.std(y)) < 36.0
    assert float(np.mean(np.abs(y) >= 127)) < 0.01


# -- quantisation at every interface -----------------------------------------------------------


def test_input_dac_rounds_to_codes() -> None:
    device = make(layers=[1, 1], quiet=True, n_sends=500)  # 1 LSB per input code
    device.set_controls(np.array([1.0]))
    x = np.array([[0.0], [0.4], [0.6], [2.5], [3.5], [30.7], [31.0]])
    y = device.measure(x)[:, 0]
    np.testing.assert_array_equal(y, [0, 0, 1, 2, 4, 31, 31])  # ties to even


def test_weight_dac_rounds_to_codes() -> None:
    device = make(layers=[3, 2], quiet=True)
    device.set_controls(np.array([0.4, -0.6, 2.5, -3.5, 30.6, -31.0]))
    np.testing.assert_array_equal(device.weights[0], [[0, -1], [2, -4], [31, -31]])
    assert device.weights[0].dtype == np.int64
    np.testing.assert_array_equal(device.controls, [0, -1, 2, -4, 31, -31])
    twin = make(layers=[3, 2], quiet=True)
    twin.set_controls(np.array([0.0, -1.0, 2.0, -4.0, 31.0, -31.0]))
    x = np.array([[31.0, 17.0, 5.0], [1.0, 2.0, 3.0]])
    np.testing.assert_array_equal(device.measure(x), twin.measure(x))


def test_outputs_are_floored_and_clamped_to_int8() -> None:
    device = make(layers=[1, 4], quiet=True, n_sends=10)  # 0.02 LSB per x·w
    device.set_controls(np.array([3.0, -3.0, 31.0, -31.0]))
    y = device.measure(np.array([[10.0], [31.0]]))
    # 0.02·30 = 0.6 → 0; −0.6 → −1 (floor, not truncation); 0.02·310 = 6.2 → 6; 0.02·961 → 19
    np.testing.assert_array_equal(y[0], [0, -1, 6, -7])
    np.testing.assert_array_equal(y[1], [1, -2, 19, -20])
    loud = make(layers=[4, 2], quiet=True, n_sends=100)  # 0.2 LSB per x·w: 4·961·0.2 ≈ 769
    loud.set_controls(np.array([31.0, -31.0] * 4))
    np.testing.assert_array_equal(loud.measure(np.full((1, 4), 31.0)), [[127, -128]])
    free = make(layers=[4, 2], quiet=True, n_sends=100, saturation=False)
    free.set_controls(np.array([31.0, -31.0] * 4))
    gain = free.layer_gains[0]
    np.testing.assert_array_equal(
        free.measure(np.full((1, 4), 31.0)), [[math.floor(gain * 3844), math.floor(-gain * 3844)]]
    )
    assert free.spec.outputs[0].range == (-math.inf, math.inf)


def test_hidden_layer_relu_and_shift_into_input_codes() -> None:
    # Layer 0 gives y0 = floor(0.5·x·w) over the int8 range, layer 1 passes its input through.
    device = make(layers=[1, 1, 1], quiet=True, n_sends=[250, 500])
    assert device.activation_shift == 2
    x = np.arange(32.0)[:, np.newaxis]
    for w0 in (-31.0, 3.0, 9.0, 31.0):
        device.set_controls(np.array([w0, 1.0]))
        y0 = np.clip(np.floor(0.5 * x[:, 0] * w0), -128, 127)
        expected = np.minimum(np.floor(np.maximum(y0, 0) / 4), 31)
        np.testing.assert_array_equal(device.measure(x)[:, 0], expected)
    device.set_controls(np.array([31.0, 1.0]))
    assert device.measure(np.array([[31.0]]))[0, 0] == 31  # 127 ≫ 2 = 31: the full input range


def test_wide_layers_take_several_passes_each_clamped_before_the_digital_sum() -> None:
    device = make(layers=[200, 1], quiet=True, n_sends=50)  # 0.1 LSB per x·w; passes 128 + 72
    assert device.evaluation_time == pytest.approx(2 * 7e-6, rel=1e-12)
    w = np.concatenate([np.full(128, 31.0), np.full(72, -8.0)])
    device.set_controls(w)
    x = np.full((1, 200), 31.0)
    first, second = math.floor(0.1 * 128 * 961), math.floor(-0.1 * 72 * 248)  # 12300, −1786
    expected = np.clip(min(first, 127) + max(second, -128), -128, 127)  # 127 − 128 = −1
    assert device.measure(x)[0, 0] == expected == -1  # one clamp on the sum would give 127


# -- the oracle and the off switches -------------------------------------------------------------


def test_all_off_equals_the_ideal_forward_pass_exactly() -> None:
    rng = np.random.default_rng(3)
    device = make(layers=[16, 32, 4], quiet=True)
    theta = random_weights(device, rng) * 0.5 + rng.uniform(-0.4, 0.4, len(device.spec.controls))
    x = rng.uniform(0, 31, size=(50, 16))
    device.set_controls(theta)
    measured = device.measure(x)
    w = [wl.astype(float) for wl in device.weights]
    expected = reference_forward(np.rint(x), w, device.layer_gains)
    np.testing.assert_array_equal(measured, expected)
    np.testing.assert_array_equal(device.true_output(theta, x), expected)
    assert np.ptp(expected) > 20  # a non-trivial output
    noisy = make(layers=[16, 32, 4])
    noisy.set_controls(theta)
    assert not np.array_equal(noisy.measure(x), expected)
    np.testing.assert_array_equal(noisy.true_output(theta, x), expected)


ONE_ON: dict[str, dict[str, Any]] = {
    "gain mismatch": {"mismatch": {"gain": 0.03}},
    "offset mismatch": {"mismatch": {"offset": 2.0}},
    "membrane": {"noise": {"membrane": 2.0}},
    "flicker": {"noise": {"flicker_psd": 1e-2}},
    "drift": {"noise": {"drift_std": 1.0}},
    "settling": {"timing": {"tau": 1e-6}},
}


@pytest.mark.parametrize("switch", ONE_ON)
def test_each_nonideality_alone_changes_the_output(switch: str) -> None:
    rng = np.random.default_rng(4)
    device = build({"layers": [8, 64, 8], **ONE_ON[switch]}, quiet=True)
    theta = random_weights(device, rng)
    x = random_inputs(device, rng, 40)
    device.set_controls(theta)
    assert not np.array_equal(device.measure(x), device.true_output(theta, x))


def test_oracle_refuses_values_outside_the_ranges() -> None:
    device = make(layers=[2, 1])
    with pytest.raises(ValueError, match="theta"):
        device.true_output(np.array([32.0, 0.0]), np.zeros((1, 2)))
    with pytest.raises(ValueError, match="inputs"):
        device.true_output(np.zeros(2), np.array([[-1.0, 0.0]]))


# -- fixed pattern -------------------------------------------------------------------------------


def test_mismatch_has_the_stated_statistics() -> None:
    device = make(layers=[2, 2048])
    n = 2048
    gains, offsets = device.column_gains[0], device.column_offsets[0]
    assert gains.shape == offsets.shape == (n,)
    assert abs(float(np.mean(gains)) - 1.0) < Z * 0.03 / math.sqrt(n)
    assert abs(float(np.std(gains, ddof=1)) - 0.03) < Z * 0.03 / math.sqrt(2 * n)
    assert abs(float(np.mean(offsets))) < Z * 2.0 / math.sqrt(n)
    assert abs(float(np.std(offsets, ddof=1)) - 2.0) < Z * 2.0 / math.sqrt(2 * n)
    assert abs(np.corrcoef(gains, offsets)[0, 1]) < Z / math.sqrt(n)
    with pytest.raises(ValueError, match="read-only"):
        gains[0] = 1.0


def test_the_chip_applies_its_pattern_and_calibration_recovers_it() -> None:
    quiet_noise = {"membrane": 0.0, "flicker_psd": 0.0, "drift_std": 0.0}
    device = make(layers=[1, 512], timing={"tau": None}, n_sends=100, noise=quiet_noise)
    gains, offsets = device.column_gains[0], device.column_offsets[0]
    zero = device.measure(np.array([[0.0]]))[0]
    np.testing.assert_array_equal(zero, np.floor(offsets))  # the offset, floored
    device.set_controls(np.full(512, 20.0))
    x = np.array([[10.0], [20.0]])  # 0.2 LSB per x·w: nominal 40 and 80 LSB
    y = device.measure(x)
    np.testing.assert_array_equal(y, np.floor(gains * (device.layer_gains[0] * 20 * x) + offsets))
    # Two-point calibration (floor error ≤ 1 LSB on 40 LSB) tracks the true gains.
    estimate = (y[1] - y[0]) / 40.0
    assert np.corrcoef(estimate, gains)[0, 1] > 0.9
    assert abs(float(np.std(estimate - gains))) < 1.0 / 40.0


def test_the_pattern_belongs_to_the_chip_not_the_run() -> None:
    a, b = make(seed=1, layers=[2, 64, 8]), make(seed=2, layers=[2, 64, 8])
    for ga, gb in zip(
        a.column_gains + a.column_offsets, b.column_gains + b.column_offsets, strict=True
    ):
        np.testing.assert_array_equal(ga, gb)
    other = make(seed=1, layers=[2, 64, 8], chip_seed=1)
    assert not np.array_equal(other.column_gains[0], a.column_gains[0])
    # σ scales one pattern: the unit draws do not depend on the σ's.
    double = make(seed=5, layers=[2, 64, 8], mismatch={"gain": 0.06, "offset": 4.0})
    np.testing.assert_allclose(double.column_gains[1] - 1, 2 * (a.column_gains[1] - 1))
    np.testing.assert_allclose(double.column_offsets[1], 2 * a.column_offsets[1])
    # A different hidden width leaves the first layer's columns alone.
    wider = make(layers=[2, 64, 16])
    np.testing.assert_array_equal(wider.column_gains[0], a.column_gains[0])


# -- temporal noise ------------------------------------------------------------------------------


def test_membrane_noise_has_the_stated_sigma_per_evaluation() -> None:
    device = make(layers=[2, 256], quiet=True, noise={"membrane": 2.0})
    y = device.measure(np.zeros((400, 2)))  # zero weights: y = floor(2ξ)
    n = y.size
    # Floor of a dithered signal: variance σ² + 1/12 (Sheppard), mean −1/2.
    expected = math.sqrt(4.0 + 1.0 / 12.0)
    assert abs(float(np.std(y)) - expected) < Z * expected / math.sqrt(2 * n)
    assert abs(float(np.mean(y)) + 0.5) < Z * expected / math.sqrt(n)
    lag1 = float(np.mean((y[1:] + 0.5) * (y[:-1] + 0.5))) / expected**2
    assert abs(lag1) < Z / math.sqrt(n)  # white: independent from evaluation to evaluation


def test_drift_is_a_slow_per_column_offset_and_switches_off() -> None:
    n_cols = 1024
    common: dict[str, Any] = {"layers": [2, n_cols], "noise": {"membrane": 2.0}}
    on = build(merge(common, {"noise": {"drift_std": 1.0}}), seed=7, quiet=True)
    off = build(common, seed=7, quiet=True)
    x = np.zeros((200, 2))
    # Same seed: the white noise is identical (its own stream), so the difference is the drift.
    diff = on.measure(x) - off.measure(x)
    drift = diff.mean(axis=0)
    assert abs(float(np.std(drift, ddof=1)) - 1.0) < Z / math.sqrt(2 * n_cols) + 0.02
    assert abs(float(np.mean(drift))) < Z / math.sqrt(n_cols) + 0.02
    # Over 200 evaluations (2.8 ms) it does not move; over 1 s barely; after 10 τ it is new.
    halves = diff[:100].mean(axis=0) - diff[100:].mean(axis=0)
    assert float(np.std(halves)) < 0.1
    for seconds, low, high in ((1.0, 0.95, 1.0), (3000.0, -Z / 32, Z / 32)):
        on.idle(seconds)
        off.idle(seconds)
        later = (on.measure(x) - off.measure(x)).mean(axis=0)
        assert low < np.corrcoef(drift, later)[0, 1] < high
        drift = later


def test_flicker_is_time_correlated_with_the_bank_variance_and_switches_off() -> None:
    n_cols = 512
    psd = 0.25  # LSB²/Hz at 100 Hz: σ ≈ 20 LSB, so the 1-LSB floor hardly matters, no clipping
    on = make(seed=8, layers=[2, n_cols], quiet=True, noise={"flicker_psd": psd})
    y = on.measure(np.zeros((300, 2)))  # floor(flicker), zero weights
    _, sigmas = flicker_poles(psd, 100.0, 0.01, 0.5 / on.evaluation_time)
    variance = float(np.sum(np.square(sigmas)))
    # Most of the power is slower than the batch: each column is ~one independent sample.
    estimate = float(np.mean((y + 0.5) ** 2)) - 1.0 / 12.0
    assert abs(estimate / variance - 1.0) < Z * math.sqrt(2.0 / n_cols)
    d = y - y.mean(axis=0)
    lag1 = float(np.sum(d[1:] * d[:-1]) / np.sum(d * d))
    assert lag1 > 0.5  # 1/f: strongly correlated from one evaluation to the next
    off = make(seed=8, layers=[2, n_cols], quiet=True)
    np.testing.assert_array_equal(off.measure(np.zeros((300, 2))), np.full((300, n_cols), 0.0))


def test_default_flicker_meets_the_white_noise_near_100_hz() -> None:
    device = make()
    white_psd = 2 * 2.0**2 * device.evaluation_time  # one-sided, sampled once per evaluation
    assert device.settings.noise.flicker_psd == pytest.approx(white_psd, rel=1e-12)
    assert device.settings.noise.flicker_f_ref == 100.0


# -- settling and time ---------------------------------------------------------------------------


def test_settling_leaves_exp_minus_t_over_tau_of_the_previous_value() -> None:
    timing = {"tau": 1e-6, "settle_time": 1e-6}
    device = make(layers=[1, 1], quiet=True, n_sends=500, timing=timing)  # 1 LSB per x·w
    device.set_controls(np.array([4.0]))
    x = np.array([[25.0], [0.0], [0.0], [10.0], [10.0]])
    r = math.exp(-1.0)
    s, expected = 0.0, []
    for u in 4.0 * x[:, 0]:
        s = (1 - r) * u + r * s
        expected.append(math.floor(s))
    np.testing.assert_array_equal(device.measure(x)[:, 0], expected)  # 63, 23, 8, 28, 35
    fast = make(layers=[1, 1], quiet=True, n_sends=500, timing={"tau": 1e-7})
    fast.set_controls(np.array([4.0]))
    np.testing.assert_array_equal(fast.measure(x), fast.true_output(np.array([4.0]), x))


def test_clock_advances_by_the_evaluation_time_per_row() -> None:
    device = make(layers=[4, 8, 8, 2], timing={"settle_time": 4e-6, "conversion_time": 1e-6})
    assert device.evaluation_time == pytest.approx(3 * 5e-6, rel=1e-12)
    assert device.spec.plateau_time() == device.evaluation_time
    device.measure(np.zeros((7, 4)))
    assert device.clock.now() == pytest.approx(7 * 15e-6, rel=1e-12)
    device.set_controls(np.zeros(len(device.spec.controls)))  # writing weights costs no time
    device.idle(2.5)
    assert device.clock.now() == pytest.approx(2.5 + 7 * 15e-6, rel=1e-12)
    assert device.evaluations == 7


# -- safety --------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [31.5, -31.6, 32.0, math.nan, math.inf])
def test_set_controls_refuses_out_of_range_and_nan(bad: float) -> None:
    device = make(layers=[2, 2])
    device.set_controls(np.array([1.0, 2.0, 3.0, 4.0]))
    with pytest.raises(SafetyViolation, match="w0_1_0"):
        device.set_controls(np.array([0.0, 0.0, bad, 0.0]))
    np.testing.assert_array_equal(device.controls, [1, 2, 3, 4])


@pytest.mark.parametrize("bad", [-0.1, 31.2, math.nan])
def test_measure_refuses_out_of_range_inputs_and_costs_nothing(bad: float) -> None:
    device = make(layers=[2, 2])
    with pytest.raises(SafetyViolation, match="x1"):
        device.measure(np.array([[0.0, 1.0], [3.0, bad]]))
    assert device.clock.now() == 0.0
    assert device.evaluations == 0


def test_shapes_are_checked_and_a_closed_device_refuses() -> None:
    device = make(layers=[2, 2])
    with pytest.raises(ValueError, match="shape"):
        device.set_controls(np.zeros(3))
    with pytest.raises(ValueError, match="shape"):
        device.measure(np.zeros((2, 3)))
    with device:
        device.set_controls(np.full(4, 5.0))
    assert not np.any(device.controls)  # leaving the block made it safe
    with pytest.raises(InstrumentDisconnected):
        device.measure(np.zeros((1, 2)))


def test_safe_state_zeroes_every_weight() -> None:
    device = make(layers=[3, 4, 2])
    device.set_controls(random_weights(device, np.random.default_rng(0)))
    device.safe_state()
    assert all(not np.any(w) for w in device.weights)


# -- state ---------------------------------------------------------------------------------------


def test_state_round_trip_reproduces_everything() -> None:
    rng = np.random.default_rng(9)
    settings: dict[str, Any] = {"layers": [4, 16, 3], "noise": {"flicker_psd": 1e-2}}
    device = build(settings, seed=10)
    device.set_controls(random_weights(device, rng))
    x = random_inputs(device, rng, 30)
    device.measure(x)
    state = json.loads(json.dumps(device.state_dict()))
    other = build(settings, seed=11)
    other.load_state_dict(state)
    np.testing.assert_array_equal(other.controls, device.controls)
    assert other.clock.now() == device.clock.now()
    device.idle(0.5)
    other.idle(0.5)
    np.testing.assert_array_equal(device.measure(x), other.measure(x))
    assert device.state_dict() == other.state_dict()
    with pytest.raises(ValueError, match="chip_seed"):
        build({**settings, "chip_seed": 3}, seed=11).load_state_dict(state)
    with pytest.raises(ValueError, match="tau"):
        build({**settings, "timing": {"tau": None}}, seed=11).load_state_dict(state)


def test_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="n_sends"):
        AnalogMLPDevice.Settings.model_validate({"layers": [2, 3, 1], "n_sends": [1, 2, 3]})
    with pytest.raises(ValueError, match="layers"):
        AnalogMLPDevice.Settings.model_validate({"layers": [2]})
    with pytest.raises(ValueError, match="tau"):
        AnalogMLPDevice.Settings.model_validate({"timing": {"settle_time": 0.0}})
    with pytest.raises(ValueError, match="flicker_f_hi"):
        AnalogMLPDevice.Settings.model_validate({"noise": {"flicker_f_hi": 1e6}})
    with pytest.raises(ValueError, match="extra"):
        AnalogMLPDevice.Settings.model_validate({"noise": {"whiet": 1.0}})


# -- the station file (conformance: tests/sim/test_conformance.py) ---------------------------


def test_station_file_validates_and_drives_the_device_through_the_guard() -> None:
    data = yaml.safe_load(STATION.read_text())
    device_cfg = dict(data["device"])
    assert device_cfg.pop("type") == "analog-mlp"
    settings = AnalogMLPDevice.Settings.model_validate(device_cfg)
    guard = SafetyGuard(
        AnalogMLPDevice(settings, seed=0), SafetyLimits.model_validate(data["limits"])
    )
    spec = guard.spec
    lo, hi = spec.bounds(Role.CONTROL)
    guard.set_controls(np.clip(np.random.default_rng(0).normal(0, 8, lo.size), lo, hi))
    y = guard.measure(np.full((3, len(spec.inputs)), 20.0))
    assert y.shape == (3, len(spec.outputs))
    guard.safe_state()
    assert not np.any(guard.unguarded_device("test: read the weights back").controls)  # type: ignore[attr-defined]


def test_idle_lets_the_column_memory_relax() -> None:
    device = AnalogMLPDevice(AnalogMLPDevice.Settings.model_validate({"layers": [3, 2]}), seed=0)
    lo, hi = device.spec.bounds(Role.CONTROL)
    device.set_controls(np.clip(np.full(lo.size, 20.0), lo, hi))
    device.measure(np.full((1, 3), 31.0))
    settling = device._settling
    assert settling is not None
    assert np.any(settling[0].state != 0)
    device.idle(1.0)  # a million time constants
    np.testing.assert_array_equal(settling[0].state, 0.0)


# -- node perturbation (NodePerturbable) -----------------------------------------------------------


def test_node_perturbable_capability_and_layer_shapes() -> None:
    device = make(layers=[4, 8, 3, 2])
    assert isinstance(device, NodePerturbable)
    assert device.layer_shapes == ((4, 8), (8, 3), (3, 2))
    assert sum(a * b for a, b in device.layer_shapes) == len(device.spec.controls)
    assert device.node_offset_limit == 128.0  # the int8 output range by default
    assert make(layers=[2, 1], output_bits=10).node_offset_limit == 512.0
    assert make(layers=[2, 1], max_node_offset=7.5).node_offset_limit == 7.5


def test_measure_nodes_with_zero_offsets_is_measure_bit_for_bit() -> None:
    """Same seed, every non-ideality on (1/f, drift, settling, two passes in the first layer):
    zero offsets give measure's outputs, time, evaluation count and noise state exactly."""
    settings: dict[str, Any] = {
        "layers": [40, 6, 3],
        "rows_per_block": 32,
        "noise": {"flicker_psd": 1e-2},
    }
    a, b = build(settings, seed=4), build(settings, seed=4)
    rng = np.random.default_rng(3)
    w = random_weights(a, rng)
    a.set_controls(w)
    b.set_controls(w)
    for n in (5, 1, 12):
        x = rng.uniform(0, 31, (n, 40))
        zeros = [np.zeros((n, 6)), np.zeros((n, 3))]
        y_nodes, seen = b.measure_nodes(x, zeros)
        np.testing.assert_array_equal(y_nodes, a.measure(x))
        assert [s.shape for s in seen] == [(n, 40), (n, 6)]
    assert b.clock.now() == a.clock.now() == pytest.approx(18 * a.evaluation_time, rel=1e-12)
    assert b.evaluations == a.evaluations == 18
    assert b.state_dict() == a.state_dict()


def test_node_offsets_add_to_the_pre_activation_before_the_floor() -> None:
    """Noise-free 1-layer chip: y = floor(gain·x·W + offset), the offset in output LSB; with two
    analog passes the offset is injected once (on the first)."""
    device = make(layers=[3, 2], quiet=True, n_sends=10)  # 0.02 LSB per input·weight
    gain = device.layer_gains[0]
    theta = np.array([5.0, -7.0, 12.0, 3.0, -20.0, 9.0])
    device.set_controls(theta)
    x = np.array([[1.0, 2.0, 3.0], [31.0, 0.0, 17.0], [4.0, 30.0, 8.0]])
    offset = np.array([[0.3, -0.3], [10.7, -25.2], [-3.5, 0.0]])
    expected = np.floor(gain * x @ theta.reshape(3, 2) + offset)
    y, seen = device.measure_nodes(x, [offset])
    np.testing.assert_array_equal(y, expected)
    np.testing.assert_array_equal(seen[0], x)
    np.testing.assert_array_equal(device.true_output(theta, x, [offset]), expected)
    assert not np.array_equal(expected, device.measure(x))  # the offsets did something
    split = make(layers=[3, 2], quiet=True, n_sends=10, rows_per_block=2)
    split.set_controls(theta)
    w = theta.reshape(3, 2)
    two_passes = np.floor(gain * x[:, :2] @ w[:2] + offset) + np.floor(gain * x[:, 2:] @ w[2:])
    np.testing.assert_array_equal(split.measure_nodes(x, [offset])[0], two_passes)


def test_measure_nodes_reports_each_layers_input_codes() -> None:
    """Layer 0 sees the rounded input codes, later layers the converted ReLU codes of the
    (offset) layer before; the last output follows the same chain."""
    device = make(layers=[4, 6, 5, 2], quiet=True)
    rng = np.random.default_rng(5)
    theta = random_weights(device, rng)
    device.set_controls(theta)
    x = rng.uniform(0, 31, (9, 4))
    offsets = [rng.normal(0, 20, (9, n)) for n in (6, 5, 2)]
    y, seen = device.measure_nodes(x, offsets)
    weights = [w.astype(float) for w in device.weights]
    gains = device.layer_gains
    h = np.rint(x)
    for layer, w in enumerate(weights):
        np.testing.assert_array_equal(seen[layer], h)
        a = np.clip(np.floor(gains[layer] * (h @ w) + offsets[layer]), -128, 127)
        h = np.clip(np.floor(np.clip(a, 0, 127) / 4), 0, 31)
    np.testing.assert_array_equal(y, a)
    assert seen[1].max() > 0  # the hidden layers are not all dead
    assert seen[2].max() > 0


def test_measure_nodes_refuses_bad_offsets_and_costs_nothing() -> None:
    device = make(layers=[3, 4, 2], max_node_offset=10.0)
    x = np.full((2, 3), 5.0)
    good = [np.zeros((2, 4)), np.zeros((2, 2))]
    white = json.dumps(device.state_dict())
    with pytest.raises(ValueError, match="one per layer"):
        device.measure_nodes(x, good[:1])
    with pytest.raises(ValueError, match=r"offsets\[1\] must have shape \(2, 2\)"):
        device.measure_nodes(x, [good[0], np.zeros((2, 3))])
    with pytest.raises(ValueError, match=r"offsets\[0\] must have shape"):
        device.measure_nodes(x, [np.zeros(4), good[1]])
    for bad in (math.nan, math.inf):
        nonfinite = np.zeros((2, 4))
        nonfinite[1, 2] = bad
        with pytest.raises(ValueError, match="finite"):
            device.measure_nodes(x, [nonfinite, good[1]])
    big = np.zeros((2, 2))
    big[1, 1] = -10.5
    with pytest.raises(SafetyViolation, match=r"offset1_1.*±10 LSB"):
        device.measure_nodes(x, [good[0], big])
    with pytest.raises(SafetyViolation, match="x0"):
        device.measure_nodes(np.full((2, 3), 32.0), good)
    assert json.dumps(device.state_dict()) == white  # nothing evaluated, no noise drawn
    assert device.clock.now() == 0.0
    at_limit = [np.full((2, 4), 10.0), np.full((2, 2), -10.0)]
    assert device.measure_nodes(x, at_limit)[0].shape == (2, 2)
    assert device.evaluations == 2
    device.close()
    with pytest.raises(InstrumentDisconnected):
        device.measure_nodes(x, good)
