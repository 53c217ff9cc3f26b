"""An HGE plan from measurements: tones, amplitudes and the window for a target gradient SNR.

Homodyne gradient extraction (`protocols.homodyne`) costs one stream of window T per case and
tone group; its per-coordinate standard error is √(S(f_i)/T)/A_i. The plan measures what that
needs at an operating point θ₀ (one input case, one output):

1. the tone plan for a pilot window T₀ (`plan_tones`, through `Homodyne.tones`) and the tone
   amplitudes A_i by the estimator's own amplitude calibration (`calibrate_amplitudes`, the
   third-harmonic or the bias–variance rule);
2. one pilot gradient at θ₀: ∂y/∂θ_i, its standard errors and the noise density fitted to the
   off-tone bins (`DeviceGradient.noise_fit`);
   The gradient is read at those amplitudes, as the plan will read it, and tones stay below a
   fifth of the output chain's bandwidth when step responses measured it;
3. the noise at θ₀ with the tones off, fitted as white + 1/f (`protocols.noise_fit`) down to
   the lowest pilot tone; the plan's tones start at its 1/f corner (at most half the band);
4. the window: a coordinate resolved by the pilot (|g_i| > 3 SE) reaches SNR r = |g_i|/SE_i at
   T_i = T₀·(r·SE_i/|g_i|)²; T is the largest T_i, rounded up to whole samples, at least
   `min_window`, at most `max_window` (coordinates that stay below r are listed). The tones are
   planned again for T on its finer grid, above the pilot's lowest tone so they stay where the
   noise was measured;
5. the predicted error at the plan: SE_i = √(S(f_i)/T)/A_i with S from that noise model (the
   estimator's own formula, with S measured without the tones rather than from a few
   off-tone bins).

`check` plays the plan `repeats` times at θ₀ and compares the spread of the gradients it measures
with the prediction: per control and pooled, √(mean(measured²/predicted²)). The spread is what a
training step sees; the bias of a finite amplitude is not in it (the amplitude rule bounds it).
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from hil.core import ConfigError, Device, FloatArray, JSONDict, Parking, Streaming
from protocols.base import Objective
from protocols.homodyne import AmplitudeCalibration, Homodyne, synthesize
from protocols.noise_fit import NoiseFit, fit_noise
from protocols.tasks import MinimizeOutputTask

BANDWIDTH_FRACTION = 0.2
"""Highest tone over the output chain's bandwidth: a first-order chain reads 98 % of the
gradient there (and 11° of phase, cos 0.98)."""

RESOLVED = 3.0
"""Standard errors a pilot gradient must stand above zero for its coordinate to set T."""


class PlanSettings(BaseModel):
    """Where the plan is made, what it aims for, and the homodyne settings it keeps fixed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    target_snr: float = Field(default=10.0, gt=0, le=1e6, description="|∂y/∂θ_i| / SE_i wanted")
    operating_point: list[float] | None = Field(
        default=None, description="V per control; default: the middle of each control's range"
    )
    inputs: list[float] | None = Field(
        default=None, description="V per data input at the operating point; default 0 V"
    )
    output: str | None = Field(default=None, description="the output planned for; default first")
    pilot_window: float = Field(default=0.5, gt=0, le=3600, description="s, the pilot's window")
    noise_seconds: float = Field(
        default=4.0, gt=0, le=3600, description="s of tone-free record at θ₀ for S(f)"
    )
    min_window: float = Field(default=0.05, gt=0, le=3600, description="s, shortest planned")
    max_window: float = Field(default=20.0, gt=0, le=3600, description="s, longest planned")
    output_bandwidth: float | None = Field(
        default=None,
        gt=0,
        description="Hz, the output chain's bandwidth: tones stay below a fifth of it; default: "
        "this calibration's step responses (hil calibrate: else the station's calibration file)",
    )
    mode: Literal["parallel", "sequential", "grouped"] = "parallel"
    group_size: int = Field(default=2, ge=1, le=1000)
    bandwidth: float = Field(default=100.0, gt=0, le=1e9, description="Hz, highest tone")
    mains: float | None = Field(default=50.0, ge=0, le=1e6, description="Hz avoided; None: off")
    settle_time: float = Field(default=0.1, ge=0, le=3600, description="s before the window")
    ramp_time: float = Field(default=0.05, gt=0, le=60, description="s of ramp in and out")
    method: Literal["harmonic", "optimal"] = Field(
        default="harmonic", description="the amplitude rule of `calibrate_amplitudes`"
    )
    repeats: int = Field(
        default=16, ge=3, le=10_000, description="check: gradients measured at the plan"
    )


def _objective(device: Device, settings: PlanSettings) -> Objective:
    spec = device.spec
    if not isinstance(device, Streaming) or spec.sample_rate is None:
        raise ConfigError(
            f"procedure.what: 'plan' needs a streaming device (homodyne streams tones); "
            f"{spec.name!r} does not stream: leave `plan` out",
            key=("procedure", "what"),
        )
    inputs = settings.inputs if settings.inputs is not None else [0.0] * len(spec.inputs)
    if len(inputs) != len(spec.inputs):
        raise ConfigError(
            f"procedure.plan.inputs: {len(inputs)} values for {len(spec.inputs)} data inputs",
            key=("procedure", "plan", "inputs"),
        )
    output = settings.output or spec.outputs[0].name
    if output not in [c.name for c in spec.outputs]:
        raise ConfigError(
            f"procedure.plan.output: {output!r} is not an output of {spec.name!r}; "
            f"choose one of {[c.name for c in spec.outputs]}",
            key=("procedure", "plan", "output"),
        )
    task = MinimizeOutputTask(
        MinimizeOutputTask.Settings(
            inputs=[list(inputs)],
            input_channels=[c.name for c in spec.inputs] or None,
            output_channels=[output],
        )
    )
    return Objective(device, task)


def operating_point(objective: Objective, settings: PlanSettings) -> FloatArray:
    """θ₀: the given levels (inside the control ranges) or the middle of each range."""
    lo, hi = objective.control_lower, objective.control_upper
    if settings.operating_point is None:
        return np.asarray((lo + hi) / 2.0, dtype=float)
    theta = np.asarray(settings.operating_point, dtype=float)
    if theta.shape != lo.shape or np.any(theta < lo) or np.any(theta > hi):
        raise ConfigError(
            f"procedure.plan.operating_point: {settings.operating_point} must give one level "
            f"per control ({lo.size}) inside the ranges {np.stack([lo, hi], 1).tolist()}",
            key=("procedure", "plan", "operating_point"),
        )
    return theta


def _homodyne(settings: PlanSettings, window: float, **extra: object) -> Homodyne:
    s = settings
    return Homodyne(
        Homodyne.Settings.model_validate(
            {
                "window": window,
                "mode": s.mode,
                "group_size": s.group_size,
                "bandwidth": s.bandwidth,
                "mains": s.mains,
                "settle_time": s.settle_time,
                "ramp_time": s.ramp_time,
                "measure_loss": False,
                "calibration": {"method": s.method},
                **extra,
            }
        )
    )


def _window(settings: PlanSettings, needed: float, rate: float, *, cap: bool = True) -> float:
    """`needed` s within [min_window, max_window] (unless not `cap`), in whole samples."""
    t = min(max(needed, settings.min_window), settings.max_window) if cap else needed
    return math.ceil(t * rate - 1e-9) / rate


def _noise_model(
    device: Device, objective: Objective, theta: FloatArray, settings: PlanSettings, f_lo: float
) -> NoiseFit:
    """The output noise at θ₀ with every tone off, fitted by `protocols.noise_fit`:
    S(f) = white + 1/f part, at any tone the plan may choose. Welch segments of 5/f_lo put the
    fit's lowest bin (the fifth) at the lowest tone; the record holds at least 8 segment
    lengths (15 half-overlapped segments) and `noise_seconds`."""
    spec = device.spec
    rate = float(spec.sample_rate or 0.0)
    segment = round(rate * 5.0 / f_lo)
    seconds = max(settings.noise_seconds, 8 * segment / rate)
    wave = synthesize(
        theta,
        np.zeros_like(theta),
        [1.0] * theta.size,
        objective.device_inputs[0],
        control_names=[c.name for c in spec.controls],
        input_names=[c.name for c in spec.inputs],
        sample_rate=rate,
        window=_window(settings, seconds, rate, cap=False),
        settle_time=settings.settle_time,
        ramp_time=settings.ramp_time,
    )
    assert isinstance(device, Streaming)
    if isinstance(device, Parking):
        device.park()
    out = np.asarray(device.stream(wave.samples, wave.channels), dtype=float)
    a, b = wave.window
    y = out[a:b, objective.output_columns[0]]
    return fit_noise(y, rate, mains=settings.mains or 0.0, segment=segment)


def _predicted(
    noise: NoiseFit, tones: list[float], amplitudes: FloatArray, window: float
) -> tuple[FloatArray, FloatArray]:
    """S(f_i) from the noise model and the standard error √(S(f_i)/T)/A_i per control."""
    density = np.asarray(noise.model(np.asarray(tones, dtype=float)), dtype=float)
    return density, np.sqrt(density / window) / amplitudes


def _needed(
    settings: PlanSettings, gradient: FloatArray, resolved: FloatArray, se_at_one: FloatArray
) -> float:
    """The longest window a resolved coordinate needs for the target SNR (0 if none is)."""
    need = (settings.target_snr * se_at_one / np.where(resolved, np.abs(gradient), 1.0)) ** 2
    return float(np.max(need[resolved], initial=0.0))


def _pilot(
    settings: PlanSettings, objective: Objective, theta: FloatArray, rate: float
) -> tuple[float, AmplitudeCalibration]:
    """The pilot window and the amplitude calibration made with it. The calibration's tones
    keep 3·f_i free, which needs a finer grid (a longer window) than the estimate: a pilot
    window too short for them is doubled, up to eight times the one asked for."""
    t0 = _window(settings, settings.pilot_window, rate, cap=False)
    while True:
        try:
            return t0, _homodyne(settings, t0).calibrate_amplitudes(objective, theta)
        except ConfigError as exc:
            if "collision-free" not in str(exc) or t0 >= 8 * settings.pilot_window:
                raise ConfigError(
                    f"procedure.plan: {exc}; raise plan.pilot_window or plan.bandwidth, or use "
                    "plan.mode 'sequential'/'grouped'",
                    key=("procedure", "plan"),
                ) from None
            t0 = _window(settings, 2 * t0, rate, cap=False)


def _within_bandwidth(settings: PlanSettings, output_bandwidth: float | None) -> PlanSettings:
    """The settings with the tones kept below BANDWIDTH_FRACTION of the output chain's measured
    bandwidth: above it the chain's gain and phase would bias the gradient the plan reads."""
    if output_bandwidth is None:
        return settings
    limit = BANDWIDTH_FRACTION * output_bandwidth
    if limit >= settings.bandwidth:
        return settings
    return settings.model_copy(update={"bandwidth": limit})


def make_plan(
    device: Device, settings: PlanSettings, output_bandwidth: float | None = None
) -> JSONDict:
    """Measure at θ₀ and plan the window, tones and amplitudes for the target SNR; with the
    output chain's `output_bandwidth` (Hz, from step responses) the tones stay well below it."""
    objective = _objective(device, settings)
    theta = operating_point(objective, settings)
    rate = float(device.spec.sample_rate or 0.0)
    settings = _within_bandwidth(settings, output_bandwidth)
    t0, calibration = _pilot(settings, objective, theta, rate)
    amplitudes = np.asarray(calibration.amplitudes, dtype=float)
    pilot = _homodyne(settings, t0, amplitudes=amplitudes.tolist())  # the gradient the plan reads
    measured = pilot.device_gradient(objective, theta)
    g = measured.gradient[0, 0]
    noise = _noise_model(device, objective, theta, settings, min(measured.tones))
    _, pilot_se = _predicted(noise, list(measured.tones), amplitudes, t0)
    resolved = np.abs(g) > RESOLVED * np.maximum(pilot_se, measured.stderr[0, 0])
    # tones above the 1/f corner where the band allows: the white floor is the cheapest noise
    f_min = max(min(measured.tones), min(noise.corner, settings.bandwidth / 2))
    window, tones = _window(settings, settings.pilot_window, rate), list(measured.tones)
    for _ in range(3):  # the tones move with T, and S(f) with them: settle in a few passes
        _, se_at_one = _predicted(noise, tones, amplitudes, 1.0)
        window = _window(settings, _needed(settings, g, resolved, se_at_one), rate)
        window, tones = _tones(settings, objective, window, amplitudes, f_min, rate)
    density, predicted = _predicted(noise, tones, amplitudes, window)
    snr = np.abs(g) / predicted
    names = [c.name for c in device.spec.controls]
    streams = len(measured.groups)
    return {
        "controls": names,
        "output": objective.task.mapping.output_channels,
        "operating_point": theta.tolist(),
        "target_snr": settings.target_snr,
        "output_bandwidth": output_bandwidth,
        "settings": settings.model_dump(mode="json"),
        "window": window,
        "pilot_window": t0,
        "tones": [float(f) for f in tones],
        "amplitudes": amplitudes.tolist(),
        "amplitude_method": settings.method,
        "gradient": g.tolist(),
        "pilot_se": measured.stderr[0, 0].tolist(),
        "resolved": resolved.tolist(),
        "noise_model": {
            "white": noise.white,
            "flicker": noise.flicker,
            "alpha": noise.alpha,
            "f_ref": noise.f_ref,
            "corner": noise.corner,
        },
        "noise_density": density.tolist(),
        "predicted_se": predicted.tolist(),
        "predicted_snr": snr.tolist(),
        "below_target": [n for n, s in zip(names, snr, strict=True) if s < settings.target_snr],
        "streams_per_gradient": streams,
        "device_seconds_per_gradient": streams
        * (window + settings.settle_time + 2 * settings.ramp_time),
        "check": None,
    }


def _tones(
    settings: PlanSettings,
    objective: Objective,
    window: float,
    amplitudes: FloatArray,
    f_min: float,
    rate: float,
) -> tuple[float, list[float]]:
    """The tone plan for `window`, lengthened (doubled) until the tones fit in the band."""
    while True:
        final = _homodyne(settings, window, amplitudes=amplitudes.tolist(), f_min=f_min)
        try:
            return window, final.tones(objective)
        except ConfigError as exc:
            if window >= settings.max_window:
                raise ConfigError(
                    f"procedure.plan: {exc}; raise plan.max_window or plan.bandwidth",
                    key=("procedure", "plan"),
                ) from None
            window = _window(settings, 2 * window, rate)


def check_plan(device: Device, settings: PlanSettings, plan: JSONDict) -> JSONDict:
    """Play the plan `repeats` times at its operating point: measured vs predicted error."""
    objective = _objective(device, settings)
    theta = np.asarray(plan["operating_point"], dtype=float)
    estimator = _homodyne(
        settings, float(plan["window"]), amplitudes=plan["amplitudes"], tones=plan["tones"]
    )
    start = device.clock.now()
    runs = [estimator.device_gradient(objective, theta) for _ in range(settings.repeats)]
    spent = device.clock.now() - start
    gradients = np.array([r.gradient[0, 0] for r in runs])
    reported = np.array([r.stderr[0, 0] for r in runs])
    measured = gradients.std(axis=0, ddof=1)
    predicted = np.asarray(plan["predicted_se"], dtype=float)
    ratio = measured / predicted
    pooled = math.sqrt(float(np.mean(ratio**2)))
    dof = settings.repeats - 1
    return {
        "repeats": settings.repeats,
        "mean_gradient": gradients.mean(axis=0).tolist(),
        "measured_se": measured.tolist(),
        "reported_se": reported.mean(axis=0).tolist(),
        "predicted_se": predicted.tolist(),
        "ratio_per_control": ratio.tolist(),
        "ratio": pooled,
        # a pooled ratio of d·(k−1) degrees of freedom has a relative SE of about 1/√(2·dof)
        "ratio_se": pooled / math.sqrt(2.0 * dof * predicted.size),
        "device_seconds_per_gradient": spent / settings.repeats,
    }
