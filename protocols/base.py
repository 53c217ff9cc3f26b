"""Protocol-layer interfaces: tasks, objectives, gradient estimates, estimators, optimizers."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from hil.core import ConfigError, Device, DeviceSpec, FloatArray, IntArray, JSONDict, Role

MAX_STEPS = 1_000_000
"""Most steps of a procedure (and the bound of step-count settings such as delays)."""

MIN_PERTURBATION = 1e-12
"""Smallest perturbation size (c, h, μ, σ): estimates divide by it, and below this they only
divide rounding noise."""

MAX_MEASURE_SAMPLES = 20_000_000
"""Most samples one measurement of all of a task's cases may take on a sampled device."""

MAX_REPEATS = 100_000
"""Most repetitions of one kind within a step (resamples, directions, passes, repeats)."""


class ChannelMapping(BaseModel):
    """Which device channels a task's data columns drive and which outputs it scores.

    Task settings inherit these fields, so any task can be pointed at any device.
    """

    model_config = ConfigDict(extra="forbid")

    input_channels: list[str] | None = Field(
        default=None,
        description="device inputs the data columns drive, in order; default: the first ones. "
        "Device inputs not named are held at 0 V",
    )
    output_channels: list[str] | None = Field(
        default=None, description="device outputs the task scores; default: the first ones"
    )
    held_inputs: dict[str, float] | None = Field(
        default=None,
        description="device inputs no data column drives, held at these values (channel units, "
        "inside the channel's range) instead of 0: a bias input, a gate electrode's level",
    )
    input_scaling: Literal["volts", "range"] = Field(
        default="volts",
        description="'volts': data are channel values; 'range': data in [-1, 1] span each "
        "channel's allowed range (device range within the station limits)",
    )


@runtime_checkable
class Task(Protocol):
    """Data and loss: the inputs to play on the device and how to score its outputs."""

    @property
    def inputs(self) -> FloatArray:
        """n_cases × n_data_columns, in the units `mapping.input_scaling` says."""
        ...

    @property
    def n_outputs(self) -> int:
        """How many device outputs the loss scores."""
        ...

    @property
    def mapping(self) -> ChannelMapping: ...

    def loss(self, outputs: FloatArray) -> float:
        """Scalar loss of device outputs (n_cases × n_outputs)."""
        ...

    def metrics(self, outputs: FloatArray) -> dict[str, float]:
        """Named figures of merit of the outputs (the loss among them)."""
        ...

    def output_gradient(self, outputs: FloatArray) -> FloatArray:
        """∂loss/∂outputs, n_cases × n_outputs (for chain-rule estimators)."""
        ...


@dataclass(frozen=True)
class Verdict:
    """Whether a task's target is met by re-measured, unperturbed outputs, and by how much."""

    reached: bool
    score: float  # the figure the target is about (gate: margin in noise units; accuracy)
    threshold: float  # the decision threshold used (fitted on the outputs unless given)
    metrics: dict[str, float]
    detail: str  # one line for the log and the summary


@runtime_checkable
class JudgedTask(Task, Protocol):
    """A task with a success criterion (a gate realised, an accuracy reached), judged on
    outputs measured without perturbation; procedures stop on it and report it."""

    def judge(self, outputs: FloatArray, noise: float, threshold: float | None = None) -> Verdict:
        """The verdict on `outputs` (n_cases × n_outputs, a mean of repeats), whose per-case
        noise (standard deviation) is `noise`; `threshold`: use this decision threshold
        instead of fitting one (validation data are judged with the training threshold)."""
        ...

    @property
    def labels(self) -> IntArray:
        """The class (0 or 1; class 1 the high output) of each case."""
        ...

    @property
    def validation(self) -> JudgedTask | None:
        """The held-out cases as a task of their own, or None (nothing is held out)."""
        ...

    @property
    def scale(self) -> float | None:
        """The loss's margin scale in output units (None: not yet set)."""
        ...

    def use_noise(self, noise: float) -> None:
        """Set the loss's margin scale from the measured per-case output noise (standard
        deviation of one unperturbed measurement), if the settings leave it to the noise;
        procedures call it once, before the first step, and again after a resume."""
        ...


class Objective:
    """L(θ) on a device: set the controls to θ, measure the task's inputs, score the outputs.

    Every call costs device time; `evaluations` counts them and the device clock reports the time.
    With `normalized`, θ lives in [-1, 1] per control and spans each control's allowed range, so
    step sizes mean the same on every station; `physical(θ)` gives the values sent.
    """

    def __init__(self, device: Device, task: Task, *, normalized: bool = False) -> None:
        self.device = device
        self.task = task
        self.control_lower, self.control_upper = device.spec.bounds(Role.CONTROL)
        self.normalized = normalized
        if normalized:
            infinite = [
                c.name
                for c in device.spec.controls
                if not (np.isfinite(c.min) and np.isfinite(c.max))
            ]
            if infinite:
                raise ConfigError(
                    f"normalized parameters need finite control ranges; {infinite} are unbounded: "
                    "set their limits in the station file",
                    key=("procedure", "parameters"),
                )
            self.lower, self.upper = -np.ones(self.dim), np.ones(self.dim)
        else:
            self.lower, self.upper = self.control_lower.copy(), self.control_upper.copy()
        self.evaluations = 0
        self.output_columns = _output_columns(device, task)
        self.device_inputs = _device_inputs(device, task)
        _check_measure_size(device.spec, self.device_inputs.shape[0])

    def physical(self, theta: FloatArray) -> FloatArray:
        """The control values θ stands for."""
        t = np.asarray(theta, dtype=float)
        if not self.normalized:
            return t
        if np.any(np.abs(t) > 1.0):
            raise ValueError(f"normalized parameters must lie in [-1, 1], got {t.tolist()}")
        span = self.control_upper - self.control_lower
        values = self.control_lower + (t + 1.0) / 2.0 * span
        # θ is inside [-1, 1]; only floating-point rounding at the ends can step over a bound
        inside: FloatArray = np.clip(values, self.control_lower, self.control_upper)
        return inside

    def parameters(self, controls: FloatArray) -> FloatArray:
        """θ for given control values (inverse of `physical`)."""
        c = np.asarray(controls, dtype=float)
        if not self.normalized:
            return c
        span = self.control_upper - self.control_lower
        theta: FloatArray = 2.0 * (c - self.control_lower) / span - 1.0
        return theta

    def parameter_scale(self) -> FloatArray:
        """dV/dθ per control: half the span when normalized, else 1 (for chain rules)."""
        if self.normalized:
            half: FloatArray = (self.control_upper - self.control_lower) / 2.0
            return half
        return np.ones(self.dim)

    @property
    def dim(self) -> int:
        return int(self.control_lower.size)

    def device_time(self) -> float:
        return self.device.clock.now()

    def outputs(self, theta: FloatArray) -> FloatArray:
        """Measure the device's outputs for every input case at controls θ."""
        self.device.set_controls(self.physical(theta))
        self.evaluations += 1
        outputs: FloatArray = self.device.measure(self.device_inputs)[:, self.output_columns]
        return outputs

    def __call__(self, theta: FloatArray) -> float:
        return self.task.loss(self.outputs(theta))

    def project(self, theta: FloatArray) -> FloatArray:
        """The closest point of the control box."""
        return np.clip(theta, self.lower, self.upper)


def _check_measure_size(spec: DeviceSpec, n_cases: int) -> None:
    """One `measure` of all cases of a sampled device within MAX_MEASURE_SAMPLES samples."""
    if spec.sample_rate is None or spec.plateau_samples is None:
        return
    per_case = (spec.ramp_time + spec.settle_time) * spec.sample_rate + spec.plateau_samples
    if n_cases * per_case > MAX_MEASURE_SAMPLES:
        raise ConfigError(
            f"one measurement of the task's {n_cases} cases takes {n_cases * per_case:.3g} "
            f"samples on device {spec.name!r} (ramp, settling and averaging per case), more than "
            f"{MAX_MEASURE_SAMPLES}; use fewer cases or shorter plateaus",
            key=("task",),
        )


def _named(kind: str, names: list[str], available: list[str], spec_name: str) -> list[int]:
    unknown = [n for n in names if n not in available]
    if unknown or len(set(names)) != len(names):
        raise ConfigError(
            f"task.{kind}_channels {names}: name distinct channels of device {spec_name!r}; "
            f"its {kind}s are {available}",
            key=("task", f"{kind}_channels"),
        )
    return [available.index(n) for n in names]


def _device_inputs(device: Device, task: Task) -> FloatArray:
    """The task's data as full device input rows (unnamed device inputs at 0 V)."""
    spec, data, mapping = device.spec, np.asarray(task.inputs, dtype=float), task.mapping
    channels = list(spec.inputs)
    names = [c.name for c in channels]
    if data.ndim != 2:
        raise ConfigError(
            f"task inputs must be n_cases × n_columns, got shape {data.shape}", key=("task",)
        )
    n_columns = data.shape[1]
    if mapping.input_channels is not None:
        if len(mapping.input_channels) != n_columns:
            raise ConfigError(
                f"task.input_channels names {len(mapping.input_channels)} channels for "
                f"{n_columns} data columns; name one channel per column",
                key=("task", "input_channels"),
            )
        columns = _named("input", mapping.input_channels, names, spec.name)
    elif n_columns <= len(names):
        columns = list(range(n_columns))
    else:
        raise ConfigError(
            f"the task has {n_columns} input columns but device {spec.name!r} has only "
            f"{len(names)} inputs {names}; use fewer data columns or another station",
            key=("task",),
        )
    lo = np.array([channels[c].min for c in columns])
    hi = np.array([channels[c].max for c in columns])
    if mapping.input_scaling == "range":
        if np.any(np.abs(data) > 1.0):
            raise ConfigError(
                "task inputs with input_scaling 'range' must lie in [-1, 1]", key=("task",)
            )
        if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
            raise ConfigError(
                "task.input_scaling 'range' needs finite input ranges; set the inputs' limits in "
                "the station file, or give the data in volts",
                key=("task", "input_scaling"),
            )
        # data lie in [-1, 1]: only rounding at the ends could step over a bound
        data = np.clip(lo + (data + 1.0) / 2.0 * (hi - lo), lo, hi)
    outside = (data < lo) | (data > hi)
    if np.any(outside):
        row, col = (int(i) for i in np.argwhere(outside)[0])
        channel = channels[columns[col]]
        raise ConfigError(
            f"task input {float(data[row, col]):g} (case {row}, channel {channel.name!r}) is "
            f"outside the allowed range [{channel.min:g}, {channel.max:g}] (device range within "
            "the station limits); change the data, or give it in [-1, 1] with input_scaling "
            "'range'",
            key=("task", "inputs", row),
        )
    full = np.zeros((data.shape[0], len(names)))
    full[:, columns] = data
    for name, value in (mapping.held_inputs or {}).items():
        key = ("task", "held_inputs", name)
        if name not in names:
            raise ConfigError(
                f"task.held_inputs: device {spec.name!r} has no input {name!r}; its inputs are "
                f"{names}",
                key=key,
            )
        index = names.index(name)
        channel = channels[index]
        if index in columns:
            raise ConfigError(
                f"task.held_inputs.{name}: a data column already drives input {name!r}; hold "
                "only inputs that no column drives",
                key=key,
            )
        if not (math.isfinite(value) and channel.min <= value <= channel.max):
            raise ConfigError(
                f"task.held_inputs.{name}: {value:g} is outside the input's allowed range "
                f"[{channel.min:g}, {channel.max:g}] (device range within the station limits)",
                key=key,
            )
        full[:, index] = value
    return full


def _output_columns(device: Device, task: Task) -> list[int]:
    names = [c.name for c in device.spec.outputs]
    chosen = task.mapping.output_channels
    if chosen is not None:
        if len(chosen) != task.n_outputs:
            raise ConfigError(
                f"task.output_channels names {len(chosen)} channels for {task.n_outputs} "
                "target columns; name one channel per target column",
                key=("task", "output_channels"),
            )
        return _named("output", chosen, names, device.spec.name)
    if task.n_outputs > len(names):
        raise ConfigError(
            f"the task scores {task.n_outputs} outputs but device {device.spec.name!r} has "
            f"only {len(names)} {names}; score fewer outputs or use another station",
            key=("task",),
        )
    return list(range(task.n_outputs))


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
class Preflight(Protocol):
    """A component that can say before the first measurement whether it will work on an
    objective: capabilities, channel ranges and slew limits, settings that depend on the device.
    Procedures call it when they are built, so `hil config check` and the start of `hil run`
    catch what would otherwise fail in the middle of a run."""

    def preflight(self, objective: Objective, theta: FloatArray) -> None:
        """Raise ConfigError for what would fail at θ; measure and change nothing."""
        ...


class Stateless:
    """For estimators whose result depends only on their settings: an empty checkpoint state."""

    def state_dict(self) -> JSONDict:
        return {}

    def load_state_dict(self, state: JSONDict) -> None:
        if state:
            raise ValueError(f"{type(self).__name__} has no state, got keys {sorted(state)}")


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
