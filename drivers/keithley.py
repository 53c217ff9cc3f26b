"""Keithley source-measure units on PyMeasure's drivers: the 2400 (SCPI) and 2600 (TSP).

Each channel sources voltage and measures current. At connect it refuses a live output, writes
the compliance, source range, measure range and integration time, starts at 0 V with the
output off, reads every setting back and checks the error queue. A reading taken in compliance
(the current limit in control of the output) or an overflow (9.91e37: beyond a fixed measure
range) is clipped, not a measurement: it raises `DeviceSaturated`.
"""

from __future__ import annotations

import warnings
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from drivers.instruments import InstrumentSettings, PyMeasureChannel, as_float
from hil.core import DeviceSaturated, InstrumentError

STATUS_COMPLIANCE = 1 << 3  # 2400 status word, bit 3: in compliance
OVERFLOW = 9.9e37
"""A reading at or beyond this is the overflow marker (both models return 9.91e37)."""


class SMUSettings(InstrumentSettings):
    """A voltage-source, current-measure channel's instrument-level limits."""

    compliance_current: float = Field(gt=0, description="current limit, A")
    source_range: float = Field(gt=0, description="fixed voltage source range, V")
    measure_range: float | None = Field(
        default=None, gt=0, description="fixed current measure range, A; None for auto-range"
    )
    nplc: float = Field(default=1.0, gt=0, description="integration time, power-line cycles")

    max_voltage: ClassVar[float] = 200.0
    max_current: ClassVar[float] = 1.0
    nplc_range: ClassVar[tuple[float, float]] = (0.01, 10.0)

    @model_validator(mode="after")
    def _within_instrument(self) -> SMUSettings:
        checks = [
            ("source_range", self.source_range, self.max_voltage, "V"),
            ("compliance_current", self.compliance_current, self.max_current, "A"),
            ("measure_range", self.measure_range or 0.0, self.max_current, "A"),
        ]
        for key, value, top, unit in checks:
            if value > top:
                raise ValueError(f"{key} {value:g} {unit} exceeds the instrument's {top:g} {unit}")
        low, high = self.nplc_range
        if not low <= self.nplc <= high:
            raise ValueError(f"nplc {self.nplc:g} is outside the instrument's [{low:g}, {high:g}]")
        return self


class Keithley2400Settings(SMUSettings):
    """Keithley 2400 SourceMeter (SCPI)."""

    max_voltage: ClassVar[float] = 210.0
    max_current: ClassVar[float] = 1.05
    nplc_range: ClassVar[tuple[float, float]] = (0.01, 10.0)


class Keithley2600Settings(SMUSettings):
    """One channel (smua or smub) of a Keithley 2600-series SourceMeter (TSP)."""

    channel: Literal["smua", "smub"] = "smua"

    max_voltage: ClassVar[float] = 200.0
    max_current: ClassVar[float] = 1.5
    nplc_range: ClassVar[tuple[float, float]] = (0.001, 25.0)


class _KeithleyChannel(PyMeasureChannel):
    settings: SMUSettings

    @property
    def level_range(self) -> tuple[float, float]:
        return (-self.settings.source_range, self.settings.source_range)

    def _refuse_live_output(self, output: object) -> None:
        if as_float(output) != 0:
            raise InstrumentError(
                f"{self.who}: the output is on at connect; refusing to reconfigure a live output "
                "(ramp it to 0 V and switch it off, then connect again)"
            )

    def _unsaturated(self, current: float, in_compliance: bool) -> float:
        """`current`, unless it is clipped: in compliance or an overflow is `DeviceSaturated`."""
        if in_compliance:
            raise DeviceSaturated(
                f"{self.who}: in compliance at {self.level:g} V: read {current:g} A at the "
                f"{self.settings.compliance_current:g} A limit; the reading is clipped (lower the "
                "level or raise compliance_current)"
            )
        if abs(current) >= OVERFLOW:
            fixed = self.settings.measure_range
            held = "the auto-selected" if fixed is None else f"the {fixed:g} A"
            raise DeviceSaturated(
                f"{self.who}: overflow at {self.level:g} V: the current is beyond {held} measure "
                f"range (read {current:g}); the reading is not valid (choose a larger "
                "measure_range, or auto-range with measure_range: null)"
            )
        return current

    def _refuse_errors(self, errors: list[Any]) -> None:
        if errors:
            raise InstrumentError(
                f"{self.who}: the instrument reported errors while configuring: {errors}; "
                "refusing to start"
            )


class Keithley2400Channel(_KeithleyChannel):
    """Keithley 2400 as a voltage source measuring current, through PyMeasure's `Keithley2400`.

    The current is read with `:READ?` (the formatted elements V, I, R, t, status), not
    `:MEASure:CURRent?`, because `:CONFigure` resets the function's settings to their *RST
    values and switches the output on (2400 manual, section 17).
    """

    settings: Keithley2400Settings

    def __init__(self, settings: Keithley2400Settings, **kwargs: Any) -> None:
        super().__init__(settings, **kwargs)

    def _open(self) -> Any:
        from pymeasure.instruments.keithley import Keithley2400

        return Keithley2400(self.settings.address, **self.settings.adapter_kwargs())

    def _configure(self) -> None:
        smu, s = self.instrument, self.settings
        self._refuse_live_output(smu.values("OUTPUT?"))
        smu.source_mode = "voltage"
        smu.write(":SOURCE:VOLTAGE:MODE FIXED")
        smu.source_voltage_range = s.source_range
        smu.source_voltage = 0.0
        smu.write(':SENSE:FUNCTION "CURR"')
        smu.compliance_current = s.compliance_current
        if s.measure_range is None:
            smu.current_range_auto_enabled = True
        else:
            smu.current_range = s.measure_range
        smu.current_nplc = s.nplc
        self.read_back()
        self._refuse_errors(smu.check_errors())
        self._level, self._enabled = 0.0, False

    def read_back(self, *, live: bool = False) -> None:
        """The source and measure settings; unless `live`, also the 0 V level connect starts at
        (a re-attached channel's level is taken over instead: `report_source`)."""
        smu, s = self.instrument, self.settings
        self.check_readback("source function", "voltage", smu.source_mode)
        self.check_readback("source voltage mode", "FIX", smu.ask(":SOURCE:VOLTAGE:MODE?").strip())
        self.check_readback("source_range", s.source_range, smu.source_voltage_range, "range")
        if not live:
            self.check_readback("source level", 0.0, smu.source_voltage)
        self.check_readback("compliance_current", s.compliance_current, smu.compliance_current)
        if s.measure_range is None:
            self.check_readback("measure auto-range", True, smu.current_range_auto_enabled)
        else:
            self.check_readback("measure_range", s.measure_range, smu.current_range, "range")
        self.check_readback("nplc", s.nplc, smu.current_nplc)

    def report_source(self) -> tuple[float, bool]:
        """`:SOURCE:VOLTAGE?` and `OUTPUT?`."""
        smu = self.instrument
        return as_float(smu.source_voltage), as_float(smu.values("OUTPUT?")) != 0

    def sent_level(self, volts: float) -> float:
        """PyMeasure's `source_voltage` sends `%g`: six significant digits."""
        return float(f"{volts:g}")

    def _write_level(self, volts: float) -> None:
        self.instrument.source_voltage = volts

    def _query_current(self) -> float:
        elements = self.instrument.values(":READ?")
        if len(elements) != 5:
            raise ValueError(f"expected 5 elements (V, I, R, t, status), got {elements!r}")
        status = int(as_float(elements[4]))
        return self._unsaturated(as_float(elements[1]), bool(status & STATUS_COMPLIANCE))

    def _write_output(self, on: bool) -> None:
        self.instrument.source_enabled = on


class Keithley2600Channel(_KeithleyChannel):
    """One channel of a Keithley 2600 through PyMeasure's `Keithley2600` (`ChA`/`ChB`).

    The compliance, measure range and NPLC are written with `%g`, not through PyMeasure's
    properties: those format with `%f` (a 100 nA limit would be sent as 0.000000) and its
    `measure_nplc` cannot be set in PyMeasure 0.16. A reading asks for the current and
    `source.compliance` in one `print`, so detecting compliance costs no extra round trip.
    """

    settings: Keithley2600Settings

    def __init__(self, settings: Keithley2600Settings, **kwargs: Any) -> None:
        super().__init__(settings, **kwargs)

    @property
    def _ch(self) -> Any:
        return self.instrument.ChA if self.settings.channel == "smua" else self.instrument.ChB

    def _open(self) -> Any:
        from pymeasure.instruments.keithley import Keithley2600

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # "not known whether SCPI"
            return Keithley2600(self.settings.address, **self.settings.adapter_kwargs())

    def _configure(self) -> None:
        ch, s = self._ch, self.settings
        self._refuse_live_output(ch.ask("source.output"))
        ch.source_mode = "voltage"
        ch.source_voltage_range = s.source_range
        ch.source_voltage = 0.0
        ch.write(f"source.limiti={s.compliance_current:g}")
        if s.measure_range is None:
            ch.write("measure.autorangei=1")
        else:
            ch.write(f"measure.rangei={s.measure_range:g}")
        ch.write(f"measure.nplc={s.nplc:g}")
        self.read_back()
        self._refuse_errors(self.instrument.check_errors())
        self._level, self._enabled = 0.0, False

    def read_back(self, *, live: bool = False) -> None:
        """The source and measure settings; unless `live`, also the 0 V level connect starts at
        (a re-attached channel's level is taken over instead: `report_source`)."""
        ch, s = self._ch, self.settings
        self.check_readback("source function", "voltage", ch.source_mode)
        self.check_readback("source_range", s.source_range, ch.ask("source.rangev"), "range")
        if not live:
            self.check_readback("source level", 0.0, ch.ask("source.levelv"))
        self.check_readback("compliance_current", s.compliance_current, ch.ask("source.limiti"))
        if s.measure_range is None:
            self.check_readback("measure auto-range", 1.0, ch.ask("measure.autorangei"))
        else:
            self.check_readback("measure_range", s.measure_range, ch.ask("measure.rangei"), "range")
        self.check_readback("nplc", s.nplc, ch.ask("measure.nplc"))

    def report_source(self) -> tuple[float, bool]:
        """`print(smuX.source.levelv)` and `print(smuX.source.output)`."""
        ch = self._ch
        return as_float(ch.ask("source.levelv")), as_float(ch.ask("source.output")) != 0

    def sent_level(self, volts: float) -> float:
        """PyMeasure's 2600 `source_voltage` sends `%f`: 1 µV steps."""
        return float(f"{volts:f}")

    def _write_level(self, volts: float) -> None:
        self._ch.source_voltage = volts

    def _query_current(self) -> float:
        """The current and the compliance state in one chunk, so it costs no extra round trip:
        `print` joins its values with a tab; `source.compliance` reads `true` while the limit is
        in control of the output (reading it only updates the status model)."""
        c = self.settings.channel
        reply = str(self.instrument.ask(f"print({c}.measure.i(), {c}.source.compliance)"))
        fields = reply.strip().split("\t")
        if len(fields) != 2 or fields[1] not in ("true", "false"):
            raise ValueError(f"expected a current and true/false, got {reply!r}")
        return self._unsaturated(as_float(fields[0]), fields[1] == "true")

    def _write_output(self, on: bool) -> None:
        self._ch.source_output = "ON" if on else "OFF"
