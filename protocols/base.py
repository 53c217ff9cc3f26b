"""Protocol-layer interfaces: tasks, objectives, gradient estimates, estimators, optimizers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from hil.core import Device, FloatArray, JSONDict, Role


@runtime_checkable
class Task(Protocol):
    """Data and loss: the inputs to play on the device and how to score its outputs."""

    @property
    def inputs(self) -> FloatArray:
        """n_cases × n_inputs data-input voltages."""
        ...

    def loss(self, outputs: FloatArray) -> float:
        """Scalar loss of device outputs (n_cases × n_outputs)."""
        ...

    def metrics(self, outputs: FloatArray) -> dict[str, float]:
        """Named figures of merit of the outputs (the loss among them)."""
        ...


class Objective:
    """L(θ) on a device: set the controls to θ, measure the task's inputs, score the outputs.

    Every call costs device time; `evaluations` counts them and the device clock reports the time.
    """

    def __init__(self, device: Device, task: Task) -> None:
        self.device = device
        self.task = task
        self.lower, self.upper = device.spec.bounds(Role.CONTROL)
        self.evaluations = 0
        n_inputs = len(device.spec.inputs)
        if task.inputs.ndim != 2 or task.inputs.shape[1] != n_inputs:
            raise ValueError(
                f"task inputs have shape {task.inputs.shape}, but device {device.spec.name!r} "
                f"has {n_inputs} input channels"
            )

    @property
    def dim(self) -> int:
        return int(self.lower.size)

    def device_time(self) -> float:
        return self.device.clock.now()

    def outputs(self, theta: FloatArray) -> FloatArray:
        """Measure the device's outputs for every input case at controls θ."""
        self.device.set_controls(np.asarray(theta, dtype=float))
        self.evaluations += 1
        return self.device.measure(self.task.inputs)

    def __call__(self, theta: FloatArray) -> float:
        return self.task.loss(self.outputs(theta))

    def project(self, theta: FloatArray) -> FloatArray:
        """The closest point of the control box."""
        return np.clip(theta, self.lower, self.upper)


@dataclass(frozen=True)
class GradientEstimate:
    """A gradient with what it cost: device evaluations and device seconds."""

    gradient: FloatArray
    loss: float
    evaluations: int
    device_seconds: float
    stderr: FloatArray | None = None
    extras: dict[str, float] = field(default_factory=dict)


@runtime_checkable
class GradientEstimator(Protocol):
    """Turns noisy objective evaluations into a gradient estimate."""

    def estimate(self, objective: Objective, theta: FloatArray) -> GradientEstimate: ...

    def state_dict(self) -> JSONDict: ...

    def load_state_dict(self, state: JSONDict) -> None: ...


@runtime_checkable
class Optimizer(Protocol):
    """Ask/tell first-order optimizer with projection onto box constraints."""

    def start(self, x0: FloatArray, lower: FloatArray, upper: FloatArray) -> None:
        """Begin at x0 (must lie inside [lower, upper])."""
        ...

    def ask(self) -> FloatArray:
        """The current point, where the next gradient should be estimated."""
        ...

    def tell(self, gradient: FloatArray) -> None:
        """Take a step with the gradient at the asked point; iterates stay in the box."""
        ...

    def state_dict(self) -> JSONDict: ...

    def load_state_dict(self, state: JSONDict) -> None: ...
