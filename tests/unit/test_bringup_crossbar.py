"""Crossbar bring-up through the safety guard: the conductance map, the pulse staircase and the
stuck map recover what the simulated crossbar was built with."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from drivers.rigs.crossbar import SerialCrossbarRig
from hil.core import CapabilityError, ConfigError, FloatArray
from hil.safety import SafetyGuard, SafetyLimits
from protocols.bringup_crossbar import (
    ConductanceSettings,
    PulseSettings,
    conductance_map,
    pulse_response,
)
from simulators.analytic import AnalyticDevice
from simulators.crossbar import CrossbarDevice, CrossbarSettings
from simulators.virtual.crossbar_serial import (
    BoardModel,
    CrossbarBoardEmulator,
    CrossbarSerialServer,
)

pytestmark = pytest.mark.timeout(60)

PCM_READ_NOISE = {"model": "pcm", "drift_scale": 0.0}  # 1/f read noise, no drift


def crossbar(
    rows: int = 64, cols: int = 32, retention: dict[str, Any] | None = None, seed: int = 1
) -> CrossbarDevice:
    """The sim-crossbar.yaml array with 2 % stuck devices (a fixed pattern)."""
    settings = CrossbarSettings.model_validate(
        {
            "rows": rows,
            "cols": cols,
            "construction_seed": 3,
            "corrupt_devices_prob": 0.02,
            "retention": retention or {},
        }
    )
    return CrossbarDevice(settings, seed=seed)


def guard(device: CrossbarDevice, **limits: Any) -> SafetyGuard:
    return SafetyGuard(device, SafetyLimits(max_abs_voltage=1.0, **limits))


def stuck_mask(record: dict[str, Any]) -> npt.NDArray[np.bool_]:
    mask = np.zeros((record["rows"], record["cols"]), dtype=bool)
    for i, j in record["stuck"]:
        mask[i, j] = True
    return mask


def scatter(device: CrossbarDevice, rounds: int = 4) -> None:
    """Random pulse counts, so the weights are spread over their range."""
    rng = np.random.default_rng(9)
    for _ in range(rounds):
        device.apply_pulses(rng.integers(-60, 61, size=device.weights.shape))


def test_the_stuck_map_is_the_simulators_stuck_devices() -> None:
    """Without read noise a stuck device reads the same every time (response exactly 0), and the
    slowest movable device still moves: the map is exact."""
    device = crossbar()
    record = pulse_response(guard(device), PulseSettings())
    assert record["stuck_count"] == int(device.stuck.sum()) > 20
    np.testing.assert_array_equal(stuck_mask(record), device.stuck)
    assert record["stuck"] == sorted(record["stuck"])
    # The staircase ends near its start, not on it: soft bounds make the down leg (from ~0.4 b_max)
    # overshoot further than the up legs return, by ~0.1 b_max from G = 0 (the deterministic
    # steps: a^n = exp(−n·dw/b) = 0.6 per leg of n = 300 pulses).
    assert record["return_offset_median"] < 0.15 * 0.6
    json.dumps(record)  # JSON-able as it is


def test_with_read_noise_no_stuck_device_is_missed() -> None:
    """With PCM read noise (σ ≈ 6 % of G) a stuck device's response is noise, and σ pooled over the
    reads and ~120 round-to-round differences makes a 5 σ test miss one with probability ~1e-6.
    Tolerated extras: movable devices whose nominal step (d2d) is below `threshold` × the median
    device's, whose whole response stays within the read noise — indistinguishable from stuck."""
    device = crossbar(retention=PCM_READ_NOISE)
    settings = PulseSettings()
    record = pulse_response(guard(device), settings)
    found = stuck_mask(record)
    assert not np.any(device.stuck & ~found)
    extra = found & ~device.stuck
    assert extra.sum() <= 3
    d2d = device.d2d
    for name in ("step_up", "step_down"):
        step = d2d[name][~device.stuck]
        assert np.all(d2d[name][extra] < settings.threshold * np.median(step))
    noise = np.asarray(record["read_noise"])
    assert np.median(noise) > 1e-3  # the read noise is there, and measured


def test_the_conductance_map_is_the_true_weights_within_the_read_noise() -> None:
    quiet = crossbar(rows=16, cols=8)
    scatter(quiet)
    record = conductance_map(guard(quiet), ConductanceSettings())
    np.testing.assert_allclose(record["mean"], quiet.weights, rtol=0, atol=1e-12)
    assert np.max(record["read_noise"]) == 0.0
    mean = np.asarray(record["mean"])
    assert record["min"] == mean.min()
    assert record["max"] == mean.max()
    assert record["median"] == pytest.approx(float(np.median(mean)))

    noisy = crossbar(rows=16, cols=8, retention=PCM_READ_NOISE)
    scatter(noisy)
    n = 20
    record = conductance_map(guard(noisy), ConductanceSettings(reads=n))
    mean, sigma = np.asarray(record["mean"]), np.asarray(record["read_noise"])
    assert (record["rows"], record["cols"], record["reads"]) == (16, 8, n)
    moving = sigma > 0  # weight exactly 0 has no read noise: read exactly
    np.testing.assert_array_equal(mean[~moving], noisy.weights[~moving])
    z = (mean - noisy.weights)[moving] / (sigma[moving] / math.sqrt(n))
    # t with 19 dof: P(|t| > 5) ≈ 8e-5 per device; E t² = 19/17 ≈ 1.12, its mean over ~120
    # devices within ±0.4 by a wide margin (var t² ≈ 2.8 for 19 dof).
    assert np.all(np.abs(z) < 5)
    assert 0.7 < float(np.mean(z**2)) < 1.6


def expected_per_pulse(device: CrossbarDevice, g: FloatArray, count: int) -> FloatArray:
    """Soft bounds: E ΔG per pulse over `count` pulses from G (signed), the mean step
    s·(1 − G/b_max) up or s·(1 − G/b_min) down applied pulse by pulse within the device's bounds
    (the step noise has mean 1 and enters linearly, so away from the bounds this is exact)."""
    d2d = device.d2d
    lo, hi = d2d["w_min_bound"], d2d["w_max_bound"]
    w = g.copy()
    for _ in range(abs(count)):
        if count > 0:
            w = np.minimum(w + d2d["step_up"] * (1 - w / hi), hi)
        else:
            w = np.maximum(w - d2d["step_down"] * (1 - w / lo), lo)
    per_pulse: FloatArray = (w - g) / abs(count)
    return per_pulse


def test_delta_g_per_pulse_follows_the_soft_bounds_model() -> None:
    device = crossbar()
    settings = PulseSettings()
    record = pulse_response(guard(device), settings)
    states, counts = np.asarray(record["states"]), np.asarray(record["counts"])
    assert counts.tolist() == [10] * 30 + [-10] * 60 + [10] * 30
    assert states.shape == (121, 64, 32)
    movable = ~device.stuck
    for name, sign in (("up", 1), ("down", -1)):
        rounds = np.flatnonzero(np.sign(counts) == sign)
        g = states[rounds][:, movable]
        dg = (states[rounds + 1] - states[rounds])[:, movable] / np.abs(counts[rounds])[:, None]
        model = np.stack([expected_per_pulse(device, states[k], int(counts[k])) for k in rounds])
        model = model[:, movable]
        # The record's bins: equal bins over every G before a round of the movable devices.
        g_all = states[:-1][:, movable]
        edges = np.linspace(g_all.min(), g_all.max(), settings.bins + 1)
        index = np.clip(np.searchsorted(edges, g, side="right") - 1, 0, settings.bins - 1)
        kept = [k for k in range(settings.bins) if np.count_nonzero(index == k) >= 2]
        curve = record[name]
        assert curve["n"] == [int(np.count_nonzero(index == k)) for k in kept]
        for k, g_bin, dg_bin, se in zip(kept, curve["g"], curve["dg"], curve["dg_se"], strict=True):
            inside = index == k
            assert g_bin == pytest.approx(float(g[inside].mean()))
            assert dg_bin == pytest.approx(float(dg[inside].mean()))
            # Pulse noise is 30 % per pulse, independent between rounds: 4 standard errors.
            assert float(model[inside].mean()) == pytest.approx(dg_bin, abs=4 * se + 1e-7)
        # Per-device mean steps against the model's, conditioned on the G each round began at: the
        # difference is the pulse noise, 30 % of each pulse's step (5 σ; ~4000 devices and
        # polarities, so a 5 σ excursion has a chance of ~0.2 %).
        step = np.asarray(curve["step"])[movable]
        pulses = np.abs(counts[rounds])[:, None]
        n = int(pulses.sum())
        expected = sign * (model * pulses).sum(axis=0) / n
        sigma = 0.3 * np.sqrt((model**2 * pulses).sum(axis=0)) / n
        assert np.all(np.abs(step - expected) < 5 * sigma)
    # Where every device contributes (the central band), the up-step shrinks as G approaches
    # w_max and the down-step as G approaches w_min.
    up, down = record["up"], record["down"]
    central_up = [dg for g, dg in zip(up["g"], up["dg"], strict=True) if -0.3 < g < 0.2]
    central_down = [dg for g, dg in zip(down["g"], down["dg"], strict=True) if -0.2 < g < 0.3]
    assert len(central_up) >= 5
    assert len(central_down) >= 5
    assert np.all(np.diff(central_up) < 0)
    assert np.all(np.diff(central_down) < 0)  # signed: more negative as G grows


class CountingCrossbar(CrossbarDevice):
    """Records every pulse request that reaches the device."""

    requests: list[npt.NDArray[np.int64]]

    def apply_pulses(self, pulses: npt.ArrayLike) -> None:
        self.requests.append(np.array(pulses, dtype=np.int64))
        super().apply_pulses(pulses)


def counting(rows: int = 8, cols: int = 6) -> CountingCrossbar:
    device = CountingCrossbar(
        CrossbarSettings(rows=rows, cols=cols, construction_seed=3, corrupt_devices_prob=0.1),
        seed=2,
    )
    device.requests = []
    return device


def test_the_guards_pulse_limits_split_every_round() -> None:
    device = counting()
    settings = PulseSettings(pulses=10, rounds=3)
    record = pulse_response(
        guard(device, max_pulses_per_device=4, max_pulses_per_request=100), settings
    )
    seen = device.requests
    assert max(int(np.abs(r).max()) for r in seen) <= 4
    assert max(int(np.abs(r).sum()) for r in seen) <= 100
    # Every device got every pulse of the staircase: 12 rounds of 10.
    np.testing.assert_array_equal(device.endurance, 12 * 10)
    # 10 = 4 + 4 + 2 pulses; 48 devices × 4 = 192 > 100: two requests for each part.
    assert record["requests"] == len(seen) == 12 * 3 * 2
    assert record["max_pulses"] == 4
    np.testing.assert_array_equal(stuck_mask(record), device.stuck)


def test_the_max_pulses_setting_caps_requests_without_a_guard_limit() -> None:
    device = counting()
    record = pulse_response(guard(device), PulseSettings(pulses=7, rounds=2, max_pulses=3))
    assert [int(np.abs(r).max()) for r in device.requests[:3]] == [3, 3, 1]
    assert record["requests"] == 8 * 3
    np.testing.assert_array_equal(device.endurance, 8 * 7)


def test_limits_that_forbid_pulsing_and_devices_without_state_are_refused() -> None:
    with pytest.raises(ConfigError, match="max_pulses_per_device"):
        pulse_response(guard(counting(), max_pulses_per_device=0), PulseSettings())
    analytic = SafetyGuard(AnalyticDevice(seed=0), SafetyLimits(max_abs_voltage=1.0))
    with pytest.raises(CapabilityError, match="programmable state"):
        conductance_map(analytic, ConductanceSettings())
    with pytest.raises(CapabilityError):
        pulse_response(analytic, PulseSettings())


def test_on_the_serial_rig_the_stuck_map_is_the_simulators() -> None:
    """End to end over `socket://` to the XBAR/1 emulator: the rig maps currents to weights, the
    board takes at most 50 pulses a train."""
    rows, cols = 8, 4
    device = CrossbarDevice(
        CrossbarSettings(rows=rows, cols=cols, construction_seed=5, corrupt_devices_prob=0.2),
        seed=3,
    )
    server = CrossbarSerialServer(CrossbarBoardEmulator(device, BoardModel())).start()
    try:
        settings = SerialCrossbarRig.Settings.model_validate(
            {
                "name": "xbar",
                "rows": rows,
                "cols": cols,
                "set_pulse": {"amplitude": 1.2, "width_ns": 100, "gap_ns": 1000},
                "reset_pulse": {"amplitude": 1.5, "width_ns": 100, "gap_ns": 1000},
                "g_ref": 50e-6,
                "g_scale": 50e-6,
                "clock": "virtual",
                "board": {
                    "name": "xbar-board",
                    "url": server.url,
                    "timeout": 1.0,
                    "word_lines": rows,
                    "bit_lines": cols,
                    "max_amplitude": 2.0,
                    "max_read_voltage": 0.5,
                    "max_width_ns": 1000,
                    "max_count": 50,
                    "compliance_current": 1e-3,
                },
            }
        )
        with SafetyGuard(SerialCrossbarRig(settings), SafetyLimits(max_abs_voltage=1.0)) as rig:
            conductance = conductance_map(rig, ConductanceSettings(reads=2))
            record = pulse_response(rig, PulseSettings(pulses=20, rounds=4, reads=2))
    finally:
        server.stop()
    assert 0 < device.stuck.sum() < rows * cols
    np.testing.assert_array_equal(stuck_mask(record), device.stuck)
    # Read before any pulse: stuck devices at their stuck value, the others at 0.
    initial = np.where(device.stuck, device.d2d["w_max_bound"], 0.0)
    np.testing.assert_allclose(conductance["mean"], initial, rtol=0, atol=1e-9)
