"""Tasks: the data to play on a device and how to score what it answers."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field, model_validator

from hil.core import ConfigError, FloatArray
from hil.core.paths import DATA_LIMIT, ConfigPath, UnreadableFile, float_array, load_npz
from protocols.base import ChannelMapping

MAX_CASES = 100_000
"""Most input rows (cases) a task may have: every loss evaluation measures all of them."""

_FORMS = (
    "give either `inputs` (list of rows) and `targets` (list of numbers or of rows) inline, "
    "or `data` (path to an .npz file with arrays 'inputs' and 'targets')"
)


class RegressionTask:
    """Fit device outputs to targets; the loss is the mean squared error over all cases and outputs.

    The data come inline from the configuration or from an .npz file; targets are held as
    n_cases × n_outputs (a flat list of targets means one output).
    """

    class Settings(ChannelMapping):
        """Inline `inputs` + `targets`, or a `data` path to an .npz — exactly one of the two."""

        inputs: list[list[float]] | None = None
        targets: list[float] | list[list[float]] | None = None
        data: ConfigPath | None = Field(
            default=None,
            description="an .npz file with arrays 'inputs' and 'targets' (relative to the config "
            "file; at most 64 MiB, also uncompressed)",
        )

        @model_validator(mode="after")
        def _one_form(self) -> RegressionTask.Settings:
            inline = (self.inputs, self.targets)
            if self.data is not None:
                if any(v is not None for v in inline):
                    raise ValueError(f"both `data` and inline data were given; {_FORMS}")
                return self
            if any(v is None for v in inline):
                missing = "`targets`" if self.inputs is not None else "`inputs`"
                raise ValueError(f"{missing} is missing; {_FORMS}")
            for name, rows in (("inputs", self.inputs), ("targets", self.targets)):
                lengths = sorted({len(r) for r in rows or [] if isinstance(r, list)})
                if len(lengths) > 1:
                    raise ValueError(f"`{name}` rows have different lengths {lengths}")
            _check_data(np.asarray(self.inputs, float), _as_targets(self.targets), "settings")
            return self

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = s = settings if settings is not None else self.Settings()
        if s.data is not None:
            inputs, targets = _load_npz(s.data)
        else:
            inputs = np.asarray(s.inputs, dtype=float)
            targets = _as_targets(s.targets)
        _check_data(inputs, targets, str(s.data) if s.data is not None else "settings")
        self._inputs: FloatArray = inputs
        self._targets: FloatArray = targets
        self._inputs.setflags(write=False)
        self._targets.setflags(write=False)

    @classmethod
    def from_arrays(cls, inputs: Any, targets: Any) -> RegressionTask:
        """A task from in-memory arrays (inputs n_cases × n_inputs, targets n_cases [× n_out])."""
        settings = cls.Settings(
            inputs=np.asarray(inputs, dtype=float).tolist(),
            targets=np.asarray(targets, dtype=float).tolist(),
        )
        return cls(settings)

    @property
    def inputs(self) -> FloatArray:
        """n_cases × n_inputs data-input voltages (read-only)."""
        return self._inputs

    @property
    def n_outputs(self) -> int:
        return int(self._targets.shape[1])

    @property
    def mapping(self) -> ChannelMapping:
        return ChannelMapping.model_validate(
            self.settings.model_dump(include=set(ChannelMapping.model_fields))
        )

    @property
    def targets(self) -> FloatArray:
        """n_cases × n_outputs targets (read-only)."""
        return self._targets

    def loss(self, outputs: FloatArray) -> float:
        """Mean squared error over all cases and outputs."""
        return float(np.mean(self._residuals(outputs) ** 2))

    def output_gradient(self, outputs: FloatArray) -> FloatArray:
        """∂mse/∂outputs = 2(y − t)/(n_cases·n_outputs), n_cases × n_outputs."""
        residuals = self._residuals(outputs)
        gradient: FloatArray = 2.0 * residuals / residuals.size
        return gradient

    def metrics(self, outputs: FloatArray) -> dict[str, float]:
        """mse, rmse and r2 (R² pooled over all outputs)."""
        residuals = self._residuals(outputs)
        mse = float(np.mean(residuals**2))
        ss_res = float(np.sum(residuals**2))
        ss_tot = float(np.sum((self._targets - self._targets.mean(axis=0)) ** 2))
        # Constant targets leave R² undefined: report 1 for a perfect fit, else 0.
        r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else float(ss_res == 0)
        return {"mse": mse, "rmse": math.sqrt(mse), "r2": r2}

    def _residuals(self, outputs: FloatArray) -> FloatArray:
        out = np.asarray(outputs, dtype=float)
        if out.shape != self._targets.shape:
            raise ValueError(
                f"outputs have shape {out.shape}, but the task's targets are "
                f"{self._targets.shape} (n_cases × n_outputs)"
            )
        residuals: FloatArray = out - self._targets
        return residuals


def _as_targets(targets: Any) -> FloatArray:
    arr = np.asarray(targets, dtype=float)
    return arr[:, np.newaxis] if arr.ndim == 1 else arr


def _check_data(inputs: FloatArray, targets: FloatArray, source: str) -> None:
    if inputs.ndim != 2 or inputs.shape[0] == 0:
        raise ValueError(
            f"{source}: `inputs` must be a non-empty list of rows (n_cases × n_inputs), "
            f"got shape {inputs.shape}"
        )
    if targets.ndim != 2 or targets.shape[1] == 0:
        raise ValueError(
            f"{source}: `targets` must be n_cases numbers or n_cases non-empty rows, "
            f"got shape {targets.shape}"
        )
    if targets.shape[0] != inputs.shape[0]:
        raise ValueError(
            f"{source}: {inputs.shape[0]} input rows but {targets.shape[0]} targets; "
            "give one target (or target row) per input row"
        )
    if inputs.shape[0] > MAX_CASES:
        raise ValueError(
            f"{source}: {inputs.shape[0]} cases, more than {MAX_CASES}; use fewer cases"
        )
    for name, arr in (("inputs", inputs), ("targets", targets)):
        if not np.isfinite(arr).all():
            raise ValueError(f"{source}: `{name}` contains NaN or infinite values")


def _load_npz(path: Path) -> tuple[FloatArray, FloatArray]:
    try:
        arrays = load_npz(path, limit=DATA_LIMIT, what="task data file")
    except UnreadableFile as exc:
        exc.key = ("task", "data")
        raise
    missing = [k for k in ("inputs", "targets") if k not in arrays]
    if missing:
        raise ConfigError(
            f"task data file {str(path)!r} has no array(s) {missing}; it holds {sorted(arrays)}",
            key=("task", "data"),
        )
    try:
        inputs = float_array(arrays, "inputs", path, "task data file")
        targets = _as_targets(float_array(arrays, "targets", path, "task data file"))
        _check_data(inputs, targets, str(path))
    except ValueError as exc:
        raise ConfigError(str(exc), key=("task", "data")) from None
    return inputs, targets


def _one_empty_case() -> list[list[float]]:
    return [[]]


class MinimizeOutputTask:
    """The loss is the device's output itself (mean over cases): for test landscapes and for
    devices whose output is already a cost (a power, an error signal)."""

    class Settings(ChannelMapping):
        """The input rows to play (default: one case with no data inputs)."""

        inputs: list[list[float]] = Field(default_factory=_one_empty_case)
        outputs: int = Field(
            default=1, ge=1, le=10_000, description="how many device outputs are summed"
        )

        @model_validator(mode="after")
        def _rows(self) -> MinimizeOutputTask.Settings:
            lengths = sorted({len(r) for r in self.inputs})
            if not self.inputs or len(lengths) > 1:
                raise ValueError(f"`inputs` must be non-empty rows of one length, got {lengths}")
            return self

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = s = settings if settings is not None else self.Settings()
        self._inputs: FloatArray = np.array(s.inputs, dtype=float).reshape(len(s.inputs), -1)
        self._inputs.setflags(write=False)

    @property
    def inputs(self) -> FloatArray:
        return self._inputs

    @property
    def n_outputs(self) -> int:
        return self.settings.outputs

    @property
    def mapping(self) -> ChannelMapping:
        return ChannelMapping.model_validate(
            self.settings.model_dump(include=set(ChannelMapping.model_fields))
        )

    def loss(self, outputs: FloatArray) -> float:
        """Σ over outputs of the mean over cases."""
        return float(np.sum(np.mean(self._check(outputs), axis=0)))

    def output_gradient(self, outputs: FloatArray) -> FloatArray:
        out = self._check(outputs)
        gradient: FloatArray = np.full(out.shape, 1.0 / out.shape[0])
        return gradient

    def metrics(self, outputs: FloatArray) -> dict[str, float]:
        return {"loss": self.loss(outputs)}

    def _check(self, outputs: FloatArray) -> FloatArray:
        out = np.asarray(outputs, dtype=float)
        expected = (self._inputs.shape[0], self.settings.outputs)
        if out.shape != expected:
            raise ValueError(f"outputs have shape {out.shape}, expected {expected}")
        return out
