"""Output-noise spectrum of a station: Welch PSD, white floor, 1/f part, corner and mains lines.

The first measurement of a bring-up (issue 10): with every input at 0 V, a stream of the output
is recorded and its one-sided power spectral density estimated by Welch's method
(`scipy.signal.welch`, Hann windows, half overlap). The model

    S(f) = w + a · (f_ref / f)^α

(white floor w, 1/f amplitude a at `f_ref`, slope α) is fitted to log S over the bins above the
lowest few and away from the mains harmonics. Each Welch bin averages K periodograms, so its log
has a standard deviation of about 1/√K (a χ² with 2K degrees of freedom) and a bias of
ψ(K) − ln K, which is removed: that standard deviation is the weight, and
`curve_fit(absolute_sigma=True)` turns it into standard errors of the parameters. The corner
f_c = f_ref · (a/w)^(1/α), where the 1/f part equals the floor, gets its error by the delta
method. A mains harmonic is a line when its bin stands above the model by more than `line_sigma`
standard deviations of the log; it is reported with its excess power.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import curve_fit
from scipy.signal import welch
from scipy.special import digamma

from hil.core import FloatArray


@dataclass(frozen=True)
class MainsLine:
    """A mains harmonic standing above the noise model."""

    frequency: float  # Hz (the bin nearest the harmonic)
    excess: float  # unit²/Hz above the model in that bin
    significance: float  # (log S − log model) / σ_log


@dataclass(frozen=True)
class NoiseFit:
    """The fitted spectrum, with standard errors; `frequencies` / `psd` for plots."""

    white: float  # unit²/Hz
    white_se: float
    flicker: float  # unit²/Hz of the 1/f part at f_ref
    flicker_se: float
    alpha: float
    alpha_se: float
    corner: float  # Hz; 0 when there is no 1/f part above the floor
    corner_se: float
    f_ref: float
    segments: int  # periodograms averaged per bin
    lines: tuple[MainsLine, ...]
    frequencies: FloatArray
    psd: FloatArray

    def model(self, f: FloatArray) -> FloatArray:
        """S(f) of the fitted model."""
        return self.white + self.flicker * (self.f_ref / np.asarray(f, dtype=float)) ** self.alpha


def fit_noise(
    samples: FloatArray,
    sample_rate: float,
    *,
    f_ref: float = 1.0,
    mains: float = 50.0,
    segment: int | None = None,
    skip_bins: int = 4,
    line_sigma: float = 5.0,
) -> NoiseFit:
    """Fit the noise model to one output's samples (taken at `sample_rate`, Hz).

    `segment`: samples per Welch segment (default: the record split in about 32 halves-overlapped
    segments, at least 256 samples). The lowest `skip_bins` bins (DC and the window's leakage of
    the steep 1/f part), the bins within one bin of a mains harmonic, and every other bin (a Hann
    window correlates neighbours) are left out of the fit.
    """
    x = np.asarray(samples, dtype=float).reshape(-1)
    if x.size < 512 or not np.isfinite(x).all():
        raise ValueError(f"need at least 512 finite samples for a noise spectrum, got {x.size}")
    if not (math.isfinite(sample_rate) and sample_rate > 0):
        raise ValueError(f"sample_rate {sample_rate!r} Hz must be finite and positive")
    nperseg = segment or max(256, int(2 ** math.floor(math.log2(x.size / 16))))
    nperseg = min(nperseg, x.size)
    freqs, psd = welch(x - x.mean(), fs=sample_rate, window="hann", nperseg=nperseg)
    segments = max(1, 2 * (x.size // nperseg) - 1)
    sigma_log = 1.0 / math.sqrt(segments)
    df = freqs[1] - freqs[0]
    harmonics: FloatArray = (
        mains * np.arange(1, int(freqs[-1] // mains) + 1, dtype=float) if mains > 0 else np.zeros(0)
    )
    near_mains = np.zeros(freqs.size, dtype=bool)
    for h in harmonics:
        near_mains |= np.abs(freqs - h) <= 1.01 * df
    index = np.arange(freqs.size)
    # Every other bin: a Hann window correlates neighbours, the fit's weights assume independence.
    use = (index >= skip_bins) & (index % 2 == 0) & ~near_mains & (freqs < freqs[-1]) & (psd > 0)
    if use.sum() < 8:
        raise ValueError("too few spectrum bins to fit: record longer or use shorter segments")
    # The log of a mean of K periodograms is biased by ψ(K) − ln K (≈ −1/2K): remove it.
    f, log_s = freqs[use], np.log(psd[use]) - (float(digamma(segments)) - math.log(segments))

    def log_model(fr: FloatArray, log_w: float, log_a: float, alpha: float) -> FloatArray:
        return np.asarray(np.logaddexp(log_w, log_a + alpha * np.log(f_ref / fr)), dtype=float)

    floor = float(np.median(psd[use][f > np.median(f)]))
    start = (math.log(floor), math.log(max(floor, float(psd[use][0]))), 1.0)
    params, cov = curve_fit(
        log_model,
        f,
        log_s,
        p0=start,
        sigma=np.full(f.size, sigma_log),
        absolute_sigma=True,
        bounds=([-np.inf, -np.inf, 0.1], [np.inf, np.inf, 4.0]),
        maxfev=20_000,
    )
    log_w, log_a, alpha = (float(p) for p in params)
    se = np.sqrt(np.clip(np.diag(cov), 0.0, None))
    white, flicker = math.exp(log_w), math.exp(log_a)
    corner, corner_se = _corner(log_w, log_a, alpha, cov, f_ref)
    fitted = NoiseFit(
        white=white,
        white_se=white * float(se[0]),
        flicker=flicker,
        flicker_se=flicker * float(se[1]),
        alpha=alpha,
        alpha_se=float(se[2]),
        corner=corner,
        corner_se=corner_se,
        f_ref=f_ref,
        segments=segments,
        lines=(),
        frequencies=freqs,
        psd=psd,
    )
    lines = _mains_lines(fitted, harmonics, sigma_log, line_sigma)
    return NoiseFit(**{**fitted.__dict__, "lines": lines})


def _corner(
    log_w: float, log_a: float, alpha: float, cov: FloatArray, f_ref: float
) -> tuple[float, float]:
    """f_c = f_ref·exp((log a − log w)/α) and its delta-method standard error."""
    exponent = (log_a - log_w) / alpha
    corner = f_ref * math.exp(exponent)
    grad = np.array([-1.0 / alpha, 1.0 / alpha, -exponent / alpha]) * corner
    var = float(grad @ np.asarray(cov) @ grad)
    return corner, math.sqrt(max(var, 0.0))


def _mains_lines(
    fit: NoiseFit, harmonics: FloatArray, sigma_log: float, line_sigma: float
) -> tuple[MainsLine, ...]:
    lines = []
    for h in harmonics:
        k = int(np.argmin(np.abs(fit.frequencies - h)))
        if k == 0 or k >= fit.frequencies.size - 1:
            continue
        model = float(fit.model(fit.frequencies[k : k + 1])[0])
        significance = (math.log(fit.psd[k]) - math.log(model)) / sigma_log
        if significance > line_sigma:
            lines.append(MainsLine(float(fit.frequencies[k]), fit.psd[k] - model, significance))
    return tuple(lines)
