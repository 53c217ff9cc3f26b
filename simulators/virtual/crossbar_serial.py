"""A crossbar controller board speaking the XBAR serial protocol (docs/crossbar-protocol.md),
backed by a `CrossbarDevice`, served on loopback TCP so a driver connects with
`socket://127.0.0.1:PORT` exactly as it opens a real serial port.

`CrossbarBoardEmulator` is the firmware: it parses one command line and returns one reply line,
strictly (anything the protocol does not define is an `ERR` reply, never a guess). Word lines are
the device's rows, bit lines its columns. A device of weight w has conductance
G = g_ref + g_scale·w, so a read at V gives I = V·G; pulses at or above `v_switch` move the device
by one simulator pulse each (SET potentiates, RESET depresses); amplitude and width beyond that
only have to be within the limits. Sneak paths are not modelled: the bias scheme of unselected
lines is kept and reported, nothing more. `CrossbarSerialServer` puts one board on 127.0.0.1 on
the transport of `simulators.virtual.server.ScpiServer` (its faults, its stop that loses no
received line); a closed connection is a disconnect (the board grounds every line and forgets
the session), as the watchdog is when no command comes.
"""

from __future__ import annotations

import logging
import re
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from hil.core import Serving
from simulators.crossbar import CrossbarDevice
from simulators.virtual.scpi import ScpiDevice
from simulators.virtual.server import HOST, Faults, ScpiServer

log = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
LOG_LENGTH = 10_000
BIAS_SCHEMES = ("V/2", "V/3", "FLOAT", "GND")
_REAL = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
_COUNT = re.compile(r"\d+")
_Handler = Callable[[list[str]], str]


class BoardError(Exception):
    """A command the board refuses: becomes the reply `ERR <code> <text>`."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(f"ERR {code} {text}")
        self.code = code
        self.reply = f"ERR {code} {text}"


class BoardModel(BaseModel):
    """What the emulated board is: identity, hardware limits, conductance scale, switching."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    identity: str = "HIL,XBAR-EMULATOR,0,1.0"
    max_amplitude: float = Field(default=10.0, gt=0, description="V, pulse amplitude ceiling")
    max_read_voltage: float = Field(default=1.0, gt=0, description="V, read / VMM ceiling")
    min_width_ns: int = Field(default=10, ge=1, description="shortest pulse, ns")
    max_width_ns: int = Field(default=1_000_000, ge=1, description="longest pulse, ns")
    max_count: int = Field(default=10_000, ge=1, description="pulses per train")
    max_compliance: float = Field(default=10e-3, gt=0, description="A, compliance ceiling")
    g_ref: float = Field(default=50e-6, gt=0, description="S, conductance of weight 0")
    g_scale: float = Field(default=50e-6, gt=0, description="S per unit weight")
    v_switch: float = Field(default=0.8, gt=0, description="V, smallest pulse that switches")
    max_line: int = Field(default=8192, ge=64, description="bytes per command line")


@dataclass
class _Limits:
    vmax: float
    vread: float
    width_min: int
    width_max: int
    count_max: int

    def text(self) -> str:
        volts = f"{_num(self.vmax)} {_num(self.vread)}"
        return f"{volts} {self.width_min} {self.width_max} {self.count_max}"


def _num(value: float) -> str:
    """A number as the board writes it: full double precision, exponent form."""
    return f"{value:.12e}"


class CrossbarBoardEmulator:
    """The board's firmware over a `CrossbarDevice`: `handle(line)` → one reply line.

    Thread-safe: one lock serialises every command. `log` keeps the last `LOG_LENGTH`
    (command, reply) pairs.
    """

    def __init__(
        self, device: CrossbarDevice, model: BoardModel | None = None, *, watchdog: float = 5.0
    ) -> None:
        self.device = device
        self.model = model if model is not None else BoardModel()
        self.lock = threading.RLock()
        self.log: deque[tuple[str, str]] = deque(maxlen=LOG_LENGTH)
        self.default_watchdog = watchdog
        self._last = time.monotonic()
        self.disconnect()

    @property
    def shape(self) -> tuple[int, int]:
        """(word lines, bit lines)."""
        s = self.device.settings
        return (s.rows, s.cols)

    def disconnect(self) -> None:
        """The host went away: ground every line, forget the session (HELLO again)."""
        with self.lock:
            m = self.model
            self.session = False
            self.lines = "GND"  # GND, FLOAT or ACTIVE (a selection is biased)
            self.selected: tuple[int, int] | None = None
            self.limits = _Limits(
                m.max_amplitude, m.max_read_voltage, m.min_width_ns, m.max_width_ns, m.max_count
            )
            self.compliance = min(1e-4, m.max_compliance)
            self.bias = "V/3"
            self.watchdog = self.default_watchdog

    def handle(self, line: str) -> str:
        """Execute one command line (terminator removed); return the reply line."""
        with self.lock:
            now = time.monotonic()
            if now - self._last > self.watchdog and self.lines != "GND":  # idle too long
                log.debug("watchdog: %.3g s without a command, lines grounded", now - self._last)
                self._ground()
            self._last = now
            try:
                reply = self._execute(line)
            except BoardError as error:
                reply = error.reply
            except Exception as exc:  # the simulator refused: a hardware fault to the host
                reply = "ERR 50 " + " ".join(f"hardware fault: {exc}".split())
            self.log.append((line, reply))
            return reply

    # -- commands --------------------------------------------------------------------------------

    def _execute(self, line: str) -> str:
        words = line.split(" ")
        if not line or any(not w for w in words):
            raise BoardError(20, "empty command or double space")
        name, args = words[0], words[1:]
        if name == "HELLO":
            return self._hello(args)
        if not self.session:
            raise BoardError(11, "not initialised; send HELLO first")
        handler = self._handlers().get(name)
        if handler is None:
            raise BoardError(20, f"unknown command {name!r}")
        return handler(args)

    def _handlers(self) -> dict[str, _Handler]:
        return {
            "IDN?": self._idn,
            "HWLIMITS?": self._hwlimits,
            "LIMITS": self._set_limits,
            "LIMITS?": self._get_limits,
            "CC": self._set_cc,
            "CC?": lambda a: self._query(a, _num(self.compliance)),
            "BIAS": self._set_bias,
            "BIAS?": lambda a: self._query(a, self.bias),
            "WDT": self._set_wdt,
            "WDT?": lambda a: self._query(a, _num(self.watchdog)),
            "SEL": self._select,
            "SEL?": self._selection,
            "READ": self._read,
            "READROW": self._read_row,
            "PULSE": self._pulse,
            "VMM": self._vmm,
            "GND": self._gnd,
            "FLOAT": self._float,
            "PING": lambda a: self._query(a, ""),
        }

    def _hello(self, args: list[str]) -> str:
        _arity(args, 1)
        version = _count(args[0])
        if version != PROTOCOL_VERSION:
            raise BoardError(10, f"protocol version {version} unsupported; this board speaks 1")
        self.disconnect()
        self.session = True
        rows, cols = self.shape
        return f"OK XBAR {PROTOCOL_VERSION} {rows} {cols}"

    def _query(self, args: list[str], value: str) -> str:
        _arity(args, 0)
        return f"OK {value}".rstrip()

    def _idn(self, args: list[str]) -> str:
        return self._query(args, self.model.identity)

    def _hwlimits(self, args: list[str]) -> str:
        m = self.model
        hw = _Limits(
            m.max_amplitude, m.max_read_voltage, m.min_width_ns, m.max_width_ns, m.max_count
        )
        return self._query(args, f"{hw.text()} {_num(m.max_compliance)}")

    def _set_limits(self, args: list[str]) -> str:
        _arity(args, 5)
        m = self.model
        vmax = _within(_real(args[0]), 0, m.max_amplitude, 30, "vmax")
        vread = _within(_real(args[1]), 0, m.max_read_voltage, 30, "vread_max")
        width_min = int(_within(_count(args[2]), m.min_width_ns, m.max_width_ns, 30, "width_min"))
        width_max = int(_within(_count(args[3]), width_min, m.max_width_ns, 30, "width_max"))
        count_max = int(_within(_count(args[4]), 1, m.max_count, 30, "count_max"))
        self.limits = _Limits(vmax, vread, width_min, width_max, count_max)
        return "OK"

    def _get_limits(self, args: list[str]) -> str:
        return self._query(args, self.limits.text())

    def _set_cc(self, args: list[str]) -> str:
        _arity(args, 1)
        self.compliance = _within(_real(args[0]), 1e-12, self.model.max_compliance, 30, "CC")
        return "OK"

    def _set_bias(self, args: list[str]) -> str:
        _arity(args, 1)
        if args[0] not in BIAS_SCHEMES:
            raise BoardError(22, f"bias {args[0]!r} is not one of {' '.join(BIAS_SCHEMES)}")
        self.bias = args[0]
        return "OK"

    def _set_wdt(self, args: list[str]) -> str:
        _arity(args, 1)
        self.watchdog = _within(_real(args[0]), 0.1, 60.0, 30, "WDT")
        return "OK"

    def _select(self, args: list[str]) -> str:
        _arity(args, 2)
        rows, cols = self.shape
        wl = int(_within(_count(args[0]), 0, rows - 1, 30, "word line"))
        bl = int(_within(_count(args[1]), 0, cols - 1, 30, "bit line"))
        self.selected = (wl, bl)
        self.lines = "ACTIVE"
        return "OK"

    def _selection(self, args: list[str]) -> str:
        if self.selected is None:
            return self._query(args, "NONE")
        return self._query(args, f"{self.selected[0]} {self.selected[1]}")

    def _read_voltage(self, arg: str) -> float:
        v = _within(_real(arg), -self.model.max_read_voltage, self.model.max_read_voltage, 30, "V")
        return _within(v, -self.limits.vread, self.limits.vread, 31, "V")

    def _conductances(self) -> np.ndarray:
        m = self.model
        return m.g_ref + m.g_scale * self.device.read_state()

    def _complied(self, currents: np.ndarray) -> str:
        if float(np.max(np.abs(currents), initial=0.0)) > self.compliance:
            raise BoardError(40, f"compliance {_num(self.compliance)} A reached")
        return "OK " + " ".join(_num(float(i)) for i in np.ravel(currents))

    def _read(self, args: list[str]) -> str:
        _arity(args, 1)
        v = self._read_voltage(args[0])
        if self.selected is None:
            raise BoardError(32, "no device selected; send SEL first")
        wl, bl = self.selected
        return self._complied(np.array([v * self._conductances()[wl, bl]]))

    def _read_row(self, args: list[str]) -> str:
        _arity(args, 2)
        wl = int(_within(_count(args[0]), 0, self.shape[0] - 1, 30, "word line"))
        v = self._read_voltage(args[1])
        self.selected, self.lines = None, "GND"
        return self._complied(v * self._conductances()[wl])

    def _pulse(self, args: list[str]) -> str:
        _arity(args, 5)
        if args[0] not in ("SET", "RESET"):
            raise BoardError(22, f"polarity {args[0]!r} is not SET or RESET")
        m, lim = self.model, self.limits
        amplitude = _within(_real(args[1]), 0, m.max_amplitude, 30, "amplitude")
        width = _within(_count(args[2]), m.min_width_ns, m.max_width_ns, 30, "width")
        count = _within(_count(args[3]), 0, m.max_count, 30, "count")
        _within(_count(args[4]), 0, 10**9, 30, "gap")  # the emulator spends no time on it
        _within(amplitude, 0, lim.vmax, 31, "amplitude")
        _within(width, lim.width_min, lim.width_max, 31, "width")
        _within(count, 0, lim.count_max, 31, "count")
        if self.selected is None:
            raise BoardError(32, "no device selected; send SEL first")
        wl, bl = self.selected
        if amplitude * self._conductances()[wl, bl] > self.compliance:
            raise BoardError(41, "compliance tripped after 0 pulses")
        if count and amplitude >= m.v_switch:
            counts = np.zeros(self.shape, dtype=np.int64)
            counts[wl, bl] = count if args[0] == "SET" else -count
            self.device.apply_pulses(counts)
        return f"OK {int(count)}"

    def _vmm(self, args: list[str]) -> str:
        rows = self.shape[0]
        _arity(args, rows)
        volts = np.array([self._read_voltage(a) for a in args])
        m = self.model
        full = m.max_read_voltage
        y = self.device.measure((volts / full)[np.newaxis, :])[0]
        currents = m.g_ref * volts.sum() + m.g_scale * full * y
        self.selected, self.lines = None, "GND"
        return self._complied(currents)

    def _gnd(self, args: list[str]) -> str:
        _arity(args, 0)
        self._ground()
        return "OK"

    def _float(self, args: list[str]) -> str:
        _arity(args, 0)
        self.selected, self.lines = None, "FLOAT"
        return "OK"

    def _ground(self) -> None:
        self.selected, self.lines = None, "GND"


def _arity(args: list[str], n: int) -> None:
    if len(args) != n:
        raise BoardError(21, f"expected {n} argument(s), got {len(args)}")


def _real(text: str) -> float:
    if not _REAL.fullmatch(text):
        raise BoardError(22, f"{text!r} is not a number")
    return float(text)


def _count(text: str) -> int:
    if not _COUNT.fullmatch(text):
        raise BoardError(22, f"{text!r} is not a non-negative integer")
    return int(text)


def _within(value: float, low: float, high: float, code: int, what: str) -> float:
    if not low <= value <= high:
        scope = "hardware" if code == 30 else "session"
        raise BoardError(code, f"{what} {value:g} outside the {scope} range [{low:g}, {high:g}]")
    return value


_TO_SUB = bytes(range(128)) + b"\x1a" * 128
"""Byte map: a byte beyond ASCII becomes SUB (0x1A), which `_Wire` answers with ERR 24."""


class _Wire(ScpiDevice):
    """The board as `ScpiServer` serves a device: a command line in, its reply line out."""

    def __init__(self, board: CrossbarBoardEmulator) -> None:
        self.board = board
        super().__init__()

    def execute(self, message: str) -> str:
        if "\x1a" in message:
            return "ERR 24 non-ASCII byte in the command"
        return self.board.handle(message)


class _BoardServer(ScpiServer):
    """`ScpiServer` with the board's framing: a line of `max_line` bytes or more is answered
    `ERR 23` and discarded up to its LF, a non-ASCII line `ERR 24`; a closed connection grounds
    the board (the host went away)."""

    def __init__(self, board: CrossbarBoardEmulator, name: str) -> None:
        super().__init__(_Wire(board), name)
        self.board = board
        self._connection = threading.local()  # each connection has its own thread

    def _serve(self, client: socket.socket) -> None:
        self._connection.discarding = False
        try:
            super()._serve(client)
        finally:
            self.board.disconnect()

    def _lines(self, client: socket.socket, buffer: bytes) -> tuple[bytes, bool]:
        if self._connection.discarding:
            if b"\n" not in buffer:
                return b"", True
            buffer = buffer.split(b"\n", 1)[1]
            self._connection.discarding = False
        buffer, more = super()._lines(client, buffer)
        if more and len(buffer) >= self.board.model.max_line:
            client.sendall(b"ERR 23 line too long\n")
            self._connection.discarding = True
            return b"", True
        return buffer, more

    def _handle(self, client: socket.socket, raw: bytes) -> bool:
        return super()._handle(client, raw.translate(_TO_SUB))


class CrossbarSerialServer(Serving):
    """Serve one board on 127.0.0.1 (a free port); a context manager that starts and stops it.

    The transport is `ScpiServer`'s: a thread per connection, its `Faults`, and a `stop()` that
    still executes and answers every line already received (a `GND` sent just before the stop
    grounds the board, it is not lost); only the framing and the address (a pyserial URL) differ.
    """

    def __init__(self, board: CrossbarBoardEmulator, name: str = "crossbar") -> None:
        self.board = board
        self.name = name
        self._server = _BoardServer(board, name)

    @property
    def port(self) -> int:
        """The TCP port the OS assigned (after `start`)."""
        return self._server.port

    @property
    def url(self) -> str:
        """The pyserial URL of this board."""
        return f"socket://{HOST}:{self.port}"

    @property
    def faults(self) -> Faults:
        """The transport faults in force (`hil.virtual` sets them from a station file)."""
        return self._server.faults

    def set_faults(self, **changes: float | int | None) -> None:
        """Change fault settings atomically, e.g. `set_faults(garble=1)`."""
        self._server.set_faults(**changes)

    def clear_faults(self) -> None:
        """Switch every fault off."""
        self._server.clear_faults()

    def start(self) -> CrossbarSerialServer:
        """Bind a free loopback port and start accepting connections."""
        self._server.start()
        return self

    def stop(self) -> None:
        """Stop accepting; execute and answer what every connection sent, then close it."""
        self._server.stop()
