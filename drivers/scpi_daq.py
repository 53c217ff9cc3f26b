"""A multi-channel SCPI DAC/ADC board: analog outputs that hold DC levels, analog inputs that read
averaged voltages. PyMeasure has no driver for such a (lab-built or generic) board, so `ScpiDaq`
is one in PyMeasure's declarative style, and `ScpiDaqBoard` wraps it with the instrument-level
safety layer: settings from the station file, range checks before sending, readback of every
setting at connect, faults as `InstrumentError`s, and a slew-limited `go_safe()`.

The command set (SCPI 1999 forms; AO channels are numbered 1–99, AI channels 101–199, channel
lists are `(@1,2)` or `(@101:104)`):

    SOURce:VOLTage[:LEVel] <v>,(@list)     AO level, V (|v| within the channel's range)
    SOURce:VOLTage[:LEVel]? (@list)        → one NR3 per channel
    SOURce:VOLTage:RANGe <r>,(@list)       AO range, bipolar: 2.5 | 5 | 10 V
    SOURce:VOLTage:RANGe? (@list)
    OUTPut[:STATe] ON|OFF|1|0              every AO output relay; OUTPut? → 0|1
    SENSe:VOLTage[:DC]:RANGe <r>,(@list)   AI range: 0.1 | 1 | 10 V; query with (@list)
    SENSe:VOLTage[:DC]:NPLCycles <n>       AI integration, 0.02–100 power-line cycles
    SAMPle:COUNt <n>                       samples per channel per reading, 1–1000000
    ROUTe:SCAN (@list)                     the AI channels a reading covers, in order
    FORMat[:DATA] ASCii|REAL[,64]          ASCII NR3 list, or IEEE 754 float64 big-endian in a
                                           definite-length block #<n><len><bytes>
    FORMat[:DATA]?                         → ASC | REAL,64
    READ?                                  acquire: SAMP:COUN samples of every scanned channel,
                                           sample-major; 9.9E37 is an overload
    FETCh?                                 the last reading again
    *IDN? *RST *CLS *OPC? SYSTem:ERRor?
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from functools import partial
from typing import Any, Literal

from pydantic import Field, model_validator
from pymeasure.instruments import Channel, Instrument, SCPIMixin
from pymeasure.instruments.validators import strict_discrete_set, strict_range

from drivers.instruments import InstrumentSettings, PyMeasureSession, as_float, ramp_levels
from hil.core import Clock, DeviceSaturated, InstrumentError, SafetyViolation

AO_RANGES = (2.5, 5.0, 10.0)
"""V, bipolar output ranges of the board."""
AI_RANGES = (0.1, 1.0, 10.0)
"""V, bipolar input ranges."""
AO_IDS, AI_IDS = range(1, 100), range(101, 200)
NPLC_RANGE = (0.02, 100.0)
MAX_SAMPLES = 1_000_000
OVERLOAD = 9.9e37
"""A reading at or beyond this is the board's overload marker."""
FORMATS = {"real64": "REAL,64", "ascii": "ASC"}


def number(value: float) -> str:
    """A level as sent: the shortest decimal that reads back as the same float (no rounding)."""
    return repr(float(value))


def channel_list(channels: Iterable[int]) -> str:
    """`(@1,2,3)`, the SCPI channel list of `channels`."""
    return "(@" + ",".join(str(int(c)) for c in channels) + ")"


def parse_channel_list(text: str) -> list[int]:
    """The channels of `(@101,102)` or `(@101:104)` (ValueError for anything else)."""
    m = re.fullmatch(r"\(@([\d,:\s]*)\)", text.strip().strip('"'))
    if m is None:
        raise ValueError(f"{text!r} is not a channel list")
    channels: list[int] = []
    for part in filter(None, (p.strip() for p in m.group(1).split(","))):
        first, _, last = part.partition(":")
        channels.extend(range(int(first), int(last or first) + 1))
    return channels


# PyMeasure is untyped: its base classes are Any to mypy.
class AnalogOutput(Channel):  # type: ignore[misc]
    """One AO channel: a DC level within its range."""

    level = Channel.control(
        "SOUR:VOLT? (@{ch})",
        "SOUR:VOLT %s,(@{ch})",
        """Control the DC level, V.""",
        validator=strict_range,
        values=(-max(AO_RANGES), max(AO_RANGES)),
        set_process=number,
    )
    range = Channel.control(
        "SOUR:VOLT:RANG? (@{ch})",
        "SOUR:VOLT:RANG %s,(@{ch})",
        """Control the bipolar output range, V.""",
        validator=strict_discrete_set,
        values=AO_RANGES,
        set_process=number,
    )


class AnalogInput(Channel):  # type: ignore[misc]
    """One AI channel: its input range."""

    range = Channel.control(
        "SENS:VOLT:RANG? (@{ch})",
        "SENS:VOLT:RANG %s,(@{ch})",
        """Control the bipolar input range, V.""",
        validator=strict_discrete_set,
        values=AI_RANGES,
        set_process=number,
    )


class ScpiDaq(SCPIMixin, Instrument):  # type: ignore[misc]
    """A SCPI DAC/ADC board; `ao[i]` and `ai[i]` are its channels by number."""

    output_enabled = Instrument.control(
        "OUTP?",
        "OUTP %d",
        """Control the output relay of every AO channel.""",
        validator=strict_discrete_set,
        values={True: 1, False: 0},
        map_values=True,
    )
    nplc = Instrument.control(
        "SENS:VOLT:NPLC?",
        "SENS:VOLT:NPLC %s",
        """Control the AI integration time, power-line cycles.""",
        validator=strict_range,
        values=NPLC_RANGE,
        set_process=number,
    )
    sample_count = Instrument.control(
        "SAMP:COUN?",
        "SAMP:COUN %d",
        """Control the samples per channel in one reading.""",
        validator=strict_range,
        values=(1, MAX_SAMPLES),
        cast=int,
    )
    data_format = Instrument.control(
        "FORM?",
        "FORM %s",
        """Control the reading format: "real64" (binary block) or "ascii".""",
        validator=strict_discrete_set,
        values=FORMATS,
        map_values=True,
        cast=str,
        maxsplit=0,
    )
    scan = Instrument.control(
        "ROUT:SCAN?",
        "ROUT:SCAN %s",
        """Control the AI channels a reading covers, in order.""",
        set_process=channel_list,
        get_process=parse_channel_list,
        cast=str,
        maxsplit=0,
    )

    def __init__(
        self,
        adapter: Any,
        name: str = "SCPI DAQ board",
        *,
        ao: Iterable[int] = (),
        ai: Iterable[int] = (),
        **kwargs: Any,
    ) -> None:
        super().__init__(adapter, name, **kwargs)
        self.ao: dict[int, AnalogOutput] = {}
        self.ai: dict[int, AnalogInput] = {}
        for i in ao:  # add_child files each channel under self.ao / self.ai by its number
            self.add_child(AnalogOutput, i, collection="ao", prefix="ao")
        for i in ai:
            self.add_child(AnalogInput, i, collection="ai", prefix="ai")

    def read_voltages(self, binary: bool) -> list[float]:
        """`READ?`: one reading, every sample of every scanned channel (sample-major).

        A binary block is read with pyvisa's `read_binary_values` after the command went
        through the adapter (so it is logged and checked like any other).
        """
        if not binary:
            return [as_float(v) for v in self.values("READ?")]
        self.write("READ?")
        block = self.adapter.connection.read_binary_values(
            datatype="d", is_big_endian=True, expect_termination=True
        )
        return [float(v) for v in block]


class ScpiDaqSettings(InstrumentSettings):
    """A SCPI DAQ board's instrument-level settings (station file)."""

    ao: dict[int, float] = Field(description="AO channel → output range, V (2.5, 5 or 10)")
    ai: dict[int, float] = Field(
        description="AI channel → input range, V (0.1, 1 or 10); read in this order"
    )
    max_voltage: float = Field(default=10.0, gt=0, le=10.0, description="|V| ceiling on any AO")
    nplc: float = Field(default=1.0, description="AI integration, power-line cycles")
    sample_count: int = Field(default=1, ge=1, le=MAX_SAMPLES, description="averaged per read")
    data_format: Literal["real64", "ascii"] = "real64"

    @model_validator(mode="after")
    def _within_board(self) -> ScpiDaqSettings:
        for key, channels, ids, ranges in (
            ("ao", self.ao, AO_IDS, AO_RANGES),
            ("ai", self.ai, AI_IDS, AI_RANGES),
        ):
            for channel, r in channels.items():
                if channel not in ids:
                    raise ValueError(f"{key}: channel {channel} is not in {ids.start}–{ids[-1]}")
                if r not in ranges:
                    raise ValueError(f"{key}.{channel}: range {r:g} V is not one of {ranges}")
        if not self.ai:
            raise ValueError("ai: at least one input channel is needed")
        low, high = NPLC_RANGE
        if not low <= self.nplc <= high:
            raise ValueError(f"nplc {self.nplc:g} is outside the board's [{low:g}, {high:g}]")
        return self


class ScpiDaqBoard(PyMeasureSession):
    """A SCPI DAQ board with the instrument-level safety layer (DESIGN.md, layer 1).

    Levels outside a channel's range or the global `max_voltage` are refused with
    `SafetyViolation` before anything is sent; `go_safe()` ramps every AO to 0 V within
    `max_slew` in steps of at most `ramp_step`, then switches the outputs off. `connect`
    refuses (`InstrumentError`) a live output, a mismatch or a non-empty error queue.
    """

    settings: ScpiDaqSettings

    def __init__(self, settings: ScpiDaqSettings, clock: Clock | None = None) -> None:
        super().__init__(settings, clock)
        self._levels = dict.fromkeys(settings.ao, 0.0)
        self._enabled = False

    @property
    def levels(self) -> dict[int, float]:
        """Every AO channel's level as last set, V."""
        return dict(self._levels)

    @property
    def enabled(self) -> bool:
        return self._enabled

    def _open(self) -> ScpiDaq:
        s = self.settings
        return ScpiDaq(s.address, ao=s.ao, ai=s.ai, **s.adapter_kwargs())

    def _adopt(self, instrument: Any) -> ScpiDaq:
        """An open `ScpiDaq` as it is; anything else is an adapter to build one on."""
        if isinstance(instrument, ScpiDaq):
            return instrument
        return ScpiDaq(instrument, ao=self.settings.ao, ai=self.settings.ai)

    def check_level(self, channel: int, volts: float) -> None:
        """Refuse a level outside the channel's range or the global ceiling, before sending."""
        if channel not in self.settings.ao:
            raise SafetyViolation(
                f"{self.settings.name} AO{channel}",
                volts,
                f"the configured AO channels {sorted(self.settings.ao)}",
                "add the channel under ao in the station file",
            )
        top = min(self.settings.ao[channel], self.settings.max_voltage)
        if not (math.isfinite(volts) and -top <= volts <= top):
            raise SafetyViolation(
                f"{self.settings.name} AO{channel}",
                volts,
                f"the instrument range ±{top:g} V of {self.who}",
                "the channel's ao range and max_voltage in the station file bound it",
            )

    def set_levels(self, levels: Mapping[int, float]) -> None:
        """Set AO levels (all checked before any is sent), then wait until they are applied."""
        for channel, volts in levels.items():
            self.check_level(channel, volts)
        for channel, volts in levels.items():
            self._call("set level", partial(self._write_level, channel, volts))
        self.sync()

    def ramp_to(self, levels: Mapping[int, float]) -> None:
        """Move the AO channels together to `levels` in steps of at most `ramp_step`, paced so
        no channel moves faster than `max_slew`."""
        for channel, volts in levels.items():
            self.check_level(channel, volts)
        start = {c: self._levels[c] for c in levels}
        distance = max((abs(levels[c] - start[c]) for c in levels), default=0.0)
        steps = ramp_levels(0.0, 1.0, self.settings.ramp_step / distance) if distance else []
        pause = distance / max(len(steps), 1) / self.settings.max_slew
        for k in steps:
            self.set_levels({c: start[c] + (levels[c] - start[c]) * k for c in levels})
            self.clock.advance(pause)

    def read(self) -> dict[int, float]:
        """One reading: every AI channel averaged over `sample_count` samples, V.

        An overload (beyond the channel's range) raises `DeviceSaturated`.
        """
        channels = list(self.settings.ai)
        binary = self.settings.data_format == "real64"
        data = self._query("read", lambda: self._checked_reading(binary, len(channels)))
        averaged = {}
        n = self.settings.sample_count
        for j, channel in enumerate(channels):
            samples = data[j :: len(channels)]
            if any(abs(v) >= OVERLOAD for v in samples):
                raise DeviceSaturated(
                    f"{self.who}: AI{channel} overloaded its ±{self.settings.ai[channel]:g} V "
                    "range; the reading is not valid (choose a larger range in the station file)"
                )
            averaged[channel] = math.fsum(samples) / n
        return averaged

    def enable(self) -> None:
        self._call("enable outputs", lambda: setattr(self.instrument, "output_enabled", True))
        self._enabled = True

    def disable(self) -> None:
        self._call("disable outputs", lambda: setattr(self.instrument, "output_enabled", False))
        self._enabled = False

    def go_safe(self) -> None:
        """Ramp every AO to 0 V (if the outputs are on), then switch them off.

        The outputs are switched off even if the ramp fails, so nothing is left energised.
        """
        zeros = {c: 0.0 for c, v in self._levels.items() if v != 0.0}
        try:
            if self._enabled:
                self.ramp_to(zeros)
            elif zeros:
                self.set_levels(zeros)
        finally:
            self.disable()

    # -- helpers ---------------------------------------------------------------------------------
    def _configure(self) -> None:
        daq, s = self.instrument, self.settings
        if daq.output_enabled:
            raise InstrumentError(
                f"{self.who}: the outputs are on at connect; refusing to reconfigure live "
                "outputs (ramp them to 0 V and switch them off, then connect again)"
            )
        for channel, r in s.ao.items():
            daq.ao[channel].level = 0.0
            daq.ao[channel].range = r
        for channel, r in s.ai.items():
            daq.ai[channel].range = r
        daq.nplc = s.nplc
        daq.sample_count = s.sample_count
        daq.scan = list(s.ai)
        daq.data_format = s.data_format
        for channel, r in s.ao.items():
            self.check_readback(f"ao {channel} range", r, daq.ao[channel].range)
            self.check_readback(f"ao {channel} level", 0.0, daq.ao[channel].level)
        for channel, r in s.ai.items():
            self.check_readback(f"ai {channel} range", r, daq.ai[channel].range)
        self.check_readback("nplc", s.nplc, daq.nplc)
        self.check_readback("sample_count", s.sample_count, daq.sample_count)
        self.check_readback("scan list", list(s.ai), daq.scan)
        self.check_readback("data_format", s.data_format, daq.data_format)
        errors = daq.check_errors()
        if errors:
            raise InstrumentError(
                f"{self.who}: the board reported errors while configuring: {errors}; "
                "refusing to start"
            )
        self._levels = dict.fromkeys(s.ao, 0.0)
        self._enabled = False

    def _write_level(self, channel: int, volts: float) -> None:
        self.instrument.ao[channel].level = volts
        self._levels[channel] = float(volts)

    def _checked_reading(self, binary: bool, n_channels: int) -> list[float]:
        data: list[float] = self.instrument.read_voltages(binary)
        expected = self.settings.sample_count * n_channels
        if len(data) != expected:
            raise ValueError(f"expected {expected} values, got {len(data)}")
        return data
