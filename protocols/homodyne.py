"""Homodyne gradient extraction: every control carries its own sine, one stream gives all partials.

Per input case one waveform is streamed: the controls at θ plus A_i·sin(2π f_i t), the data inputs
on a plateau, ramped in from 0 V and out to 0 V. Over a window of whole periods the output is
demodulated, X_i = (2/N)Σ y·sin(2πf_i t), Y_i = (2/N)Σ y·cos(2πf_i t), and
∂y/∂θ_i = (X_i cos φ_i + Y_i sin φ_i)/A_i, φ_i being the phase of the output chain at f_i. The same
demodulation at free grid frequencies between the tones gives the noise floor, hence the standard
errors. The loss gradient follows by the chain rule with ∂L/∂y from the task.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations_with_replacement

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from hil.core import ConfigError, FloatArray, JSONDict, Streaming
from protocols.base import GradientEstimate, Objective
from protocols.tones import check_plan, plan_tones

log = logging.getLogger(__name__)

_WHOLE = 1e-6  # how far a duration·fs may be from an integer and still count as whole samples


@dataclass(frozen=True)
class Waveform:
    """One synthesised stream: samples (n × channels), channel names, and the window rows."""

    samples: FloatArray
    channels: tuple[str, ...]
    window: tuple[int, int]
    tone_start: int  # row where t = 0 for the tones (first row after the ramp up)


@dataclass(frozen=True)
class DeviceGradient:
    """Demodulated ∂y/∂θ (physical units) per case and output, with standard errors."""

    gradient: FloatArray  # n_cases × n_outputs × d
    stderr: FloatArray  # n_cases × n_outputs × d
    window_mean: FloatArray  # n_cases × n_outputs
    response: FloatArray  # n_cases × n_outputs × d × 2: X and Y per tone
    tones: tuple[float, ...]
    amplitudes: FloatArray  # physical, per control
    shifted: int  # controls whose DC level was moved inward so the tone fits the range


def _samples(seconds: float, rate: float, name: str) -> int:
    n = seconds * rate
    if abs(n - round(n)) > _WHOLE:
        raise ConfigError(
            f"homodyne {name} {seconds} s is {n:g} samples at {rate:g} Hz; "
            "make it a whole number of samples"
        )
    return round(n)


def synthesize(
    controls: FloatArray,
    amplitudes: FloatArray,
    tones: Sequence[float],
    inputs: FloatArray,
    *,
    control_names: Sequence[str],
    input_names: Sequence[str],
    sample_rate: float,
    window: float,
    settle_time: float,
    ramp_time: float,
) -> Waveform:
    """Ramp 0 → levels, settle, a window of whole tone periods, ramp back to 0 V.

    Controls carry θ_i + A_i·sin(2π f_i t) (t = 0 at the end of the ramp up) from the settle
    period on; data inputs hold `inputs`. Channels: inputs first, then controls.
    """
    theta = np.asarray(controls, dtype=float)
    amps = np.broadcast_to(np.asarray(amplitudes, dtype=float), theta.shape)
    freqs = np.asarray(tones, dtype=float)
    x = np.asarray(inputs, dtype=float).reshape(-1)
    if freqs.shape != theta.shape or len(control_names) != theta.size:
        raise ValueError(
            f"synthesize: {theta.size} controls need as many tones and names, got "
            f"{freqs.size} tones and {len(control_names)} names"
        )
    if len(input_names) != x.size:
        raise ValueError(f"synthesize: {x.size} inputs but {len(input_names)} input names")
    n_ramp = _samples(ramp_time, sample_rate, "ramp_time")
    n_settle = _samples(settle_time, sample_rate, "settle_time")
    n_window = _samples(window, sample_rate, "window")
    if n_ramp < 1 or n_window < 1:
        raise ConfigError("homodyne ramp_time and window must each be at least one sample")
    cycles = freqs * window
    if np.any(np.abs(cycles - np.round(cycles)) > _WHOLE) or np.any(np.round(cycles) < 1):
        raise ConfigError(
            f"homodyne tones {freqs.tolist()} Hz must complete whole cycles in the window "
            f"{window} s (f·T = {cycles.tolist()})"
        )
    t = np.arange(n_settle + n_window) / sample_rate
    body = np.hstack(
        [
            np.broadcast_to(x, (t.size, x.size)),
            theta + amps * np.sin(2.0 * math.pi * np.outer(t, freqs)),
        ]
    )
    start = np.concatenate([x, theta])
    up = np.outer(np.arange(n_ramp) / n_ramp, start)  # first row exactly 0
    down = np.outer(1.0 - np.arange(1, n_ramp + 1) / n_ramp, body[-1])  # last row exactly 0
    samples = np.vstack([up, body, down])
    first = n_ramp + n_settle
    return Waveform(
        samples=samples,
        channels=(*input_names, *control_names),
        window=(first, first + n_window),
        tone_start=n_ramp,
    )


def demodulate(
    y: FloatArray, frequencies: Sequence[float], sample_rate: float, t0: float = 0.0
) -> tuple[FloatArray, FloatArray]:
    """X and Y (len(frequencies) × n_outputs) of mean-removed samples y (N × n_outputs).

    The first sample is at time t0 of the references sin(2πft) and cos(2πft).
    """
    arr = np.asarray(y, dtype=float)
    if arr.ndim == 1:
        arr = arr[:, np.newaxis]
    n = arr.shape[0]
    centred = arr - arr.mean(axis=0)
    t = t0 + np.arange(n) / sample_rate
    phase = 2.0 * math.pi * np.outer(np.asarray(frequencies, dtype=float), t)
    x: FloatArray = (2.0 / n) * (np.sin(phase) @ centred)
    q: FloatArray = (2.0 / n) * (np.cos(phase) @ centred)
    return x, q


def noise_frequencies(
    tones: Sequence[float],
    window: float,
    sample_rate: float,
    count: int,
    *,
    order: int = 3,
    mains: float | None = 50.0,
) -> list[float]:
    """Up to `count` grid frequencies m/T clear of DC, the tones and their low-order products.

    Taken evenly from the free bins up to the top tone; bins above it (below Nyquist) only when
    too few are free. Mains harmonics (within 1/T) are avoided too.
    """
    bins = [round(f * window) for f in tones]
    signed = [*bins, *(-b for b in bins)]
    taken = {0, *bins}
    for k in range(2, order + 1):
        taken.update(abs(sum(c)) for c in combinations_with_replacement(signed, k))
    n_half = math.floor(window * sample_rate / 2)
    if mains:
        taken.update(m for m in range(n_half) if _near_mains(m / window, window, mains))
    top = max(bins, default=n_half)
    free = [m for m in range(1, top) if m not in taken]
    if len(free) < count:
        free += [m for m in range(top + 1, n_half) if m not in taken][: count - len(free)]
    if not free:
        return []
    pick = np.unique(np.round(np.linspace(0, len(free) - 1, min(count, len(free)))).astype(int))
    return [free[i] / window for i in pick]


def _near_mains(f: float, window: float, mains: float) -> bool:
    h = round(f / mains)
    return h >= 1 and abs(f - h * mains) < 1.0 / window * (1 - 1e-9)


class Homodyne:
    """Gradient from one tone-modulated stream per input case (needs a Streaming device).

    Costs one evaluation per case (plus one for the loss); the variance per coordinate does not
    grow with the number of controls. `calibrate_phase` measures the output chain's phase per tone.
    """

    class Settings(BaseModel):
        """Window, tone amplitudes and frequencies, waveform timing, noise floor, loss."""

        model_config = ConfigDict(extra="forbid")

        window: float = Field(default=0.5, gt=0, description="s demodulated per case")
        amplitudes: float | list[float] = Field(
            default=0.02,
            description="tone amplitude per control (one value: all), in the objective's "
            "parameter units",
        )
        tones: list[float] | None = Field(
            default=None, description="Hz, one per control; default: planned (`plan_tones`)"
        )
        bandwidth: float = Field(default=100.0, gt=0, description="Hz, highest planned tone")
        mains: float | None = Field(default=50.0, ge=0, description="Hz, avoided; None: off")
        settle_time: float = Field(default=0.1, ge=0, description="s discarded before window")
        ramp_time: float = Field(default=0.05, gt=0, description="s of ramp in and out")
        noise_bins: int = Field(default=16, ge=1, description="off-tone frequencies for SE")
        measure_loss: bool = Field(
            default=True,
            description="measure the unperturbed outputs for the loss and ∂L/∂y; "
            "else use the window means",
        )

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings if settings is not None else self.Settings()
        self._phase_tones: list[float] | None = None
        self._phases: list[float] | None = None

    # -- configuration -------------------------------------------------------------------------

    @property
    def phases(self) -> FloatArray | None:
        """Calibrated output phase per tone (rad), or None (phase 0)."""
        return None if self._phases is None else np.array(self._phases)

    def tones(self, objective: Objective) -> list[float]:
        """The tone per control: the explicit list, or a plan for this device."""
        s, d = self.settings, objective.dim
        rate = self._sample_rate(objective)
        if s.tones is not None:
            if len(s.tones) != d:
                raise ConfigError(f"homodyne tones: {len(s.tones)} given for {d} controls")
            problems = check_plan(
                s.tones,
                window=s.window,
                sample_rate=rate,
                bandwidth=rate / 2,
                mains=s.mains,
                nyquist_fraction=1.0,
            )
            fatal = [p for p in problems if "coherent" in p.product or "duplicate" in p.product]
            if fatal:
                raise ConfigError("homodyne tones: " + "; ".join(str(p) for p in fatal))
            for p in problems:
                log.warning("homodyne tone plan: %s", p)
            return list(s.tones)
        try:
            return plan_tones(
                d, window=s.window, sample_rate=rate, bandwidth=s.bandwidth, mains=s.mains
            )
        except ValueError as exc:
            raise ConfigError(f"homodyne: {exc}") from None

    def amplitudes(self, objective: Objective) -> FloatArray:
        """Physical tone amplitude per control."""
        a = np.broadcast_to(np.asarray(self.settings.amplitudes, dtype=float), (objective.dim,))
        if a.shape != (objective.dim,) or np.any(a <= 0) or not np.all(np.isfinite(a)):
            raise ConfigError(
                f"homodyne amplitudes {self.settings.amplitudes}: give one positive value or "
                f"one per control ({objective.dim})"
            )
        scale = self._scale(objective)
        physical: FloatArray = a * scale
        return physical

    @staticmethod
    def _scale(objective: Objective) -> FloatArray:
        """dV/dθ per control: span/2 when normalized, else 1."""
        if objective.normalized:
            half: FloatArray = (objective.control_upper - objective.control_lower) / 2.0
            return half
        return np.ones(objective.dim)

    @staticmethod
    def _streamer(objective: Objective) -> Streaming:
        device = objective.device
        if not isinstance(device, Streaming):
            raise ConfigError(
                f"the homodyne estimator streams waveforms, but device "
                f"{type(device).__name__} ({device.spec.name!r}) does not stream; "
                "use a streaming device or a plateau estimator (spsa, central_difference)"
            )
        return device

    @staticmethod
    def _sample_rate(objective: Objective) -> float:
        rate = objective.device.spec.sample_rate
        if rate is None:
            raise ConfigError(
                f"device {objective.device.spec.name!r} has no sample_rate in its spec; "
                "the homodyne estimator needs it"
            )
        return float(rate)

    # -- measurement ---------------------------------------------------------------------------

    def device_gradient(self, objective: Objective, theta: FloatArray) -> DeviceGradient:
        """∂y/∂V per case and selected output from one stream per case (physical units).

        Each stream counts as one objective evaluation.
        """
        s = self.settings
        streamer = self._streamer(objective)
        rate = self._sample_rate(objective)
        t = np.asarray(theta, dtype=float)
        if t.shape != (objective.dim,):
            raise ValueError(f"theta: expected shape ({objective.dim},), got {t.shape}")
        tones = self.tones(objective)
        amps = self.amplitudes(objective)
        phases = self._phases_for(tones)
        lo, hi = objective.control_lower, objective.control_upper
        if np.any(hi - lo < 2 * amps):
            raise ConfigError(
                f"homodyne amplitudes {amps.tolist()} V do not fit the control ranges "
                f"{np.stack([lo, hi], axis=1).tolist()}"
            )
        requested = objective.physical(t)
        dc = np.clip(requested, lo + amps, hi - amps)
        shifted = int(np.sum(dc != requested))
        spec = objective.device.spec
        input_names = [c.name for c in spec.inputs]
        control_names = [c.name for c in spec.controls]
        noise = noise_frequencies(tones, s.window, rate, s.noise_bins, mains=s.mains)
        freqs = [*tones, *noise]
        cases = objective.device_inputs
        n_cases, n_out, d = cases.shape[0], len(objective.output_columns), objective.dim
        gradient = np.zeros((n_cases, n_out, d))
        stderr = np.zeros((n_cases, n_out, d))
        response = np.zeros((n_cases, n_out, d, 2))
        means = np.zeros((n_cases, n_out))
        for c in range(n_cases):
            wave = synthesize(
                dc,
                amps,
                tones,
                cases[c],
                control_names=control_names,
                input_names=input_names,
                sample_rate=rate,
                window=s.window,
                settle_time=s.settle_time,
                ramp_time=s.ramp_time,
            )
            out = streamer.stream(wave.samples, wave.channels)
            objective.evaluations += 1
            a, b = wave.window
            y = np.asarray(out, dtype=float)[a:b][:, objective.output_columns]
            x, q = demodulate(y, freqs, rate, (a - wave.tone_start) / rate)
            xt, qt = x[:d].T, q[:d].T  # n_out × d
            response[c, :, :, 0], response[c, :, :, 1] = xt, qt
            gradient[c] = (xt * np.cos(phases) + qt * np.sin(phases)) / amps
            if noise:
                floor = np.sqrt(np.mean((x[d:] ** 2 + q[d:] ** 2) / 2.0, axis=0))  # n_out
                stderr[c] = floor[:, np.newaxis] / amps
            else:
                stderr[c] = np.nan
            means[c] = y.mean(axis=0)
        return DeviceGradient(gradient, stderr, means, response, tuple(tones), amps, shifted)

    def calibrate_phase(self, objective: Objective, theta: FloatArray) -> FloatArray:
        """Measure and store the output chain's phase per tone (one stream per case at θ).

        Per tone the strongest response over cases and outputs gives φ = atan2(Y, X), folded to
        (−π/2, π/2] since the sign of the derivative is unknown. Returns the phases (rad).
        """
        saved = self._phases
        self._phases = None
        try:
            measured = self.device_gradient(objective, theta)
        finally:
            self._phases = saved
        r = measured.response  # n_cases × n_out × d × 2
        flat = r.reshape(-1, r.shape[2], 2)
        magnitude = np.hypot(flat[..., 0], flat[..., 1])
        best = np.argmax(magnitude, axis=0)
        idx = np.arange(r.shape[2])
        phi = np.arctan2(flat[best, idx, 1], flat[best, idx, 0])
        phi = np.where(phi > math.pi / 2, phi - math.pi, phi)
        phi = np.where(phi <= -math.pi / 2, phi + math.pi, phi)
        snr = magnitude[best, idx] / (
            measured.stderr.reshape(-1, r.shape[2])[best, idx] * measured.amplitudes
        )
        weak = [i for i in idx.tolist() if not snr[i] > 5.0]
        if weak:
            log.warning("homodyne phase calibration: weak response (SNR < 5) on controls %s", weak)
        self._phase_tones = list(measured.tones)
        self._phases = phi.tolist()
        return np.array(self._phases)

    def _phases_for(self, tones: Sequence[float]) -> FloatArray:
        if self._phases is None or self._phase_tones is None:
            return np.zeros(len(tones))
        if not np.allclose(self._phase_tones, tones):
            raise ConfigError(
                f"homodyne phases were calibrated at {self._phase_tones} Hz but the tones are now "
                f"{list(tones)} Hz; run calibrate_phase again"
            )
        return np.array(self._phases)

    def estimate(self, objective: Objective, theta: FloatArray) -> GradientEstimate:
        """∂L/∂θ = Σ_c ∂L/∂y_c · ∂y_c/∂θ, one stream per case (+1 loss measurement)."""
        self._streamer(objective)
        t = np.asarray(theta, dtype=float)
        t0, e0 = objective.device_time(), objective.evaluations
        outputs = objective.outputs(t) if self.settings.measure_loss else None
        measured = self.device_gradient(objective, t)
        if outputs is None:
            outputs = measured.window_mean
        loss = objective.task.loss(outputs)
        dl_dy = np.asarray(objective.task.output_gradient(outputs), dtype=float)
        scale = self._scale(objective)
        gradient = np.einsum("co,cod->d", dl_dy, measured.gradient) * scale
        variance = np.einsum("co,cod->d", dl_dy**2, measured.stderr**2)
        return GradientEstimate(
            gradient=gradient,
            loss=float(loss),
            evaluations=objective.evaluations - e0,
            device_seconds=objective.device_time() - t0,
            stderr=np.sqrt(variance) * scale,
            extras={
                "window": self.settings.window,
                "f_min": min(measured.tones),
                "f_max": max(measured.tones),
                "shifted": float(measured.shifted),
            },
        )

    # -- checkpoint ----------------------------------------------------------------------------

    def state_dict(self) -> JSONDict:
        """The calibrated phases and the tones they belong to (None: uncalibrated)."""
        return {"tones": self._phase_tones, "phases": self._phases}

    def load_state_dict(self, state: JSONDict) -> None:
        tones, phases = state.get("tones"), state.get("phases")
        extra = sorted(set(state) - {"tones", "phases"})
        if extra:
            raise ValueError(f"Homodyne state: unknown keys {extra}")
        if tones is None and phases is None:
            self._phase_tones = self._phases = None
            return
        if tones is None or phases is None or len(tones) != len(phases):
            raise ValueError("Homodyne state: tones and phases must both be given, equally long")
        self._phase_tones = [float(f) for f in tones]
        self._phases = [float(p) for p in phases]
