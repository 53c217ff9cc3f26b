"""The electrode measurements of a station's bring-up: IV sweeps, offset and gain, noise, steps.

Each function takes the device (the safety guard in a run: every level it sends is checked) and
returns one JSON record (the formats are listed in `protocols.bringup`):

- `iv`: a sweep 0 → max → min → 0 over `points` levels per leg of one driven electrode, the
  others at their `bias` (default 0 V); the outputs at every level and the small-signal slope
  ∂y/∂V at 0 V fitted to the points nearest it (both sweep directions, so hysteresis averages
  out). A saturated reading (compliance) ends that side of the sweep.
- `offset`: every electrode at 0 V, `repeats` plateaus: each output's offset with its standard
  error and its plateau-to-plateau σ (zero input); then per data input (controls where the device
  has none) two known levels with the others at 0 V — ±`fraction` of the range, or 0 V and a
  `fraction` of the way up a one-sided range: the transfer ∂y/∂V = Δy/ΔV, the amplification of
  the known input through the device and the output chain (known input).
- `noise`: a stream of zeros for `seconds`, each output's spectrum fitted by
  `protocols.noise_fit` (white floor, 1/f part, corner, mains lines), with the spectrum itself.
- `step`: a stream holding 0 V, stepping one electrode by `fraction` of its range and back,
  `repeats` times (alternating ± where the range allows, so slow drift cancels; a slew-limited
  electrode ramps at its limit, and the fit starts where the level is reached); the responses,
  each from its own baseline, averaged; bandwidth and settling time per output by
  `protocols.step_response`.
"""

from __future__ import annotations

import math

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy.stats import norm
from scipy.stats import t as t_dist

from hil.core import (
    Channel,
    ConfigError,
    Device,
    DeviceSaturated,
    FloatArray,
    JSONDict,
    Parking,
    Role,
    Streaming,
)
from protocols.noise_fit import fit_noise
from protocols.step_response import fit_step

MAX_POINTS = 500
"""Most points of a spectrum or step trace kept in a record (for the report's plots)."""

TRANSIENT = 100
"""Samples after a step kept at full rate in the record (the rise is often a few samples)."""

SLEW_MARGIN = 0.999
"""Fraction of a channel's slew limit a step's ramp uses (rounding stays inside the limit)."""

TAU_BOUND = 0.5
"""A fitted τ beyond this fraction of the record is the fit's bound, not a measurement."""


class IVSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    points: int = Field(default=11, ge=3, le=1001, description="levels per leg of the sweep")
    fraction: float = Field(default=1.0, gt=0, le=1, description="of each range end")
    bias: dict[str, float] = Field(
        default_factory=dict,
        description="V held on the electrodes not swept (by name); the others at 0 V",
    )


class OffsetSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    repeats: int = Field(default=20, ge=2, le=100_000, description="plateaus per level")
    fraction: float = Field(
        default=0.1, gt=0, le=1, description="known input: this fraction of the range's nearer end"
    )


class NoiseSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    seconds: float = Field(default=4.0, gt=0, le=3600, description="s of record")
    mains: float = Field(default=50.0, ge=0, le=1000, description="Hz; 0: no mains lines")


class StepSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    fraction: float = Field(default=0.25, gt=0, le=1, description="of the range's top")
    before: float = Field(default=0.05, gt=0, le=60, description="s at 0 V before the step")
    after: float = Field(default=0.2, gt=0, le=600, description="s at the level")
    tolerance: float = Field(default=0.01, gt=0, lt=1, description="settled within this")
    repeats: int = Field(
        default=8, ge=1, le=10_000, description="steps averaged (noise falls as 1/√repeats)"
    )


def _output_names(device: Device) -> list[str]:
    return [c.name for c in device.spec.outputs]


def _thinned(values: FloatArray, *, head: int = 0) -> list[float]:
    """At most MAX_POINTS values for the report's plots: the first `head` at full rate (a step's
    transient), the rest evenly spaced."""
    index = np.unique(
        np.concatenate(
            [
                np.arange(min(head, values.size)),
                np.linspace(0, values.size - 1, MAX_POINTS - min(head, values.size)).round(),
            ]
        ).astype(int)
    )
    return [float(v) for v in values[index]]


def to_zero(device: Device) -> None:
    """Every driven channel to 0 V (ramped within the limits where the device parks): a stream
    starts from the levels held."""
    if isinstance(device, Parking):
        device.park()
    else:
        device.set_controls(np.zeros(len(device.spec.controls)))


def _measure_with(device: Device, channel: Channel, levels: FloatArray) -> FloatArray:
    """The outputs with `channel` at each level, every other driven channel at 0 V."""
    spec = device.spec
    n_in, controls = len(spec.inputs), [c.name for c in spec.controls]
    if channel.role is Role.INPUT:
        column = [c.name for c in spec.inputs].index(channel.name)
        device.set_controls(np.zeros(len(controls)))
        rows = np.zeros((levels.size, n_in))
        rows[:, column] = levels
        return np.asarray(device.measure(rows), dtype=float)
    index, answered = controls.index(channel.name), []
    for level in levels:
        theta = np.zeros(len(controls))
        theta[index] = level
        device.set_controls(theta)
        answered.append(device.measure(np.zeros((1, n_in)))[0])
    device.set_controls(np.zeros(len(controls)))
    return np.asarray(answered, dtype=float)


def sweep_levels(channel: Channel, settings: IVSettings) -> FloatArray:
    """0 → top → bottom → 0, `points` levels per leg (top and bottom: `fraction` of the ends)."""
    n, f = settings.points, settings.fraction
    top, bottom = f * channel.max, f * channel.min
    up = np.linspace(0.0, top, n)
    down = np.linspace(top, bottom, 2 * n - 1)[1:]
    back = np.linspace(bottom, 0.0, n)[1:]
    return np.concatenate([up, down, back])


def _biased(
    device: Device, channel: Channel, bias: dict[str, float]
) -> tuple[FloatArray, FloatArray]:
    """Controls and an input row holding `bias` (the swept channel excluded), else 0 V."""
    spec = device.spec
    unknown = sorted(set(bias) - {c.name for c in spec.channels if c.role is not Role.OUTPUT})
    if unknown:
        raise ConfigError(
            f"procedure.iv.bias: {unknown} are not driven electrodes of {spec.name!r}; name "
            f"some of {[c.name for c in spec.channels if c.role is not Role.OUTPUT]}",
            key=("procedure", "iv", "bias"),
        )
    levels = {k: v for k, v in bias.items() if k != channel.name}
    theta = np.array([levels.get(c.name, 0.0) for c in spec.controls], dtype=float)
    row = np.array([levels.get(c.name, 0.0) for c in spec.inputs], dtype=float)
    return theta, row


def iv(device: Device, channel: Channel, settings: IVSettings) -> JSONDict:
    """The IV sweep of one driven electrode, the others at their bias (default 0 V).

    A level whose output saturates (an SMU in compliance, an ADC at full scale) is recorded as
    NaN, the device goes to its safe state, and the sweep skips the levels beyond it on that
    side of 0 V: compliance is a limit of the sweep, not a failure of the bring-up."""
    levels = sweep_levels(channel, settings)
    theta, row = _biased(device, channel, settings.bias)
    spec = device.spec
    controls = [c.name for c in spec.controls]
    inputs = [c.name for c in spec.inputs]
    answered: list[FloatArray] = []
    limit = {1.0: math.inf, -1.0: math.inf}  # |level| at which each side saturated
    for level in levels:
        side = 1.0 if level >= 0 else -1.0
        if abs(level) >= limit[side]:
            answered.append(np.full(len(spec.outputs), np.nan))
            continue
        t, x = theta.copy(), row.copy()
        if channel.role is Role.INPUT:
            x[inputs.index(channel.name)] = level
        else:
            t[controls.index(channel.name)] = level
        device.set_controls(t)
        try:
            answered.append(np.asarray(device.measure(x[np.newaxis, :]), dtype=float)[0])
        except DeviceSaturated:
            limit[side] = abs(level)
            answered.append(np.full(len(spec.outputs), np.nan))
            # the guard counts the levels of a failed reading as unknown: back to the safe
            # state (ramped from the last levels sent); the next level starts from there
            device.safe_state()
    device.set_controls(theta)
    y = np.array(answered)
    valid = np.isfinite(y).all(axis=1)
    distinct = np.unique(levels[valid])
    nearest = distinct[np.argsort(np.abs(distinct))[: max(3, distinct.size // 4)]]
    near = np.isin(levels, nearest) & valid  # the levels nearest 0 V, both directions
    slope = [
        float(np.polyfit(levels[near], y[near, k], 1)[0]) if near.sum() >= 2 else math.nan
        for k in range(y.shape[1])
    ]
    return {
        "levels": levels.tolist(),
        "outputs": [[None if math.isnan(v) else float(v) for v in r] for r in y],
        "slope_at_zero": [None if math.isnan(v) else v for v in slope],
        "bias": {k: v for k, v in settings.bias.items() if k != channel.name},
        "saturated_beyond": [None if math.isinf(v) else v for v in (limit[-1.0], limit[1.0])],
    }


def known_levels(channel: Channel, fraction: float) -> tuple[float, float]:
    """The two levels of the known input: ±`fraction` of the range's nearer end where the range
    spans 0 V, else 0 V (or the end nearest it) and `fraction` of the way to the far end."""
    lo, hi = channel.min, channel.max
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ConfigError(
            f"procedure.offset: the known input on {channel.name!r} needs a finite range, but "
            f"it allows [{lo:g}, {hi:g}] {channel.unit}: set its limits in the station file",
            key=("procedure", "what"),
        )
    if lo < 0 < hi:
        level = fraction * min(-lo, hi)
        return -level, level
    start = min(max(0.0, lo), hi)
    far = hi if abs(hi - start) >= abs(lo - start) else lo
    return start, start + fraction * (far - start)


def offset(device: Device, settings: OffsetSettings) -> JSONDict:
    """Output offset at zero input and the transfer of a known input per data input."""
    spec, names, n = device.spec, _output_names(device), settings.repeats
    driven = list(spec.inputs) or list(spec.controls)
    zero = _measure_with(device, driven[0], np.zeros(n))
    offsets = {
        name: {
            "mean": float(np.mean(zero[:, k])),
            "se": float(np.std(zero[:, k], ddof=1) / math.sqrt(n)),
            "sigma": float(np.std(zero[:, k], ddof=1)),
        }
        for k, name in enumerate(names)
    }
    levels = {c.name: known_levels(c, settings.fraction) for c in driven}
    transfer: JSONDict = {}
    for channel in driven:
        low, high = levels[channel.name]
        y = _measure_with(device, channel, np.repeat([high, low], n))
        up, down = y[:n], y[n:]
        gain = (up.mean(axis=0) - down.mean(axis=0)) / (high - low)
        spread = np.sqrt(up.var(axis=0, ddof=1) / n + down.var(axis=0, ddof=1) / n)
        transfer[channel.name] = {
            name: {"gain": float(gain[k]), "gain_se": float(spread[k] / (high - low))}
            for k, name in enumerate(names)
        }
    return {
        "offset": offsets,
        "transfer": transfer,
        "levels": {name: list(pair) for name, pair in levels.items()},
    }


def _streamer(device: Device, what: str) -> tuple[Streaming, float]:
    rate = device.spec.sample_rate
    if not isinstance(device, Streaming) or rate is None:
        raise ConfigError(
            f"procedure.what: {what!r} needs a streaming device; {device.spec.name!r} does not "
            "stream (leave it out, or use a streaming rig)",
            key=("procedure", "what"),
        )
    return device, float(rate)


def noise(device: Device, settings: NoiseSettings) -> JSONDict:
    """The output noise spectrum with every driven electrode at 0 V, fitted per output."""
    streamer, rate = _streamer(device, "noise")
    to_zero(device)
    spec = device.spec
    n = max(512, round(settings.seconds * rate))
    names = [c.name for c in spec.inputs] or [spec.controls[0].name]
    trace = streamer.stream(np.zeros((n, len(names))), names)
    fits: JSONDict = {}
    for k, name in enumerate(_output_names(device)):
        fit = fit_noise(trace[:, k], rate, mains=settings.mains)
        keep = fit.frequencies > 0
        fits[name] = {
            "white": fit.white,
            "white_se": fit.white_se,
            "flicker": fit.flicker,
            "flicker_se": fit.flicker_se,
            "alpha": fit.alpha,
            "alpha_se": fit.alpha_se,
            "corner": fit.corner,
            "corner_se": fit.corner_se,
            "f_ref": fit.f_ref,
            "lines": [[line.frequency, line.excess] for line in fit.lines],
            "frequencies": _thinned(fit.frequencies[keep]),
            "psd": _thinned(fit.psd[keep]),
        }
    return {"samples": n, "sample_rate": rate, "noise": fits}


def step(device: Device, channel: Channel, settings: StepSettings) -> JSONDict:
    """The step response of every output to a jump of one electrode (the others at 0 V)."""
    streamer, rate = _streamer(device, "step")
    to_zero(device)
    before, after = round(settings.before * rate), round(settings.after * rate)
    period, n = before + after, settings.repeats
    # Both polarities where the range allows (alternating, same size): slow drift cancels in
    # the sign-corrected average; the gain is then the mean slope over ±size.
    both = channel.min < 0 < channel.max
    if both:
        size = settings.fraction * min(channel.max, -channel.min)
        levels = size * np.where(np.arange(n) % 2 == 0, 1.0, -1.0)
    else:
        size = settings.fraction * (channel.max if channel.max > 0 else channel.min)
        levels = np.full(n, size)
    ramp = _ramp_samples(channel, abs(size), rate, after)
    i = np.arange(after)
    # up and back down: a jump, or ramps at the slew limit (back to 0 V before the next repeat)
    envelope = np.minimum(1.0, np.minimum(i + 1, after - 1 - i) / ramp)
    wave = np.zeros((n * period + 1, 1))
    for r in range(n):
        wave[r * period + before : (r + 1) * period, 0] = levels[r] * envelope
    trace = np.asarray(streamer.stream(wave, [channel.name]), dtype=float)
    segments = trace[: n * period].reshape(n, period, -1)
    # baseline: the second half of the wait (the previous repeat's return has decayed); the fit
    # runs from where the level is reached to where it starts back
    baselines = segments[:, before // 2 : before].mean(axis=1, keepdims=True)
    segments = segments[:, : before + after - ramp]
    before, after = before + ramp - 1, after - 2 * ramp + 1
    # each repeat from its own baseline, turned to the polarity of `size`
    polarity = np.sign(levels / size)[:, np.newaxis, np.newaxis]
    averaged = ((segments - baselines) * polarity).mean(axis=0)
    signed = (segments - baselines) * polarity
    t = (np.arange(after) / rate).astype(float)
    fits: JSONDict = {}
    for k, name in enumerate(_output_names(device)):
        y = averaged[:, k]
        fit = fit_step(y, rate, before, size, tolerance=settings.tolerance)
        bandwidth_se = _jackknife_bandwidth(signed[:, :, k], rate, before, size, settings)
        if bandwidth_se is None:
            bandwidth_se = fit.bandwidth_se
        model = fit.initial + fit.jump * (1 - np.exp(-t / fit.tau))
        fits[name] = {
            "tau": fit.tau,
            "bandwidth": fit.bandwidth,
            "bandwidth_se": bandwidth_se,
            "resolved": _resolved(fit.bandwidth, bandwidth_se, fit.tau, settings, n, after / rate),
            "settling_time": None if math.isnan(fit.settling_time) else fit.settling_time,
            "settling_from_model": fit.settling_from_model,
            "gain": fit.gain,
            "residual_rms": fit.residual_rms,
            "t": _thinned(t, head=TRANSIENT),
            "y": _thinned(y[before:], head=TRANSIENT),
            "fit": _thinned(model, head=TRANSIENT),
        }
    return {"step_size": size, "repeats": n, "ramp_samples": ramp, "response": fits}


def _ramp_samples(channel: Channel, size: float, rate: float, after: int) -> int:
    """Samples to reach `size` within the channel's slew limit (1: a jump)."""
    if not math.isfinite(channel.max_slew):
        return 1
    ramp = math.ceil(size * rate / (channel.max_slew * SLEW_MARGIN))
    if ramp > after // 4:
        raise ConfigError(
            f"procedure.step: {channel.name!r} reaches the step ({size:g} {channel.unit}) only "
            f"in {ramp / rate:g} s at its slew limit ({channel.max_slew:g} {channel.unit}/s), "
            "too long for a step response: leave `step` out or lower step.fraction",
            key=("procedure", "step"),
        )
    return max(1, ramp)


def _resolved(
    bandwidth: float, se: float, tau: float, settings: StepSettings, repeats: int, span: float
) -> bool:
    """Whether a step's bandwidth is measured: its error is positive and finite, it stands a
    one-sided t-quantile (p = 0.001, repeats − 1 degrees of freedom; a normal quantile for the
    fit's own error) above zero, and τ is inside the record (not at the fit's bound)."""
    if not (math.isfinite(se) and se > 0) or tau >= TAU_BOUND * span:
        return False
    quantile = t_dist.isf(0.001, repeats - 1) if repeats >= 4 else norm.isf(0.001)
    return bool(bandwidth > quantile * se)


def _jackknife_bandwidth(
    signed: FloatArray, rate: float, before: int, size: float, settings: StepSettings
) -> float | None:
    """The bandwidth's standard error from the spread of leave-one-repeat-out fits: unlike the
    fit's own (white residuals), it holds under 1/f noise and drift. None below 4 repeats."""
    n = signed.shape[0]
    if n < 4:
        return None
    total = signed.sum(axis=0)
    values = []
    for r in range(n):
        y = (total - signed[r]) / (n - 1)
        try:
            values.append(fit_step(y, rate, before, size, tolerance=settings.tolerance).bandwidth)
        except ValueError:
            return math.inf
    b = np.asarray(values)
    return float(math.sqrt((n - 1) / n * np.sum((b - b.mean()) ** 2)))
