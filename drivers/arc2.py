"""ArC TWO through `pyarc2` (optional extra `arc2`): a thin wrapper with the instrument-level
safety layer.

`pyarc2` is imported only when a board connects without an injected instrument, so the package
is never required; tests inject a fake of `pyarc2.Instrument` (simulators/virtual/arc2.py). The
enums (`BiasOrder`) are taken from the module that defines the instrument's class, so the real
library and a fake each supply their own.

The array's rows sit on ArC TWO's "bitline" channels (0–15, 32–47), its columns on the
"wordline" channels (16–31, 48–63) (pyarc2 docs); `row_channels` / `col_channels` say which,
in array order. Every voltage, width and count is checked against the settings before any call
(`SafetyViolation`); ArC TWO has no user-set compliance current (it measures up to ±10 mA), so
a read at or above `max_current` is a `DeviceSaturated`. Pulses are queued (`pulse_one`, one call
per pulse, SET positive on the column channel, RESET negative), the channels grounded, and the
queue run with `execute()` / `wait()`. `go_safe()` and `close()` ground every channel. Failures
(`ArC2Error`, transport errors) become `InstrumentError`s naming the board and the call.
"""

from __future__ import annotations

import importlib
import logging
import math
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from drivers.crossbar_serial import PulseShape
from drivers.faults import fault_class
from hil.core import (
    Closing,
    DeviceSaturated,
    FloatArray,
    InstrumentError,
    IntArray,
    SafetyViolation,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
ROW_CHANNELS = (*range(0, 16), *range(32, 48))
COL_CHANNELS = (*range(16, 32), *range(48, 64))
MAX_VOLTAGE = 10.0
"""V: ArC TWO's standard output range."""
MAX_CURRENT = 10e-3
"""A: the largest current ArC TWO measures."""


class Arc2Settings(BaseModel):
    """One ArC TWO: which unit, which firmware, which channels, and this station's limits
    (channel lists are lists, not tuples: a station file, validated strictly, gives lists)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(default="arc2", min_length=1, description="named in every error")
    port: int = Field(default=0, ge=0, description="EFM id (pyarc2.find_ids())")
    firmware: str = Field(min_length=1, description="path of the firmware to load")
    row_channels: list[int] = Field(
        default_factory=lambda: list(ROW_CHANNELS), min_length=1, max_length=32
    )
    col_channels: list[int] = Field(
        default_factory=lambda: list(COL_CHANNELS), min_length=1, max_length=32
    )
    max_amplitude: float = Field(gt=0, le=MAX_VOLTAGE, description="V, largest pulse")
    max_read_voltage: float = Field(gt=0, le=MAX_VOLTAGE, description="V, largest read")
    min_width_ns: int = Field(default=10, ge=1, description="shortest pulse, ns")
    max_width_ns: int = Field(ge=1, description="longest pulse, ns")
    max_count: int = Field(ge=1, le=100_000, description="most pulses per device and train")
    max_current: float = Field(
        default=MAX_CURRENT, gt=0, le=MAX_CURRENT, description="A, reads at or above saturate"
    )

    @model_validator(mode="after")
    def _channels(self) -> Arc2Settings:
        for key, chans, allowed in (
            ("row_channels", self.row_channels, ROW_CHANNELS),
            ("col_channels", self.col_channels, COL_CHANNELS),
        ):
            wrong = sorted(set(chans) - set(allowed))
            if wrong:
                raise ValueError(f"{key}: {wrong} are not ArC TWO {key[:3]} channels {allowed}")
            if len(set(chans)) != len(chans):
                raise ValueError(f"{key}: a channel is listed twice")
        if self.min_width_ns > self.max_width_ns:
            raise ValueError(f"min_width_ns {self.min_width_ns} exceeds max_width_ns")
        return self


class Arc2Board(Closing):
    """A crossbar on one ArC TWO; word line i is `row_channels[i]`, bit line j `col_channels[j]`."""

    def __init__(self, settings: Arc2Settings, instrument: Any = None) -> None:
        """`instrument`: a `pyarc2.Instrument` (or a fake) to adopt; None opens one at connect."""
        self.settings = settings
        self._given = instrument
        self.instrument: Any = None
        self._library: Any = None

    @property
    def who(self) -> str:
        s = self.settings
        return f"{s.name} (ArC TWO #{s.port})"

    @property
    def word_lines(self) -> int:
        return len(self.settings.row_channels)

    @property
    def bit_lines(self) -> int:
        return len(self.settings.col_channels)

    # -- connection --------------------------------------------------------------------------------

    def connect(self) -> None:
        """Open (or adopt) the instrument and ground every channel."""
        s = self.settings
        if self._given is not None:
            instrument = self._given
        else:
            library = self._call("import pyarc2", lambda: importlib.import_module("pyarc2"))
            instrument = self._call(
                f"Instrument({s.port}, {s.firmware!r})",
                lambda: library.Instrument(s.port, s.firmware),
            )
        self._library = importlib.import_module(type(instrument).__module__)
        self.instrument = instrument
        try:
            self.ground_all()
        except BaseException:
            self.instrument = None
            raise
        log.info("%s connected: %d × %d", self.who, self.word_lines, self.bit_lines)

    def ground_all(self) -> None:
        """Every channel to 0 V, then run the queue."""
        self._run("ground_all, execute, wait", lambda i: i.ground_all().execute().wait())

    def go_safe(self) -> None:
        """Ground every channel; a no-op when not connected. Idempotent."""
        if self.instrument is not None:
            self.ground_all()

    def close(self) -> None:
        """Ground every channel and release the instrument; idempotent."""
        if self.instrument is None:
            return
        try:
            self.go_safe()
        finally:
            self.instrument = None

    # -- operations ------------------------------------------------------------------------------

    def read(self, word: int, bit: int, vread: float) -> float:
        """Current through one device at `vread`, A (`read_one(row, column, vread)`)."""
        low, high = self._channels(word, bit)
        self._check_voltage("read voltage", vread)
        action = f"read_one({low}, {high}, {vread:g})"
        current = float(self._run(action, lambda i: i.read_one(low, high, float(vread))))
        self._unsaturated(np.array([current]))
        return current

    def read_array(self, vread: float) -> FloatArray:
        """Currents of every device at `vread` (`read_all`), word lines × bit lines, A."""
        self._check_voltage("read voltage", vread)
        order = self._library.BiasOrder.Rows
        raw = self._run(f"read_all({vread:g}, {order})", lambda i: i.read_all(float(vread), order))
        grid = np.asarray(raw, dtype=float)
        rows = [ROW_CHANNELS.index(c) for c in self.settings.row_channels]
        cols = [COL_CHANNELS.index(c) for c in self.settings.col_channels]
        currents: FloatArray = grid[np.ix_(rows, cols)]
        self._unsaturated(currents)
        return currents

    def pulse_trains(self, counts: IntArray, set_pulse: PulseShape, reset: PulseShape) -> None:
        """`counts[i, j]` pulses on each device (positive: SET, negative: RESET), queued as one
        batch (channels released from ground first, grounded after), then executed."""
        s = self.settings
        n = np.asarray(counts)
        if n.shape != (self.word_lines, self.bit_lines) or n.dtype.kind not in "iu":
            raise ValueError(
                f"{self.who}: counts must be integers of shape {(self.word_lines, self.bit_lines)}"
            )
        for shape in (set_pulse, reset):
            self._check("amplitude", shape.amplitude, 0.0, s.max_amplitude, "V")
            self._check("pulse width", shape.width_ns, s.min_width_ns, s.max_width_ns, "ns")
        self._check("pulse count", float(np.abs(n).max(initial=0)), 0, s.max_count, "pulses")
        plan: list[tuple[int, int, float, int]] = []
        for (i, j), count in np.ndenumerate(n):
            shape, sign = (set_pulse, 1.0) if count > 0 else (reset, -1.0)
            low, high = self._channels(i, j)
            plan += [(low, high, sign * shape.amplitude, shape.width_ns)] * abs(int(count))
        if not plan:
            return
        action = f"{len(plan)} × pulse_one, ground_all, execute, wait"
        self._run(action, lambda i: _queue_pulses(i, plan).ground_all().execute().wait())

    def vmm(self, volts: FloatArray, vread: float) -> FloatArray:
        """Bit-line currents for word-line voltages (n × word lines → n × bit lines), A.

        pyarc2 offers no analog vector-matrix primitive, so this reads every conductance at
        `vread` (`read_all`) and applies Ohm's and Kirchhoff's laws: I = V · G.
        """
        v = np.asarray(volts, dtype=float)
        for value in v.ravel():
            self._check_voltage("word-line voltage", float(value))
        conductances = self.read_array(vread) / vread
        currents: FloatArray = v @ conductances
        return currents

    # -- checks and calls ------------------------------------------------------------------------

    def _channels(self, word: int, bit: int) -> tuple[int, int]:
        s = self.settings
        if not (0 <= word < self.word_lines and 0 <= bit < self.bit_lines):
            raise ValueError(f"{self.who}: no device at word line {word}, bit line {bit}")
        return s.row_channels[word], s.col_channels[bit]

    def _check(self, what: str, value: float, low: float, high: float, unit: str) -> None:
        if not (math.isfinite(value) and low <= value <= high):
            raise SafetyViolation(
                f"{self.settings.name}: {what}",
                value,
                f"the range [{low:g}, {high:g}] {unit} of {self.who}",
                "change it in the station file if the device allows it",
            )

    def _check_voltage(self, what: str, volts: float) -> None:
        top = self.settings.max_read_voltage
        self._check(what, volts, -top, top, "V")

    def _unsaturated(self, currents: FloatArray) -> None:
        peak = float(np.max(np.abs(currents), initial=0.0))
        if not peak < self.settings.max_current:
            raise DeviceSaturated(
                f"{self.who}: read {peak:g} A, at or above the {self.settings.max_current:g} A "
                "measurement limit; the reading is clipped (lower the read voltage)"
            )

    def _run(self, action: str, fn: Callable[[Any], T]) -> T:
        if self.instrument is None:
            raise InstrumentError(f"{self.who}: not connected; call connect() first ({action})")
        instrument = self.instrument
        return self._call(action, lambda: fn(instrument))

    def _call(self, action: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except (InstrumentError, SafetyViolation):
            raise
        except ImportError as exc:
            raise InstrumentError(
                f"{self.who}: {action} failed ({exc}); install the optional extra `arc2` "
                "(pyarc2) or inject an instrument"
            ) from exc
        except Exception as exc:
            kind = InstrumentError if type(exc).__name__ == "ArC2Error" else fault_class(exc)
            if kind is None:
                raise
            raise kind(f"{self.who}: {action} failed ({type(exc).__name__}: {exc})") from exc


def _queue_pulses(instrument: Any, plan: Sequence[tuple[int, int, float, int]]) -> Any:
    """Release every channel from ground, then queue one `pulse_one` per pulse."""
    instrument.connect_to_gnd(np.array([], dtype=np.uint64))
    for low, high, volts, nanos in plan:
        instrument.pulse_one(low, high, volts, nanos)
    return instrument
