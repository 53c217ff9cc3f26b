"""A substrate on source-measure units: one SMU channel per electrode, declared in the station.

Every driven electrode (data input or trainable control) is held by an SMU that sources its
voltage; every measured node sits on an SMU at 0 V (a virtual ground) that reads the current
flowing out of the substrate, e.g. a DNPU's output. `measure` is one DC plateau per input row:
set the inputs, wait `settle_time`, take `readings` current readings of every output and average
them. The spec's `plateau_samples` / `sample_rate` describe those readings, so a plateau's device
time is `ramp_time + settle_time + readings × reading_time`.

Safety here is the instrument layer's (DESIGN.md, layer 1): each SMU refuses a level outside
its source range, and the rig refuses a request outside a channel's declared range before
anything is sent; the experiment guard in front of the rig checks the limits and transitions.
`safe_state()` ramps every SMU to 0 V within its slew and switches its output off; the outputs
come back on at 0 V with the next request.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from drivers.generic import GenericChannel, GenericSettings
from drivers.instruments import InstrumentSettings, PyMeasureChannel
from drivers.keithley import (
    Keithley2400Channel,
    Keithley2400Settings,
    Keithley2600Channel,
    Keithley2600Settings,
)
from hil.core import (
    Channel,
    Clock,
    DeviceBase,
    DeviceSpec,
    FloatArray,
    Role,
    SafetyViolation,
    VirtualClock,
    WallClock,
)

log = logging.getLogger(__name__)

SMU_TYPES: dict[str, tuple[type[PyMeasureChannel], type[InstrumentSettings]]] = {
    "keithley2400": (Keithley2400Channel, Keithley2400Settings),
    "keithley2600": (Keithley2600Channel, Keithley2600Settings),
    "generic": (GenericChannel, GenericSettings),
}
"""Station-file `type:` of an SMU entry → its channel class and settings model."""


class RigChannel(BaseModel):
    """One electrode of the substrate and the SMU that holds or reads it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    role: Literal["input", "control", "output"]
    instrument: str = Field(min_length=1, description="the SMU entry under `instruments`")
    min: float = Field(default=0.0, description="lowest level, V (driven channels)")
    max: float = Field(default=0.0, description="highest level, V (driven channels)")
    max_slew: float = Field(default=math.inf, gt=0, description="V/s (driven channels)")
    unit: str = Field(default="V", description="the channel's unit (outputs: after `scale`)")
    scale: float = Field(
        default=1.0, description="outputs: amperes per unit of the channel (1e-9 for nA)"
    )

    @property
    def kind(self) -> Role:
        return Role(self.role)

    @model_validator(mode="after")
    def _consistent(self) -> RigChannel:
        if self.kind is Role.OUTPUT:
            if self.scale == 0 or not math.isfinite(self.scale):
                raise ValueError(f"scale {self.scale!r} must be finite and non-zero")
        elif not self.min <= 0.0 <= self.max or self.min == self.max:
            raise ValueError(
                f"range [{self.min:g}, {self.max:g}] V must contain 0 V and not be empty"
            )
        return self


@dataclass(frozen=True)
class Wire:
    """One instrument terminal wired to one channel: what a virtual station needs to serve it."""

    instrument: str
    kind: str  # the entry's `type:`
    channel: str
    role: Role
    scale: float  # amperes per unit of the channel (outputs)


class SMURig(DeviceBase):
    """A `hil.core.Device` composed from source-measure channels (one per electrode)."""

    class Settings(BaseModel):
        """The station file's `device:` block of an SMU rig."""

        model_config = ConfigDict(extra="forbid", frozen=True)

        name: str = Field(default="smu-rig", min_length=1)
        instruments: dict[str, dict[str, Any]] = Field(
            description="name → {type: keithley2400 | keithley2600 | generic, …its settings}"
        )
        channels: dict[str, RigChannel] = Field(description="electrode name → role, SMU, range")
        settle_time: float = Field(default=0.01, ge=0, le=60, description="s after a change")
        ramp_time: float = Field(
            default=0.0, ge=0, le=60, description="s of stepped ramp between input plateaus"
        )
        ramp_steps: int = Field(default=10, ge=1, le=1000, description="steps of that ramp")
        readings: int = Field(default=1, ge=1, le=10_000, description="averaged per plateau")
        reading_time: float = Field(
            default=0.02, gt=0, le=60, description="s per reading (e.g. 1 NPLC at 50 Hz)"
        )
        output_gain: float = Field(default=1.0, description="what protocols see as gain")
        clock: Literal["wall", "virtual"] = Field(
            default="wall",
            description="wall: waits sleep; virtual: waits advance a virtual clock "
            "(virtual instruments only: nothing physical settles)",
        )

        @model_validator(mode="after")
        def _wired(self) -> SMURig.Settings:
            for name in self.instruments:
                self.instrument_settings(name)
            used = [c.instrument for c in self.channels.values()]
            for name, chan in self.channels.items():
                if chan.instrument not in self.instruments:
                    raise ValueError(
                        f"channels.{name}.instrument: {chan.instrument!r} is not under "
                        f"instruments (there: {sorted(self.instruments)})"
                    )
                if used.count(chan.instrument) > 1:
                    raise ValueError(
                        f"channels.{name}.instrument: {chan.instrument!r} is wired to "
                        "more than one channel; one SMU channel holds one electrode"
                    )
                if chan.kind is not Role.OUTPUT:
                    self._within_instrument(name, chan)
            unused = sorted(set(self.instruments) - set(used))
            if unused:
                raise ValueError(f"instruments {unused} are wired to no channel")
            if not any(c.kind is Role.OUTPUT for c in self.channels.values()):
                raise ValueError("channels: at least one output is needed")
            return self

        def instrument_settings(self, name: str) -> InstrumentSettings:
            """The validated settings of one SMU entry (ValueError naming the entry)."""
            entry = dict(self.instruments[name])
            kind = entry.pop("type", None)
            if kind not in SMU_TYPES:
                raise ValueError(
                    f"instruments.{name}.type: {kind!r} is not one of {sorted(SMU_TYPES)}"
                )
            model = SMU_TYPES[kind][1]
            try:
                return model.model_validate({"name": name, **entry})
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(p) for p in first["loc"])
                raise ValueError(f"instruments.{name}.{where}: {first['msg']}") from None

        def wiring(self) -> list[Wire]:
            """Every instrument terminal and the channel it is wired to."""
            return [
                Wire(c.instrument, str(self.instruments[c.instrument]["type"]), n, c.kind, c.scale)
                for n, c in self.channels.items()
            ]

        def _within_instrument(self, name: str, chan: RigChannel) -> None:
            settings = self.instrument_settings(chan.instrument)
            top = getattr(settings, "source_range", None)
            if isinstance(settings, GenericSettings):
                low, high = settings.level_min, settings.level_max
            elif isinstance(top, float):
                low, high = -top, top
            else:
                return
            if chan.min < low or chan.max > high:
                raise ValueError(
                    f"channels.{name}: range [{chan.min:g}, {chan.max:g}] V is beyond the "
                    f"instrument range [{low:g}, {high:g}] V of {chan.instrument!r}"
                )

    def __init__(
        self,
        settings: SMURig.Settings,
        *,
        clock: Clock | None = None,
        instruments: Mapping[str, Any] | None = None,
    ) -> None:
        """Connect every SMU (or adopt the open PyMeasure `instruments` given by entry name).

        A refused or failed connect leaves every SMU connected so far safe and released.
        """
        self.settings = settings
        if clock is None:
            clock = VirtualClock() if settings.clock == "virtual" else WallClock()
        self._clock = clock
        self._spec = self._build_spec()
        self._smus: dict[str, PyMeasureChannel] = {}
        adopted = dict(instruments or {})
        try:
            for name, chan in settings.channels.items():
                cls, _ = SMU_TYPES[str(settings.instruments[chan.instrument]["type"])]
                smu = cls(settings.instrument_settings(chan.instrument), clock=clock)
                smu.connect(adopted.get(chan.instrument))
                self._smus[name] = smu
        except BaseException:
            self.close()
            raise
        self._inputs = [c.name for c in self._spec.inputs]
        self._controls = [c.name for c in self._spec.controls]
        self._outputs = [c.name for c in self._spec.outputs]
        self._open = True

    # -- the Device interface ------------------------------------------------------------------
    @property
    def spec(self) -> DeviceSpec:
        return self._spec

    @property
    def clock(self) -> Clock:
        return self._clock

    def set_controls(self, values: FloatArray) -> None:
        """Set every control's DC level (checked whole before anything is sent)."""
        v = self._checked(values, self._controls, "set_controls")
        self._outputs_on()
        written = [n for n, level in zip(self._controls, v, strict=True) if self._set(n, level)]
        self._sync(written)

    def measure(self, inputs: FloatArray) -> FloatArray:
        """One plateau per input row: ramp and set the inputs, settle, average the readings."""
        x = np.array(inputs, dtype=float)
        if x.ndim != 2 or x.shape[0] < 1:
            n = len(self._inputs)
            raise ValueError(f"measure: expected shape (n_cases, {n}), got {x.shape}")
        for row in x:
            self._checked(row, self._inputs, "measure")
        self._outputs_on()
        out = np.empty((x.shape[0], len(self._outputs)))
        s = self.settings
        for i, row in enumerate(x):
            self._ramp_inputs(row)
            self._wait(s.settle_time)
            total = np.zeros(len(self._outputs))
            for _ in range(s.readings):
                total += [self._smus[n].read() for n in self._outputs]
            self._wait_readings()
            out[i] = total / s.readings / self._scales
        return out

    def applied_levels(self, values: FloatArray, channels: Sequence[str]) -> FloatArray:
        """The levels the SMUs receive after their command's number format."""
        v = np.array(values, dtype=float)
        result = v.copy()
        for j, name in enumerate(channels):
            sent = self._smus[name].sent_level
            result[..., j] = [sent(float(level)) for level in np.ravel(v[..., j])]
        return result

    def safe_state(self) -> None:
        """Ramp every SMU to 0 V within its slew, switch it off, and wait until each confirms
        (writes return when sent); every SMU is tried, the first failure is raised."""
        self._each("safe state", _confirmed_safe)

    def close(self) -> None:
        """Safe state (confirmed) and release every SMU; each is tried."""
        self._open = False

        def close(smu: PyMeasureChannel) -> None:
            try:
                _confirmed_safe(smu)
            finally:
                smu.close()

        self._each("close", close)

    # -- helpers ---------------------------------------------------------------------------------
    def _build_spec(self) -> DeviceSpec:
        s = self.settings
        channels = [
            Channel(name=n, role=c.kind, unit=c.unit)
            if c.kind is Role.OUTPUT
            else Channel(name=n, role=c.kind, min=c.min, max=c.max, unit="V", max_slew=c.max_slew)
            for n, c in s.channels.items()
        ]
        self._scales = np.array([c.scale for c in s.channels.values() if c.kind is Role.OUTPUT])
        return DeviceSpec(
            name=s.name,
            channels=tuple(channels),
            settle_time=s.settle_time,
            ramp_time=s.ramp_time,
            plateau_samples=s.readings,
            sample_rate=1.0 / s.reading_time,
            output_gain=s.output_gain,
        )

    def _checked(self, values: FloatArray, names: list[str], what: str) -> FloatArray:
        """Shape, finiteness and channel ranges, before anything is sent."""
        v = np.array(values, dtype=float)
        if v.shape != (len(names),):
            raise ValueError(f"{what}: expected shape ({len(names)},), got {v.shape}")
        for name, level in zip(names, v, strict=True):
            chan = self._spec.channel(name)
            if not (math.isfinite(level) and chan.min <= level <= chan.max):
                raise SafetyViolation(
                    name, float(level), f"the rig's range [{chan.min:g}, {chan.max:g}] V", what
                )
        return v

    def _outputs_on(self) -> None:
        """After a safe state: each SMU back on, at the 0 V it was left at."""
        if not self._open:
            raise RuntimeError(f"rig {self._spec.name!r} is closed")
        for smu in self._smus.values():
            if not smu.enabled:
                smu.set_level(0.0)
                smu.enable()
                smu.sync()

    def _set(self, name: str, level: float) -> bool:
        """Send a level that differs from the one held; whether anything was sent."""
        smu = self._smus[name]
        if smu.sent_level(float(level)) == smu.level:
            return False
        smu.set_level(float(level))
        return True

    def _sync(self, names: Sequence[str]) -> None:
        """Wait until every SMU written to has applied its level (writes return when sent)."""
        for name in dict.fromkeys(names):
            self._smus[name].sync()

    def _ramp_inputs(self, row: FloatArray) -> None:
        """Move the inputs to `row`: in `ramp_steps` equal steps over `ramp_time`, or at once."""
        s = self.settings
        start = np.array([self._smus[n].level for n in self._inputs])
        steps = s.ramp_steps if s.ramp_time > 0 and not np.array_equal(start, row) else 1
        for k in range(1, steps + 1):
            levels = start + (row - start) * k / steps
            written = [n for n, v in zip(self._inputs, levels, strict=True) if self._set(n, v)]
            self._sync(written)
            if s.ramp_time > 0:
                self._wait(s.ramp_time / steps)

    def _wait(self, seconds: float) -> None:
        if seconds > 0:
            self._clock.advance(seconds)

    def _wait_readings(self) -> None:
        """Device time of the readings: on a wall clock they took it already."""
        if isinstance(self._clock, VirtualClock):
            self._clock.advance(self.settings.readings * self.settings.reading_time)

    def _each(self, action: str, fn: Callable[[PyMeasureChannel], None]) -> None:
        first: BaseException | None = None
        for name, smu in self._smus.items():
            try:
                fn(smu)
            except BaseException as exc:
                log.error("%s of SMU %r failed: %s", action, name, exc)
                first = first or exc
        if first is not None:
            raise first


def _confirmed_safe(smu: PyMeasureChannel) -> None:
    if smu.instrument is None:
        return
    smu.go_safe()
    smu.sync()
