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

Homodyne in hardware (`dithers:` and `lockin:` in the station file): an AWG channel per dithered
control (`keysight33500`) is summed onto the electrode after its SMU (a summing amplifier or a
bias tee: the SMU holds the DC level, the AWG adds the sine at offset 0), and one lock-in
(`sr830` / `sr860`) reads the output node; the dithering AWG's Sync drives REF IN. A rig with a
lock-in is a `DitheredSMURig` (`drivers.rigs.dithered`, `hil.core.Demodulating`).

After an instrument fault the run engine calls `reconnect()` (`hil.core.Reconnecting`): each
SMU's session is dropped without a command, opened again, identified and read back, and the level
and output state it reports become the rig's own, so the guard's safe state ramps from there.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, model_validator

from drivers.awg import Keysight33500Channel, Keysight33500Settings
from drivers.generic import GenericChannel, GenericSettings
from drivers.instruments import InstrumentSettings, PyMeasureChannel
from drivers.keithley import (
    Keithley2400Channel,
    Keithley2400Settings,
    Keithley2600Channel,
    Keithley2600Settings,
)
from drivers.lockin import SR830LockIn, SR830Settings, SR860LockIn, SR860Settings
from drivers.rigs.base import (
    PlateauSettings,
    Rig,
    RigChannelBase,
    each,
    entry_settings,
    require_output,
    strict_file,
)
from hil.core import Channel, Clock, DeviceSpec, FloatArray, InstrumentError, Role, VirtualClock

log = logging.getLogger(__name__)

SMU_TYPES: dict[str, tuple[type[PyMeasureChannel], type[InstrumentSettings]]] = {
    "keithley2400": (Keithley2400Channel, Keithley2400Settings),
    "keithley2600": (Keithley2600Channel, Keithley2600Settings),
    "generic": (GenericChannel, GenericSettings),
}
"""Station-file `type:` of an SMU entry → its channel class and settings model."""

AWG_TYPES: dict[str, tuple[type[Keysight33500Channel], type[InstrumentSettings]]] = {
    "keysight33500": (Keysight33500Channel, Keysight33500Settings),
}
"""`type:` of an AWG entry (one output channel) that dithers a control."""

LOCKIN_TYPES: dict[str, tuple[type[SR830LockIn | SR860LockIn], type[InstrumentSettings]]] = {
    "sr830": (SR830LockIn, SR830Settings),
    "sr860": (SR860LockIn, SR860Settings),
}
"""`type:` of the lock-in entry that reads an output."""

ALL_TYPES: dict[str, tuple[type[Any], type[InstrumentSettings]]] = {**SMU_TYPES, **AWG_TYPES}
ALL_TYPES.update(LOCKIN_TYPES)


class RigChannel(RigChannelBase):
    """One electrode of the substrate and the SMU that holds or reads it (levels in V; an
    output's `unit` is after `scale`)."""

    instrument: str = Field(min_length=1, description="the SMU entry under `instruments`")
    scale: float = Field(
        default=1.0, description="outputs: amperes per unit of the channel (1e-9 for nA)"
    )

    @model_validator(mode="after")
    def _consistent(self) -> RigChannel:
        if self.driven:
            self.check_range()
        elif self.scale == 0 or not math.isfinite(self.scale):
            raise ValueError(f"scale {self.scale!r} must be finite and non-zero")
        return self


class LockinWiring(BaseModel):
    """Which output the lock-in reads, and in what units."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    instrument: str = Field(min_length=1, description="the lock-in entry under `instruments`")
    output: str = Field(min_length=1, description="the output channel it reads")
    scale: float | None = Field(
        default=None,
        description="lock-in units (A rms on a current input, V rms on a voltage input) per "
        "unit of the output; default: the output channel's scale",
    )


@dataclass(frozen=True)
class Wire:
    """One instrument terminal wired to one channel: what a virtual station needs to serve it."""

    instrument: str
    kind: str  # the entry's `type:`
    channel: str
    role: Role
    scale: float  # amperes per unit of the channel (outputs)


class SMURig(Rig):
    """A `hil.core.Device` composed from source-measure channels (one per electrode), and
    `hil.core.Reconnecting`."""

    class Settings(PlateauSettings):
        """The station file's `device:` block of an SMU rig."""

        name: str = Field(default="smu-rig", min_length=1)
        instruments: dict[str, dict[str, Any]] = Field(
            description="name → {type: keithley2400 | keithley2600 | generic, …its settings}"
        )
        channels: dict[str, RigChannel] = Field(description="electrode name → role, SMU, range")
        dithers: dict[str, str] = Field(
            default_factory=dict, description="control → the AWG entry summed onto it"
        )
        lockin: LockinWiring | None = Field(default=None, description="the lock-in on an output")
        ramp_time: float = Field(
            default=0.0, ge=0, le=60, description="s of stepped ramp between input plateaus"
        )
        ramp_steps: int = Field(default=10, ge=1, le=1000, description="steps of that ramp")
        readings: int = Field(default=1, ge=1, le=10_000, description="averaged per plateau")

        @model_validator(mode="after")
        def _wired(self, info: ValidationInfo) -> SMURig.Settings:
            for name in self.instruments:
                self.instrument_settings(name, strict=strict_file(info))
            used = [c.instrument for c in self.channels.values()]
            for name, chan in self.channels.items():
                if chan.instrument not in self.instruments:
                    raise ValueError(
                        f"channels.{name}.instrument: {chan.instrument!r} is not under "
                        f"instruments (there: {sorted(self.instruments)})"
                    )
                self._of_type(f"channels.{name}.instrument", chan.instrument, SMU_TYPES)
                if used.count(chan.instrument) > 1:
                    raise ValueError(
                        f"channels.{name}.instrument: {chan.instrument!r} is wired to "
                        "more than one channel; one SMU channel holds one electrode"
                    )
                if chan.role is not Role.OUTPUT:
                    self._within_instrument(name, chan)
            used += self._dither_wiring()
            unused = sorted(set(self.instruments) - set(used))
            if unused:
                raise ValueError(f"instruments {unused} are wired to no channel")
            require_output(self.channels)
            return self

        def _dither_wiring(self) -> list[str]:
            """The AWG and lock-in entries, each checked against what it is wired to."""
            if bool(self.dithers) != (self.lockin is not None):
                raise ValueError("dithers and lockin: give both (homodyne in hardware) or neither")
            awgs = list(self.dithers.values())
            for control, awg in self.dithers.items():
                chan = self.channels.get(control)
                if chan is None or chan.role is not Role.CONTROL:
                    raise ValueError(f"dithers.{control}: not a control channel of the rig")
                self._of_type(f"dithers.{control}", awg, AWG_TYPES)
                if awgs.count(awg) > 1:
                    raise ValueError(f"dithers.{control}: {awg!r} dithers more than one control")
            if self.lockin is None:
                return awgs
            li = self.lockin
            self._of_type("lockin.instrument", li.instrument, LOCKIN_TYPES)
            out = self.channels.get(li.output)
            if out is None or out.role is not Role.OUTPUT:
                raise ValueError(f"lockin.output: {li.output!r} is not an output channel")
            if li.scale is not None and (li.scale == 0 or not math.isfinite(li.scale)):
                raise ValueError(f"lockin.scale {li.scale!r} must be finite and non-zero")
            return [*awgs, li.instrument]

        def _of_type(self, key: str, name: str, types: Mapping[str, Any]) -> None:
            kind = self.instruments.get(name, {}).get("type")
            if name not in self.instruments or kind not in types:
                raise ValueError(
                    f"{key}: {name!r} must be an entry under instruments of type "
                    f"{' | '.join(sorted(types))}"
                )

        def lockin_scale(self) -> float:
            """Lock-in units per unit of the output it reads."""
            assert self.lockin is not None
            if self.lockin.scale is not None:
                return self.lockin.scale
            return self.channels[self.lockin.output].scale

        def instrument_settings(self, name: str, *, strict: bool = False) -> InstrumentSettings:
            """The validated settings of one entry (ValueError naming the entry)."""
            models = {kind: model for kind, (_, model) in ALL_TYPES.items()}
            return entry_settings(name, self.instruments[name], models, strict=strict)

        def wiring(self) -> list[Wire]:
            """Every instrument terminal and the channel it is wired to (SMUs, AWGs, lock-in)."""

            def kind(name: str) -> str:
                return str(self.instruments[name]["type"])

            wires = [Wire(c.instrument, kind(c.instrument), n, c.role, c.scale)
                     for n, c in self.channels.items()]  # fmt: skip
            wires += [Wire(a, kind(a), n, Role.CONTROL, 1.0) for n, a in self.dithers.items()]
            if self.lockin is not None:
                li = self.lockin
                wires.append(
                    Wire(li.instrument, kind(li.instrument), li.output, Role.OUTPUT,
                         self.lockin_scale())
                )  # fmt: skip
            return wires

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

    def __new__(cls, settings: SMURig.Settings, **kwargs: Any) -> SMURig:
        """A rig with a lock-in is a `DitheredSMURig` (of `cls`, so subclasses keep theirs)."""
        if settings.lockin is not None:
            from drivers.rigs.dithered import with_lockin  # it builds on this module

            cls = with_lockin(cls)
        return super().__new__(cls)

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
        self._clock = clock = settings.make_clock(clock)
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
    def set_controls(self, values: FloatArray) -> None:
        """Set every control's DC level (checked whole before anything is sent)."""
        v = self._checked(values, self._controls, "set_controls")
        self._outputs_on()
        written = [n for n, level in zip(self._controls, v, strict=True) if self._set(n, level)]
        self._sync(written)

    def measure(self, inputs: FloatArray) -> FloatArray:
        """One plateau per input row: ramp and set the inputs, settle, average the readings."""
        x = self._checked_rows(inputs, self._inputs)
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
        if not self._open:
            return  # closed: each SMU was made safe and released
        each("safe state", self._smus, _confirmed_safe)

    def close(self) -> None:
        """Safe state (confirmed) and release every SMU; each is tried."""
        self._open = False

        def close(smu: PyMeasureChannel) -> None:
            if smu.instrument is None:
                log.warning("%s: not connected at close (a reconnect failed)", smu.who)
                return
            try:
                _confirmed_safe(smu)
            finally:
                smu.close()

        each("close", self._smus, close)

    # -- hil.core.Reconnecting -----------------------------------------------------------------
    def reconnect(self) -> None:
        """After an instrument fault: each SMU's session dropped without a command, opened
        again, identified and read back; the level and output state each reports become the
        rig's own (nothing is configured or switched: the output may be live). Every SMU is
        tried; the first failure (an `InstrumentError` naming the SMU) is raised."""
        if not self._open:
            raise RuntimeError(f"rig {self._spec.name!r} is closed")
        each("reconnect", self._smus, PyMeasureChannel.reattach)

    # -- helpers ---------------------------------------------------------------------------------
    def _build_spec(self) -> DeviceSpec:
        s = self.settings
        channels = [
            Channel(name=n, role=c.role, unit=c.unit)
            if c.role is Role.OUTPUT
            else Channel(name=n, role=c.role, min=c.min, max=c.max, unit="V", max_slew=c.max_slew)
            for n, c in s.channels.items()
        ]
        self._scales = np.array([c.scale for c in s.channels.values() if c.role is Role.OUTPUT])
        return DeviceSpec(
            name=s.name,
            channels=tuple(channels),
            settle_time=s.settle_time,
            ramp_time=s.ramp_time,
            plateau_samples=s.readings,
            sample_rate=1.0 / s.reading_time,
            output_gain=s.output_gain,
        )

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

    def _wait_readings(self) -> None:
        """Device time of the readings: on a wall clock they took it already."""
        if isinstance(self._clock, VirtualClock):
            self._clock.advance(self.settings.readings * self.settings.reading_time)


def _confirmed_safe(smu: PyMeasureChannel) -> None:
    if smu.instrument is None:  # a reconnect failed: nothing is known of its output
        raise InstrumentError(f"{smu.who}: not connected, so it cannot be made safe")
    smu.go_safe()
    smu.sync()
