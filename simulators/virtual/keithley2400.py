"""A virtual Keithley 2400 SourceMeter: the SCPI subset a driver needs to source and measure.

Facts from the 2400 series manual (ch. 18 SCPI reference) and PyMeasure's `Keithley2400`:
source ranges 0.21/2.1/21/210 V and 1.05 µA … 1.05 A, compliance up to 1.05 A / 210 V, `*RST`
state VOLT source at 0 V on auto range, 105 µA compliance, output off, and a reading of up to
five elements in fixed order (voltage, current, resistance — 9.91e37 when not measured —,
timestamp, status word; `:FORM:ELEM` picks which). In compliance the measured quantity is
clipped at the limit and status bit 3 is set. What the terminals see comes from a pluggable
`Load`: `current(voltage) -> amperes` (see `simulators.virtual.loads`).

Commands (short form shown; long forms, case and optional nodes as the manual allows):
`:SOUR:FUNC VOLT|CURR`, `:SOUR:VOLT[:LEV][:IMM][:AMPL] <v>|MIN|MAX|DEF`, `:SOUR:VOLT:RANG <v>`,
`:SOUR:VOLT:RANG:AUTO <b>`, the same under `:SOUR:CURR`, `[:SENS]:CURR[:DC]:PROT[:LEV] <i>`,
`[:SENS]:CURR[:DC]:PROT:TRIP?`, `[:SENS]:CURR[:DC]:RANG[:UPP] <i>`, `[:SENS]:CURR[:DC]:RANG:AUTO`,
`[:SENS]:CURR[:DC]:NPLC`, `[:SENS]:VOLT[:DC]:PROT[:LEV]`, `[:SENS]:FUNC "CURR"|"VOLT"`,
`:OUTP[:STAT] <b>`, `:FORM:ELEM <list>`, `:READ?`, `:MEAS[:CURR[:DC]]?`, `:FETC?`,
`:ROUT:TERM FRON|REAR`, `:SOUR:VOLT:MODE FIX` (the only mode emulated), `:TRAC:FEED:CONT`,
`:TRAC:CLE` and `:ABOR` (accepted; no buffer is emulated) — every one with its query where the
manual has one, plus the common commands and `SYST:ERR?`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from simulators.virtual.loads import Terminal
from simulators.virtual.scpi import (
    Command,
    ScpiDevice,
    ScpiError,
    boolean,
    mnemonic,
    no_args,
    nr3,
    number,
    one_arg,
    special,
    string_arg,
)

Load = Callable[[float], float]
"""What is wired to the terminals: the current (A) it draws at a voltage (V). A load that is also
a `simulators.virtual.loads.Terminal` is told the voltage as soon as it changes."""

VOLTAGE_RANGES = (0.21, 2.1, 21.0, 210.0)
CURRENT_RANGES = tuple(1.05 * 10.0**e for e in range(-6, 1))
NOT_MEASURED = 9.91e37
"""The 2400's NAN: a reading element that was not measured."""
LINE_FREQUENCY = 60.0
"""Hz; one NPLC of integration advances the reading timestamp by 1/60 s."""
OUTPUT_DISABLED = 803
"""2400 device error: a reading was asked for with the output off."""
ELEMENTS = ("VOLT", "CURR", "RES", "TIME", "STAT")
# Status word bits (2400 manual, "Status word").
STATUS_FRONT, STATUS_COMPLIANCE = 1 << 2, 1 << 3
STATUS_V_MEAS, STATUS_I_MEAS, STATUS_V_SOUR, STATUS_I_SOUR = 1 << 11, 1 << 12, 1 << 14, 1 << 15


def _range_for(value: float, ranges: Sequence[float]) -> float:
    """The lowest range that holds |value| (the caller has checked it fits the top one)."""
    return next(r for r in ranges if abs(value) <= r)


def _numeric_query(args: Sequence[str], value: float, specials: dict[str, float]) -> str:
    """A numeric setting's query: its value, or with `MIN`/`MAX`/`DEF` the bound it names."""
    if not args:
        return nr3(value)
    name = special(one_arg(args))
    if name is None:
        raise ScpiError(-224, f"{args[0]!r} is not MIN, MAX or DEF")
    return nr3(specials[name])


@dataclass
class _Source:
    """One source function's settings: level, range, auto range."""

    ranges: tuple[float, ...]
    default_range: float
    level: float = 0.0
    range: float = 0.0
    auto: bool = True

    def __post_init__(self) -> None:
        self.range = self.default_range


@dataclass
class _State:
    function: str = "VOLT"
    volt: _Source = field(default_factory=lambda: _Source(VOLTAGE_RANGES, 21.0))
    curr: _Source = field(default_factory=lambda: _Source(CURRENT_RANGES, 1.05e-4))
    compliance_current: float = 1.05e-4
    compliance_voltage: float = 21.0
    current_range: float = 1.05e-4
    current_auto: bool = True
    nplc: float = 1.0
    sense: list[str] = field(default_factory=lambda: ["CURR:DC"])
    output: bool = False
    elements: list[str] = field(default_factory=lambda: list(ELEMENTS))
    front: bool = True
    feed: str = "NEV"
    tripped: bool = False
    last: list[float] | None = None


class Keithley2400(ScpiDevice):
    """A 2400 SourceMeter on one channel, measuring what its `Load` draws."""

    idn = "KEITHLEY INSTRUMENTS INC.,MODEL 2400,4000001,C32   Oct  4 2010 14:20:11/A02  /K/J"

    def __init__(self, load: Load) -> None:
        self.load = load
        self.state = _State()
        self.seconds = 0.0
        super().__init__()

    def reset(self) -> None:
        self.state = _State()
        self._terminals_changed()

    def _terminals_changed(self) -> None:
        """Tell a `Terminal` load the voltage it now sees (0 V with the output off)."""
        if isinstance(self.load, Terminal):
            s = self.state
            on = s.output and s.function == "VOLT"
            self.load.source(s.volt.level if on else 0.0)

    def commands(self) -> list[Command]:
        sens = "[:SENSe]"
        return [
            Command(":SOURce:FUNCtion[:MODE]", self._set_function, self._get_function),
            *self._source_commands("VOLTage", lambda: self.state.volt),
            *self._source_commands("CURRent", lambda: self.state.curr),
            Command(f"{sens}:CURRent[:DC]:PROTection[:LEVel]", self._set_ccomp, self._get_ccomp),
            Command(f"{sens}:CURRent[:DC]:PROTection:TRIPped", read=self._tripped),
            Command(f"{sens}:CURRent[:DC]:RANGe[:UPPer]", self._set_crange, self._get_crange),
            Command(f"{sens}:CURRent[:DC]:RANGe:AUTO", self._set_cauto, self._get_cauto),
            Command(f"{sens}:CURRent[:DC]:NPLCycles", self._set_nplc, self._get_nplc),
            Command(f"{sens}:VOLTage[:DC]:PROTection[:LEVel]", self._set_vcomp, self._get_vcomp),
            Command(f"{sens}:FUNCtion[:ON]", self._set_sense, self._get_sense),
            Command(":OUTPut[:STATe]", self._set_output, self._get_output),
            Command(":FORMat:ELEMents[:SENSe]", self._set_elements, self._get_elements),
            Command(":ROUTe:TERMinals", self._set_terminals, self._get_terminals),
            Command(":ABORt", write=no_args),
            Command(":TRACe:CLEar", write=no_args),
            Command(":TRACe:FEED:CONTrol", self._set_feed, self._get_feed),
            Command(":READ", read=self._read),
            Command(":FETCh", read=self._fetch),
            Command(":MEASure", read=self._measure),
            Command(":MEASure:CURRent[:DC]", read=self._measure),
        ]

    # Source.

    def _source_commands(self, name: str, source: Callable[[], _Source]) -> list[Command]:
        def set_level(args: Sequence[str]) -> None:
            s = source()
            top = s.ranges[-1] if s.auto else s.range
            value = number(one_arg(args), -top, top, {"MIN": -top, "MAX": top, "DEF": 0.0})
            if s.auto:
                s.range = _range_for(value, s.ranges)
            s.level = value
            self._terminals_changed()

        def set_range(args: Sequence[str]) -> None:
            s = source()
            top = s.ranges[-1]
            value = number(one_arg(args), -top, top, {"MIN": s.ranges[0], "MAX": top, "DEF": top})
            if abs(value) < abs(s.level):
                raise ScpiError(-221, f"range {value:g} below the source level {s.level:g}")
            s.range = _range_for(value, s.ranges)
            s.auto = False

        def set_auto(args: Sequence[str]) -> None:
            s = source()
            s.auto = boolean(one_arg(args))
            if s.auto:
                s.range = _range_for(s.level, s.ranges)

        def get(value: Callable[[_Source], str]) -> Callable[[Sequence[str]], str]:
            def query(args: Sequence[str]) -> str:
                no_args(args)
                return value(source())

            return query

        def get_level(args: Sequence[str]) -> str:
            s = source()
            top = s.ranges[-1] if s.auto else s.range
            return _numeric_query(args, s.level, {"MIN": -top, "MAX": top, "DEF": 0.0})

        def set_mode(args: Sequence[str]) -> None:
            if mnemonic(one_arg(args), ["FIXed", "LIST", "SWEep"]) != "FIX":
                raise ScpiError(-221, "only FIXed source mode is emulated")

        def get_mode(args: Sequence[str]) -> str:
            no_args(args)
            return "FIX"

        root = f":SOURce:{name}"
        return [
            Command(f"{root}:MODE", set_mode, get_mode),
            Command(f"{root}[:LEVel][:IMMediate][:AMPLitude]", set_level, get_level),
            Command(f"{root}:RANGe", set_range, get(lambda s: nr3(s.range))),
            Command(f"{root}:RANGe:AUTO", set_auto, get(lambda s: str(int(s.auto)))),
        ]

    def _set_function(self, args: Sequence[str]) -> None:
        self.state.function = mnemonic(one_arg(args), ["VOLTage", "CURRent"])
        self._terminals_changed()

    def _get_function(self, args: Sequence[str]) -> str:
        no_args(args)
        return self.state.function

    # Sense.

    def _set_ccomp(self, args: Sequence[str]) -> None:
        specials = {"MIN": -1.05, "MAX": 1.05, "DEF": 1.05e-4}
        self.state.compliance_current = number(one_arg(args), -1.05, 1.05, specials)

    def _get_ccomp(self, args: Sequence[str]) -> str:
        specials = {"MIN": -1.05, "MAX": 1.05, "DEF": 1.05e-4}
        return _numeric_query(args, self.state.compliance_current, specials)

    def _set_vcomp(self, args: Sequence[str]) -> None:
        specials = {"MIN": -210.0, "MAX": 210.0, "DEF": 21.0}
        self.state.compliance_voltage = number(one_arg(args), -210.0, 210.0, specials)

    def _get_vcomp(self, args: Sequence[str]) -> str:
        no_args(args)
        return nr3(self.state.compliance_voltage)

    def _tripped(self, args: Sequence[str]) -> str:
        no_args(args)
        return str(int(self.state.tripped))

    def _set_crange(self, args: Sequence[str]) -> None:
        top = CURRENT_RANGES[-1]
        value = number(one_arg(args), -top, top, {"MIN": CURRENT_RANGES[0], "MAX": top})
        self.state.current_range = _range_for(value, CURRENT_RANGES)
        self.state.current_auto = False

    def _get_crange(self, args: Sequence[str]) -> str:
        no_args(args)
        return nr3(self.state.current_range)

    def _set_cauto(self, args: Sequence[str]) -> None:
        self.state.current_auto = boolean(one_arg(args))

    def _get_cauto(self, args: Sequence[str]) -> str:
        no_args(args)
        return str(int(self.state.current_auto))

    def _set_nplc(self, args: Sequence[str]) -> None:
        specials = {"MIN": 0.01, "MAX": 10.0, "DEF": 1.0}
        self.state.nplc = number(one_arg(args), 0.01, 10.0, specials)

    def _get_nplc(self, args: Sequence[str]) -> str:
        no_args(args)
        return nr3(self.state.nplc)

    def _set_sense(self, args: Sequence[str]) -> None:
        if not args:
            raise ScpiError(-109)
        functions = []
        for arg in args:
            name = string_arg(arg).upper()
            base = mnemonic(name.removesuffix(":DC"), ["VOLTage", "CURRent"])
            functions.append(f"{base}:DC")
        for f in functions:
            if f not in self.state.sense:
                self.state.sense.append(f)

    def _get_sense(self, args: Sequence[str]) -> str:
        no_args(args)
        return ",".join(f'"{f}"' for f in self.state.sense)

    # Output, format, terminals.

    def _set_output(self, args: Sequence[str]) -> None:
        self.state.output = boolean(one_arg(args))
        self._terminals_changed()

    def _get_output(self, args: Sequence[str]) -> str:
        no_args(args)
        return str(int(self.state.output))

    def _set_elements(self, args: Sequence[str]) -> None:
        if not args:
            raise ScpiError(-109)
        chosen = {mnemonic(a, ["VOLTage", "CURRent", "RESistance", "TIME", "STATus"]) for a in args}
        self.state.elements = [e for e in ELEMENTS if e in chosen]

    def _get_elements(self, args: Sequence[str]) -> str:
        no_args(args)
        return ",".join(self.state.elements)

    def _set_terminals(self, args: Sequence[str]) -> None:
        self.state.front = mnemonic(one_arg(args), ["FRONt", "REAR"]) == "FRON"

    def _get_terminals(self, args: Sequence[str]) -> str:
        no_args(args)
        return "FRON" if self.state.front else "REAR"

    def _set_feed(self, args: Sequence[str]) -> None:
        self.state.feed = mnemonic(one_arg(args), ["NEVer", "NEXT"])

    def _get_feed(self, args: Sequence[str]) -> str:
        no_args(args)
        return self.state.feed

    # Readings.

    def _read(self, args: Sequence[str]) -> str:
        no_args(args)
        if not self.state.output:
            raise ScpiError(OUTPUT_DISABLED, message="Output disabled")
        self.state.last = self._acquire()
        return self._format(self.state.last)

    def _fetch(self, args: Sequence[str]) -> str:
        no_args(args)
        if self.state.last is None:
            raise ScpiError(-230, "no reading since the last reset")
        return self._format(self.state.last)

    def _measure(self, args: Sequence[str]) -> str:
        """`MEAS:CURR?`: configure for current, switch the output on (as the 2400 does), read."""
        no_args(args)
        if "CURR:DC" not in self.state.sense:
            self.state.sense.append("CURR:DC")
        self.state.output = True
        return self._read(args)

    def _acquire(self) -> list[float]:
        """One reading of all five elements, advancing the instrument's clock."""
        s = self.state
        self.seconds += s.nplc / LINE_FREQUENCY
        status = STATUS_FRONT if s.front else 0
        if s.function == "VOLT":
            voltage = s.volt.level
            current, status = self._limit_current(self.load(voltage), status)
            status |= STATUS_V_SOUR
        else:
            voltage, current, status = self._drive_current(s.curr.level, status)
            status |= STATUS_I_SOUR
        if "CURR:DC" in s.sense:
            status |= STATUS_I_MEAS
        if "VOLT:DC" in s.sense:
            status |= STATUS_V_MEAS
        return [voltage, current, NOT_MEASURED, self.seconds, float(status)]

    def _limit_current(self, current: float, status: int) -> tuple[float, int]:
        """Clip at the compliance (or the fixed measurement range, if lower: real compliance)."""
        s = self.state
        limit = abs(s.compliance_current)
        if not s.current_auto:
            limit = min(limit, s.current_range)
        s.tripped = abs(current) >= limit
        if s.tripped:
            return math.copysign(limit, current), status | STATUS_COMPLIANCE
        return current, status

    def _drive_current(self, target: float, status: int) -> tuple[float, float, int]:
        """Source a current: find the voltage the load needs (bisection, monotonic load assumed)
        within ± the voltage compliance; beyond it the voltage is clipped and the bit set."""
        limit = abs(self.state.compliance_voltage)
        low, high = -limit, limit
        if not self.load(low) <= target <= self.load(high):
            voltage = high if target > 0 else low
            self.state.tripped = True
            return voltage, self.load(voltage), status | STATUS_COMPLIANCE
        for _ in range(60):
            mid = 0.5 * (low + high)
            if self.load(mid) < target:
                low = mid
            else:
                high = mid
        self.state.tripped = False
        return 0.5 * (low + high), target, status

    def _format(self, reading: list[float]) -> str:
        chosen = self.state.elements
        return ",".join(nr3(v) for e, v in zip(ELEMENTS, reading, strict=True) if e in chosen)
