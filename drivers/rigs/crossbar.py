"""A memristive crossbar on a serial XBAR/1 controller or on an ArC TWO, as a `hil.core.Device`
with `ProgrammableState`, with the semantics of `simulators.crossbar.CrossbarDevice` as far as the
hardware allows.

Weight (i, j) is the device at board word line `word_lines[i]` and bit line `bit_lines[j]`.
Weights and conductances map linearly: W = (G − g_ref) / g_scale, G = I / read_voltage.

- `read_state()` reads every conductance at `read_voltage` and maps it to weights.
- `apply_pulses(counts)` sends `counts[i, j]` pulses to each device: SET trains (`set_pulse`) for
  positive counts, RESET trains (`reset_pulse`) for negative ones; every count is checked against
  the board's `max_count` before anything is sent; the lines are grounded afterwards.
- `measure(inputs)` drives the rows at `inputs × input_voltage` and reads the column currents
  I_j = Σ_i V_i G_ij, returned as x · W: y_j = (I_j / input_voltage − g_ref Σ_i x_i) / g_scale.
  The serial board does this in one `VMM` per input row; ArC TWO, whose pyarc2 API has no analog
  vector-matrix primitive, reads the conductances and applies I = V · G.
- `safe_state()` grounds every line (idempotent); `close()` grounds and releases the board.

A rig has no random number generator of its own (no `noise_streams`): its noise is the
hardware's. It keeps no clock time for measurements: on a wall clock they take what they take.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
from pydantic import Field, model_validator

from drivers.arc2 import Arc2Board, Arc2Settings
from drivers.crossbar_serial import CrossbarSerialBoard, CrossbarSerialSettings, PulseShape
from drivers.rigs.base import Rig, RigSettings
from hil.core import (
    Channel,
    Clock,
    DeviceSpec,
    FloatArray,
    IntArray,
    Role,
    SafetyViolation,
)


class CrossbarBoard(Protocol):
    """What a rig needs from a crossbar board driver."""

    @property
    def who(self) -> str: ...

    def connect(self) -> None: ...

    def read_array(self, vread: float) -> FloatArray:
        """Currents of every device at `vread`, word lines × bit lines, A."""
        ...

    def pulse_trains(self, counts: IntArray, set_pulse: PulseShape, reset: PulseShape) -> None:
        """Signed pulse counts per device (word lines × bit lines); grounded afterwards."""
        ...

    def go_safe(self) -> None: ...

    def close(self) -> None: ...


class CrossbarRigSettings(RigSettings):
    """What every crossbar rig needs: the array, its mapping, read and pulse parameters (lists,
    not tuples: a station file, validated strictly, can only give lists)."""

    name: str = Field(default="crossbar", min_length=1)
    rows: int = Field(ge=1, le=4096, description="weight rows (inputs)")
    cols: int = Field(ge=1, le=4096, description="weight columns (outputs)")
    word_lines: list[int] | None = Field(
        default=None, description="board word line of each row; None: 0 … rows−1"
    )
    bit_lines: list[int] | None = Field(
        default=None, description="board bit line of each column; None: 0 … cols−1"
    )
    read_voltage: float = Field(default=0.2, gt=0, allow_inf_nan=False, description="V")
    input_voltage: float = Field(
        default=0.2, gt=0, allow_inf_nan=False, description="V per unit of input"
    )
    input_range: float = Field(default=1.0, gt=0, allow_inf_nan=False, description="|x| limit")
    set_pulse: PulseShape = Field(description="potentiating pulse (positive counts)")
    reset_pulse: PulseShape = Field(description="depressing pulse (negative counts)")
    g_ref: float = Field(gt=0, allow_inf_nan=False, description="S, conductance of weight 0")
    g_scale: float = Field(gt=0, allow_inf_nan=False, description="S per unit weight")

    @property
    def lines(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(word line of each row, bit line of each column)."""
        words = range(self.rows) if self.word_lines is None else self.word_lines
        bits = range(self.cols) if self.bit_lines is None else self.bit_lines
        return tuple(words), tuple(bits)

    def check_board(self, word_lines: int, bit_lines: int, max_read: float, max_amp: float) -> None:
        """Refuse (ValueError) a mapping or parameter the board settings cannot take."""
        words, bits = self.lines
        for key, lines, n, size in (
            ("word_lines", words, self.rows, word_lines),
            ("bit_lines", bits, self.cols, bit_lines),
        ):
            if len(lines) != n or len(set(lines)) != n:
                raise ValueError(f"{key}: {n} distinct lines expected, got {list(lines)}")
            if not all(0 <= line < size for line in lines):
                raise ValueError(f"{key}: {list(lines)} beyond the board's 0 … {size - 1}")
        for key, volts in (
            ("read_voltage", self.read_voltage),
            ("input_voltage × input_range", self.input_voltage * self.input_range),
        ):
            if volts > max_read:
                raise ValueError(f"{key} {volts:g} V exceeds board.max_read_voltage {max_read:g}")
        for key, pulse in (("set_pulse", self.set_pulse), ("reset_pulse", self.reset_pulse)):
            if pulse.amplitude > max_amp:
                raise ValueError(f"{key}.amplitude {pulse.amplitude:g} V exceeds {max_amp:g} V")


class _CrossbarRig(Rig):
    """The rig's logic; subclasses say which board and how a vector-matrix product is read."""

    settings: CrossbarRigSettings

    def __init__(
        self, settings: CrossbarRigSettings, *, clock: Clock | None = None, instrument: Any = None
    ) -> None:
        """Connect the board (or adopt `instrument`: a serial port, a pyarc2 instrument)."""
        self.settings = s = settings
        self._clock = s.make_clock(clock)
        self._words, self._bits = (np.array(x, dtype=np.intp) for x in s.lines)
        self.board: CrossbarBoard = self._board(instrument)
        self.board.connect()
        inputs = [
            Channel(name=f"row{i}", role=Role.INPUT, min=-s.input_range, max=s.input_range)
            for i in range(s.rows)
        ]
        outputs = [Channel(name=f"col{j}", role=Role.OUTPUT, unit="a.u.") for j in range(s.cols)]
        self._spec = DeviceSpec(name=s.name, channels=(*inputs, *outputs))

    def _board(self, instrument: Any) -> CrossbarBoard:
        raise NotImplementedError

    def _vmm(self, volts: FloatArray) -> FloatArray:
        """Bit-line currents for word-line voltages (n × word lines → n × bit lines), A."""
        raise NotImplementedError

    def set_controls(self, values: FloatArray) -> None:
        """A crossbar has no control electrodes: only an empty array is accepted."""
        if np.asarray(values, dtype=float).shape != (0,):
            raise ValueError("set_controls: a crossbar has no control channels; use apply_pulses")

    def measure(self, inputs: FloatArray) -> FloatArray:
        """x · W for each input row (n × rows → n × cols), read as column currents."""
        s = self.settings
        x = np.asarray(inputs, dtype=float)
        if x.ndim != 2 or x.shape[1] != s.rows:
            raise ValueError(f"measure: inputs must be n × {s.rows}, got {x.shape}")
        bad = np.flatnonzero(~(np.abs(x) <= s.input_range).all(axis=0))
        if bad.size:
            column = x[:, bad[0]]
            worst = column[~(np.abs(column) <= s.input_range)][0]
            raise SafetyViolation(
                f"row{bad[0]}", float(worst), f"the input range ±{s.input_range:g} of {s.name}"
            )
        volts = np.zeros((x.shape[0], self._word_count()))
        volts[:, self._words] = x * s.input_voltage
        currents = self._vmm(volts)[:, self._bits]
        offset = s.g_ref * x.sum(axis=1, keepdims=True)
        y: FloatArray = (currents / s.input_voltage - offset) / s.g_scale
        return y

    def read_state(self) -> FloatArray:
        """The weights, from the conductances read at `read_voltage`."""
        s = self.settings
        currents = self.board.read_array(s.read_voltage)[np.ix_(self._words, self._bits)]
        weights: FloatArray = (currents / s.read_voltage - s.g_ref) / s.g_scale
        return weights

    def apply_pulses(self, pulses: npt.ArrayLike) -> None:
        """Signed pulse counts, rows × cols (positive: SET trains, negative: RESET trains)."""
        s = self.settings
        counts = np.asarray(pulses)
        if counts.shape != (s.rows, s.cols):
            raise ValueError(
                f"apply_pulses: counts must be {s.rows} × {s.cols}, got {counts.shape}"
            )
        if counts.dtype.kind not in "iu":
            if counts.dtype.kind != "f" or not np.all(np.isfinite(counts)):
                raise ValueError("apply_pulses: counts must be finite integers")
            if not np.array_equal(counts, np.rint(counts)):
                raise ValueError("apply_pulses: counts must be whole numbers")
        full = np.zeros(self._board_shape(), dtype=np.int64)
        full[np.ix_(self._words, self._bits)] = counts.astype(np.int64)
        self.board.pulse_trains(full, s.set_pulse, s.reset_pulse)

    def safe_state(self) -> None:
        """Ground every line (idempotent)."""
        self.board.go_safe()

    def close(self) -> None:
        """Ground every line and release the board (idempotent)."""
        self.board.close()

    def _word_count(self) -> int:
        return self._board_shape()[0]

    def _board_shape(self) -> tuple[int, int]:
        raise NotImplementedError


class SerialCrossbarRig(_CrossbarRig):
    """A crossbar on a lab-built controller speaking XBAR/1 (docs/crossbar-protocol.md)."""

    class Settings(CrossbarRigSettings):
        """The station file's `device:` block: the rig's keys plus `board` (the serial board)."""

        board: CrossbarSerialSettings

        @model_validator(mode="after")
        def _fits_board(self) -> SerialCrossbarRig.Settings:
            b = self.board
            self.check_board(b.word_lines, b.bit_lines, b.max_read_voltage, b.max_amplitude)
            return self

    settings: SerialCrossbarRig.Settings
    board: CrossbarSerialBoard

    def _board(self, instrument: Any) -> CrossbarSerialBoard:
        return CrossbarSerialBoard(self.settings.board, clock=self._clock, port=instrument)

    def _board_shape(self) -> tuple[int, int]:
        return (self.settings.board.word_lines, self.settings.board.bit_lines)

    def _vmm(self, volts: FloatArray) -> FloatArray:
        return np.vstack([self.board.vmm(v) for v in volts])


class Arc2CrossbarRig(_CrossbarRig):
    """A crossbar on an ArC TWO through pyarc2 (optional extra `arc2`)."""

    class Settings(CrossbarRigSettings):
        """The station file's `device:` block: the rig's keys plus `board` (the ArC TWO)."""

        board: Arc2Settings

        @model_validator(mode="after")
        def _fits_board(self) -> Arc2CrossbarRig.Settings:
            b = self.board
            rows, cols = len(b.row_channels), len(b.col_channels)
            self.check_board(rows, cols, b.max_read_voltage, b.max_amplitude)
            return self

    settings: Arc2CrossbarRig.Settings
    board: Arc2Board

    def _board(self, instrument: Any) -> Arc2Board:
        return Arc2Board(self.settings.board, instrument=instrument)

    def _board_shape(self) -> tuple[int, int]:
        return (self.board.word_lines, self.board.bit_lines)

    def _vmm(self, volts: FloatArray) -> FloatArray:
        return self.board.vmm(volts, self.settings.read_voltage)
