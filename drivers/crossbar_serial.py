"""Driver for lab-built crossbar controllers speaking the XBAR serial protocol, version 1
(docs/crossbar-protocol.md), through pyserial.

The port is opened with `serial.serial_for_url`, so a real port (`/dev/ttyACM0`, `COM3`) and a
virtual board (`socket://127.0.0.1:PORT`) take the same path; every read has a timeout. At
connect the driver checks the protocol version and the array size, refuses settings beyond the
board's hardware limits, writes the session limits, compliance, bias scheme and watchdog and reads
each back (a mismatch refuses to start), then grounds every line. Every amplitude, width, count
and voltage is checked against the settings before it is sent (`SafetyViolation`, nothing sent);
faults become `hil.core` `InstrumentError`s naming the board, the command and the reply.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import math
from collections.abc import Callable, Sequence
from typing import Any, Literal, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from drivers.faults import RetrySettings, fault_class, with_retry
from hil.core import (
    Clock,
    Closing,
    DeviceSaturated,
    FloatArray,
    InstrumentError,
    InstrumentProtocolError,
    IntArray,
    SafetyViolation,
    WallClock,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
PROTOCOL_VERSION = 1
Bias = Literal["V/2", "V/3", "FLOAT", "GND"]

_SATURATED = {40, 41}  # compliance reached in a read / tripped in a pulse train
_PROTOCOL = {20, 21, 22, 23, 24}  # the board could not parse what it received


class PulseShape(BaseModel):
    """One SET or RESET pulse: amplitude (magnitude, V), width and gap (ns)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    amplitude: float = Field(gt=0, allow_inf_nan=False, description="V, magnitude")
    width_ns: int = Field(ge=1, description="ns per pulse")
    gap_ns: int = Field(default=1000, ge=0, le=10**9, description="ns between pulses")


class CrossbarSerialSettings(BaseModel):
    """A serial crossbar board: where it is, what it must be, and the limits of this station."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(default="crossbar", min_length=1, description="named in every error")
    url: str = Field(min_length=1, description="pyserial URL: /dev/ttyACM0, socket://host:port")
    baudrate: int = Field(default=115200, gt=0)
    timeout: float = Field(default=1.0, gt=0, le=60, description="s per reply (plus trains)")
    retry: RetrySettings = RetrySettings()
    word_lines: int = Field(ge=1, le=4096, description="expected array size: word lines")
    bit_lines: int = Field(ge=1, le=4096, description="expected array size: bit lines")
    max_amplitude: float = Field(gt=0, le=100, description="V, largest pulse amplitude")
    max_read_voltage: float = Field(gt=0, le=100, description="V, largest read / VMM voltage")
    min_width_ns: int = Field(default=10, ge=1, description="shortest pulse, ns")
    max_width_ns: int = Field(ge=1, description="longest pulse, ns")
    max_count: int = Field(ge=1, description="most pulses in one train")
    compliance_current: float = Field(gt=0, le=1, description="A, both polarities")
    bias: Bias = Field(default="V/3", description="unselected lines: V/2, V/3, FLOAT, GND")
    watchdog: float = Field(default=5.0, ge=0.1, le=60, description="s without a command → GND")

    @model_validator(mode="after")
    def _ordered(self) -> CrossbarSerialSettings:
        if self.min_width_ns > self.max_width_ns:
            raise ValueError(f"min_width_ns {self.min_width_ns} exceeds max_width_ns")
        return self


class CrossbarSerialBoard(Closing):
    """One XBAR/1 board on a serial port (or anything `serial_for_url` opens)."""

    def __init__(
        self, settings: CrossbarSerialSettings, *, clock: Clock | None = None, port: Any = None
    ) -> None:
        """`port`: an open pyserial-like object to adopt (tests); None opens `settings.url`."""
        self.settings = settings
        self.clock: Clock = clock if clock is not None else WallClock()
        self._given = port
        self.port: Any = None
        self.identity = ""
        self._command: str | None = None
        self._reply: str | None = None

    @property
    def who(self) -> str:
        """How errors name the board: its name and identity (or URL)."""
        return f"{self.settings.name} ({self.identity or self.settings.url})"

    # -- connection --------------------------------------------------------------------------------

    def connect(self) -> None:
        """Open the port, check version, size and hardware limits, write and read back the
        session settings, ground every line. A refusal releases the port and raises."""
        s = self.settings
        try:
            self.port = self._given if self._given is not None else self._open()
        except Exception as exc:
            raise self._fault("connect", exc) from exc
        try:
            self._handshake()
            self._configure()
            self.ground_all()
        except BaseException:
            self._release()
            raise
        log.info("%s connected: %d × %d lines", self.who, s.word_lines, s.bit_lines)

    def _open(self) -> Any:
        serial = importlib.import_module("serial")  # pyserial ships no type stubs
        s = self.settings
        return serial.serial_for_url(
            s.url, baudrate=s.baudrate, timeout=s.timeout, write_timeout=s.timeout
        )

    def _handshake(self) -> None:
        s = self.settings
        with contextlib.suppress(Exception):
            self.port.reset_input_buffer()
        reply = self._query("handshake", f"HELLO {PROTOCOL_VERSION}")
        well_formed = len(reply) == 4 and reply[2].isdigit() and reply[3].isdigit()
        if not well_formed or reply[:2] != ["XBAR", str(PROTOCOL_VERSION)]:
            raise InstrumentProtocolError(
                f"{self.who}: handshake: sent 'HELLO 1', reply {self._reply!r} is not "
                "'OK XBAR 1 <word lines> <bit lines>'"
            )
        size = (int(reply[2]), int(reply[3]))
        if size != (s.word_lines, s.bit_lines):
            raise InstrumentError(
                f"{self.who}: the board has {size[0]} × {size[1]} lines, the settings expect "
                f"{s.word_lines} × {s.bit_lines}; refusing to start (check word_lines/bit_lines)"
            )
        self.identity = " ".join(self._query("identify", "IDN?"))

    def _configure(self) -> None:
        s = self.settings
        hw = self._numbers("hardware limits", "HWLIMITS?", 6)
        wanted = [
            ("max_amplitude", s.max_amplitude, hw[0], "≤"),
            ("max_read_voltage", s.max_read_voltage, hw[1], "≤"),
            ("min_width_ns", s.min_width_ns, hw[2], "≥"),
            ("max_width_ns", s.max_width_ns, hw[3], "≤"),
            ("max_count", s.max_count, hw[4], "≤"),
            ("compliance_current", s.compliance_current, hw[5], "≤"),
        ]
        for key, value, limit, rule in wanted:
            if (value > limit) if rule == "≤" else (value < limit):
                raise InstrumentError(
                    f"{self.who}: {key} {value:g} is beyond the board's hardware limit {limit:g}; "
                    "refusing to start (lower it in the station file)"
                )
        limits = [
            s.max_amplitude,
            s.max_read_voltage,
            s.min_width_ns,
            s.max_width_ns,
            s.max_count,
        ]
        self._write("set limits", "LIMITS " + " ".join(_fmt(v) for v in limits))
        read = self._numbers("limits", "LIMITS?", 5)
        for key, value, back in zip(
            ("max_amplitude", "max_read_voltage", "min_width_ns", "max_width_ns", "max_count"),
            limits,
            read,
            strict=True,
        ):
            self._check_readback(key, value, back)
        self._write("set compliance", f"CC {_fmt(s.compliance_current)}")
        (cc,) = self._numbers("compliance", "CC?", 1)
        self._check_readback("compliance_current", s.compliance_current, cc)
        self._write("set bias", f"BIAS {s.bias}")
        self._check_readback("bias", s.bias, " ".join(self._query("bias", "BIAS?", 1)))
        self._write("set watchdog", f"WDT {_fmt(s.watchdog)}")
        (wdt,) = self._numbers("watchdog", "WDT?", 1)
        self._check_readback("watchdog", s.watchdog, wdt)

    def _check_readback(self, key: str, written: float | str, read: float | str) -> None:
        same = (
            math.isclose(float(read), float(written), rel_tol=1e-9)
            if isinstance(written, int | float)
            else read == written
        )
        if not same:
            raise InstrumentError(
                f"{self.who}: setting {key} was written as {written!r} but reads back "
                f"{read!r}; refusing to start"
            )

    def close(self) -> None:
        """Ground every line (best effort) and release the port; idempotent."""
        if self.port is None:
            return
        try:
            self.go_safe()
        finally:
            self._release()

    def _release(self) -> None:
        port, self.port = self.port, None
        if port is not None:
            with contextlib.suppress(Exception):
                port.close()

    # -- operations ------------------------------------------------------------------------------

    def ground_all(self) -> None:
        """Every line to 0 V, nothing selected."""
        self._write("ground all", "GND")

    def float_all(self) -> None:
        """Every line high impedance, nothing selected."""
        self._write("float all", "FLOAT")

    def go_safe(self) -> None:
        """Ground every line; a no-op when not connected. Idempotent."""
        if self.port is not None:
            self.ground_all()

    def select(self, word: int, bit: int) -> None:
        """Select the device at word line `word`, bit line `bit`."""
        s = self.settings
        self._check_index("word line", word, s.word_lines)
        self._check_index("bit line", bit, s.bit_lines)
        self._write("select", f"SEL {word} {bit}")

    def read(self, vread: float) -> float:
        """Current through the selected device at `vread`, A."""
        self._check_voltage("read voltage", vread)
        (current,) = self._numbers("read", f"READ {_fmt(vread)}", 1)
        return current

    def read_row(self, word: int, vread: float) -> FloatArray:
        """Currents on every bit line with word line `word` at `vread`, A."""
        self._check_index("word line", word, self.settings.word_lines)
        self._check_voltage("read voltage", vread)
        command = f"READROW {word} {_fmt(vread)}"
        return np.array(self._numbers("read row", command, self.settings.bit_lines))

    def pulse(
        self, polarity: Literal["SET", "RESET"], shape: PulseShape, count: int | np.integer[Any]
    ) -> int:
        """A train of `count` pulses on the selected device; returns the pulses delivered."""
        s = self.settings
        if isinstance(count, bool) or not isinstance(count, int | np.integer):
            raise TypeError(f"pulse count must be an integer, got {count!r}")
        self._check("amplitude", shape.amplitude, 0.0, s.max_amplitude, "V")
        self._check("pulse width", shape.width_ns, s.min_width_ns, s.max_width_ns, "ns")
        self._check("pulse count", int(count), 0, s.max_count, "pulses")
        command = (
            f"PULSE {polarity} {_fmt(shape.amplitude)} {shape.width_ns} {int(count)} {shape.gap_ns}"
        )
        duration = count * (shape.width_ns + shape.gap_ns) * 1e-9
        (delivered,) = self._call("pulse", lambda: self._exchange(command, 1, duration))
        return int(delivered)

    def vmm(self, volts: Sequence[float] | FloatArray) -> FloatArray:
        """Drive the word lines at `volts` (one per line), read every bit-line current, A."""
        v = np.asarray(volts, dtype=float)
        if v.shape != (self.settings.word_lines,):
            raise ValueError(f"vmm: {self.settings.word_lines} voltages expected, got {v.shape}")
        for i, value in enumerate(v):
            self._check_voltage(f"word line {i}", float(value))
        command = "VMM " + " ".join(_fmt(float(x)) for x in v)
        return np.array(self._numbers("vmm", command, self.settings.bit_lines))

    def read_array(self, vread: float) -> FloatArray:
        """Currents of every device at `vread`, word lines × bit lines, A (row by row)."""
        return np.vstack([self.read_row(w, vread) for w in range(self.settings.word_lines)])

    def pulse_trains(self, counts: IntArray, set_pulse: PulseShape, reset: PulseShape) -> None:
        """`counts[w, b]` pulses on each device (positive: SET trains, negative: RESET trains),
        device by device; every value is checked before the first is sent; grounded after."""
        s = self.settings
        n = np.asarray(counts)
        if n.shape != (s.word_lines, s.bit_lines) or n.dtype.kind not in "iu":
            raise ValueError(
                f"{self.who}: counts must be integers of shape {(s.word_lines, s.bit_lines)}"
            )
        for shape in (set_pulse, reset):
            self._check("amplitude", shape.amplitude, 0.0, s.max_amplitude, "V")
            self._check("pulse width", shape.width_ns, s.min_width_ns, s.max_width_ns, "ns")
        self._check("pulse count", float(np.abs(n).max(initial=0)), 0, s.max_count, "pulses")
        try:
            for (w, b), count in np.ndenumerate(n):
                if count:
                    self.select(w, b)
                    polarity: Literal["SET", "RESET"] = "SET" if count > 0 else "RESET"
                    self.pulse(polarity, set_pulse if count > 0 else reset, abs(int(count)))
        except BaseException:
            with contextlib.suppress(InstrumentError):
                self.go_safe()
            raise
        self.ground_all()

    def ping(self) -> None:
        """Keep the watchdog from grounding the array."""
        self._query("ping", "PING", 0)

    # -- checks ----------------------------------------------------------------------------------

    def _check(self, what: str, value: float, low: float, high: float, unit: str) -> None:
        if not (math.isfinite(value) and low <= value <= high):
            raise SafetyViolation(
                f"{self.settings.name}: {what}",
                value,
                f"the range [{low:g}, {high:g}] {unit} of {self.who}".replace("  ", " "),
                "change it in the station file if the device allows it",
            )

    def _check_voltage(self, what: str, volts: float) -> None:
        top = self.settings.max_read_voltage
        self._check(what, volts, -top, top, "V")

    def _check_index(self, what: str, index: int, n: int) -> None:
        if isinstance(index, bool) or not isinstance(index, int | np.integer) or not 0 <= index < n:
            raise ValueError(f"{self.who}: {what} {index!r} is not in 0..{n - 1}")

    # -- the wire --------------------------------------------------------------------------------

    def _write(self, action: str, command: str) -> None:
        """A command that changes state: sent once, never retried; the reply must be `OK`."""
        self._call(action, lambda: self._exchange(command, 0))

    def _query(self, action: str, command: str, n: int | None = None) -> list[str]:
        """An idempotent query, retried on timeouts and garbled replies."""
        return self._retried(action, lambda: self._exchange(command, n))

    def _numbers(self, action: str, command: str, n: int) -> list[float]:
        """A query answered by `n` finite numbers (a garbled number is retried too)."""
        return self._retried(action, lambda: _finite(self._exchange(command, n)))

    def _retried(self, action: str, fn: Callable[[], T]) -> T:
        return with_retry(
            lambda: self._call(action, fn), self.settings.retry, self.clock.advance, self._flush
        )

    def _call(self, action: str, fn: Callable[[], T]) -> T:
        if self.port is None:
            raise InstrumentError(f"{self.who}: not connected; call connect() first ({action})")
        try:
            return fn()
        except (InstrumentError, SafetyViolation):
            raise
        except Exception as exc:
            if fault_class(exc) is None:
                raise
            raise self._fault(action, exc) from exc

    def _exchange(self, command: str, n: int | None, extra_time: float = 0.0) -> list[str]:
        """Send one line, read one reply line; `OK` fields (n of them, if given) or an error."""
        self._command, self._reply = command, None
        wait = self.settings.timeout + extra_time
        if self.port.timeout != wait:  # a real port reconfigures on every change
            self.port.timeout = wait
        self.port.write((command + "\n").encode("ascii"))
        raw: bytes = self.port.readline()
        if not raw.endswith(b"\n"):
            raise TimeoutError(f"no complete reply within {wait:g} s")
        self._reply = raw.decode("ascii").rstrip("\r\n")  # UnicodeDecodeError: a protocol fault
        fields = self._reply.split(" ")
        if fields[0] == "ERR" and len(fields) >= 3 and fields[1].isdigit():
            raise self._board_error(int(fields[1]), command)
        if fields[0] != "OK":
            raise ValueError("the reply is neither OK nor ERR")
        values = fields[1:]
        if n is not None and len(values) != n:
            raise ValueError(f"expected {n} value(s) after OK, got {len(values)}")
        return values

    def _board_error(self, code: int, command: str) -> InstrumentError:
        kind: type[InstrumentError] = InstrumentError
        if code in _SATURATED:
            kind = DeviceSaturated
        elif code in _PROTOCOL:
            kind = InstrumentProtocolError
        return kind(f"{self.who}: the board refused {command!r}: {self._reply!r}")

    def _fault(self, action: str, exc: BaseException) -> InstrumentError:
        kind = fault_class(exc) or InstrumentError
        got = "no reply" if self._reply is None else f"reply {self._reply!r}"
        return kind(
            f"{self.who}: {action} failed: sent {self._command!r}, {got} "
            f"({type(exc).__name__}: {exc})"
        )

    def _flush(self) -> None:
        """Drop a late reply before a retry, so it is not taken for the next one."""
        with contextlib.suppress(Exception):
            self.port.reset_input_buffer()


def _fmt(value: float) -> str:
    """A number on the wire: integers as integers, others with 12 significant digits."""
    if isinstance(value, int) or float(value).is_integer():
        return str(int(value))
    return f"{value:.12g}"


def _finite(fields: list[str]) -> list[float]:
    """The reply's fields as finite numbers; anything else is a protocol fault (ValueError)."""
    values = [float(f) for f in fields]
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"non-finite number in {fields!r}")
    return values
