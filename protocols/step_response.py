"""Step response of one electrode: bandwidth and settling time, from a streamed step (bring-up).

The station holds an electrode at 0 V, steps it to a level and records the output (issue 10,
"step response"). The response after the step is fitted with a first-order model,

    y(t) = y₀ + Δ · (1 − exp(−t/τ)),

by least squares on τ, y₀ and Δ (t = 0 at the first sample of the new level; a free y₀ absorbs
where within a sample period the output was read), started from several τ because one below a
sample period lies in a flat valley. This gives the −3 dB bandwidth f = 1/(2πτ) with its
standard error from the fit's covariance scaled by the residual noise (white residuals; the
bring-up's jackknife over repeated steps also holds under 1/f noise). The settling time is
model-free where the noise allows: the first time after which the measured response, smoothed
over `smooth` samples, stays within `tolerance` of its final value (the mean of the last fifth
of the record). When that band is narrower than three standard
deviations of the smoothed noise, no sample can show it is inside; the settling time is then the
model's, τ·ln(1/tolerance), and `settling_from_model` says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import curve_fit

from hil.core import FloatArray


@dataclass(frozen=True)
class StepResponse:
    """What one step showed."""

    tau: float  # s, first-order time constant
    tau_se: float
    bandwidth: float  # Hz, 1/(2πτ)
    bandwidth_se: float
    gain: float  # output units per unit of the step
    initial: float  # y₀ and
    jump: float  # Δ of the fitted model y₀ + Δ·(1 − exp(−t/τ)) (for drawing it)
    settling_time: float  # s to stay within `tolerance` of the final value (nan: never)
    tolerance: float  # relative to the step's output change
    residual_rms: float  # output units: the noise left after the fit
    settling_from_model: bool  # the band was below the noise: τ·ln(1/tolerance)


def fit_step(
    response: FloatArray,
    sample_rate: float,
    step_index: int,
    step_size: float,
    *,
    tolerance: float = 0.01,
    smooth: int = 5,
) -> StepResponse:
    """Fit the response of one output to a step of `step_size` at sample `step_index`."""
    y = np.asarray(response, dtype=float).reshape(-1)
    if not np.isfinite(y).all():
        raise ValueError("the response holds non-finite samples")
    if not (0 < step_index < y.size - 20):
        raise ValueError(f"step_index {step_index} leaves too few samples on one side")
    if step_size == 0 or not math.isfinite(step_size):
        raise ValueError(f"step_size {step_size!r} must be finite and non-zero")
    dt = 1.0 / sample_rate
    t: FloatArray = np.arange(y.size - step_index, dtype=float) * dt
    after = y[step_index:]
    before = float(np.mean(y[:step_index]))
    final = float(np.mean(after[-max(1, after.size // 5) :]))
    delta = final - before
    crossed = np.flatnonzero(np.abs(after - before) >= abs(delta) * (1 - math.exp(-1)))
    tau0 = max(float(t[crossed[0]]) if crossed.size else t[-1] / 5, dt / 2)

    def model(tt: FloatArray, y0: float, d: float, log_tau: float) -> FloatArray:
        return np.asarray(y0 + d * (1 - np.exp(-tt / math.exp(log_tau))), dtype=float)

    # τ below a sample period sits in a flat valley of the least squares (the model is a jump
    # after the first sample): start from several τ and keep the best fit.
    span = t[-1] + dt
    bounds = ([-np.inf, -np.inf, math.log(dt / 20)], [np.inf, np.inf, math.log(span)])
    best: tuple[float, FloatArray, FloatArray] | None = None
    for start in sorted({dt / 2, dt, 3 * dt, tau0, 10 * tau0}):
        p0 = (before, delta, math.log(min(max(start, dt / 20), span / 2)))
        try:
            params, cov = curve_fit(model, t, after, p0=p0, bounds=bounds, maxfev=20_000)
        except RuntimeError:
            continue
        sse = float(np.sum((after - model(t, *params)) ** 2))
        if best is None or sse < best[0]:
            best = (sse, params, cov)
    if best is None:
        raise ValueError("no first-order step response fits this record")
    y0, d, log_tau = (float(p) for p in best[1])
    cov = best[2]
    residual = after - model(t, y0, d, log_tau)
    tau = math.exp(log_tau)
    tau_se = tau * math.sqrt(max(float(cov[2, 2]), 0.0))
    bandwidth = 1.0 / (2 * math.pi * tau)
    rms = float(np.sqrt(np.mean(residual**2)))
    from_model = tolerance * abs(d) < 3.0 * rms / math.sqrt(smooth)
    settling = (
        tau * math.log(1.0 / tolerance)
        if from_model
        else _settling(after, final, delta, tolerance, smooth, dt)
    )
    return StepResponse(
        tau=tau,
        tau_se=tau_se,
        bandwidth=bandwidth,
        bandwidth_se=bandwidth * tau_se / tau,
        gain=(y0 + d - before) / step_size,  # final level over the one before the step
        initial=y0,
        jump=d,
        settling_time=settling,
        tolerance=tolerance,
        residual_rms=rms,
        settling_from_model=from_model,
    )


def _settling(
    after: FloatArray, final: float, delta: float, tolerance: float, smooth: int, dt: float
) -> float:
    """The first time from which the smoothed response stays within tolerance·|Δ| of `final`."""
    kernel = np.ones(smooth) / smooth
    smoothed = np.convolve(after, kernel, mode="valid")
    outside = np.flatnonzero(np.abs(smoothed - final) > tolerance * abs(delta))
    if outside.size == 0:
        return 0.0
    last = int(outside[-1]) + 1
    if last >= smoothed.size:
        return math.nan
    return (last + (smooth - 1) / 2) * dt
