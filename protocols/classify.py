"""Binary tasks judged on one device output: logic gates and two-class classification.

Class 1 must give the high output, class 0 the low one. Both share the loss found to work in
the gate study: the soft minimum of all pairwise class margins,

    L = s · log mean_{i ∈ class 1, j ∈ class 0} exp(−(y_i − y_j)/s),

which is offset-invariant and never saturates (for wide margins it keeps falling about
linearly, so Adam keeps moving, where a hinge would stall). It factorises into
s·log mean_i exp(−y_i/s) + s·log mean_j exp(y_j/s), so it costs O(n), not O(n²). The margin
scale s is a number in output units, or `scale_noise` × the per-case output noise the training
procedure measures before the first step (`use_noise`).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field, ValidationInfo, field_validator, model_validator
from scipy.special import logsumexp, softmax

from hil.core import FloatArray, IntArray
from hil.core.paths import ConfigPath
from protocols.base import ChannelMapping, Verdict
from protocols.datasets import Generate, check_labelled, generate, load_labelled, split

GateName = Literal["AND", "OR", "NAND", "NOR", "XOR", "XNOR"]

GATES: dict[GateName, tuple[int, int, int, int]] = {
    "AND": (0, 0, 0, 1),
    "OR": (0, 1, 1, 1),
    "NAND": (1, 1, 1, 0),
    "NOR": (1, 0, 0, 0),
    "XOR": (0, 1, 1, 0),
    "XNOR": (1, 0, 0, 1),
}
"""Truth tables over the cases (low, low), (low, high), (high, low), (high, high)."""


class BinarySettings(ChannelMapping):
    """Settings both binary tasks share: the loss's margin scale and the input convention."""

    input_scaling: Literal["volts", "range"] = Field(
        default="range",
        description="'range' (default): data in [-1, 1] span each input channel's allowed "
        "range; 'volts': data are channel values",
    )
    scale: Annotated[float, Field(gt=0, allow_inf_nan=False)] | Literal["noise"] = Field(
        default="noise",
        description="margin scale s of the loss in output units, or 'noise': scale_noise × "
        "the per-case output noise measured before training",
    )
    scale_noise: float = Field(
        default=2.0, gt=0, allow_inf_nan=False, description="s in units of the measured noise"
    )


class _Scale:
    """The loss's margin scale, fixed or set from the measured noise; one object is shared by
    a task and its held-out part, so both always use the same s."""

    def __init__(self, setting: float | Literal["noise"], per_noise: float) -> None:
        self.from_noise = setting == "noise"
        self.value = None if setting == "noise" else float(setting)
        self.per_noise = per_noise

    def use_noise(self, noise: float) -> None:
        if not (math.isfinite(noise) and noise > 0):
            raise ValueError(
                f"the measured output noise must be a positive finite standard deviation to "
                f"set the loss scale from, got {noise!r}"
            )
        if self.from_noise:
            self.value = self.per_noise * noise

    def required(self) -> float:
        if self.value is None:
            raise ValueError(
                "the loss scale is not set yet: with `scale: noise` the training procedure "
                "sets it from the measured output noise before the first step; give `scale:` "
                "a number (output units) to use the loss without it"
            )
        return self.value


def fit_threshold(outputs: FloatArray, labels: IntArray) -> float:
    """The decision threshold (class 1 iff output > threshold) of highest accuracy.

    Separable outputs give the midpoint (min class 1 + max class 0)/2. Otherwise, among the
    thresholds of highest accuracy the one in the middle of the widest gap between sorted
    outputs wins; one that puts every case on one side lies half the widest gap (1 when all
    outputs are equal) beyond the outermost output.
    """
    order = np.argsort(outputs, kind="stable")
    y, classes = outputs[order], labels[order]
    n = y.size
    # split k: the k lowest outputs are called class 0, the others class 1
    zeros_below = np.concatenate([[0], np.cumsum(classes == 0)])
    ones_above = np.count_nonzero(classes) - np.concatenate([[0], np.cumsum(classes == 1)])
    correct = zeros_below + ones_above
    gaps = np.zeros(n + 1)
    gaps[1:n] = np.diff(y)
    valid = gaps > 0  # a split between equal outputs is no threshold
    valid[0] = valid[n] = True
    best = np.flatnonzero(valid & (correct == correct[valid].max()))
    k = int(best[np.argmax(gaps[best])])
    if 0 < k < n:
        return float((y[k - 1] + y[k]) / 2)
    beyond = gaps.max() / 2 if gaps.max() > 0 else 1.0
    return float(y[0] - beyond if k == 0 else y[-1] + beyond)


class _BinaryTask(ABC):
    """Loss, gradient, metrics and judging of a two-class task on one output."""

    def __init__(
        self, settings: BinarySettings, inputs: FloatArray, labels: IntArray, scale: _Scale
    ) -> None:
        self._mapping = ChannelMapping.model_validate(
            settings.model_dump(include=set(ChannelMapping.model_fields))
        )
        self._inputs = inputs
        self._labels = labels
        self._inputs.setflags(write=False)
        self._labels.setflags(write=False)
        self._high = labels == 1
        self._scale = scale

    @property
    def inputs(self) -> FloatArray:
        """n_cases × n_inputs (read-only), in the units `mapping.input_scaling` says."""
        return self._inputs

    @property
    def labels(self) -> IntArray:
        """The class (0 or 1, class 1 high) of each case (read-only)."""
        return self._labels

    @property
    def n_outputs(self) -> int:
        return 1

    @property
    def mapping(self) -> ChannelMapping:
        return self._mapping

    @property
    def scale(self) -> float | None:
        """The loss's margin scale s in output units (None: waiting for `use_noise`)."""
        return self._scale.value

    def use_noise(self, noise: float) -> None:
        """Set s = scale_noise × `noise` if the settings leave s to the noise; else keep it."""
        self._scale.use_noise(noise)

    def loss(self, outputs: FloatArray) -> float:
        """The soft minimum of all pairwise class margins (module docstring), output units."""
        y, s = self._column(outputs), self._scale.required()
        high, low = y[self._high], y[~self._high]
        return float(
            s * (logsumexp(-high / s) - math.log(high.size))
            + s * (logsumexp(low / s) - math.log(low.size))
        )

    def output_gradient(self, outputs: FloatArray) -> FloatArray:
        """∂loss/∂outputs, n_cases × 1: −softmax(−y/s) over class 1, softmax(y/s) over class 0."""
        y, s = self._column(outputs), self._scale.required()
        gradient = np.zeros((y.size, 1))
        gradient[self._high, 0] = -softmax(-y[self._high] / s)
        gradient[~self._high, 0] = softmax(y[~self._high] / s)
        return gradient

    def metrics(self, outputs: FloatArray) -> dict[str, float]:
        """loss (once the scale is set), accuracy with the best threshold, and separation
        = min(class 1) − max(class 0) in output units (negative where the classes overlap)."""
        y = self._column(outputs)
        found = {} if self._scale.value is None else {"loss": self.loss(outputs)}
        found["accuracy"] = self._accuracy(y, fit_threshold(y, self._labels))
        found["separation"] = self._separation(y)
        return found

    def judge(self, outputs: FloatArray, noise: float, threshold: float | None = None) -> Verdict:
        """The verdict on unperturbed outputs whose per-case noise is `noise`; the threshold is
        fitted (`fit_threshold`) unless given."""
        y = self._column(outputs)
        if not (math.isfinite(noise) and noise > 0):
            raise ValueError(f"noise must be a positive finite standard deviation, got {noise!r}")
        if threshold is not None and not math.isfinite(threshold):
            raise ValueError(f"threshold must be a finite number, got {threshold!r}")
        used = fit_threshold(y, self._labels) if threshold is None else float(threshold)
        separation = self._separation(y)
        metrics = {
            "accuracy": self._accuracy(y, used),
            "separation": separation,
            "separation_sigma": separation / noise,
        }
        if self._scale.value is not None:
            metrics["loss"] = self.loss(outputs)
        reached, score, detail = self._decide(metrics)
        return Verdict(reached, score, used, metrics, detail)

    @abstractmethod
    def _decide(self, metrics: dict[str, float]) -> tuple[bool, float, str]:
        """(reached, score, detail) from the judged metrics."""

    def _accuracy(self, y: FloatArray, threshold: float) -> float:
        return float(np.mean((y > threshold) == self._high))

    def _separation(self, y: FloatArray) -> float:
        return float(y[self._high].min() - y[~self._high].max())

    def _column(self, outputs: FloatArray) -> FloatArray:
        out = np.asarray(outputs, dtype=float)
        expected = (self._labels.size, 1)
        if out.shape != expected:
            raise ValueError(
                f"outputs have shape {out.shape}, expected {expected} (n_cases × 1: the task "
                "scores one output)"
            )
        column: FloatArray = out[:, 0]
        return column


class GateTask(_BinaryTask):
    """A two-input logic gate: the four input cases must drive the output high where the
    truth table says 1 and low where it says 0, apart by `margin` times the output noise."""

    class Settings(BinarySettings):
        """The gate, its two input levels, and when it counts as realised."""

        gate: GateName = Field(description="AND, OR, NAND, NOR, XOR or XNOR (any case)")
        low: float = Field(default=-0.6, allow_inf_nan=False, description="input level of 0")
        high: float = Field(default=0.6, allow_inf_nan=False, description="input level of 1")
        margin: float = Field(
            default=3.0,
            ge=0,
            allow_inf_nan=False,
            description="realised when min(class 1) − max(class 0) ≥ margin × output noise",
        )

        @field_validator("gate", mode="before")
        @classmethod
        def _gate_name(cls, value: Any) -> Any:
            if isinstance(value, str) and value.strip().upper() in GATES:
                return value.strip().upper()
            raise ValueError(f"unknown gate {value!r}; give one of {', '.join(GATES)}")

        @model_validator(mode="after")
        def _levels(self) -> GateTask.Settings:
            if not self.low < self.high:
                raise ValueError(f"`low` ({self.low:g}) must be below `high` ({self.high:g})")
            if self.input_scaling == "range" and max(abs(self.low), abs(self.high)) > 1:
                raise ValueError(
                    "with input_scaling 'range' the levels are fractions of each input's range "
                    "and must lie in [-1, 1]; give them in volts with input_scaling 'volts'"
                )
            return self

    def __init__(self, settings: Settings) -> None:
        self.settings = s = settings
        lo, hi = s.low, s.high
        inputs = np.array([[lo, lo], [lo, hi], [hi, lo], [hi, hi]])
        labels = np.array(GATES[s.gate], dtype=np.int64)
        super().__init__(s, inputs, labels, _Scale(s.scale, s.scale_noise))

    @property
    def validation(self) -> None:
        """A gate has no held-out cases."""
        return None

    def _decide(self, metrics: dict[str, float]) -> tuple[bool, float, str]:
        """Realised iff separation ≥ margin × noise; the score is the separation in noise units
        (the margin asked joins the metrics as `margin_sigma`)."""
        sigmas, margin = metrics["separation_sigma"], self.settings.margin
        metrics["margin_sigma"] = margin
        if sigmas >= margin:
            return (
                True,
                sigmas,
                f"{self.settings.gate} realised: separation {sigmas:.2f}σ ≥ {margin:g}σ",
            )
        return (
            False,
            sigmas,
            f"{self.settings.gate} not realised: separation {sigmas:.2f}σ < {margin:g}σ "
            f"(accuracy {100 * metrics['accuracy']:.0f} %)",
        )


class ClassificationTask(_BinaryTask):
    """Two-class classification of points played on the input channels, from an .npz file or
    generated; part of the cases is held out (stratified) as a validation task."""

    class Settings(BinarySettings):
        """Exactly one of `data` and `generate`, the hold-out split, and the accuracy target."""

        data: ConfigPath | None = Field(
            default=None,
            description="an .npz file with 'inputs' (n_cases × n_inputs) and the classes 0/1 "
            "in 'target', 'targets' or 'labels' (relative to the config file)",
        )
        generate: Generate | None = Field(default=None, description="generated data instead")
        validation: float = Field(
            default=0.25, ge=0, le=0.9, description="fraction of each class held out; 0: none"
        )
        split_seed: int = Field(default=0, ge=0, description="chooses the held-out cases")
        accuracy: float = Field(
            default=0.95, gt=0, le=1, description="target accuracy (on the validation cases)"
        )

        @model_validator(mode="after")
        def _one_source(self, info: ValidationInfo) -> ClassificationTask.Settings:
            given = (self.data is not None) + (self.generate is not None)
            if isinstance(info.context, dict) and info.context.get("in_memory", False):
                if given:
                    raise ValueError("from_arrays takes the data as arrays; drop `data`/`generate`")
            elif given != 1:
                what = "both were given" if given == 2 else "neither was given"
                raise ValueError(
                    f"give exactly one of `data` (an .npz file) and `generate` (e.g. "
                    f"{{shape: ring}}); {what}"
                )
            return self

    def __init__(self, settings: Settings) -> None:
        if settings.data is not None:
            inputs, labels = load_labelled(settings.data)
        else:
            assert settings.generate is not None  # the settings hold exactly one source
            inputs, labels = generate(settings.generate)
        self._setup(settings, inputs, labels)

    @classmethod
    def from_arrays(cls, inputs: Any, labels: Any, **settings: Any) -> ClassificationTask:
        """A task from in-memory points (n_cases × n_inputs) and labels (0/1); `settings` as in
        Settings, without `data` and `generate`."""
        s = cls.Settings.model_validate(settings, context={"in_memory": True})
        points = np.asarray(inputs, dtype=float)
        classes = check_labelled(points, np.asarray(labels, dtype=float), "from_arrays")
        task = cls.__new__(cls)
        task._setup(s, points, classes)
        return task

    def _setup(self, settings: Settings, inputs: FloatArray, labels: IntArray) -> None:
        """Split the cases: keep the training part, hold out the rest as the validation task."""
        scale = _Scale(settings.scale, settings.scale_noise)
        train, held = split(labels, settings.validation, settings.split_seed)
        validation = None
        if held.size:
            validation = ClassificationTask.__new__(ClassificationTask)
            validation._become(settings, inputs[held], labels[held], scale, "validation", None)
        self._become(settings, inputs[train], labels[train], scale, "training", validation)

    def _become(
        self,
        settings: Settings,
        inputs: FloatArray,
        labels: IntArray,
        scale: _Scale,
        part: str,
        validation: ClassificationTask | None,
    ) -> None:
        super().__init__(settings, inputs, labels, scale)
        self.settings, self._part, self._validation = settings, part, validation

    @property
    def validation(self) -> ClassificationTask | None:
        """The held-out cases (sharing this task's loss scale), or None if none are held out."""
        return self._validation

    def _decide(self, metrics: dict[str, float]) -> tuple[bool, float, str]:
        """Reached iff the accuracy meets the target; the score is the accuracy."""
        accuracy, target = metrics["accuracy"], self.settings.accuracy
        right = round(accuracy * self._labels.size)
        relation = "≥" if accuracy >= target else "<"
        return (
            accuracy >= target,
            accuracy,
            f"{self._part} accuracy {accuracy:.3g} ({right}/{self._labels.size}) "
            f"{relation} {target:g}",
        )
