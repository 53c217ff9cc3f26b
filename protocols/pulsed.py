"""Training a device whose weights change only through pulses (memristor crossbars).

A single-layer array answers y_c = x_c W for each input row x_c, so ∂L/∂W = Xᵀ·∂L/∂Y and only
∂L/∂Y must be measured. Two estimators provide it:

- `DeltaRule`: one measurement, ∂L/∂Y from the task's own software derivative (Widrow–Hoff);
- `IntrinsicNodePerturbation`: the array's read noise is the probe (node perturbation without
  injected noise, the NRL "noisy passes against their running mean" variant): K noisy passes Y_k,
  their mean Ȳ, ξ_k = Y_k − Ȳ, δ_k = L(Y_k) − L(Ȳ), ∂L/∂Y ≈ mean_k δ_k ξ_k / σ̂², σ̂² the per-output
  variance over the passes. It needs nothing from the loss but its value.

`PulseTrainingProcedure` keeps the optimizer's iterate as the intended weights (read from the
array at the start), lets any optimizer (SGD, Adam, schedules) take its step, and sends the
difference between the intended weights and the nominal weights already sent as whole pulse
counts (Δw/pulse_step, rounded): what rounding leaves over is sent later, not lost. A step that
would need more than `max_pulses` on a weight is scaled down as a whole (direction kept), the rest
stays pending, and the event says by how much: nothing is cut silently. The array's real weights
differ from the nominal ones by the pulse noise; the loop closes through the gradient, which is
always measured on the real array, and `resync_every` reads the weights back (counted on the
clock) and restarts the intended and nominal weights from what was read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from hil.core import (
    ConfigError,
    Device,
    FloatArray,
    JSONDict,
    ProgrammableState,
)
from protocols.base import MAX_REPEATS, MAX_STEPS, Objective, Optimizer, Stateless, Task
from protocols.node_perturbation import intrinsic_output_gradient
from protocols.progress import Stepped, StepProgress


@dataclass(frozen=True)
class WeightGradient:
    """∂L/∂W (n_inputs × n_outputs) of a single-layer array, with what it cost."""

    gradient: FloatArray
    loss: float
    evaluations: int
    device_seconds: float
    extras: dict[str, float] = field(default_factory=dict)


@runtime_checkable
class WeightGradientEstimator(Protocol):
    """Measures ∂L/∂W of a single-layer array at its present weights."""

    def weight_gradient(self, objective: Objective) -> WeightGradient: ...

    def state_dict(self) -> JSONDict: ...

    def load_state_dict(self, state: JSONDict) -> None: ...


def _no_controls(objective: Objective) -> FloatArray:
    return np.zeros(objective.dim)


def _weights_gradient(objective: Objective, dl_dy: FloatArray) -> FloatArray:
    """Xᵀ·∂L/∂Y on the full output width (unscored outputs get 0)."""
    n_out = len(objective.device.spec.outputs)
    full = np.zeros((dl_dy.shape[0], n_out))
    full[:, objective.output_columns] = dl_dy
    gradient: FloatArray = objective.device_inputs.T @ full
    return gradient


class DeltaRule(Stateless):
    """∂L/∂W = Xᵀ·∂L/∂Y with ∂L/∂Y from the task (one measurement of every case)."""

    class Settings(BaseModel):
        model_config = ConfigDict(extra="forbid")

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings if settings is not None else self.Settings()

    def weight_gradient(self, objective: Objective) -> WeightGradient:
        t0, e0 = objective.device_time(), objective.evaluations
        outputs = objective.outputs(_no_controls(objective))
        dl_dy = np.asarray(objective.task.output_gradient(outputs), dtype=float)
        return WeightGradient(
            gradient=_weights_gradient(objective, dl_dy),
            loss=objective.task.loss(outputs),
            evaluations=objective.evaluations - e0,
            device_seconds=objective.device_time() - t0,
        )


class IntrinsicNodePerturbation(Stateless):
    """Node perturbation on the output units with the device's own read noise as the probe."""

    class Settings(BaseModel):
        """How many noisy passes per estimate."""

        model_config = ConfigDict(extra="forbid")

        passes: int = Field(
            default=32,
            ge=3,
            le=MAX_REPEATS,
            description="noisy measurements of every case per estimate",
        )
        min_sigma: float = Field(
            default=0.0,
            ge=0,
            description="outputs whose noise σ̂ is at or below this carry no probe (gradient 0)",
        )

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings if settings is not None else self.Settings()

    def weight_gradient(self, objective: Objective) -> WeightGradient:
        k = self.settings.passes
        t0, e0 = objective.device_time(), objective.evaluations
        theta = _no_controls(objective)
        passes = np.array([objective.outputs(theta) for _ in range(k)])  # k × cases × outputs
        probe = intrinsic_output_gradient(passes, objective.task.loss, self.settings.min_sigma)
        return WeightGradient(
            gradient=_weights_gradient(objective, probe.samples.mean(axis=0)),
            loss=probe.mean_loss,
            evaluations=objective.evaluations - e0,
            device_seconds=objective.device_time() - t0,
            extras={
                "sigma": probe.sigma,
                "passes": float(k),
                "unprobed_outputs": float(np.count_nonzero(probe.silent)),
            },
        )


class PulseTrainingProcedure(Stepped):
    """Train a single-layer programmable array: measure ∂L/∂W, step, send whole pulses."""

    class Settings(BaseModel):
        model_config = ConfigDict(extra="forbid")

        steps: int = Field(gt=0, le=MAX_STEPS, description="number of update steps")
        pulse_step: float = Field(
            gt=0, description="nominal weight change per pulse (the device's dw_min)"
        )
        max_pulses: int = Field(
            default=8,
            ge=1,
            le=1_000_000,
            description="largest pulse count for one weight in one step (within the station's "
            "limits.max_pulses_per_device and the device's own limit)",
        )
        weight_min: float = Field(default=-math.inf, description="box for the intended weights")
        weight_max: float = Field(default=math.inf, description="box for the intended weights")
        final_repeats: int = Field(
            default=1, ge=1, le=MAX_REPEATS, description="measurements of the final loss"
        )
        resync_every: int | None = Field(
            default=None,
            ge=1,
            le=MAX_STEPS,
            description="read the weights back every N steps and continue from them "
            "(None: never; the final read-back always happens)",
        )

        @model_validator(mode="after")
        def _ordered(self) -> PulseTrainingProcedure.Settings:
            if not self.weight_min < self.weight_max:
                raise ValueError(
                    f"weight_min {self.weight_min} must be below weight_max {self.weight_max}"
                )
            return self

    def __init__(
        self,
        settings: Settings,
        *,
        device: Device,
        task: Task,
        estimator: object,
        optimizer: Optimizer,
    ) -> None:
        self.settings = s = settings
        if not isinstance(device, ProgrammableState):
            raise ConfigError(
                f"procedure pulse-train needs a device with programmable weights (apply_pulses, "
                f"read_state); {device.spec.name!r} has none: use procedure type 'train'",
                key=("procedure", "type"),
            )
        if not isinstance(estimator, WeightGradientEstimator):
            raise ConfigError(
                f"procedure pulse-train needs a weight-gradient estimator (delta-rule or "
                f"intrinsic-node-perturbation), not {type(estimator).__name__}",
                key=("estimator", "type"),
            )
        self.device: ProgrammableState = device
        self.objective = Objective(device, task)
        self.estimator = estimator
        self.optimizer = optimizer
        weights = np.asarray(device.read_state(), dtype=float)
        shape = (len(device.spec.inputs), len(device.spec.outputs))
        if weights.shape != shape:
            raise ConfigError(
                f"device {device.spec.name!r} reports weights of shape {weights.shape}, but a "
                f"single-layer array with {shape[0]} inputs and {shape[1]} outputs has {shape}"
            )
        self._shape = shape
        lo = np.full(weights.size, s.weight_min)
        hi = np.full(weights.size, s.weight_max)
        start = np.clip(weights.ravel(), lo, hi)
        optimizer.start(start, lo, hi)
        if s.resync_every is not None and "x" not in optimizer.state_dict():
            raise ConfigError(
                f"procedure.resync_every needs an optimizer whose state holds its iterate 'x'; "
                f"{type(optimizer).__name__} does not",
                key=("procedure", "resync_every"),
            )
        self._sent: FloatArray = start.copy()  # nominal weights the pulses sent so far amount to
        self._progress = StepProgress(s.steps)
        self._pulses = 0

    def step(self) -> JSONDict:
        s = self.settings
        estimate = self.estimator.weight_gradient(self.objective)
        self.optimizer.tell(estimate.gradient.ravel())
        wanted = (self.optimizer.ask() - self._sent) / s.pulse_step
        largest = float(np.max(np.abs(wanted))) if wanted.size else 0.0
        scale = min(1.0, s.max_pulses / largest) if largest > 0 else 1.0
        counts = np.rint(wanted * scale).astype(np.int64)
        t0 = self.objective.device_time()
        self.device.apply_pulses(counts.reshape(self._shape))
        self._sent = self._sent + counts * s.pulse_step
        self._pulses += int(np.abs(counts).sum())
        self._progress.record(estimate.loss)
        resync = {}
        if s.resync_every is not None and self._progress.steps_done % s.resync_every == 0:
            resync = self._resync()
        return {
            "step": self._progress.steps_done,
            "loss": estimate.loss,
            "best_loss": self._progress.best_loss,
            "grad_norm": float(np.linalg.norm(estimate.gradient)),
            "evaluations": estimate.evaluations,
            "device_seconds": estimate.device_seconds + self.objective.device_time() - t0,
            "device_time": self.objective.device_time(),
            "pulses": int(np.abs(counts).sum()),
            "step_scaled": scale,
            "controls": [],
            **estimate.extras,
            **resync,
        }

    def _resync(self) -> JSONDict:
        """Read the weights back; intended and nominal weights restart from what was read."""
        state = self.optimizer.state_dict()
        lo = np.full(self._sent.size, self.settings.weight_min)
        hi = np.full(self._sent.size, self.settings.weight_max)
        read = np.clip(np.asarray(self.device.read_state(), dtype=float).ravel(), lo, hi)
        gap = float(np.sqrt(np.mean((read - np.asarray(state["x"], dtype=float)) ** 2)))
        state["x"] = read.tolist()
        self.optimizer.load_state_dict(state)
        self._sent = read.copy()
        return {"resynced": True, "intended_vs_read_rms": gap}

    def finish(self) -> JSONDict:
        """Measure the final loss and read the weights back (both counted on the clock)."""
        theta = _no_controls(self.objective)
        outputs = np.mean(
            [self.objective.outputs(theta) for _ in range(self.settings.final_repeats)], axis=0
        )
        weights = np.asarray(self.device.read_state(), dtype=float)
        intended = self.optimizer.ask().reshape(self._shape)
        return {
            "final_loss": self.objective.task.loss(outputs),
            "metrics": self.objective.task.metrics(outputs),
            "weights_rms": float(np.sqrt(np.mean(weights**2))),
            "weights_vs_intended_rms": float(np.sqrt(np.mean((weights - intended) ** 2))),
            **self.progress(),
        }

    def progress(self) -> JSONDict:
        return {
            **self._progress.summary(),
            "pulses": self._pulses,
            "evaluations": self.objective.evaluations,
            "device_time": self.objective.device_time(),
        }

    def state_dict(self) -> JSONDict:
        return {
            **self._progress.state_dict(),
            "sent": self._sent.tolist(),
            "pulses": self._pulses,
            "evaluations": self.objective.evaluations,
            "optimizer": self.optimizer.state_dict(),
            "estimator": self.estimator.state_dict(),
        }

    def load_state_dict(self, state: JSONDict) -> None:
        self._progress.load_state_dict(state)
        sent = np.asarray(state["sent"], dtype=float)
        if sent.shape != self._sent.shape:
            raise ValueError(f"pulse-train state: 'sent' has shape {sent.shape}")
        self._sent = sent
        self._pulses = int(state["pulses"])
        self.objective.evaluations = int(state["evaluations"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.estimator.load_state_dict(state["estimator"])
