"""Training procedure: estimate a gradient, take an optimizer step, repeat; checkpointable."""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from hil.core import ConfigError, Device, FloatArray, JSONDict
from protocols.base import GradientEstimator, Objective, Optimizer, Task


class TrainingProcedure:
    """Gradient-based training of a device's controls on a task, one step per optimizer update."""

    class Settings(BaseModel):
        model_config = ConfigDict(extra="forbid")

        steps: int = Field(gt=0, description="number of gradient steps")
        initial_controls: list[float] | dict[str, float] | None = Field(
            default=None,
            description="start values (list in channel order, or by name; missing names start "
            "at 0); default all zeros",
        )
        final_repeats: int = Field(
            default=1, ge=1, description="unperturbed measurements averaged for the final loss"
        )
        parameters: Literal["physical", "normalized"] = Field(
            default="physical",
            description="'physical': the optimizer moves control values; 'normalized': it moves "
            "θ in [-1, 1] spanning each control's allowed range, so step sizes and perturbations "
            "are fractions of the range and mean the same on every station",
        )

    def __init__(
        self,
        settings: Settings,
        *,
        device: Device,
        task: Task,
        estimator: GradientEstimator,
        optimizer: Optimizer,
    ) -> None:
        self.settings = settings
        self.control_names = [c.name for c in device.spec.controls]
        if not self.control_names:
            raise ConfigError(
                f"device {device.spec.name!r} has no control channels to train; a device whose "
                "weights change only through pulses (programmable state) needs a pulse-based "
                "procedure",
                key=("procedure", "type"),
            )
        self.objective = Objective(device, task, normalized=settings.parameters == "normalized")
        self.estimator = estimator
        self.optimizer = optimizer
        theta0 = self.objective.parameters(self._initial_controls())
        optimizer.start(theta0, self.objective.lower, self.objective.upper)
        self._steps_done = 0
        self._best_loss = math.inf
        self._best_step = -1
        self._best_controls = self.objective.physical(theta0).tolist()
        self._last_loss = math.nan

    def _initial_controls(self) -> FloatArray:
        """θ0 from the settings, checked against the (guarded) control ranges."""
        given = self.settings.initial_controls
        n = len(self.control_names)
        if given is None:
            theta = np.zeros(n)
        elif isinstance(given, dict):
            unknown = sorted(set(given) - set(self.control_names))
            if unknown:
                raise ConfigError(
                    f"procedure.initial_controls: unknown control channel(s) {unknown}; "
                    f"the controls are {self.control_names}"
                )
            theta = np.array([given.get(name, 0.0) for name in self.control_names])
        else:
            if len(given) != n:
                raise ConfigError(
                    f"procedure.initial_controls: {len(given)} values given, the device has "
                    f"{n} controls {self.control_names}"
                )
            theta = np.asarray(given, dtype=float)
        lower, upper = self.objective.control_lower, self.objective.control_upper
        for i, name in enumerate(self.control_names):
            if not lower[i] <= theta[i] <= upper[i]:
                raise ConfigError(
                    f"procedure.initial_controls.{name}: {theta[i]} is outside the allowed range "
                    f"[{lower[i]}, {upper[i]}] (device range within the station limits); "
                    "choose a start value inside it",
                    key=("procedure", "initial_controls", name if isinstance(given, dict) else i),
                )
        return theta

    @property
    def steps_done(self) -> int:
        return self._steps_done

    @property
    def total_steps(self) -> int:
        return self.settings.steps

    @property
    def done(self) -> bool:
        return self._steps_done >= self.settings.steps

    def controls(self) -> dict[str, float]:
        """The current control values by channel name."""
        values = self.objective.physical(self.optimizer.ask())
        return dict(zip(self.control_names, values.tolist(), strict=True))

    def step(self) -> JSONDict:
        theta = self.optimizer.ask()
        estimate = self.estimator.estimate(self.objective, theta)
        self.optimizer.tell(estimate.gradient)
        self._steps_done += 1
        self._last_loss = estimate.loss
        if estimate.loss < self._best_loss:
            self._best_loss = estimate.loss
            self._best_step = self._steps_done
            self._best_controls = self.objective.physical(theta).tolist()
        return {
            "step": self._steps_done,
            "loss": estimate.loss,
            "best_loss": self._best_loss,
            "grad_norm": float(np.linalg.norm(estimate.gradient)),
            "evaluations": estimate.evaluations,
            "device_seconds": estimate.device_seconds,
            "device_time": self.objective.device_time(),
            "controls": self.objective.physical(theta).tolist(),
            "gradient": estimate.gradient.tolist(),  # in the optimizer's parameter space
        }

    def finish(self) -> JSONDict:
        """Measure the final controls unperturbed (counted like every other evaluation)."""
        theta = self.optimizer.ask()
        outputs = np.mean(
            [self.objective.outputs(theta) for _ in range(self.settings.final_repeats)], axis=0
        )
        metrics = self.objective.task.metrics(outputs)
        return {
            "final_loss": self.objective.task.loss(outputs),
            "metrics": metrics,
            "final_controls": self.controls(),
            **self.progress(),
        }

    def progress(self) -> JSONDict:
        """Where training stands, without measuring anything."""
        return {
            "steps_done": self._steps_done,
            "last_loss": self._last_loss,
            "best_loss": self._best_loss,
            "best_step": self._best_step,
            "best_controls": dict(zip(self.control_names, self._best_controls, strict=True)),
            "controls": self.controls(),
            "evaluations": self.objective.evaluations,
            "device_time": self.objective.device_time(),
        }

    def state_dict(self) -> JSONDict:
        return {
            "steps_done": self._steps_done,
            "best_loss": _finite_or_none(self._best_loss),
            "best_step": self._best_step,
            "best_controls": self._best_controls,
            "last_loss": _finite_or_none(self._last_loss),
            "evaluations": self.objective.evaluations,
            "optimizer": self.optimizer.state_dict(),
            "estimator": self.estimator.state_dict(),
        }

    def load_state_dict(self, state: JSONDict) -> None:
        self._steps_done = int(state["steps_done"])
        self._best_loss = _none_as(state["best_loss"], math.inf)
        self._best_step = int(state["best_step"])
        self._best_controls = [float(v) for v in state["best_controls"]]
        self._last_loss = _none_as(state["last_loss"], math.nan)
        self.objective.evaluations = int(state["evaluations"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.estimator.load_state_dict(state["estimator"])


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _none_as(value: float | None, default: float) -> float:
    return default if value is None else float(value)
