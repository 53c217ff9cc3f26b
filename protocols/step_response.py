"""Step response of one electrode: bandwidth and settling time, from a streamed step (bring-up).

The station holds an electrode at 0 V, steps it to a level and records the output (issue 10,
"step response"). The response after the step is fitted with a first-order model,

    y(t) = y₀ + Δ · (1 − exp(−(t − t₀)/τ)),

by least squares on τ, y₀ and Δ (t₀ is the first sample of the new level), which gives the −3 dB
bandwidth f = 1/(2πτ) with its standard error from the fit's covariance scaled by the residual
noise. The settling time is model-free: the first time after which the measured response,
smoothed over `smooth` samples, stays within `tolerance` of its final value (the mean of the last
fifth of the record).
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
    settling_time: float  # s to stay within `tolerance` of the final value (nan: never)
    tolerance: float  # relative to the step's output change
    residual_rms: float  # output units: the noise left after the fit


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

    params, cov = curve_fit(model, t, after, p0=(before, delta, math.log(tau0)), maxfev=20_000)
    y0, d, log_tau = (float(p) for p in params)
    residual = after - model(t, y0, d, log_tau)
    tau = math.exp(log_tau)
    tau_se = tau * math.sqrt(max(float(cov[2, 2]), 0.0))
    bandwidth = 1.0 / (2 * math.pi * tau)
    return StepResponse(
        tau=tau,
        tau_se=tau_se,
        bandwidth=bandwidth,
        bandwidth_se=bandwidth * tau_se / tau,
        gain=d / step_size,
        settling_time=_settling(after, final, delta, tolerance, smooth, dt),
        tolerance=tolerance,
        residual_rms=float(np.sqrt(np.mean(residual**2))),
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
