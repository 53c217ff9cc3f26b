"""A virtual Keithley 2602B SourceMeter: the TSP subset a driver needs to source and measure.

The 2600 series speaks TSP (Lua statements), not SCPI, so this module has its own small parser
and reuses only the error queue, status register, common-command handlers and lock of
`ScpiDevice`, which lets `ScpiServer` serve it. One line is one chunk; `;` separates
statements. Understood:

- common commands, each alone in its message as the 2600 requires (any case): `*IDN?`, `*RST`
  (both channels to their reset state), `*CLS`, `*OPC?` (answers `1`: every command runs to
  completion before the next, so nothing is pending), `*OPC` (sets the OPC bit), `*ESR?`,
  `*WAI` (nothing to wait for);
- `print(e, ...)` of expressions (values joined by tabs, numbers as `%.5e`, booleans
  `true`/`false`), where an expression is a number, `true`/`false`/`nil`, a quoted string, an
  attribute (`smua.source.levelv`), a constant (`smua.OUTPUT_ON`) or a call
  (`smua.measure.i()`, `errorqueue.next()`);
- assignments `smuX.source.func|levelv|rangev|autorangev|limiti|output=<n>`,
  `smuX.measure.rangei|autorangei|nplc=<n>`; `smuX.source.compliance` is read-only;
- calls `smuX.measure.i()`, `smuX.measure.v()`, `errorqueue.clear()`, `waitcomplete()` (returns
  at once, as `*WAI`; the group form `waitcomplete(g)` of a TSP-Link master is not emulated);
  `errorqueue.count`.

Anything else queues an error and answers nothing: -285 (syntax), -286 (runtime: unknown
attribute, call or assignment to a read-only attribute), 1101 "Parameter too big" and 1102
"Parameter too small" (a value beyond the attribute's bounds: a level beyond the fixed `rangev`,
`limiti` beyond 1.5 A), -221 (a range below the level it must hold). `errorqueue.next()` answers
`code, message, severity, node`. What the terminals of each channel see comes from its load
(`current(voltage) -> A`, see `simulators.virtual.loads`): with the output on, the current is the
load's, clipped at `limiti` with `source.compliance` true, and 9.91e37 beyond a fixed measure
range. 2602B ranges (reference manual): 100 mV, 1 V, 6 V, 40 V; 100 nA … 1 A, 1.5 A.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from simulators.virtual.keithley2400 import Load
from simulators.virtual.loads import Terminal
from simulators.virtual.scpi import ScpiDevice, ScpiError, no_args, split_outside_quotes

VOLTAGE_RANGES = (0.1, 1.0, 6.0, 40.0)
CURRENT_RANGES = (1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 1.5)
MAX_LIMIT_CURRENT = 1.5
MIN_LIMIT_CURRENT = 1e-8
NPLC_RANGE = (0.001, 25.0)
OVERFLOW = 9.91e37
"""What the 2600 returns for a reading beyond the measure range."""
LINE_FREQUENCY = 60.0
SEVERITY_RECOVERABLE = 20
NODE = 1
CHANNELS = ("smua", "smub")
CONSTANTS = {
    "OUTPUT_OFF": 0.0,
    "OUTPUT_ON": 1.0,
    "OUTPUT_DCAMPS": 0.0,
    "OUTPUT_DCVOLTS": 1.0,
    "AUTORANGE_OFF": 0.0,
    "AUTORANGE_ON": 1.0,
}
TOO_BIG, TOO_SMALL = 1101, 1102
MESSAGES = {
    -221: "Settings conflict",
    -285: "TSP Syntax error at line 1",
    -286: "TSP Runtime error at line 1",
    TOO_BIG: "Parameter too big",
    TOO_SMALL: "Parameter too small",
}

_NAME = r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*"
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_PRINT = re.compile(r"print\s*\((.*)\)")
_ASSIGN = re.compile(rf"({_NAME})\s*=\s*(.+)")
_CALL = re.compile(rf"({_NAME})\s*\(\s*\)")
_ATTRIBUTE = re.compile(_NAME)

Value = float | bool | str | None


def tsp_error(code: int, detail: str) -> ScpiError:
    """An error for the queue, with the 2600's message for `code` and a detail."""
    return ScpiError(code, message=f"{MESSAGES[code]}: {detail}")


def _syntax(text: str) -> ScpiError:
    """A -285 naming the first symbol of what failed to parse, as the 2600's Lua does."""
    near = text.split()[0] if text.split() else text
    return tsp_error(-285, f"unexpected symbol near `{near}'")


def _range_for(value: float, ranges: tuple[float, ...]) -> float:
    """The lowest range holding |value| (1101 above the top one)."""
    for r in ranges:
        if abs(value) <= r * (1 + 1e-9):
            return r
    raise tsp_error(TOO_BIG, f"{value:g} is above the top range {ranges[-1]:g}")


def _bounded(value: float, low: float, high: float, what: str) -> float:
    """`value` if within [low, high]; else 1101 (too big) or 1102 (too small)."""
    if value > high:
        raise tsp_error(TOO_BIG, f"{what} {value:g} above {high:g}")
    if value < low:
        raise tsp_error(TOO_SMALL, f"{what} {value:g} below {low:g}")
    return value


def _choice(value: float, what: str) -> bool:
    """A 0/1 attribute (output, function, auto-range)."""
    _bounded(value, 0.0, 1.0, what)
    if value not in (0.0, 1.0):
        raise tsp_error(-286, f"{what} takes 0 or 1, not {value:g}")
    return value == 1.0


def _format(value: Value) -> str:
    """A value as `print` shows it (numbers in the 2600's default `%.5e`)."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    return f"{value:.5e}"


@dataclass
class _Smu:
    """One channel's settings at reset (2600B reference manual, smuX.reset())."""

    load: Load
    func_volts: bool = True
    levelv: float = 0.0
    rangev: float = VOLTAGE_RANGES[0]
    autorangev: bool = True
    limiti: float = 0.1
    output: bool = False
    rangei: float = 1e-4
    autorangei: bool = True
    nplc: float = 1.0
    compliance: bool = False

    def terminals(self) -> None:
        """Tell a `Terminal` load the voltage it now sees (0 V with the output off)."""
        if isinstance(self.load, Terminal):
            self.load.source(self.levelv if self.output else 0.0)

    def current(self) -> float:
        """One current reading: the load's, clipped at the limit (compliance), or overflow."""
        if not self.output:
            self.compliance = False
            return 0.0
        current = self.load(self.levelv)
        self.compliance = abs(current) >= self.limiti
        if self.compliance:
            return math.copysign(self.limiti, current)
        if not self.autorangei and abs(current) > self.rangei * 1.01:
            return OVERFLOW
        return current


class Keithley2600(ScpiDevice):
    """A 2602B on two channels, `smua` and `smub`, each measuring what its load draws."""

    idn = "Keithley Instruments Inc., Model 2602B, 4000001, 3.2.2"

    def __init__(self, smua: Load, smub: Load) -> None:
        self.loads = {"smua": smua, "smub": smub}
        self.smu = {name: _Smu(load) for name, load in self.loads.items()}
        self.seconds = 0.0
        super().__init__()

    def reset(self) -> None:
        self.smu = {name: _Smu(load) for name, load in self.loads.items()}
        for smu in self.smu.values():
            smu.terminals()

    def execute(self, message: str) -> str | None:
        """Run one TSP chunk (one line); return what it printed, or None."""
        text = message.strip()
        if not text:
            return None
        with self.lock:
            try:
                if text.startswith("*"):
                    return self._common_command(text)
                printed = [
                    line
                    for statement in split_outside_quotes(text, ";")
                    if statement.strip()
                    for line in [self._statement(statement.strip())]
                    if line is not None
                ]
            except ScpiError as error:
                self.push_error(error)
                return None
            return "\n".join(printed) if printed else None

    # -- statements ------------------------------------------------------------------------------
    def _common_command(self, text: str) -> str | None:
        """An IEEE 488.2 common command, which a 2600 takes outside TSP and only alone in its
        message (`*OPC?;print(1)` is a syntax error); the handlers are `ScpiDevice`'s."""
        queries: dict[str, Callable[[Sequence[str]], str]] = {
            "*IDN?": self._idn,
            "*OPC?": self._opc_query,
            "*ESR?": self._esr_query,
        }
        commands: dict[str, Callable[[Sequence[str]], None]] = {
            "*RST": self._rst,
            "*CLS": self._cls,
            "*OPC": self._opc,
            "*WAI": no_args,
        }
        command = text.upper()
        if command in queries:
            return queries[command](())
        if command in commands:
            commands[command](())
            return None
        raise _syntax(text)

    def _statement(self, text: str) -> str | None:
        """One statement: `print(...)`, a call or an assignment; what it printed."""
        if m := _PRINT.fullmatch(text):
            args = [a.strip() for a in split_outside_quotes(m.group(1), ",")]
            if any(not a for a in args):
                raise _syntax(",")
            values = [v for a in args for v in self._expression(a)]
            return "\t".join(_format(v) for v in values)
        if m := _CALL.fullmatch(text):
            self._call(m.group(1))
            return None
        if m := _ASSIGN.fullmatch(text):
            self._assign(m.group(1), self._expression(m.group(2).strip()))
            return None
        raise _syntax(text)

    def _expression(self, text: str) -> list[Value]:
        """The values an expression yields (a call may yield several)."""
        if _NUMBER.fullmatch(text):
            return [float(text)]
        if text in ("true", "false"):
            return [text == "true"]
        if text == "nil":
            return [None]
        if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
            return [text[1:-1]]
        if m := _CALL.fullmatch(text):
            return self._call(m.group(1))
        if _ATTRIBUTE.fullmatch(text):
            return [self._read(text)]
        raise _syntax(text)

    # -- the object model --------------------------------------------------------------------
    def _split(self, name: str) -> tuple[_Smu, str]:
        """`smua.source.levelv` → the channel and `source.levelv` (-286 for another table)."""
        head, _, rest = name.partition(".")
        if head not in self.smu or not rest:
            raise tsp_error(-286, f"attempt to index a nil value (`{name}')")
        return self.smu[head], rest

    def _call(self, name: str) -> list[Value]:
        """A function call without arguments; the values it returns."""
        if name == "errorqueue.next":
            if not self._errors:
                return [0.0, "Queue Is Empty", 0.0, 0.0]
            error = self._errors.popleft()
            return [float(error.code), error.text, float(SEVERITY_RECOVERABLE), float(NODE)]
        if name == "errorqueue.clear":
            self._errors.clear()
            return []
        if name == "waitcomplete":
            return []  # commands complete in order: nothing is ever pending
        smu, attribute = self._split(name)
        if attribute not in ("measure.i", "measure.v"):
            raise tsp_error(-286, f"attempt to call a nil value (`{name}')")
        self.seconds += smu.nplc / LINE_FREQUENCY
        current = smu.current()
        return [current if attribute == "measure.i" else (smu.levelv if smu.output else 0.0)]

    def _read(self, name: str) -> Value:
        """An attribute or constant read."""
        if name == "errorqueue.count":
            return float(len(self._errors))
        smu, attribute = self._split(name)
        if attribute in CONSTANTS:
            return CONSTANTS[attribute]
        readers: dict[str, Callable[[], Value]] = {
            "source.func": lambda: float(smu.func_volts),
            "source.levelv": lambda: smu.levelv,
            "source.rangev": lambda: smu.rangev,
            "source.autorangev": lambda: float(smu.autorangev),
            "source.limiti": lambda: smu.limiti,
            "source.output": lambda: float(smu.output),
            "source.compliance": lambda: smu.compliance,
            "measure.rangei": lambda: smu.rangei,
            "measure.autorangei": lambda: float(smu.autorangei),
            "measure.nplc": lambda: smu.nplc,
        }
        if attribute not in readers:
            raise tsp_error(-286, f"attempt to index a nil value (`{name}')")
        return readers[attribute]()

    def _assign(self, name: str, values: list[Value]) -> None:
        """An attribute write, checked as the 2600 checks it."""
        smu, attribute = self._split(name)
        if attribute == "source.compliance" or attribute in CONSTANTS:
            raise tsp_error(-286, f"attempt to set a read-only attribute (`{name}')")
        if len(values) != 1 or isinstance(values[0], bool) or not isinstance(values[0], float):
            raise tsp_error(-286, f"`{name}' takes a number")
        value = values[0]
        writers: dict[str, Callable[[float], None]] = {
            "source.func": lambda v: setattr(smu, "func_volts", _choice(v, "source.func")),
            "source.levelv": lambda v: self._set_level(smu, v),
            "source.rangev": lambda v: self._set_vrange(smu, v),
            "source.autorangev": lambda v: self._set_vauto(smu, v),
            "source.limiti": lambda v: setattr(
                smu, "limiti", _bounded(v, MIN_LIMIT_CURRENT, MAX_LIMIT_CURRENT, "limiti")
            ),
            "source.output": lambda v: self._set_output(smu, v),
            "measure.rangei": lambda v: self._set_irange(smu, v),
            "measure.autorangei": lambda v: setattr(
                smu, "autorangei", _choice(v, "measure.autorangei")
            ),
            "measure.nplc": lambda v: setattr(smu, "nplc", _bounded(v, *NPLC_RANGE, "nplc")),
        }
        if attribute not in writers:
            raise tsp_error(-286, f"attempt to index a nil value (`{name}')")
        writers[attribute](value)

    def _set_level(self, smu: _Smu, volts: float) -> None:
        top = VOLTAGE_RANGES[-1] if smu.autorangev else smu.rangev
        _bounded(volts, -top, top, "levelv")
        if smu.autorangev:
            smu.rangev = _range_for(volts, VOLTAGE_RANGES)
        smu.levelv = volts
        smu.terminals()

    def _set_vrange(self, smu: _Smu, volts: float) -> None:
        selected = _range_for(volts, VOLTAGE_RANGES)
        if abs(smu.levelv) > selected:
            raise tsp_error(-221, f"rangev {selected:g} below the level {smu.levelv:g}")
        smu.rangev, smu.autorangev = selected, False

    def _set_vauto(self, smu: _Smu, value: float) -> None:
        smu.autorangev = _choice(value, "source.autorangev")
        if smu.autorangev:
            smu.rangev = _range_for(smu.levelv, VOLTAGE_RANGES)

    def _set_output(self, smu: _Smu, value: float) -> None:
        smu.output = _choice(value, "source.output")
        smu.terminals()

    def _set_irange(self, smu: _Smu, amps: float) -> None:
        smu.rangei, smu.autorangei = _range_for(amps, CURRENT_RANGES), False
