"""One output channel of a Keysight (Agilent) 33500-series waveform generator, as a sine source.

The AWG adds the small homodyne dither to a control electrode and drives the lock-in's
reference through its Sync output. Every value is checked against the instrument range and the
station's `max_voltage` (|offset| + amplitude/2) before it is sent, and read back after it is
written; a mismatch raises `InstrumentError` (at connect: refuses to start). `go_safe()` brings
the amplitude to the minimum and the offset to 0, then switches the output off.

Amplitudes and offsets are the values the 33500 displays for the configured `load`: with
`load: high_z` they are the open-circuit voltages a high-impedance electrode sees; with
`load: 50` a high-impedance electrode sees twice them. Set `load` to match the wiring.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from drivers.instruments import (
    InstrumentSettings,
    PyMeasureSession,
    as_float,
    ramp_levels,
    readback_matches,
)
from hil.core import Clock, InstrumentError, SafetyViolation

HIGH_Z = 9.9e37
"""What `OUTP:LOAD?` answers for INFinity (high impedance)."""


def sent(value: float) -> float:
    """The value the instrument receives: PyMeasure formats frequency, amplitude and offset
    with `%f` (six decimals), so the checks and the state use that, not the request."""
    return float(f"{value:f}") if math.isfinite(value) else value


class Keysight33500Settings(InstrumentSettings):
    """A 33500 channel producing a sine (ramp keys are unused)."""

    channel: Literal[1, 2] = 1
    load: Literal["high_z", "50"] = Field(default="high_z", description="expected load")
    frequency: float = Field(gt=0, description="sine frequency at connect, Hz")
    amplitude: float | None = Field(
        default=None, gt=0, description="Vpp at connect; None: the minimum"
    )
    offset: float = Field(default=0.0, description="V at connect")
    max_voltage: float = Field(gt=0, description="station ceiling on |offset| + amplitude/2, V")
    max_frequency: float = Field(
        default=20e6, gt=0, le=30e6, description="sine limit of the model (20 or 30 MHz), Hz"
    )
    sync: bool = Field(default=True, description="drive the rear Sync output from this channel")
    two_channel: bool = Field(
        default=True, description="false for one-channel models (no OUTP:SYNC:SOURce)"
    )

    min_frequency: ClassVar[float] = 1e-6
    # Amplitude range and |offset| + amplitude/2 limit per load (33500B data sheet).
    amplitude_range: ClassVar[dict[str, tuple[float, float]]] = {
        "high_z": (2e-3, 20.0),
        "50": (1e-3, 10.0),
    }
    peak_limit: ClassVar[dict[str, float]] = {"high_z": 10.0, "50": 5.0}

    @property
    def min_amplitude(self) -> float:
        return self.amplitude_range[self.load][0]

    @model_validator(mode="after")
    def _within_instrument(self) -> Keysight33500Settings:
        top = self.peak_limit[self.load]
        if self.max_voltage > top:
            raise ValueError(
                f"max_voltage {self.max_voltage:g} V exceeds the instrument's {top:g} V "
                f"into load {self.load}"
            )
        low, high = self.amplitude_range[self.load]
        amplitude = self.min_amplitude if self.amplitude is None else self.amplitude
        if not low <= amplitude <= high:
            raise ValueError(f"amplitude {amplitude:g} Vpp outside [{low:g}, {high:g}] Vpp")
        if abs(self.offset) + amplitude / 2 > self.max_voltage:
            raise ValueError(
                f"|offset| + amplitude/2 = {abs(self.offset) + amplitude / 2:g} V exceeds "
                f"max_voltage {self.max_voltage:g} V"
            )
        if self.channel == 2 and not self.two_channel:
            raise ValueError("channel 2 needs a two-channel model (two_channel: true)")
        if not self.min_frequency <= self.frequency <= self.max_frequency:
            raise ValueError(
                f"frequency {self.frequency:g} Hz outside [{self.min_frequency:g}, "
                f"{self.max_frequency:g}] Hz"
            )
        return self


class Keysight33500Channel(PyMeasureSession):
    """One channel of a 33500 as a sine source, through PyMeasure's `Agilent33500`.

    PyMeasure's amplitude and offset validators assume a 50 Ω load (10 mVpp…10 Vpp, ±4.995 V);
    they are widened per instance to the instrument's range for the configured load, since the
    checks here (instrument range and station ceiling) come first. The Sync output has no
    PyMeasure property: `OUTP:SYNC:SOUR CH<n>` and `OUTP:SYNC 1|0` are written raw.
    """

    settings: Keysight33500Settings

    def __init__(self, settings: Keysight33500Settings, clock: Clock | None = None) -> None:
        super().__init__(settings, clock)
        self._frequency = settings.frequency
        self._amplitude = settings.min_amplitude
        self._offset = 0.0
        self._enabled = False

    # -- state ------------------------------------------------------------------------------------
    @property
    def frequency(self) -> float:
        return self._frequency

    @property
    def amplitude(self) -> float:
        """Vpp last set."""
        return self._amplitude

    @property
    def offset(self) -> float:
        return self._offset

    @property
    def enabled(self) -> bool:
        return self._enabled

    @property
    def _ch(self) -> Any:
        return self.instrument.ch_1 if self.settings.channel == 1 else self.instrument.ch_2

    # -- connect ----------------------------------------------------------------------------------
    def _open(self) -> Any:
        from pymeasure.instruments.agilent import Agilent33500

        return Agilent33500(self.settings.address, **self.settings.adapter_kwargs())

    def _configure(self) -> None:
        s, ch = self.settings, self._ch
        amplitude = s.min_amplitude if s.amplitude is None else s.amplitude
        self.check_sine(s.frequency, amplitude, s.offset)
        if ch.output is not False:  # OUTP<n>? → 0
            raise InstrumentError(
                f"{self.who}: the output is on at connect; refusing to reconfigure a live output "
                "(switch it off, then connect again)"
            )
        self._widen_validators()
        ch.shape = "SIN"
        ch.amplitude_unit = "VPP"
        ch.output_load = "INF" if s.load == "high_z" else "50"
        ch.frequency = s.frequency
        ch.amplitude = amplitude
        ch.offset = s.offset
        if s.sync and s.two_channel:
            self.instrument.write(f"OUTP:SYNC:SOUR CH{s.channel}")
        self.instrument.write(f"OUTP:SYNC {int(s.sync)}")
        self.read_back()
        errors = self.instrument.check_errors()
        if errors:
            raise InstrumentError(
                f"{self.who}: the instrument reported errors while configuring: {errors}; "
                "refusing to start"
            )
        self._frequency, self._amplitude, self._offset = s.frequency, amplitude, s.offset
        self._enabled = False

    def read_back(self, *, live: bool = False) -> None:
        """The sine setup connect wrote, after giving the PyMeasure object the station's ranges
        as its validators (no command; a re-attach opens a new object). Unless `live`, also the
        frequency, amplitude, offset and Sync source of the connect-time sine; a live AWG may
        run another sine (its safe state switches it off at the minimum amplitude either way).
        """
        s, ch = self.settings, self._ch
        self._widen_validators()
        self.check_readback("function", "SIN", str(ch.shape).strip())
        self.check_readback("amplitude unit", "VPP", str(ch.amplitude_unit).strip())
        load = as_float(ch.output_load)
        self.check_readback("load", HIGH_Z if s.load == "high_z" else 50.0, load)
        if not live:
            self.check_readback("frequency", s.frequency, ch.frequency)
            amplitude = s.min_amplitude if s.amplitude is None else s.amplitude
            self.check_readback("amplitude", amplitude, ch.amplitude)
            self.check_readback("offset", s.offset, ch.offset)
            if s.sync and s.two_channel:
                sync_source = self.instrument.ask("OUTP:SYNC:SOUR?").strip()
                self.check_readback("sync source", f"CH{s.channel}", sync_source)
        self.check_readback("sync", float(s.sync), self.instrument.ask("OUTP:SYNC?"))

    def _widen_validators(self) -> None:
        """PyMeasure's validators set to the instrument's range for the configured load."""
        s, ch = self.settings, self._ch
        ch.amplitude_values = list(s.amplitude_range[s.load])
        ch.offset_values = [-s.peak_limit[s.load], s.peak_limit[s.load]]
        ch.frequency_values = [s.min_frequency, s.max_frequency]

    # -- checks -----------------------------------------------------------------------------------
    def check_sine(self, frequency: float, amplitude: float, offset: float) -> None:
        """Refuse a sine outside the instrument range or the station ceiling, before sending:
        both as asked and as it will be sent (`%f`)."""
        self._check_sine(frequency, amplitude, offset)
        self._check_sine(sent(frequency), sent(amplitude), sent(offset))

    def _check_sine(self, frequency: float, amplitude: float, offset: float) -> None:
        s = self.settings
        if not (math.isfinite(frequency) and s.min_frequency <= frequency <= s.max_frequency):
            limit = f"the sine range [{s.min_frequency:g}, {s.max_frequency:g}] Hz of {self.who}"
            raise SafetyViolation(self.name, frequency, limit)
        low, high = s.amplitude_range[s.load]
        if not (math.isfinite(amplitude) and low <= amplitude <= high):
            limit = f"the amplitude range [{low:g}, {high:g}] Vpp of {self.who} (load {s.load})"
            raise SafetyViolation(self.name, amplitude, limit)
        peak = abs(offset) + amplitude / 2
        if not (math.isfinite(offset) and peak <= s.max_voltage * (1 + 1e-12)):
            raise SafetyViolation(
                self.name,
                peak,
                f"max_voltage {s.max_voltage:g} V on |offset| + amplitude/2 of {self.who}",
                "lower the offset or the amplitude",
            )

    # -- operations -------------------------------------------------------------------------------
    def set_frequency(self, hz: float) -> None:
        self.check_sine(hz, self._amplitude, self._offset)
        self._call("set frequency", lambda: setattr(self._ch, "frequency", hz))
        self._frequency = sent(hz)
        self._verify("frequency", self._frequency, lambda: self._ch.frequency)

    def set_amplitude(self, vpp: float) -> None:
        self.check_sine(self._frequency, vpp, self._offset)
        self._call("set amplitude", lambda: setattr(self._ch, "amplitude", vpp))
        self._amplitude = sent(vpp)
        self._verify("amplitude", self._amplitude, lambda: self._ch.amplitude)

    def set_offset(self, volts: float) -> None:
        self.check_sine(self._frequency, self._amplitude, volts)
        self._call("set offset", lambda: setattr(self._ch, "offset", volts))
        self._offset = sent(volts)
        self._verify("offset", self._offset, lambda: self._ch.offset)

    def set_sine(self, frequency: float, amplitude: float, offset: float) -> None:
        """Change what differs of the three; amplitude and offset in the order that keeps every
        intermediate state within the ceiling (a shrinking amplitude first, a growing one last)."""
        self.check_sine(frequency, amplitude, offset)
        if sent(frequency) != self._frequency:
            self.set_frequency(frequency)
        steps: list[tuple[Callable[[float], None], float, float]] = [
            (self.set_amplitude, amplitude, self._amplitude),
            (self.set_offset, offset, self._offset),
        ]
        if amplitude > self._amplitude:
            steps.reverse()
        for setter, value, current in steps:
            if sent(value) != current:
                setter(value)

    def enable(self) -> None:
        """Output on, read back (which also waits until the instrument has carried it out)."""
        self._call("enable output", lambda: setattr(self._ch, "output", True))
        self._enabled = True
        on = self._query("read back output", lambda: self._ch.output)
        if on is not True:
            raise InstrumentError(f"{self.who}: output was switched on but reads back {on!r}")

    def disable(self) -> None:
        self._call("disable output", lambda: setattr(self._ch, "output", False))
        self._enabled = False

    def go_safe(self) -> None:
        """Amplitude to the minimum, the offset to 0 (in steps of at most `ramp_step` at no more
        than `max_slew` while the output is on), output off. The output goes off even if the
        rest fails; nothing is read back, so a confused instrument cannot stop it."""
        try:
            low = self.settings.min_amplitude
            self._call("safe amplitude", lambda: setattr(self._ch, "amplitude", low))
            self._amplitude = low
            levels = ramp_levels(self._offset, 0.0, self.settings.ramp_step)
            if not self._enabled:
                levels = levels[-1:]
            pause = abs(self._offset) / max(len(levels), 1) / self.settings.max_slew
            for level in levels:
                self._call("safe offset", partial(setattr, self._ch, "offset", level))
                self._offset = sent(level)
                if self._enabled:
                    self.clock.advance(pause)
        finally:
            self.disable()

    def _verify(self, setting: str, written: float, read: Callable[[], Any]) -> None:
        """Read a setting back after a change; a mismatch is an `InstrumentError`."""
        value = self._query(f"read back {setting}", lambda: as_float(read()))
        if not readback_matches(written, value, "equal", self.settings.readback_rtol):
            raise InstrumentError(
                f"{self.who}: {setting} was written as {written!r} but reads back {value!r}"
            )
