"""Stateful noise and signal-chain building blocks that simulators compose.

- `OUBank`: a sum of Ornstein–Uhlenbeck processes per channel, sampled exactly at any time step;
  with `flicker_poles` it gives streaming 1/f noise that stays continuous across calls.
- `LowPass`: a first-order discrete low-pass (finite measurement bandwidth) with carried state.
- `Quantizer`: a uniform DAC/ADC grid with clipping.

Time is device time: nothing sleeps. Work is vectorised with numpy / `scipy.signal.lfilter`; the
only Python loops run over the (few) poles of a bank, never over samples or windows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from scipy.signal import lfilter

from hil.core import FloatArray, JSONDict
from hil.core.types import generator_state, restore_generator

STATE_VERSION = 1

#: Largest quantizer resolution: codes beyond 2**53 are not exact in float64.
MAX_BITS = 53


class OUBank:
    """Sum of K independent Ornstein–Uhlenbeck processes per channel, exact for any time step.

    Pole k has correlation time `taus[k]` (s) and stationary standard deviation `sigmas[k]`; its
    autocovariance is σ_k²·exp(−|t|/τ_k). The state, shape (K, C), starts in the stationary
    distribution, so the output is stationary from the first sample. Between samples the state is
    propagated by the exact AR(1) map z ← a·z + √(1 − a²)·σ·ξ with a = exp(−Δt/τ), so the
    statistics do not depend on the step size. With K = 0 every output is zero.

    The generator is used, not owned: if it is shared, `state_dict` still records (and
    `load_state_dict` restores) its full state.
    """

    def __init__(
        self,
        taus: Sequence[float],
        sigmas: Sequence[float],
        n_channels: int,
        rng: np.random.Generator,
    ) -> None:
        tau = np.asarray(taus, dtype=float).reshape(-1)
        sig = np.asarray(sigmas, dtype=float).reshape(-1)
        if tau.shape != sig.shape:
            raise ValueError(
                f"OUBank: got {tau.size} correlation times but {sig.size} standard deviations; "
                "give one sigma per tau"
            )
        if not np.all(np.isfinite(tau) & (tau > 0)):
            raise ValueError(f"OUBank: correlation times must be finite and > 0, got {tau}")
        if not np.all(np.isfinite(sig) & (sig >= 0)):
            raise ValueError(f"OUBank: standard deviations must be finite and >= 0, got {sig}")
        if n_channels < 1:
            raise ValueError(f"OUBank: n_channels must be >= 1, got {n_channels}")
        self._tau: FloatArray = tau
        self._sigma: FloatArray = sig
        self._n_channels = int(n_channels)
        self._rng = rng
        self._z: FloatArray = sig[:, np.newaxis] * rng.standard_normal((tau.size, n_channels))

    # -- properties ----------------------------------------------------------------------------

    @property
    def taus(self) -> FloatArray:
        """Correlation times τ_k in s (a copy)."""
        return self._tau.copy()

    @property
    def sigmas(self) -> FloatArray:
        """Stationary standard deviations σ_k (a copy)."""
        return self._sigma.copy()

    @property
    def n_channels(self) -> int:
        """Number of independent channels C."""
        return self._n_channels

    @property
    def n_poles(self) -> int:
        """Number of OU processes K per channel."""
        return int(self._tau.size)

    @property
    def variance(self) -> float:
        """Stationary variance of the sum, Σ σ_k²."""
        return float(np.sum(self._sigma**2))

    @property
    def state(self) -> FloatArray:
        """Current pole values, shape (K, C) (a copy)."""
        return self._z.copy()

    # -- time evolution ------------------------------------------------------------------------

    def samples(self, n: int, dt: float) -> FloatArray:
        """The sum over poles at t+dt, …, t+n·dt, shape (n, C); advances the state by n·dt."""
        _check_count(n, "n")
        _check_time(dt, "dt")
        out = np.zeros((n, self._n_channels))
        if n == 0:
            return out
        a, b = self._ar1(dt)
        for k in range(self.n_poles):
            xi = self._rng.standard_normal((n, self._n_channels))
            zi = (a[k] * self._z[k])[np.newaxis, :]
            y, _ = lfilter([b[k]], [1.0, -a[k]], xi, axis=0, zi=zi)
            out += y
            self._z[k] = y[-1]
        return out

    def windows(self, n_windows: int, n_per_window: int, dt: float, gap: float) -> FloatArray:
        """Windows of samples separated by unsampled gaps, shape (n_windows, n_per_window, C).

        Before each window `gap` seconds pass (an exact jump), then `n_per_window` samples spaced
        `dt` follow. Same distribution as `advance(gap)` + `samples(n_per_window, dt)` repeated
        `n_windows` times, but vectorised: per pole, the zero-state response r of every window
        comes from one lfilter along the sample axis; the states s_w right after each gap obey a
        1-D AR(1) across windows with coefficient exp(−gap/τ)·a^m (a second lfilter); and sample j
        of window w is r[w, j] + a^(j+1)·s_w.
        """
        _check_count(n_windows, "n_windows")
        _check_count(n_per_window, "n_per_window")
        _check_time(dt, "dt")
        _check_time(gap, "gap")
        W, m, C = n_windows, n_per_window, self._n_channels
        out = np.zeros((W, m, C))
        if W == 0:
            return out
        a, b = self._ar1(dt)
        g, c = self._ar1(gap)
        steps = np.arange(1, m + 1, dtype=float)
        for k in range(self.n_poles):
            eta = self._rng.standard_normal((W, C))
            xi = self._rng.standard_normal((W, m, C))
            r = lfilter([b[k]], [1.0, -a[k]], xi, axis=1) if m else xi
            r_end = r[:, -1, :] if m else np.zeros((W, C))
            a_m = a[k] ** m
            drive = c[k] * eta
            drive[1:] += g[k] * r_end[:-1]
            zi = (g[k] * self._z[k])[np.newaxis, :]
            starts, _ = lfilter([1.0], [1.0, -g[k] * a_m], drive, axis=0, zi=zi)
            out += r + (a[k] ** steps)[np.newaxis, :, np.newaxis] * starts[:, np.newaxis, :]
            self._z[k] = a_m * starts[-1] + r_end[-1]
        return out

    def advance(self, seconds: float) -> None:
        """Let `seconds` pass without sampling (one exact jump of every pole)."""
        _check_time(seconds, "seconds")
        if self.n_poles == 0:
            return
        g, c = self._ar1(seconds)
        xi = self._rng.standard_normal(self._z.shape)
        self._z = g[:, np.newaxis] * self._z + c[:, np.newaxis] * xi

    def psd(self, f: npt.ArrayLike) -> FloatArray:
        """One-sided continuous-time PSD of the sum (unit²/Hz): Σ 4σ_k²τ_k / (1 + (2πfτ_k)²).

        This is the spectrum before sampling; a sampled trace also holds the aliases of it.
        """
        freq = np.asarray(f, dtype=float)
        wt = 2.0 * math.pi * freq[..., np.newaxis] * self._tau
        terms = 4.0 * self._sigma**2 * self._tau / (1.0 + wt**2)
        result: FloatArray = np.sum(terms, axis=-1)
        return result

    # -- state ---------------------------------------------------------------------------------

    def state_dict(self) -> JSONDict:
        """Poles, pole values and generator state (JSON-serialisable; restores the exact future)."""
        return {
            "version": STATE_VERSION,
            "taus": [float(v) for v in self._tau],
            "sigmas": [float(v) for v in self._sigma],
            "state": self._z.tolist(),
            "rng": generator_state(self._rng),
        }

    def load_state_dict(self, state: JSONDict) -> None:
        """Restore a state taken with `state_dict` on a bank with the same poles and channels."""
        _check_version(state, "OUBank")
        taus = np.asarray(state["taus"], dtype=float)
        sigmas = np.asarray(state["sigmas"], dtype=float)
        if not (np.array_equal(taus, self._tau) and np.array_equal(sigmas, self._sigma)):
            raise ValueError(
                "OUBank state is for a bank with different poles "
                f"(taus {taus.tolist()}, sigmas {sigmas.tolist()}); build the bank with those"
            )
        z = np.asarray(state["state"], dtype=float).reshape(-1, self._n_channels)
        if z.shape != self._z.shape:
            raise ValueError(f"OUBank state: expected shape {self._z.shape}, got {z.shape}")
        restore_generator(self._rng, state["rng"])
        self._z = z.copy()

    # -- internals -----------------------------------------------------------------------------

    def _ar1(self, step: float) -> tuple[FloatArray, FloatArray]:
        """Per-pole decay a = exp(−step/τ) and innovation scale σ·√(1 − a²) for one step."""
        x = step / self._tau
        return np.exp(-x), self._sigma * np.sqrt(-np.expm1(-2.0 * x))


def flicker_poles(
    psd_ref: float,
    f_ref: float,
    f_lo: float,
    f_hi: float,
    poles_per_decade: float = 2.0,
) -> tuple[list[float], list[float]]:
    """Taus and sigmas of an `OUBank` whose PSD ≈ psd_ref·(f_ref/f) for f_lo ≪ f ≪ f_hi.

    Corner frequencies are log-spaced from f_lo to f_hi (at least `poles_per_decade` per decade,
    both ends included) with equal variances, which superpose to a 1/f spectrum between the
    corners; the common variance is set so that the bank's PSD at f_ref is exactly psd_ref.
    Outside the corners the spectrum flattens (below f_lo) or falls as 1/f² (above f_hi).
    """
    values = {"psd_ref": psd_ref, "f_ref": f_ref, "f_lo": f_lo, "f_hi": f_hi}
    for name, v in {**values, "poles_per_decade": poles_per_decade}.items():
        if not (math.isfinite(v) and v > 0):
            raise ValueError(f"flicker_poles: {name} must be finite and > 0, got {v}")
    if not f_lo < f_hi:
        raise ValueError(f"flicker_poles: f_lo ({f_lo} Hz) must be below f_hi ({f_hi} Hz)")
    if not f_lo <= f_ref <= f_hi:
        raise ValueError(
            f"flicker_poles: f_ref ({f_ref} Hz) must lie in [f_lo, f_hi] = [{f_lo}, {f_hi}] Hz, "
            "where the spectrum is 1/f; widen the band to include the reference frequency"
        )
    decades = math.log10(f_hi / f_lo)
    n_poles = max(2, math.ceil(decades * poles_per_decade - 1e-9) + 1)
    corners = np.geomspace(f_lo, f_hi, n_poles)
    taus = 1.0 / (2.0 * math.pi * corners)
    unit_psd = float(np.sum(4.0 * taus / (1.0 + (2.0 * math.pi * f_ref * taus) ** 2)))
    sigma = math.sqrt(psd_ref / unit_psd)
    return [float(t) for t in taus], [sigma] * n_poles


class LowPass:
    """First-order discrete low-pass s[n] = s[n−1] + α(u[n] − s[n−1]), α = 1 − exp(−2π f_c dt).

    Models finite measurement bandwidth (e.g. a TIA); the state is carried across calls, so a long
    stream can be filtered in pieces.
    """

    def __init__(self, cutoff: float, dt: float, n_channels: int, initial: float = 0.0) -> None:
        if not (math.isfinite(cutoff) and cutoff > 0):
            raise ValueError(f"LowPass: cutoff must be finite and > 0 Hz, got {cutoff}")
        if not (math.isfinite(dt) and dt > 0):
            raise ValueError(f"LowPass: dt must be finite and > 0 s, got {dt}")
        if n_channels < 1:
            raise ValueError(f"LowPass: n_channels must be >= 1, got {n_channels}")
        self._cutoff = float(cutoff)
        self._dt = float(dt)
        self._n_channels = int(n_channels)
        self._alpha = -math.expm1(-2.0 * math.pi * cutoff * dt)
        self._s: FloatArray = np.full(n_channels, float(initial))

    @property
    def cutoff(self) -> float:
        """Corner frequency f_c in Hz."""
        return self._cutoff

    @property
    def dt(self) -> float:
        """Sample spacing in s."""
        return self._dt

    @property
    def alpha(self) -> float:
        """Smoothing factor α = 1 − exp(−2π f_c dt)."""
        return self._alpha

    @property
    def state(self) -> FloatArray:
        """Last output per channel, shape (C,) (a copy)."""
        return self._s.copy()

    def reset(self, value: float | npt.ArrayLike = 0.0) -> None:
        """Set the state to `value` (a scalar for all channels, or one value per channel)."""
        v = np.broadcast_to(np.asarray(value, dtype=float), (self._n_channels,))
        self._s = v.copy()

    def filter(self, u: npt.ArrayLike) -> FloatArray:
        """Filter u, shape (n, C), continuing from the current state; returns shape (n, C)."""
        x = self._as_input(u, 2)
        if x.shape[0] == 0:
            return x.copy()
        beta = 1.0 - self._alpha
        zi = (beta * self._s)[np.newaxis, :]
        y, _ = lfilter([self._alpha], [1.0, -beta], x, axis=0, zi=zi)
        self._s = y[-1].copy()
        result: FloatArray = y
        return result

    def filter_blocks(self, u: npt.ArrayLike) -> FloatArray:
        """Filter B consecutive blocks u, shape (B, L, C), as if concatenated in time.

        Vectorised over blocks: a zero-state lfilter along each block, then the block-end states
        follow an AR(1) across blocks with coefficient (1 − α)^L, and sample j of block b adds
        (1 − α)^(j+1) times the state left by block b−1. Equals `filter(u.reshape(B*L, C))` to
        rounding.
        """
        x = self._as_input(u, 3)
        B, L, _ = x.shape
        if B == 0 or L == 0:
            return x.copy()
        beta = 1.0 - self._alpha
        r = lfilter([self._alpha], [1.0, -beta], x, axis=1)
        zi = (beta**L * self._s)[np.newaxis, :]
        ends, _ = lfilter([1.0], [1.0, -(beta**L)], r[:, -1, :], axis=0, zi=zi)
        before = np.concatenate([self._s[np.newaxis, :], ends[:-1]], axis=0)
        decay = beta ** np.arange(1, L + 1, dtype=float)
        y: FloatArray = r + decay[np.newaxis, :, np.newaxis] * before[:, np.newaxis, :]
        self._s = ends[-1].copy()
        return y

    def response(self, f: npt.ArrayLike) -> npt.NDArray[np.complex128]:
        """Exact discrete-time response H(e^{j2πf·dt}) = α / (1 − (1 − α)·e^{−j2πf·dt})."""
        freq = np.asarray(f, dtype=float)
        z_inv = np.exp(-2j * math.pi * freq * self._dt)
        h = self._alpha / (1.0 - (1.0 - self._alpha) * z_inv)
        return np.asarray(h, dtype=np.complex128)

    def gain(self, f: npt.ArrayLike) -> FloatArray:
        """|H| at frequency f (Hz)."""
        g: FloatArray = np.abs(self.response(f))
        return g

    def phase(self, f: npt.ArrayLike) -> FloatArray:
        """arg H in radians at frequency f (Hz); negative (output lags)."""
        p: FloatArray = np.angle(self.response(f))
        return p

    def state_dict(self) -> JSONDict:
        """Cutoff, step and state (JSON-serialisable)."""
        return {
            "version": STATE_VERSION,
            "cutoff": self._cutoff,
            "dt": self._dt,
            "state": [float(v) for v in self._s],
        }

    def load_state_dict(self, state: JSONDict) -> None:
        """Restore a state taken with `state_dict` on a filter with the same cutoff and step."""
        _check_version(state, "LowPass")
        if float(state["cutoff"]) != self._cutoff or float(state["dt"]) != self._dt:
            raise ValueError(
                f"LowPass state is for cutoff {state['cutoff']} Hz, dt {state['dt']} s; this "
                f"filter has cutoff {self._cutoff} Hz, dt {self._dt} s"
            )
        s = np.asarray(state["state"], dtype=float)
        if s.shape != (self._n_channels,):
            raise ValueError(f"LowPass state: expected shape ({self._n_channels},), got {s.shape}")
        self._s = s.copy()

    def _as_input(self, u: npt.ArrayLike, ndim: int) -> FloatArray:
        x = np.asarray(u, dtype=float)
        if x.ndim != ndim or x.shape[-1] != self._n_channels:
            want = "(n, C)" if ndim == 2 else "(B, L, C)"
            raise ValueError(
                f"LowPass: expected input shape {want} with C = {self._n_channels}, got {x.shape}"
            )
        return x


class Quantizer:
    """Uniform converter grid: 2**bits levels lo + k·step, step = (hi − lo) / 2**bits.

    As in a two's-complement bipolar converter, the grid starts at lo and its top level is one
    step below hi, so a symmetric range has 0 exactly on the grid (a DAC told 0 V gives 0 V).
    Inputs are clipped to the grid and rounded to the nearest level; exact ties round half to
    even (numpy `rint`).
    """

    def __init__(self, bits: int, lo: float, hi: float) -> None:
        if isinstance(bits, bool) or not isinstance(bits, int | np.integer):
            raise ValueError(f"Quantizer: bits must be an integer, got {bits!r}")
        if not 1 <= bits <= MAX_BITS:
            raise ValueError(f"Quantizer: bits must be in [1, {MAX_BITS}], got {bits}")
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(f"Quantizer: need finite lo < hi, got lo={lo}, hi={hi}")
        self.bits = int(bits)
        self.lo = float(lo)
        self.hi = float(hi)

    @property
    def levels(self) -> int:
        """Number of output levels, 2**bits."""
        return 1 << self.bits

    @property
    def step(self) -> float:
        """Level spacing (hi − lo) / 2**bits."""
        return (self.hi - self.lo) / self.levels

    @property
    def top(self) -> float:
        """The highest level, hi − step."""
        return self.lo + (self.levels - 1) * self.step

    def codes(self, x: npt.ArrayLike) -> npt.NDArray[np.int64]:
        """Integer codes 0 … 2**bits − 1 of the levels nearest to x (clipped to the grid)."""
        v = np.asarray(x, dtype=float)
        k = np.clip(np.rint((v - self.lo) / self.step), 0, self.levels - 1)
        codes: npt.NDArray[np.int64] = k.astype(np.int64)
        return codes

    def __call__(self, x: npt.ArrayLike) -> FloatArray:
        """The quantised values lo + code·step."""
        return np.asarray(self.lo + self.codes(x) * self.step, dtype=np.float64)


def _check_count(n: int, name: str) -> None:
    if n < 0:
        raise ValueError(f"{name} must be >= 0, got {n}")


def _check_time(t: float, name: str) -> None:
    if not (math.isfinite(t) and t >= 0):
        raise ValueError(f"{name} must be a finite time >= 0 s, got {t}")


def _check_version(state: JSONDict, what: str) -> None:
    if state.get("version") != STATE_VERSION:
        raise ValueError(
            f"{what} state has version {state.get('version')!r}, expected {STATE_VERSION}"
        )
