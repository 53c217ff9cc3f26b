"""A FAKE of `pyarc2.Instrument` (ArC TWO), backed by a `CrossbarDevice`.

ArC TWO hardware cannot exist here and pyarc2 is not installed, so this stands in for the
instrument in tests: same method names and argument order as pyarc2's `Instrument` (pyarc2.pyi:
`read_one(low, high, vread)`, `read_all(vread, order)`, `pulse_one(low, high, voltage, nanos)`,
`pulse_all(vpulse, nanos, order)`, `generate_ramp(...)`, `ground_all()`, `float_all()`,
`connect_to_gnd(chans)`, `execute()`, `wait()`, `busy()`), its enums (`BiasOrder`, `ReadAt`,
`ReadAfter`) and its error (`ArC2Error`). Like the real command buffer, pulses and channel
changes are only queued and take effect on `execute()`; reads return at once (the fake refuses
a read while queued commands wait, an ordering the real instrument would make surprising).

Every call is recorded in `calls` (name, arguments) for expected-call tests; arguments are checked
as the instrument would: 64 channels, |V| ≤ 10 V, integer nanoseconds ≥ 1, low ≠ high.

Layout (pyarc2 docs): channels 0–15 and 32–47 are the array's rows (ArC's "bitlines"), 16–31 and
48–63 its columns ("wordlines"); row k of the device is the k-th row channel in that order, column
k the k-th column channel; crosspoints beyond the device are open (0 A). A device of weight w has
G = g_ref + g_scale·w; a pulse of |V| ≥ v_switch moves it by one simulator pulse, potentiating
when the column side is positive. Pulses queued before one `execute()` reach the simulator as one
`apply_pulses` call (the simulator's parallel slots), so a fake and an in-process twin agree.
`read_all` returns the 32 × 32 array, rows × columns in the order above.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, Self

import numpy as np

from hil.core import FloatArray
from simulators.crossbar import CrossbarDevice

ROW_CHANNELS = (*range(0, 16), *range(32, 48))
COL_CHANNELS = (*range(16, 32), *range(48, 64))
MAX_VOLTAGE = 10.0
"""V: ArC TWO's standard output range is ±10 V."""


class ArC2Error(Exception):
    """What pyarc2 raises for an instrument-side failure."""


class _Variant:
    """One variant of a pyarc2 (Rust) enum: compared by identity, printed by name."""

    def __init__(self, name: str, voltage: float | None = None) -> None:
        self.name = name
        self.voltage = voltage

    def __repr__(self) -> str:
        return self.name if self.voltage is None else f"{self.name}({self.voltage:g})"


class BiasOrder:
    Rows = _Variant("BiasOrder.Rows")
    Cols = _Variant("BiasOrder.Cols")


class ReadAt:
    Never = _Variant("ReadAt.Never")
    Bias = _Variant("ReadAt.Bias")

    @staticmethod
    def Arb(voltage: float) -> _Variant:  # noqa: N802 (pyarc2's name)
        return _Variant("ReadAt.Arb", voltage)


class ReadAfter:
    Never = _Variant("ReadAfter.Never")
    Pulse = _Variant("ReadAfter.Pulse")
    Block = _Variant("ReadAfter.Block")
    Ramp = _Variant("ReadAfter.Ramp")


class FakeInstrument:
    """A recording, argument-checking stand-in for `pyarc2.Instrument` over a simulator."""

    def __init__(
        self,
        device: CrossbarDevice,
        *,
        g_ref: float = 50e-6,
        g_scale: float = 50e-6,
        v_switch: float = 0.8,
    ) -> None:
        s = device.settings
        if s.rows > len(ROW_CHANNELS) or s.cols > len(COL_CHANNELS):
            raise ValueError(f"ArC TWO holds at most 32 × 32 devices, not {s.rows} × {s.cols}")
        self.device = device
        self.g_ref, self.g_scale, self.v_switch = g_ref, g_scale, v_switch
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.queue: list[tuple[str, tuple[Any, ...]]] = []
        self.state = "float"  # after execute: "ground", "float"
        self.hard_ground: tuple[int, ...] = ()
        self._failures: dict[str, BaseException] = {}

    def fail_next(self, method: str, error: BaseException) -> None:
        """Make the next call of `method` raise `error` (after it is recorded)."""
        self._failures[method] = error

    # -- immediate operations --------------------------------------------------------------------

    def read_one(self, low: int, high: int, vread: float) -> float:
        self._record("read_one", low, high, vread)
        pair = self._pair(low, high)
        v = _voltage(vread)
        self._idle("read_one")
        if pair is None:
            return 0.0
        return float(v * self._conductances()[pair[0], pair[1]])

    def read_all(self, vread: float, order: _Variant) -> FloatArray:
        self._record("read_all", vread, order)
        v = _voltage(vread)
        _order(order)
        self._idle("read_all")
        s = self.device.settings
        out = np.zeros((len(ROW_CHANNELS), len(COL_CHANNELS)))
        out[: s.rows, : s.cols] = v * self._conductances()
        return out

    def busy(self) -> bool:
        self._record("busy")
        return False

    def wait(self) -> None:
        self._record("wait")

    # -- queued operations -----------------------------------------------------------------------

    def pulse_one(self, low: int, high: int, voltage: float, nanos: int) -> Self:
        self._record("pulse_one", low, high, voltage, nanos)
        self._pair(low, high)
        return self._queue("pulse_one", low, high, _voltage(voltage), _nanos(nanos))

    def pulse_all(self, vpulse: float, nanos: int, order: _Variant) -> Self:
        self._record("pulse_all", vpulse, nanos, order)
        _order(order)
        return self._queue("pulse_all", _voltage(vpulse), _nanos(nanos))

    def generate_ramp(
        self,
        low: int,
        high: int,
        vstart: float,
        vstep: float,
        vstop: float,
        pw_nanos: int,
        inter_nanos: int,
        num_pulses: int,
        read_at: _Variant,
        read_after: _Variant,
    ) -> Self:
        """Queue pulses from vstart to vstop by vstep, num_pulses each (no reads: the fake
        emulates only ReadAt.Never / ReadAfter.Never)."""
        args = (low, high, vstart, vstep, vstop, pw_nanos, inter_nanos, num_pulses)
        self._record("generate_ramp", *args, read_at, read_after)
        self._pair(low, high)
        start, step, stop = _voltage(vstart), float(vstep), _voltage(vstop)
        if step == 0 or not math.isfinite(step) or (stop - start) * step < 0:
            raise ArC2Error(f"ramp from {start:g} V to {stop:g} V cannot step by {step:g} V")
        if read_at is not ReadAt.Never or read_after is not ReadAfter.Never:
            raise ArC2Error("fake: ramps with reads are not emulated (use ReadAt/ReadAfter.Never)")
        n_steps = math.floor(round((stop - start) / step, 9)) + 1
        _nanos(pw_nanos)
        _count(inter_nanos, 0)
        repeats = _count(num_pulses, 1)
        for k in range(n_steps):
            v = start + k * step
            for _ in range(repeats):
                self.queue.append(("pulse_one", (low, high, v, pw_nanos)))
        return self

    def ground_all(self) -> Self:
        self._record("ground_all")
        return self._queue("ground_all")

    def float_all(self) -> Self:
        self._record("float_all")
        return self._queue("float_all")

    def connect_to_gnd(self, chans: Iterable[int]) -> Self:
        channels = tuple(int(_channel(c)) for c in np.asarray(list(chans)).ravel())
        self._record("connect_to_gnd", channels)
        return self._queue("connect_to_gnd", channels)

    def execute(self) -> Self:
        """Run the queue in order; consecutive pulses reach the simulator as one train."""
        self._record("execute")
        counts = np.zeros(self.device.weights.shape, dtype=np.int64)
        for name, args in self.queue:
            if name == "pulse_one":
                self._pulse(counts, *args)
            elif name == "pulse_all":
                if abs(args[0]) >= self.v_switch:
                    counts += 1 if args[0] > 0 else -1
            else:
                self._flush(counts)
                if name == "connect_to_gnd":
                    self.hard_ground = args[0]
                else:
                    self.state = "ground" if name == "ground_all" else "float"
        self._flush(counts)
        self.queue = []
        return self

    # -- helpers ---------------------------------------------------------------------------------

    def _record(self, name: str, *args: Any) -> None:
        self.calls.append((name, args))
        failure = self._failures.pop(name, None)
        if failure is not None:
            raise failure

    def _queue(self, name: str, *args: Any) -> Self:
        self.queue.append((name, args))
        return self

    def _idle(self, name: str) -> None:
        if self.queue:
            raise ArC2Error(f"fake: {name} while {len(self.queue)} queued command(s) wait")

    def _pair(self, low: int, high: int) -> tuple[int, int] | None:
        """(row, column) of the device between two channels, None for an open crosspoint."""
        lo, hi = _channel(low), _channel(high)
        if lo == hi:
            raise ArC2Error(f"low and high are the same channel {lo}")
        row, col = (lo, hi) if lo in ROW_CHANNELS else (hi, lo)
        if row not in ROW_CHANNELS or col not in COL_CHANNELS:
            raise ArC2Error(f"channels {lo} and {hi} are not a row and a column")
        r, c = ROW_CHANNELS.index(row), COL_CHANNELS.index(col)
        s = self.device.settings
        return (r, c) if r < s.rows and c < s.cols else None

    def _pulse(
        self, counts: np.ndarray[Any, Any], low: int, high: int, volts: float, _: int
    ) -> None:
        pair = self._pair(low, high)
        if pair is None or abs(volts) < self.v_switch:
            return
        column_positive = (volts > 0) == (high in COL_CHANNELS)
        counts[pair] += 1 if column_positive else -1

    def _flush(self, counts: np.ndarray[Any, Any]) -> None:
        if counts.any():
            self.device.apply_pulses(counts)
            counts[...] = 0

    def _conductances(self) -> FloatArray:
        g: FloatArray = self.g_ref + self.g_scale * self.device.read_state()
        return g


def _channel(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"a channel is an integer, not {type(value).__name__}")
    if not 0 <= value < 64:
        raise ArC2Error(f"channel {value} out of range 0..63")
    return int(value)


def _voltage(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating):
        raise TypeError(f"a voltage is a float, not {type(value).__name__}")
    v = float(value)
    if not (math.isfinite(v) and abs(v) <= MAX_VOLTAGE):
        raise ArC2Error(f"voltage {v!r} outside ±{MAX_VOLTAGE:g} V")
    return v


def _nanos(value: Any) -> int:
    return _count(value, 1)


def _count(value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"expected an integer, not {type(value).__name__}")
    if value < low:
        raise ArC2Error(f"{value} is below {low}")
    return int(value)


def _order(order: Any) -> None:
    if order is not BiasOrder.Rows and order is not BiasOrder.Cols:
        raise TypeError(f"order must be BiasOrder.Rows or BiasOrder.Cols, not {order!r}")
