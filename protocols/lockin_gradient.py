"""Homodyne gradients from a hardware lock-in (`hil.core.Demodulating`): dither, demodulate, chain.

For y ≈ y0 + (∂y/∂θ_i)·A_i·sin(2πf_i t) the lock-in's X (rms) is (∂y/∂θ_i)·A_i/√2, so
∂y/∂θ_i = √2·X_i/A_i (Y ≈ 0 up to the chain's phase lag φ, which scales X by cos φ). Per input
case the controls are dithered in groups of the device's `max_dithers()` (one on a
single-reference lock-in), each on its own frequency, and the loss gradient follows by the chain
rule, ∂L/∂θ = Σ_c ∂L/∂y_c · ∂y_c/∂θ, with ∂L/∂y from the task at the measured outputs.

Standard error: from `reads` repeated readings per dither (their spread), or with one reading from
Y, which carries the same noise as X (an overestimate where the chain lags). The noise of the
outputs ∂L/∂y is evaluated at is not included. A control whose dither would leave its range is
dithered around a level moved inward by up to A (counted in `extras["shifted"]`).

Cost: one evaluation for the loss (all cases at θ) plus one per case and dither group; the
device seconds are read from the device clock (the lock-in's settling dominates on hardware).
"""

from __future__ import annotations

import math

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from hil.core import ConfigError, Demodulating, FloatArray
from protocols.base import MAX_REPEATS, GradientEstimate, Objective, Stateless


class LockinGradient(Stateless):
    """Gradient of the task loss from a device's hardware lock-in (needs `Demodulating`)."""

    class Settings(BaseModel):
        """Dither amplitudes and frequencies, and readings per dither."""

        model_config = ConfigDict(extra="forbid")

        amplitudes: float | list[float] = Field(
            default=0.02, description="dither amplitude (peak) per control, V (one value: all)"
        )
        frequencies: float | list[float] = Field(
            default=97.0,
            description="dither frequency per control, Hz (one value: all; give distinct ones "
            "for a device that demodulates several dithers at once)",
        )
        reads: int = Field(
            default=2, ge=1, le=MAX_REPEATS, description="lock-in readings per dither (SE)"
        )

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings if settings is not None else self.Settings()

    # -- planning ------------------------------------------------------------------------------

    def _per_control(self, objective: Objective, key: str) -> FloatArray:
        value = getattr(self.settings, key)
        arr = np.broadcast_to(np.asarray(value, dtype=float), (objective.dim,)).copy()
        if isinstance(value, list) and len(value) != objective.dim:
            raise ConfigError(
                f"estimator.{key}: {len(value)} values for {objective.dim} controls",
                key=("estimator", key),
            )
        if not (np.all(np.isfinite(arr)) and np.all(arr > 0)):
            raise ConfigError(
                f"estimator.{key} {value}: must be positive and finite", key=("estimator", key)
            )
        return arr

    @staticmethod
    def _device(objective: Objective) -> Demodulating:
        device = objective.device
        if not isinstance(device, Demodulating):
            raise ConfigError(
                f"the lock-in estimator needs a device with a hardware lock-in "
                f"(hil.core.Demodulating), but {device.spec.name!r} has none; use 'homodyne' "
                "on a streaming device, or a plateau estimator",
                key=("estimator", "type"),
            )
        return device

    def preflight(self, objective: Objective, theta: FloatArray) -> None:
        """A Demodulating device dithering every control, a lock-in on the one output the task
        scores, dithers that fit the control ranges; measures nothing."""
        device = self._device(objective)
        controls = [c.name for c in objective.device.spec.controls]
        missing = [c for c in controls if c not in device.dither_channels()]
        if missing:
            raise ConfigError(
                f"controls {missing} of {objective.device.spec.name!r} have no dither; wire an "
                "AWG to every control",
                key=("estimator",),
            )
        outputs = [c.name for c in objective.device.spec.outputs]
        scored = [outputs[i] for i in objective.output_columns]
        if scored != [device.demodulated_output()]:
            raise ConfigError(
                f"the task scores {scored} but the lock-in reads {device.demodulated_output()!r}",
                key=("task", "output_channels"),
            )
        amplitudes = self._per_control(objective, "amplitudes")
        self._per_control(objective, "frequencies")
        span = objective.control_upper - objective.control_lower
        if np.any(2 * amplitudes >= span):
            raise ConfigError(
                f"estimator.amplitudes {amplitudes.tolist()} V: a dither swings 2A, which must "
                f"be less than each control's span {span.tolist()} V",
                key=("estimator", "amplitudes"),
            )

    def groups(self, objective: Objective) -> list[list[int]]:
        """Controls dithered together: `max_dithers()` at a time, in order."""
        size = max(1, int(self._device(objective).max_dithers()))
        return [list(range(i, min(i + size, objective.dim))) for i in range(0, objective.dim, size)]

    # -- estimate ------------------------------------------------------------------------------

    def device_gradient(
        self, objective: Objective, levels: FloatArray
    ) -> tuple[FloatArray, FloatArray]:
        """∂y/∂θ (physical units) per case and control at control `levels`, and its standard
        error: n_cases × d each. The controls must already hold `levels`."""
        device = self._device(objective)
        amplitudes = self._per_control(objective, "amplitudes")
        frequencies = self._per_control(objective, "frequencies")
        reads = self.settings.reads
        cases = objective.device_inputs
        gradient = np.zeros((cases.shape[0], objective.dim))
        stderr = np.zeros_like(gradient)
        names = [c.name for c in objective.device.spec.controls]
        for c, row in enumerate(cases):
            for group in self.groups(objective):
                dithers = {names[i]: (float(frequencies[i]), float(amplitudes[i])) for i in group}
                xy = np.asarray(device.demodulate(row, dithers, reads), dtype=float)
                objective.evaluations += 1
                x, y = xy[:, :, 0], xy[:, :, 1]
                slope = math.sqrt(2.0) / amplitudes[group]
                gradient[c, group] = x.mean(axis=1) * slope
                spread = x.std(axis=1, ddof=1) / math.sqrt(reads) if reads > 1 else None
                noise = np.abs(y[:, 0]) if spread is None else spread
                stderr[c, group] = noise * slope
        return gradient, stderr

    def estimate(self, objective: Objective, theta: FloatArray) -> GradientEstimate:
        """∂L/∂θ from the loss at θ (one evaluation) and one demodulation per case and group."""
        t = np.asarray(theta, dtype=float)
        if t.shape != (objective.dim,):
            raise ValueError(f"theta: expected shape ({objective.dim},), got {t.shape}")
        self.preflight(objective, t)
        t0, e0 = objective.device_time(), objective.evaluations
        outputs = objective.outputs(t)
        physical = objective.physical(t)
        amplitudes = self._per_control(objective, "amplitudes")
        levels = np.clip(
            physical, objective.control_lower + amplitudes, objective.control_upper - amplitudes
        )
        shifted = int(np.sum(levels != physical))
        if shifted:
            objective.device.set_controls(levels)
        grad_y, se_y = self.device_gradient(objective, levels)
        if shifted:
            objective.device.set_controls(physical)
        task = objective.task
        dl_dy = np.asarray(task.output_gradient(outputs), dtype=float)[:, 0]
        scale = objective.parameter_scale()
        gradient = dl_dy @ grad_y * scale
        stderr = np.sqrt((dl_dy**2) @ (se_y**2)) * scale
        return GradientEstimate(
            gradient=gradient,
            loss=float(task.loss(outputs)),
            evaluations=objective.evaluations - e0,
            device_seconds=objective.device_time() - t0,
            stderr=stderr,
            extras={
                "shifted": float(shifted),
                "groups": float(len(self.groups(objective))),
                "reads": float(self.settings.reads),
            },
        )
