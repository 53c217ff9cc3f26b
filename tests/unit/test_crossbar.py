"""CrossbarDevice: pulses follow the device models, reads follow the aihwkit pipeline, retention
follows the PCM model, and time, endurance and state are accounted exactly.

Statistical tolerances are 4–5 standard errors of the quantity tested (stated at each assert).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hil.config import load_station
from hil.core import (
    Device,
    FloatArray,
    InstrumentDisconnected,
    ProgrammableState,
    SafetyViolation,
    Stateful,
)
from hil.safety import SafetyGuard
from simulators.crossbar import CrossbarDevice

ROOT = Path(__file__).resolve().parents[2]
DW = 0.001  # default dw_min
QUIET_IO: dict[str, Any] = {"inp_res": 0, "out_res": 0, "out_noise": 0.0}


def make(seed: int = 1, **overrides: Any) -> CrossbarDevice:
    return CrossbarDevice(CrossbarDevice.Settings.model_validate(overrides), seed=seed)


def spread_weights(device: CrossbarDevice, seed: int, max_count: int = 300) -> None:
    """Pulse every device a random number of times so the weights cover a range."""
    rng = np.random.default_rng(seed)
    shape = (device.settings.rows, device.settings.cols)
    device.apply_pulses(rng.integers(-max_count, max_count + 1, size=shape))


def unit_rows(rng: np.random.Generator, n: int, rows: int) -> FloatArray:
    """Inputs in [-1, 1] whose max |x| is exactly 1 per row (noise management then scales by 1)."""
    x = rng.uniform(-1.0, 1.0, size=(n, rows))
    x[:, 0] = 1.0
    return x


# -- interface -------------------------------------------------------------------------------------


def test_spec_and_capabilities() -> None:
    device = make(rows=6, cols=3)
    assert isinstance(device, Device)
    assert isinstance(device, ProgrammableState)
    assert isinstance(device, Stateful)
    spec = device.spec
    assert [c.name for c in spec.inputs] == [f"row{i}" for i in range(6)]
    assert all((c.min, c.max, c.unit) == (-1.0, 1.0, "V") for c in spec.inputs)
    assert [(c.name, c.unit) for c in spec.outputs] == [(f"col{j}", "a.u.") for j in range(3)]
    assert spec.controls == ()
    assert spec.plateau_samples is None
    assert spec.settle_time == device.settings.timing.read_time == spec.plateau_time()
    device.set_controls(np.zeros(0))
    with pytest.raises(ValueError, match="no control channels"):
        device.set_controls(np.zeros(1))


def test_refusals_and_closing() -> None:
    device = make(rows=4, cols=2)
    with pytest.raises(SafetyViolation):
        device.measure(np.array([[0.0, 1.5, 0.0, 0.0]]))
    with pytest.raises(SafetyViolation):
        device.measure(np.array([[0.0, math.nan, 0.0, 0.0]]))
    with pytest.raises(ValueError, match="shape"):
        device.measure(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="whole numbers"):
        device.apply_pulses(np.full((4, 2), 0.5))
    with pytest.raises(ValueError, match="shape"):
        device.apply_pulses(np.zeros((2, 4), dtype=int))
    with pytest.raises(ValueError, match="max_pulse_count"):
        device.apply_pulses(np.full((4, 2), 10**6))
    assert device.clock.now() == 0.0
    assert device.endurance.sum() == 0
    with device:
        device.apply_pulses(np.ones((4, 2), dtype=int))
    with pytest.raises(InstrumentDisconnected):
        device.measure(np.zeros((1, 4)))
    with pytest.raises(InstrumentDisconnected):
        device.apply_pulses(np.ones((4, 2), dtype=int))


def test_safe_state_keeps_the_weights() -> None:
    device = make(rows=8, cols=4)
    spread_weights(device, 0)
    before = device.weights
    device.safe_state()
    device.safe_state()
    np.testing.assert_array_equal(device.weights, before)


def test_oracle_arrays_are_read_only_copies() -> None:
    device = make(rows=4, cols=3)
    with pytest.raises(ValueError, match="read-only"):
        device.d2d["step_up"][0, 0] = 1.0
    with pytest.raises(ValueError, match="read-only"):
        device.endurance[0, 0] = 1
    w = device.weights
    w[0, 0] = 9.0
    assert device.weights[0, 0] == 0.0


# -- device-to-device parameters -------------------------------------------------------------------


def test_d2d_draws_follow_the_settings() -> None:
    device = make(rows=64, cols=64, up_down=0.1, device_model="linear", gamma_up=0.5)
    d2d, n = device.d2d, 64 * 64
    dw_sd = DW * math.hypot(0.3, 0.01)  # dw_min_dtod and up_down_dtod
    # means: 5 standard errors; standard deviations: 5·σ/√(2n)
    assert abs(d2d["step_up"].mean() - DW * 1.1) < 5 * dw_sd / math.sqrt(n)
    assert abs(d2d["step_down"].mean() - DW * 0.9) < 5 * dw_sd / math.sqrt(n)
    assert abs(d2d["step_up"].std() - dw_sd) < 5 * dw_sd / math.sqrt(2 * n)
    assert abs(d2d["asymmetry"].mean() - 0.1) < 5 * 0.01 / math.sqrt(n)
    for name, mean in (("w_max_bound", 0.6), ("w_min_bound", -0.6)):
        assert abs(d2d[name].mean() - mean) < 5 * 0.18 / math.sqrt(n)
        assert abs(d2d[name].std() - 0.18) < 5 * 0.18 / math.sqrt(2 * n)
    # linear: γ⁺ = −|γ_up + 0.05 ξ| / mean w_max
    assert abs(d2d["gamma_up"].mean() + 0.5 / 0.6) < 5 * 0.05 / 0.6 / math.sqrt(n)


def test_construction_seed_fixes_the_pattern_not_the_noise() -> None:
    a, b = (
        make(1, rows=8, cols=8, construction_seed=5),
        make(2, rows=8, cols=8, construction_seed=5),
    )
    for name in a.d2d:
        np.testing.assert_array_equal(a.d2d[name], b.d2d[name])
    c = make(1, rows=8, cols=8)
    assert not np.array_equal(a.d2d["step_up"], c.d2d["step_up"])
    x = np.full((1, 8), 0.5)
    assert not np.array_equal(a.measure(x), b.measure(x))  # output noise from the seed


# -- pulse updates ---------------------------------------------------------------------------------


def expected_factor(device: CrossbarDevice, w: FloatArray, up: bool) -> FloatArray:
    """The step factor of each model at weights w, from the reference equations."""
    s, d2d = device.settings, device.d2d
    lo, hi = d2d["w_min_bound"], d2d["w_max_bound"]
    if s.device_model == "constant":
        return np.ones_like(w)
    if s.device_model in ("linear", "soft_bounds"):
        gamma = d2d["gamma_up"] if up else d2d["gamma_down"]
        return np.maximum(1.0 + gamma * w, 0.0)
    if s.device_model == "exp":
        z = 2 * s.exp_a * w / (hi - lo) + s.exp_b
        if up:
            y = 1 - s.exp_amp_up * np.exp(s.exp_gamma_up * z)
        else:
            y = 1 - s.exp_amp_down * np.exp(-s.exp_gamma_down * z)
        return np.maximum(y, 0.0)
    omega = (hi - w) / (hi - lo)
    if up:
        return np.asarray(omega ** d2d["pow_gamma_up"])
    return np.asarray((1 - omega) ** d2d["pow_gamma_down"])


MODEL_SETTINGS: dict[str, dict[str, Any]] = {
    "constant": {},
    "linear": {"gamma_up": 0.5, "gamma_down": 0.3},
    "soft_bounds": {},
    "exp": {},
    "pow": {"pow_gamma": 1.5},
}


@pytest.mark.parametrize("model", list(MODEL_SETTINGS))
@pytest.mark.parametrize("up", [True, False], ids=["up", "down"])
def test_one_pulse_step_matches_the_model(model: str, up: bool) -> None:
    device = make(3, rows=64, cols=64, device_model=model, **MODEL_SETTINGS[model])
    spread_weights(device, 4)
    w0 = device.weights
    direction = 1 if up else -1
    device.apply_pulses(np.full((64, 64), direction))
    step = (device.weights - w0) * direction
    scale = device.d2d["step_up" if up else "step_down"]
    expected = scale * expected_factor(device, w0, up)
    lo, hi = device.d2d["w_min_bound"], device.d2d["w_max_bound"]
    # selected on w0 only (no bias): far from the bounds, and a step worth measuring
    use = (hi - w0 > 10 * DW) & (w0 - lo > 10 * DW) & (expected > 0.05 * DW)
    ratio = step[use] / expected[use]
    n = ratio.size
    assert n > 2000
    sigma = 0.3  # dw_min_std: the c2c noise is (1 + σξ)
    assert abs(ratio.mean() - 1) < 5 * sigma / math.sqrt(n)
    assert abs(ratio.std() - sigma) < 5 * sigma / math.sqrt(2 * n)


def test_soft_bounds_step_shrinks_linearly_to_the_bound() -> None:
    device = make(5, rows=32, cols=32, dw_min_std=0.0)
    spread_weights(device, 6, max_count=600)
    w0 = device.weights
    device.apply_pulses(np.ones((32, 32), dtype=int))
    hi = device.d2d["w_max_bound"]
    np.testing.assert_allclose(device.d2d["gamma_up"], -1 / hi)
    expected = device.d2d["step_up"] * (1 - w0 / hi)
    np.testing.assert_allclose(device.weights - w0, expected, rtol=1e-9, atol=1e-15)
    device.apply_pulses(-np.ones((32, 32), dtype=int))
    w1 = w0 + expected
    lo = device.d2d["w_min_bound"]
    expected_down = device.d2d["step_down"] * (1 - w1 / lo)
    np.testing.assert_allclose(w1 - device.weights, expected_down, rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("model", ["constant", "soft_bounds"])
def test_weights_saturate_at_the_device_bounds(model: str) -> None:
    device = make(7, rows=8, cols=8, device_model=model, dw_min_dtod=0.1)
    lo, hi = device.d2d["w_min_bound"], device.d2d["w_max_bound"]
    device.apply_pulses(np.full((8, 8), 20_000))
    assert np.all(device.weights <= hi)
    np.testing.assert_allclose(device.weights, hi, rtol=1e-6)
    device.apply_pulses(np.full((8, 8), -40_000))
    assert np.all(device.weights >= lo)
    np.testing.assert_allclose(device.weights, lo, rtol=1e-6)
    if model == "constant":  # hard bounds are reached exactly
        np.testing.assert_array_equal(device.weights, lo)


def test_up_down_asymmetry() -> None:
    beta, n = 0.2, 64 * 64
    device = make(8, rows=64, cols=64, device_model="constant", up_down=beta, dw_min_dtod=0.0)
    w0 = device.weights
    device.apply_pulses(np.ones((64, 64), dtype=int))
    up = device.weights - w0
    w1 = device.weights
    device.apply_pulses(-np.ones((64, 64), dtype=int))
    down = w1 - device.weights
    sd = DW * math.hypot(0.3, 0.01)  # c2c and the spread of β, per step
    assert abs(up.mean() - DW * (1 + beta)) < 5 * sd / math.sqrt(n)
    assert abs(down.mean() - DW * (1 - beta)) < 5 * sd / math.sqrt(n)
    # alternating up/down pulses drift upwards by 2β·dw_min per pair
    for _ in range(50):
        device.apply_pulses(np.ones((64, 64), dtype=int))
        device.apply_pulses(-np.ones((64, 64), dtype=int))
    drift = (device.weights - w0).mean()
    assert abs(drift - 51 * 2 * beta * DW) < 5 * sd * math.sqrt(102 / n)


def test_stuck_devices_never_move() -> None:
    prob, rng = 0.25, np.random.default_rng(9)
    device = make(9, rows=64, cols=64, corrupt_devices_prob=prob, corrupt_devices_range=0.1)
    stuck = device.stuck
    assert abs(stuck.mean() - prob) < 5 * math.sqrt(prob * (1 - prob) / stuck.size)
    before = device.weights
    lo, hi = device.d2d["w_min_bound"], device.d2d["w_max_bound"]
    np.testing.assert_array_equal(lo[stuck], hi[stuck])
    np.testing.assert_array_equal(before[stuck], hi[stuck])
    assert np.all(np.abs(before[stuck]) <= 0.1)
    assert np.all(before[~stuck] == 0.0)
    spread_weights(device, 10)
    device.outer_product_update(rng.uniform(-1, 1, 64), rng.uniform(-1, 1, 64), 0.02)
    device.program(np.full((64, 64), 0.3), tolerance=0.01, max_iterations=5)
    np.testing.assert_array_equal(device.weights[stuck], before[stuck])
    assert np.all(device.weights[~stuck] != 0.0)
    assert np.all(device.endurance[stuck] > 0)  # they still received the pulses


def test_write_noise_changes_the_apparent_not_the_hidden_weight() -> None:
    wn = 5.0
    noisy = make(11, rows=32, cols=32, write_noise_std=wn)
    clean = make(11, rows=32, cols=32)
    counts = np.random.default_rng(12).integers(-50, 51, size=(32, 32))
    counts[:, :4] = 0  # untouched devices keep no write noise
    for device in (noisy, clean):
        device.apply_pulses(counts)
    np.testing.assert_array_equal(noisy.weights, clean.weights)  # hidden: the same
    apparent = noisy.read_state() - noisy.weights
    touched = counts != 0
    np.testing.assert_array_equal(apparent[~touched], 0.0)
    n = int(touched.sum())
    assert abs(apparent[touched].std() - wn * DW) < 5 * wn * DW / math.sqrt(2 * n)
    np.testing.assert_array_equal(noisy.read_state() - noisy.weights, apparent)  # not redrawn
    np.testing.assert_array_equal(clean.read_state(), clean.weights)


# -- read path -------------------------------------------------------------------------------------


def test_noise_free_read_is_exactly_x_w() -> None:
    device = make(13, rows=32, cols=16, io=QUIET_IO)
    spread_weights(device, 14)
    x = np.random.default_rng(15).uniform(-1, 1, size=(20, 32))
    np.testing.assert_allclose(device.measure(x), device.true_output(x), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(device.true_output(x), x @ device.weights, rtol=1e-12)


def test_dac_quantises_inputs_in_steps_of_2_bound_res() -> None:
    device = make(16, rows=16, cols=8, io={**QUIET_IO, "inp_res": 1 / 126})
    spread_weights(device, 17)
    step = 2 / 126
    x = unit_rows(np.random.default_rng(18), 10, 16)
    expected = (np.rint(x / step) * step) @ device.weights
    np.testing.assert_allclose(device.measure(x), expected, rtol=1e-12, atol=1e-15)
    # moving an input by less than half a step from a level changes nothing; more does
    base = np.zeros((1, 16))
    base[0, 0], base[0, 1] = 1.0, 10 * step
    nudged = base.copy()
    nudged[0, 1] += 0.45 * step
    np.testing.assert_array_equal(device.measure(base), device.measure(nudged))
    nudged[0, 1] += 0.1 * step
    jump = device.measure(nudged) - device.measure(base)
    np.testing.assert_allclose(jump[0], step * device.weights[1], rtol=1e-9, atol=1e-15)


def test_adc_quantises_outputs_in_steps_of_2_bound_res() -> None:
    device = make(19, rows=16, cols=8, io={**QUIET_IO, "out_res": 1 / 510})
    spread_weights(device, 20)
    x = unit_rows(np.random.default_rng(21), 50, 16)
    y = device.measure(x)
    step = 2 * 12 / 510
    np.testing.assert_allclose(y / step, np.rint(y / step), atol=1e-9)
    assert np.all(np.abs(y - device.true_output(x)) <= step / 2 + 1e-12)
    assert len(np.unique(np.rint(y / step))) > 3


def test_output_noise_has_the_stated_sigma() -> None:
    sigma, cases = 0.06, 400
    device = make(22, rows=16, cols=16, io={**QUIET_IO, "out_noise": sigma})
    spread_weights(device, 23)
    x = np.tile(unit_rows(np.random.default_rng(24), 1, 16), (cases, 1))
    residual = (device.measure(x) - device.true_output(x)).ravel()
    n = residual.size
    assert abs(residual.mean()) < 5 * sigma / math.sqrt(n)
    assert abs(residual.std() - sigma) < 5 * sigma / math.sqrt(2 * n)
    # noise management: the noise is referred to the scaled input, so it scales with max|x|
    half = device.measure(0.5 * x) - device.true_output(0.5 * x)
    assert abs(half.std() - sigma / 2) < 5 * sigma / 2 / math.sqrt(2 * n)


def test_additive_weight_noise_scales_with_the_input_norm() -> None:
    w_noise, cases = 0.05, 300
    device = make(25, rows=16, cols=16, io={**QUIET_IO, "w_noise": w_noise})
    x = np.tile(unit_rows(np.random.default_rng(26), 1, 16), (cases, 1))
    residual = (device.measure(x) - device.true_output(x)).ravel()
    sigma = w_noise * float(np.linalg.norm(x[0]))
    assert abs(residual.std() - sigma) < 5 * sigma / math.sqrt(2 * residual.size)


def saturated_device(bound_management: str) -> CrossbarDevice:
    """All weights at their upper bound: a row of ones gives Σ b_max ≈ 38 > out_bound 12."""
    device = make(
        27,
        rows=64,
        cols=4,
        device_model="constant",
        dw_min_dtod=0.1,
        io={**QUIET_IO, "bound_management": bound_management},
    )
    device.apply_pulses(np.full((64, 4), 3000))
    return device


def test_output_bound_clips_without_bound_management() -> None:
    device = saturated_device("none")
    x = np.ones((3, 64))
    assert np.all(device.true_output(x) > 30)
    np.testing.assert_array_equal(device.measure(x), 12.0)
    assert device.reads == 3


def test_iterative_bound_management_halves_the_input_until_it_fits() -> None:
    device = saturated_device("iterative")
    x = np.ones((3, 64))
    t0 = device.clock.now()
    np.testing.assert_allclose(device.measure(x), device.true_output(x), rtol=1e-12)
    # ≈38/12 needs the input scaled by 1/4: three passes per case, each one a read
    assert device.reads == 9
    assert device.clock.now() - t0 == pytest.approx(9 * device.settings.timing.read_time)


def test_ir_drop_follows_the_aihwkit_formula() -> None:
    g_ratio = 200.0
    device = make(28, rows=32, cols=8, io={**QUIET_IO, "ir_drop": 1.0, "ir_drop_g_ratio": g_ratio})
    device.apply_pulses(np.random.default_rng(29).integers(50, 300, size=(32, 8)))
    x = np.random.default_rng(30).uniform(0.1, 1.0, size=(5, 32))
    x[:, 0] = 1.0
    w = device.weights
    a = (32 / g_ratio) * (np.abs(x) @ np.abs(w))
    c = a * (a * (0.05 * a - 0.2) + 0.5)
    position = 1 - (1 - np.arange(32) / 32) ** 2
    expected = x @ w - c * ((x * position) @ w)
    y = device.measure(x)
    np.testing.assert_allclose(y, expected, rtol=1e-12)
    assert np.all(y < x @ w)  # positive weights and inputs: the drop lowers every output
    assert np.all((x @ w - y) / (x @ w) > 0.01)


# -- retention -------------------------------------------------------------------------------------


def programmed_pcm(read_noise_scale: float) -> tuple[CrossbarDevice, float]:
    """A PCM crossbar with weights ≈ 0.3 (ĝ ≈ 0.5); returns it and the programming time."""
    device = make(
        31,
        rows=64,
        cols=64,
        device_model="constant",
        dw_min_dtod=0.1,
        w_max_dtod=0.1,  # every bound well above the programmed 0.3
        retention={"model": "pcm", "read_noise_scale": read_noise_scale},
    )
    device.apply_pulses(np.full((64, 64), 300))
    return device, device.clock.now()


def test_pcm_drift_exponent_is_recovered_from_two_reads() -> None:
    device, t_prog = programmed_pcm(read_noise_scale=0.0)
    nu = device.drift_exponents.copy()
    w0 = device.weights
    t0 = device.settings.retention.t0
    reads = []
    for t in (100.0, 10_000.0):
        device.advance(t_prog + t - device.clock.now())
        reads.append(device.read_state())
    slope = np.log(reads[1] / reads[0]) / math.log((10_000.0 + t0) / (100.0 + t0))
    np.testing.assert_allclose(slope, -nu, rtol=1e-9)
    np.testing.assert_allclose(reads[0], w0 * (1 + 100.0 / t0) ** -nu, rtol=1e-12)
    # ĝ ≈ 0.5: the PCM fit clips to μ_ν = 0.049, σ_ν = 0.008
    n = nu.size
    assert abs(nu.mean() - 0.049) < 5 * 0.008 / math.sqrt(n)
    assert abs(nu.std() - 0.008) < 5 * 0.008 / math.sqrt(2 * n)
    # a pulse acts on the drifted weight and restarts the drift
    drifted = device.weights
    counts = np.zeros((64, 64), dtype=int)
    counts[0, 0] = 1
    device.apply_pulses(counts)
    after = device.weights
    assert after[0, 0] - drifted[0, 0] > 0
    np.testing.assert_allclose(after[1:], drifted[1:], rtol=1e-9)  # the train took ~1 µs


def test_pcm_read_noise_follows_the_one_over_f_model() -> None:
    device, t_prog = programmed_pcm(read_noise_scale=1.0)
    g = np.abs(device.weights) / 0.6  # programmed ĝ (no drift yet)
    device.advance(100.0)
    r = device.settings.retention
    q_s = np.minimum(0.0088 / g**0.65, 0.2)
    z = []
    for _ in range(20):  # each read draws the noise afresh; 20 × 4096 samples
        t = device.clock.now() - t_prog + r.t0
        sigma = q_s * math.sqrt(math.log((t + r.t_read) / (2 * r.t_read)))
        w = device.weights
        z.append((device.read_state() / w - 1) / sigma)
    zs = np.concatenate([a.ravel() for a in z])
    n = zs.size
    assert abs(zs.mean()) < 5 / math.sqrt(n)
    assert abs(zs.std() - 1) < 5 / math.sqrt(2 * n)


# -- time and endurance ----------------------------------------------------------------------------


def test_clock_charges_reads_pulses_and_waiting() -> None:
    device = make(32, rows=8, cols=4)
    timing = device.settings.timing
    clock = device.clock
    t = clock.now()
    device.measure(np.zeros((5, 8)))
    assert clock.now() - t == pytest.approx(5 * timing.read_time)
    t = clock.now()
    counts = np.zeros((8, 4), dtype=int)
    counts[2, 1], counts[3, 3] = 7, -12
    device.apply_pulses(counts)
    assert clock.now() - t == pytest.approx(12 * timing.pulse_width + timing.pulse_overhead)
    t = clock.now()
    device.apply_pulses(np.zeros((8, 4), dtype=int))  # nothing sent, nothing charged
    assert clock.now() == t
    device.read_state()
    assert clock.now() - t == pytest.approx(8 * timing.read_time)
    t = clock.now()
    device.pulse_train(np.ones((6, 8)), np.ones((6, 4)))
    assert clock.now() - t == pytest.approx(6 * timing.pulse_width + timing.pulse_overhead)
    t = clock.now()
    device.advance(3.5)
    assert clock.now() - t == pytest.approx(3.5)
    with pytest.raises(ValueError, match="≥ 0"):
        device.advance(-1.0)


def test_endurance_counts_every_pulse() -> None:
    device = make(33, rows=8, cols=6)
    rng = np.random.default_rng(34)
    counts = rng.integers(-20, 21, size=(8, 6))
    device.apply_pulses(counts)
    np.testing.assert_array_equal(device.endurance, np.abs(counts))
    rows = rng.choice([-1, 0, 1], size=(10, 8))
    cols = rng.choice([-1, 0, 1], size=(10, 6))
    delivered = device.pulse_train(rows, cols)
    coincidences = np.abs(rows).T @ np.abs(cols)
    assert delivered == coincidences.sum()
    np.testing.assert_array_equal(device.endurance, np.abs(counts) + coincidences)
    assert device.pulse_trains == 2


def test_pulse_train_moves_each_device_by_its_signed_coincidences() -> None:
    device = make(35, rows=8, cols=6, device_model="constant", dw_min_dtod=0.0, dw_min_std=0.0)
    rng = np.random.default_rng(36)
    rows = rng.choice([-1, 0, 1], size=(12, 8))
    cols = rng.choice([-1, 0, 1], size=(12, 6))
    device.pulse_train(rows, cols)
    up, down = device.d2d["step_up"], device.d2d["step_down"]
    signed = rows.T @ cols  # up minus down coincidences
    n_up = ((np.abs(rows).T @ np.abs(cols)) + signed) // 2
    n_down = n_up - signed
    np.testing.assert_allclose(device.weights, n_up * up - n_down * down, rtol=1e-12)


# -- training updates and programming ------------------------------------------------------------


def test_outer_product_update_is_unbiased() -> None:
    lr, repeats = 0.005, 400
    device = make(
        37,
        rows=16,
        cols=16,
        device_model="constant",
        dw_min_dtod=0.0,
        dw_min_std=0.0,
        up_down_dtod=0.0,
        w_min=-100.0,
        w_max=100.0,
        w_min_dtod=0.0,
        w_max_dtod=0.0,
    )
    rng = np.random.default_rng(38)
    x, d = rng.uniform(-1, 1, 16), rng.uniform(-1, 1, 16)
    steps = np.empty((repeats, 16, 16))
    t = device.clock.now()
    for k in range(repeats):
        w0 = device.weights
        device.outer_product_update(x, d, lr)
        steps[k] = device.weights - w0
    target = lr * np.outer(x, d)
    mean = steps.mean(axis=0)
    se = steps.std(axis=0, ddof=1) / math.sqrt(repeats)
    z = (mean - target) / se
    assert np.max(np.abs(z)) < 5  # 256 devices, each within 5 standard errors
    slope = float(np.sum(mean * target) / np.sum(target**2))
    assert abs(slope - 1) < 0.02
    # BL management: ceil(lr·max|x|·max|d|/dw_min) slots per update
    slots = math.ceil(lr * np.abs(x).max() * np.abs(d).max() / DW)
    timing = device.settings.timing
    expected = repeats * (slots * timing.pulse_width + timing.pulse_overhead)
    assert device.clock.now() - t == pytest.approx(expected)


def test_write_verify_reaches_the_target() -> None:
    device = make(39, rows=32, cols=16, write_noise_std=2.0)
    rng = np.random.default_rng(40)
    lo, hi = device.d2d["w_min_bound"], device.d2d["w_max_bound"]
    u = rng.uniform(-0.8, 0.8, size=(32, 16))
    target = np.where(u > 0, u * hi, -u * lo)  # reachable: inside each device's bounds
    tolerance, t = 0.01, device.clock.now()
    result = device.program(target, tolerance=tolerance, max_iterations=30)
    assert result.converged
    assert result.max_error <= tolerance
    assert 1 <= result.iterations < 30
    np.testing.assert_array_equal(np.abs(result.errors) <= tolerance, True)
    assert result.pulses == device.endurance.sum()
    timing = device.settings.timing
    reads = (result.iterations + 1) * 32 * timing.read_time
    assert device.clock.now() - t >= reads + result.iterations * timing.pulse_overhead


def test_write_verify_gives_up_on_unreachable_devices() -> None:
    device = make(41, rows=8, cols=8, device_model="constant", corrupt_devices_prob=0.2)
    target = np.full((8, 8), 0.3)
    target[0, 0] = 5.0  # beyond any bound
    result = device.program(target, tolerance=0.01, max_iterations=40)
    assert not result.converged
    assert result.iterations < 40  # stalled devices are left alone, then the loop ends
    hi = device.d2d["w_max_bound"]
    assert device.weights[0, 0] == hi[0, 0]
    reachable = ~device.stuck & (hi > 0.32)
    reachable[0, 0] = False
    assert np.all(np.abs(result.errors[reachable]) <= 0.01)


# -- checkpoints and seeds -----------------------------------------------------------------------


def rich_device(seed: int) -> CrossbarDevice:
    return make(
        seed,
        rows=12,
        cols=6,
        write_noise_std=3.0,
        corrupt_devices_prob=0.1,
        io={"w_noise": 0.01, "ir_drop": 0.5},
        retention={"model": "pcm"},
    )


def workload(device: CrossbarDevice, seed: int) -> list[FloatArray]:
    rng = np.random.default_rng(seed)
    out = [device.measure(rng.uniform(-1, 1, size=(4, 12)))]
    device.apply_pulses(rng.integers(-30, 31, size=(12, 6)))
    device.outer_product_update(rng.uniform(-1, 1, 12), rng.uniform(-1, 1, 6), 0.01)
    device.advance(50.0)
    out.append(device.read_state())
    result = device.program(rng.uniform(-0.2, 0.2, size=(12, 6)), max_iterations=2)
    out.append(result.errors)
    out.append(device.measure(rng.uniform(-1, 1, size=(4, 12))))
    return out


def test_state_dict_round_trip_reproduces_the_future() -> None:
    device = rich_device(42)
    workload(device, 43)
    state = json.loads(json.dumps(device.state_dict()))
    other = rich_device(44)  # another seed: everything must come from the state
    other.load_state_dict(state)
    for a, b in zip(workload(device, 45), workload(other, 45), strict=True):
        np.testing.assert_array_equal(a, b)
    assert device.clock.now() == other.clock.now()
    np.testing.assert_array_equal(device.endurance, other.endurance)
    np.testing.assert_array_equal(device.weights, other.weights)
    assert device.state_dict() == other.state_dict()


def test_state_of_another_shape_is_refused() -> None:
    state = rich_device(1).state_dict()
    with pytest.raises(ValueError, match="array"):
        make(1, rows=6, cols=6).load_state_dict(state)


def test_identical_seeds_agree_and_different_seeds_differ() -> None:
    a, b, c = (workload(rich_device(s), 46) for s in (7, 7, 8))
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])
    assert not np.array_equal(a[1], c[1])


# -- station file ---------------------------------------------------------------------------------


def test_station_file_builds_a_guarded_crossbar(tmp_path: Path) -> None:
    station = load_station(ROOT / "configs" / "stations" / "sim-crossbar.yaml")
    device = station.device.cls(station.device.settings, seed=0)
    assert isinstance(device, CrossbarDevice)
    with SafetyGuard(device, station.config.limits) as guard:
        x = np.zeros((2, device.settings.rows))
        x[:, 0] = 0.5
        assert guard.measure(x).shape == (2, device.settings.cols)
        with pytest.raises(SafetyViolation):
            guard.measure(np.full((1, device.settings.rows), 1.2))
