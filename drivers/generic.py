"""Any PyMeasure instrument as a source-measure channel, named in the station file.

A lab's existing instrument works without new code: the settings name the PyMeasure class by
import path, the property that sets the level, the one that reads the measurement, how to switch
the output on and off, and the limits to write and read back at connect.
"""

from __future__ import annotations

import importlib
import math
from typing import Any

from pydantic import Field, model_validator

from drivers.instruments import InstrumentSettings, PyMeasureChannel, as_float
from hil.core import ConfigError, InstrumentError

Scalar = float | int | str | bool
Action = str | dict[str, Scalar]
OFF = (False, 0, "OFF", "off", 0.0)
"""What an `output_state` property reads when the output is off."""


def resolve_class(path: str) -> type[Any]:
    """The class at a dotted import path (`package.module.Class`)."""
    module_name, _, class_name = path.rpartition(".")
    if not module_name:
        raise ConfigError(f"class {path!r}: give a full import path, e.g. package.module.Class")
    try:
        found = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"class {path!r} cannot be imported: {exc}") from exc
    if not isinstance(found, type):
        raise ConfigError(f"class {path!r} is not a class")
    return found


class GenericSettings(InstrumentSettings):
    """A PyMeasure instrument used as a channel: which class, which properties, which limits.

    `enable`/`disable` are a method name (`enable_source`) or one property to assign
    (`{source_output: "ON"}`). `limits` are written in order at connect and read back.
    """

    class_path: str = Field(alias="class", description="e.g. pymeasure.instruments.x.Y")
    channel: str | None = Field(
        default=None, description="attribute path to a channel of the instrument, e.g. ChA"
    )
    set: str = Field(description="property that sets the level, e.g. source_voltage")
    read: str = Field(description="property that reads the measurement, e.g. current")
    enable: Action
    disable: Action
    output_state: str | None = Field(
        default=None, description="property that reads the output state (refuse a live output)"
    )
    limits: dict[str, Scalar] = Field(default_factory=dict)
    level_min: float
    level_max: float
    identify: str | None = Field(default="id", description="identity property; None: address")
    options: dict[str, Scalar] = Field(
        default_factory=dict, description="extra keyword arguments for the instrument class"
    )

    @model_validator(mode="after")
    def _ordered(self) -> GenericSettings:
        if not (math.isfinite(self.level_min) and math.isfinite(self.level_max)):
            raise ValueError("level_min and level_max must be finite")
        if not self.level_min < self.level_max:
            raise ValueError(f"level_min {self.level_min} must be below level_max {self.level_max}")
        for action in (self.enable, self.disable):
            if isinstance(action, dict) and len(action) != 1:
                raise ValueError(f"an output action assigns exactly one property, got {action}")
        return self


class GenericChannel(PyMeasureChannel):
    """A source-measure channel on any PyMeasure instrument class.

    PyMeasure's own validators may truncate silently; the level range here refuses first.
    """

    settings: GenericSettings

    def __init__(self, settings: GenericSettings, **kwargs: Any) -> None:
        super().__init__(settings, **kwargs)

    @property
    def level_range(self) -> tuple[float, float]:
        return (self.settings.level_min, self.settings.level_max)

    @property
    def _target(self) -> Any:
        target = self.instrument
        for part in (self.settings.channel or "").split("."):
            if part:
                target = getattr(target, part)
        return target

    def _open(self) -> Any:
        cls = resolve_class(self.settings.class_path)
        return cls(self.settings.address, **self.settings.adapter_kwargs(), **self.settings.options)

    def _query_identity(self) -> str:
        if self.settings.identify is None:
            return ""
        return str(getattr(self.instrument, self.settings.identify)).strip()

    def _configure(self) -> None:
        target, s = self._target, self.settings
        if s.output_state is not None:
            state = getattr(target, s.output_state)
            if state not in OFF:
                raise InstrumentError(
                    f"{self.who}: {s.output_state} reads {state!r} at connect; refusing to "
                    "reconfigure a live output (switch it off, then connect again)"
                )
        for key, value in s.limits.items():
            setattr(target, key, value)
        self.read_back()
        self._run(s.disable)
        self._enabled = False
        self._write_level(0.0)
        self.check_readback(s.set, 0.0, as_float(getattr(target, s.set)))
        self._level = 0.0

    def read_back(self, *, live: bool = False) -> None:
        """The `limits`, in the order connect writes them (its 0 V level is checked as connect
        writes it, after the output is switched off)."""
        target = self._target
        for key, value in self.settings.limits.items():
            self.check_readback(key, value, getattr(target, key))

    def report_source(self) -> tuple[float, bool]:
        """`output_state`, then the `set` property. Anything but an off state reads as on, and
        without an `output_state` property the output is taken as on: the safe state then
        ramps it down rather than trusting it is off."""
        target, s = self._target, self.settings
        on = s.output_state is None or getattr(target, s.output_state) not in OFF
        return as_float(getattr(target, s.set)), on

    def _write_level(self, volts: float) -> None:
        setattr(self._target, self.settings.set, volts)

    def _query_current(self) -> float:
        return as_float(getattr(self._target, self.settings.read))

    def _write_output(self, on: bool) -> None:
        self._run(self.settings.enable if on else self.settings.disable)

    def _run(self, action: Action) -> None:
        if isinstance(action, str):
            getattr(self._target, action)()
        else:
            ((key, value),) = action.items()
            setattr(self._target, key, value)
