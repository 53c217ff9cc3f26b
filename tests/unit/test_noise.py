"""Noise building blocks: OU banks have the exact statistics, 1/f banks the stated spectrum, the
low-pass its exact response with state carried in time, the quantizer its grid.

Statistical checks compare an unbiased estimate (known zero mean) with its exact value, allowing
Z standard errors; the standard error comes from the spread over independent channels or segments.
"""

from __future__ import annotations

import json
import math

import numpy as np
import numpy.typing as npt
import pytest
from scipy.integrate import quad
from scipy.optimize import brentq
from scipy.signal import spectrogram

from hil.core import FloatArray
from simulators.noise import LowPass, OUBank, Quantizer, flicker_poles

Z = 4.0  # allowed standard errors: a false failure has probability ~1e-4 per check


def within_errors(per_replica: FloatArray, exact: float) -> tuple[float, float]:
    """Mean over independent replicas and its standard error; asserts |mean − exact| < Z·SE."""
    mean = float(np.mean(per_replica))
    se = float(np.std(per_replica, ddof=1) / math.sqrt(per_replica.size))
    assert abs(mean - exact) < Z * se, f"{mean} vs exact {exact} (standard error {se})"
    return mean, se


def bank_covariance(bank: OUBank, lag: npt.ArrayLike) -> FloatArray:
    """Exact autocovariance Σ σ_k² exp(−|lag|/τ_k) of a bank's output."""
    lags = np.abs(np.asarray(lag, dtype=float))[..., np.newaxis]
    cov: FloatArray = np.sum(bank.sigmas**2 * np.exp(-lags / bank.taus), axis=-1)
    return cov


# -- OUBank --------------------------------------------------------------------------------------


@pytest.mark.parametrize("dt", [0.001, 0.01, 0.2])
def test_single_pole_variance_and_lag1_correlation(dt: float) -> None:
    tau, sigma, n, channels = 0.05, 1.5, 20_000, 32
    bank = OUBank([tau], [sigma], channels, np.random.default_rng(11))
    x = bank.samples(n, dt)
    assert x.shape == (n, channels)
    a = math.exp(-dt / tau)
    _, se_var = within_errors(np.mean(x**2, axis=0), sigma**2)
    within_errors(np.mean(x[:-1] * x[1:], axis=0) / sigma**2, a)
    # E[(x[t+1] − x[t])²] = 2σ²(1 − a): pins the lag-1 correlation a sharply even when a ≈ 1.
    _, se_inc = within_errors(np.mean(np.diff(x, axis=0) ** 2, axis=0) / (2 * sigma**2), 1 - a)
    # The checks have teeth: a 5 % error in the variance or in 1 − a would be seen.
    assert Z * se_var < 0.05 * sigma**2
    assert Z * se_inc < 0.05 * (1 - a)


def test_windows_match_advance_then_samples_in_distribution() -> None:
    taus, sigmas = [0.4, 3.0], [1.0, 0.5]
    W, m, dt, gap, channels = 2000, 8, 0.05, 0.3, 64
    fast = OUBank(taus, sigmas, channels, np.random.default_rng(1))
    slow = OUBank(taus, sigmas, channels, np.random.default_rng(2))
    by_windows = fast.windows(W, m, dt, gap)
    assert by_windows.shape == (W, m, channels)
    by_steps = np.empty_like(by_windows)
    for w in range(W):
        slow.advance(gap)
        by_steps[w] = slow.samples(m, dt)

    j = np.arange(m)
    within = bank_covariance(fast, (j[:, None] - j[None, :]) * dt)  # (m, m) in one window
    across = bank_covariance(fast, (m - j[:, None] + j[None, :]) * dt + gap)  # window w → w+1
    exact = {
        "variance": float(within[0, 0]),
        "within lag m-1": float(within[0, m - 1]),
        "window-mean variance": float(within.mean()),
        "last → next first": float(across[m - 1, 0]),
        "window-mean lag 1": float(across.mean()),
    }
    for x in (by_windows, by_steps):
        means = x.mean(axis=1)  # (W, C)
        stats = {
            "variance": np.mean(x**2, axis=(0, 1)),
            "within lag m-1": np.mean(x[:, 0] * x[:, m - 1], axis=0),
            "window-mean variance": np.mean(means**2, axis=0),
            "last → next first": np.mean(x[:-1, m - 1] * x[1:, 0], axis=0),
            "window-mean lag 1": np.mean(means[:-1] * means[1:], axis=0),
        }
        for name, per_channel in stats.items():
            _, se = within_errors(per_channel, exact[name])
            assert Z * se < 0.1 * exact[name], name


def test_time_bookkeeping_is_exact_without_noise() -> None:
    """With negligible σ the output is the deterministic decay of a loaded state."""
    taus = [0.7, 2.0]
    start = np.array([[1.0, 2.0], [3.0, 4.0]])  # (K, C)

    def loaded() -> OUBank:
        bank = OUBank(taus, [1e-12, 1e-12], 2, np.random.default_rng(0))
        state = bank.state_dict()
        state["state"] = start.tolist()
        bank.load_state_dict(state)
        return bank

    def decay(time: npt.ArrayLike) -> FloatArray:
        t = np.asarray(time, dtype=float)
        out: FloatArray = np.sum(
            np.exp(-t[..., None, None] / np.array(taus)[:, None]) * start, axis=-2
        )
        return out

    W, m, dt, gap = 5, 4, 0.1, 0.3
    w, j = np.arange(W)[:, None], np.arange(m)[None, :]
    bank = loaded()
    got = bank.windows(W, m, dt, gap)
    np.testing.assert_allclose(got, decay((w + 1) * gap + (w * m + j + 1) * dt), atol=1e-9)
    t_end = W * gap + W * m * dt
    np.testing.assert_allclose(bank.state, np.exp(-t_end / np.array(taus))[:, None] * start)

    bank = loaded()
    bank.advance(0.25)
    got = bank.samples(6, 0.05)
    np.testing.assert_allclose(got, decay(0.25 + 0.05 * np.arange(1, 7)), atol=1e-9)


def test_empty_bank_gives_zeros() -> None:
    bank = OUBank([], [], 3, np.random.default_rng(0))
    assert bank.n_poles == 0
    assert bank.variance == 0.0
    bank.advance(1.0)
    np.testing.assert_array_equal(bank.samples(5, 0.1), np.zeros((5, 3)))
    np.testing.assert_array_equal(bank.windows(4, 2, 0.1, 1.0), np.zeros((4, 2, 3)))
    np.testing.assert_array_equal(bank.psd([0.0, 1.0]), [0.0, 0.0])


def test_psd_integrates_to_variance() -> None:
    bank = OUBank([0.01, 0.3, 5.0], [0.2, 1.0, 0.7], 1, np.random.default_rng(0))
    assert bank.variance == pytest.approx(0.04 + 1.0 + 0.49)
    assert float(bank.psd(0.0)) == pytest.approx(4 * (0.04 * 0.01 + 0.3 + 0.49 * 5.0))
    # One-sided PSD: ∫₀^∞ S(f) df = variance; each Lorentzian integrated separately for accuracy.
    pieces = [
        quad(lambda f, t=t, s=s: 4 * s**2 * t / (1 + (2 * math.pi * f * t) ** 2), 0, np.inf)[0]
        for t, s in zip(bank.taus, bank.sigmas, strict=True)
    ]
    assert sum(pieces) == pytest.approx(bank.variance, rel=1e-6)


def test_state_round_trip_through_json_reproduces_the_future() -> None:
    bank = OUBank([0.01, 0.5, 4.0], [1.0, 0.3, 0.2], 2, np.random.default_rng(5))
    bank.samples(100, 0.01)
    saved = json.loads(json.dumps(bank.state_dict()))

    def future(b: OUBank) -> list[FloatArray]:
        first = b.samples(50, 0.02)
        b.advance(0.7)
        return [first, b.windows(6, 5, 0.01, 0.2), b.samples(3, 1.0), b.state]

    expected = future(bank)
    other = OUBank([0.01, 0.5, 4.0], [1.0, 0.3, 0.2], 2, np.random.default_rng(999))
    other.load_state_dict(saved)
    for got, want in zip(future(other), expected, strict=True):
        np.testing.assert_array_equal(got, want)


def test_bank_refuses_bad_arguments_and_foreign_state() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="one sigma per tau"):
        OUBank([1.0, 2.0], [1.0], 1, rng)
    with pytest.raises(ValueError, match="correlation times"):
        OUBank([0.0], [1.0], 1, rng)
    with pytest.raises(ValueError, match="standard deviations"):
        OUBank([1.0], [-1.0], 1, rng)
    bank = OUBank([1.0], [1.0], 2, rng)
    with pytest.raises(ValueError, match="dt"):
        bank.samples(3, -0.1)
    with pytest.raises(ValueError, match="gap"):
        bank.windows(3, 2, 0.1, math.inf)
    with pytest.raises(ValueError, match="different poles"):
        bank.load_state_dict(OUBank([2.0], [1.0], 2, rng).state_dict())


# -- flicker noise -------------------------------------------------------------------------------


def test_flicker_bank_has_one_over_f_spectrum() -> None:
    psd_ref, f_ref, f_lo, f_hi, dt = 1e-2, 10.0, 1e-2, 1e3, 1e-4
    taus, sigmas = flicker_poles(psd_ref, f_ref, f_lo, f_hi)
    assert len(taus) == 2 * 5 + 1  # 5 decades at 2 poles per decade, both ends included
    bank = OUBank(taus, sigmas, 1, np.random.default_rng(3))
    assert float(bank.psd(f_ref)) == pytest.approx(psd_ref, rel=1e-12)

    nperseg, n_seg = 2**16, 64  # 6.55 s segments: 0.15 Hz bins; non-overlapping, ~independent
    x = bank.samples(nperseg * n_seg, dt)[:, 0]
    f, _, per_segment = spectrogram(x, fs=1 / dt, window="hann", nperseg=nperseg, noverlap=0)
    assert per_segment.shape[1] == n_seg
    welch = per_segment.mean(axis=1)

    # Slope over two decades, a decade or more from f_lo, f_hi and Nyquist (5 kHz).
    fit = (f >= 1.0) & (f <= 100.0)
    slope = np.polyfit(np.log(f[fit]), np.log(welch[fit]), 1)[0]
    model_slope = np.polyfit(np.log(f[fit]), np.log(bank.psd(f[fit])), 1)[0]
    assert abs(slope + 1) < 0.15
    assert abs(model_slope + 1) < 0.02

    # Level around f_ref: per segment, the band-averaged ratio to the model; SE from the segments.
    band = (f >= 5.0) & (f <= 20.0)
    ratio = np.mean(per_segment[band] / bank.psd(f[band])[:, None], axis=0)
    _, se = within_errors(ratio, 1.0)
    assert Z * se < 0.1


def test_flicker_poles_validates_arguments() -> None:
    with pytest.raises(ValueError, match="psd_ref"):
        flicker_poles(-1.0, 10.0, 0.1, 100.0)
    with pytest.raises(ValueError, match="f_lo"):
        flicker_poles(1.0, 10.0, 0.0, 100.0)
    with pytest.raises(ValueError, match="below f_hi"):
        flicker_poles(1.0, 10.0, 100.0, 100.0)
    with pytest.raises(ValueError, match="f_ref"):
        flicker_poles(1.0, 1000.0, 0.1, 100.0)
    with pytest.raises(ValueError, match="poles_per_decade"):
        flicker_poles(1.0, 10.0, 0.1, 100.0, poles_per_decade=0.0)


# -- LowPass -------------------------------------------------------------------------------------


@pytest.mark.parametrize("cutoff", [1.0, 10.0, 25.0])
def test_minus_3db_point_is_the_cutoff(cutoff: float) -> None:
    lpf = LowPass(cutoff, dt=1e-3, n_channels=1)  # Nyquist 500 Hz ≫ cutoff
    f3 = brentq(lambda f: float(lpf.gain(f)) - 1 / math.sqrt(2), 1e-9, 499.0)
    assert abs(f3 / cutoff - 1) < 0.05
    assert float(lpf.gain(0.0)) == pytest.approx(1.0)
    # Continuous-time −45° at f_c, less the half-sample lead π·f·dt of this no-delay recursion.
    assert float(lpf.phase(cutoff)) == pytest.approx(
        -math.pi / 4 + math.pi * cutoff * 1e-3, abs=0.01
    )


@pytest.mark.parametrize("freq", [5.0, 20.0, 80.0])
def test_lock_in_on_filtered_sine_matches_response(freq: float) -> None:
    dt, cutoff, settle, n = 1e-3, 20.0, 500, 2000  # 2 s: a whole number of periods
    lpf = LowPass(cutoff, dt, n_channels=2)
    t = np.arange(settle + n) * dt
    u = np.sin(2 * math.pi * freq * t)[:, None] * np.array([1.0, -3.0])
    y = lpf.filter(u)[settle:]  # (1 − α)^500 ≈ 1e-27: transient gone
    s, c = np.sin(2 * math.pi * freq * t[settle:]), np.cos(2 * math.pi * freq * t[settle:])
    X, Y = 2 * s @ y / n, 2 * c @ y / n
    h = lpf.response(freq)
    np.testing.assert_allclose(np.hypot(X, Y), np.array([1.0, 3.0]) * abs(h), rtol=1e-9)
    assert math.atan2(Y[0], X[0]) == pytest.approx(float(lpf.phase(freq)), abs=1e-9)


@pytest.mark.parametrize("cutoff", [0.05, 20.0, 400.0])
def test_filter_blocks_equals_filter_on_concatenation(cutoff: float) -> None:
    B, L, C, dt = 40, 25, 3, 1e-3
    u = np.random.default_rng(7).normal(size=(B, L, C)) + 2.0
    whole = LowPass(cutoff, dt, C, initial=0.7)
    blocks = LowPass(cutoff, dt, C, initial=0.7)
    expected = whole.filter(u.reshape(B * L, C)).reshape(B, L, C)
    np.testing.assert_allclose(blocks.filter_blocks(u), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(blocks.state, whole.state, rtol=1e-12, atol=1e-12)


def test_state_carries_across_calls() -> None:
    u = np.random.default_rng(8).normal(size=(300, 2))
    whole = LowPass(30.0, 1e-3, 2, initial=-1.0)
    split = LowPass(30.0, 1e-3, 2, initial=-1.0)
    expected = whole.filter(u)
    halves = np.concatenate([split.filter(u[:137]), split.filter(u[137:])])
    np.testing.assert_allclose(halves, expected, rtol=1e-13, atol=1e-13)

    saved = json.loads(json.dumps(split.state_dict()))
    restored = LowPass(30.0, 1e-3, 2)
    restored.load_state_dict(saved)
    np.testing.assert_array_equal(restored.filter(u[:10]), split.filter(u[:10]))

    split.reset(0.5)
    np.testing.assert_array_equal(split.state, [0.5, 0.5])
    np.testing.assert_allclose(split.filter(np.full((5, 2), 0.5)), 0.5)
    with pytest.raises(ValueError, match=r"\(n, C\)"):
        split.filter(np.zeros((5, 3)))
    with pytest.raises(ValueError, match="cutoff"):
        restored.load_state_dict(LowPass(31.0, 1e-3, 2).state_dict())


# -- Quantizer -----------------------------------------------------------------------------------


def test_quantizer_grid_error_and_clipping() -> None:
    q = Quantizer(16, -10.0, 10.0)
    assert q.levels == 65536
    assert q.step == pytest.approx(20.0 / 65536)
    assert q.step == pytest.approx(3.0518e-4, rel=1e-4)

    x = np.random.default_rng(9).uniform(-10.0, q.top, size=100_000)
    y = q(x)
    k = (y - q.lo) / q.step
    np.testing.assert_allclose(k, np.round(k), atol=1e-6)  # on the grid lo + k·step
    np.testing.assert_array_equal(q.codes(x), np.round(k).astype(np.int64))
    assert np.max(np.abs(x - y)) <= q.step / 2 * (1 + 1e-9)

    np.testing.assert_allclose(q([-50.0, -10.0, 10.0, 50.0]), [-10.0, -10.0, q.top, q.top])
    np.testing.assert_array_equal(q.codes([-50.0, 50.0]), [0, 65535])
    assert q(0.0) == 0.0  # a symmetric range keeps 0 V on the grid
    assert q.top == pytest.approx(10.0 - q.step)


def test_quantizer_rounds_half_to_even_and_validates() -> None:
    q = Quantizer(2, 0.0, 4.0)  # levels 0, 1, 2, 3
    np.testing.assert_array_equal(q.codes([0.5, 1.5, 2.5, 0.49, 0.51, 3.9]), [0, 2, 2, 0, 1, 3])
    with pytest.raises(ValueError, match="bits"):
        Quantizer(0, 0.0, 1.0)
    with pytest.raises(ValueError, match="lo < hi"):
        Quantizer(8, 1.0, 1.0)
