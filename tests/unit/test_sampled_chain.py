"""Each non-ideality of the sampled output chain against its own specification, on the analytic
device (whose true output is known), and each one off when switched off."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from scipy import signal

from simulators.analytic import AnalyticDevice

THETA = np.array([0.2, -0.1, 0.3, 0.0, -0.2])
X = np.array([0.1, -0.3])


def make(seed: int = 0, **settings: Any) -> AnalyticDevice:
    device = AnalyticDevice(AnalyticDevice.Settings.model_validate(settings), seed=seed)
    device.set_controls(THETA)
    return device


def hold(device: AnalyticDevice, n: int) -> np.ndarray:
    """n samples at constant levels (THETA, X), output channel only."""
    out = device.stream(np.tile(X, (n, 1)), ["in0", "in1"])
    return np.asarray(out[:, 0])


def truth(device: AnalyticDevice) -> float:
    return float(device.true_output(THETA, X[np.newaxis, :])[0, 0])


def test_white_noise_sigma() -> None:
    n, sigma = 20_000, 0.05
    device = make(noise={"white": sigma})
    residual = hold(device, n) - truth(device)
    assert abs(residual.std(ddof=1) - sigma) < 4 * sigma / math.sqrt(2 * n)
    assert abs(residual.mean()) < 4 * sigma / math.sqrt(n)


def test_signal_proportional_noise() -> None:
    n, rel = 20_000, 0.02
    device = make(noise={"relative": rel})
    y = truth(device)
    residual = hold(device, n) - y
    expected = rel * abs(y)
    assert abs(residual.std(ddof=1) - expected) < 4 * expected / math.sqrt(2 * n)


def test_flicker_psd_slope_and_level() -> None:
    fs, psd = 1000.0, 1e-4
    device = make(
        noise={"flicker_psd": psd, "flicker_f_ref": 10.0, "flicker_f_lo": 0.01},
        timing={"sample_rate": fs},
    )
    trace = hold(device, 2**18) - truth(device)
    f, p = signal.welch(trace, fs=fs, nperseg=2**14)
    band = (f >= 0.5) & (f <= 50.0)  # two decades, inside the 1/f band, far below Nyquist
    slope, intercept = np.polyfit(np.log10(f[band]), np.log10(p[band]), 1)
    assert abs(slope + 1.0) < 0.15
    # level at 10 Hz from the fit; Welch with 31 segments: ~18 % per bin, fit over ~800 bins
    level = 10 ** (intercept + slope * 1.0)
    assert abs(level / psd - 1.0) < 0.15


def test_lowpass_minus_3db_point() -> None:
    cutoff, fs = 20.0, 1000.0
    device = make(cutoff=cutoff, timing={"sample_rate": fs})
    ideal = make(timing={"sample_rate": fs})
    freqs = np.array([5.0, 10.0, 15.0, 18.0, 20.0, 22.0, 25.0, 30.0, 40.0])
    n, amplitude = 4000, 1e-3  # 4 s: whole periods of every frequency; small: linear regime
    t = np.arange(1, n + 1) / fs
    gains = []
    for f in freqs:
        wave = THETA[0] + amplitude * np.sin(2 * np.pi * f * t)
        ref = np.exp(-2j * np.pi * f * t)
        filtered = device.stream(wave[:, None], ["ctrl0"])[n // 2 :, 0]
        unfiltered = ideal.stream(wave[:, None], ["ctrl0"])[n // 2 :, 0]
        gains.append(abs(filtered @ ref[n // 2 :]) / abs(unfiltered @ ref[n // 2 :]))
    measured = np.interp(1 / math.sqrt(2), np.array(gains)[::-1], freqs[::-1])
    assert abs(measured / cutoff - 1.0) < 0.05
    np.testing.assert_allclose(gains, np.abs(device.lowpass_response(freqs)), rtol=1e-3)


def test_adc_quantisation_step_and_saturation() -> None:
    device = make(saturation=2.0, adc_bits=8, noise={"white": 0.05})
    step = 4.0 / 256
    out = hold(device, 1000)
    codes = (out + 2.0) / step
    np.testing.assert_allclose(codes, np.round(codes), atol=1e-9)
    assert np.ptp(out) > 3 * step  # noise spans several codes: the grid is really exercised
    clipped = make(saturation=0.1, offset=5.0)
    np.testing.assert_array_equal(hold(clipped, 10), np.full(10, 0.1))
    on_grid = make(saturation=0.1, adc_bits=4, offset=-5.0)
    np.testing.assert_array_equal(hold(on_grid, 3), np.full(3, -0.1))  # the bottom code


def test_dac_quantisation_moves_the_levels_to_the_grid() -> None:
    device = make(dac_bits=6, dac_range=1.0)
    step = 2.0 / 64
    grid = -1.0 + np.round((np.concatenate([X, THETA]) + 1.0) / step) * step
    expected = device.true_output(grid[2:], grid[np.newaxis, :2])[0, 0]
    assert hold(device, 3) == pytest.approx(np.full(3, expected), rel=1e-12)
    assert abs(expected - truth(device)) > 1e-4  # the grid really changed something


def test_gain_error_and_offset() -> None:
    device = make(gain_error=0.05, offset=-0.2)
    assert hold(device, 3) == pytest.approx(np.full(3, 1.05 * truth(device) - 0.2), rel=1e-12)


def test_drift_is_a_slow_process_of_the_stated_size() -> None:
    sigma, tau = 0.1, 5.0
    device = make(noise={"drift_std": sigma, "drift_tau": tau})
    samples = []
    for _ in range(2000):
        device.idle(3 * tau)  # nearly independent draws
        samples.append(hold(device, 2))
    s = np.array(samples) - truth(device)
    assert abs(s[:, 0].std(ddof=1) - sigma) < 4 * sigma / math.sqrt(2 * len(s))
    # within 1 ms the drift barely moves: consecutive samples agree to ~σ·sqrt(2·dt/τ)
    assert np.max(np.abs(s[:, 1] - s[:, 0])) < 6 * sigma * math.sqrt(2 * 1e-3 / tau)


def test_sources_are_independent_and_off_means_off() -> None:
    base = make(seed=4, noise={"white": 0.01})
    with_drift = make(seed=4, noise={"white": 0.01, "drift_std": 0.05, "drift_tau": 1e4})
    difference = hold(with_drift, 500) - hold(base, 500)
    # the same white draws cancel: what is left is the drift alone, which moves by about
    # σ·sqrt(2·0.5 s/τ) = 5e-4 in 0.5 s (uncancelled white noise would span ~0.08)
    assert np.ptp(difference) < 6 * 0.05 * math.sqrt(2 * 0.5 / 1e4)
    quiet = make(noise={"white": 0.0, "relative": 0.0, "flicker_psd": 0.0, "drift_std": 0.0})
    np.testing.assert_allclose(hold(quiet, 5), np.full(5, truth(quiet)), rtol=1e-14)


def test_flicker_level_quoted_above_nyquist_follows_the_law_in_band() -> None:
    fs, psd, f_ref = 1000.0, 1e-4, 1000.0  # quoted at 1 kHz, sampled at 1 kHz
    device = make(noise={"flicker_psd": psd, "flicker_f_ref": f_ref}, timing={"sample_rate": fs})
    trace = hold(device, 2**18) - truth(device)
    f, p = signal.welch(trace, fs=fs, nperseg=2**14)
    band = (f >= 1.0) & (f <= 100.0)
    ratio = np.median(p[band] * f[band] / (psd * f_ref))
    assert abs(ratio - 1.0) < 0.15  # S(f)·f equals the quoted S(f_ref)·f_ref in band


def test_idle_refuses_non_finite_times_and_changes_nothing() -> None:
    device = make(cutoff=50.0)
    before = device.state_dict()
    for bad in (math.nan, math.inf, -1.0):
        with pytest.raises(ValueError, match="finite time"):
            device.idle(bad)
    assert device.state_dict() == before
