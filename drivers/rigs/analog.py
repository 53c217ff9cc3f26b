"""An analog chip on one SCPI DAC/ADC board, declared in the station file.

Every driven channel of the chip (data input or trainable control) is one analog output of the
board, every measured node one analog input. Channel values are in the chip's units: a channel's
`scale` says how many of them one board volt is (an input code per volt, an output LSB per volt),
so the board sends `value / scale` volts and an output reads `volts × scale`. `measure` is one DC
plateau per input row: set the inputs, wait `settle_time`, read every output (the board averages
`sample_count` samples of `reading_time` each).

Safety here is the instrument layer's (DESIGN.md, layer 1): the rig refuses a value outside a
channel's declared range before anything is sent, the board refuses a voltage outside its AO
range or `max_voltage`; the experiment guard in front of the rig checks limits and transitions.
`safe_state()` ramps every AO to 0 V within the board's slew and switches the outputs off; they
come back on at 0 V with the next request.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import Field, ValidationInfo, model_validator

from drivers.rigs.base import (
    PlateauSettings,
    Rig,
    RigChannelBase,
    entry_settings,
    require_output,
    strict_file,
)
from drivers.scpi_daq import AI_IDS, AO_IDS, ScpiDaqBoard, ScpiDaqSettings
from hil.core import Channel, Clock, DeviceSpec, FloatArray, Role, VirtualClock

BOARD_TYPE = "scpi-daq"
"""The `type:` of the board's entry under `instruments`."""


@dataclass(frozen=True)
class Wire:
    """One board terminal wired to one chip channel."""

    instrument: str
    kind: str  # the entry's `type:`
    channel: str
    role: Role
    scale: float  # units of the channel per board volt
    terminal: int  # the board channel: AO 1–99, AI 101–199


class BoardChannel(RigChannelBase):
    """One channel of the chip and the board channel that drives or reads it (values in
    `unit`)."""

    board: int = Field(description="board channel: AO 1–99 (driven), AI 101–199 (outputs)")
    scale: float = Field(default=1.0, description="units of the channel per board volt")

    @model_validator(mode="after")
    def _consistent(self) -> BoardChannel:
        if self.scale == 0 or not math.isfinite(self.scale):
            raise ValueError(f"scale {self.scale!r} must be finite and non-zero")
        ids = AO_IDS if self.driven else AI_IDS
        if self.board not in ids:
            raise ValueError(f"board channel {self.board} of an {self.role} must be in {ids}")
        if self.driven:
            self.check_range()
        return self


class AnalogRig(Rig):
    """A `hil.core.Device` on one SCPI DAC/ADC board (an analog chip, say)."""

    class Settings(PlateauSettings):
        """The station file's `device:` block of an analog-chip rig (`reading_time`: s per
        sample, the board's NPLC at the mains)."""

        name: str = Field(default="analog-chip", min_length=1)
        instruments: dict[str, dict[str, Any]] = Field(
            description="the one board: name → {type: scpi-daq, …its settings}"
        )
        channels: dict[str, BoardChannel] = Field(description="chip channel → role, board, range")

        @model_validator(mode="after")
        def _wired(self, info: ValidationInfo) -> AnalogRig.Settings:
            b = self.board(strict=strict_file(info))
            where_b = f"instruments.{b.name}"
            used = [c.board for c in self.channels.values()]
            for name, chan in self.channels.items():
                where = f"channels.{name}"
                if used.count(chan.board) > 1:
                    raise ValueError(f"{where}: board channel {chan.board} is wired twice")
                if not chan.driven:
                    if chan.board not in b.ai:
                        raise ValueError(f"{where}: AI {chan.board} is not under {where_b}.ai")
                    continue
                if chan.board not in b.ao:
                    raise ValueError(f"{where}: AO {chan.board} is not under {where_b}.ao")
                top = min(b.ao[chan.board], b.max_voltage)
                volts = max(abs(chan.min), abs(chan.max)) / abs(chan.scale)
                if volts > top:
                    raise ValueError(
                        f"{where}: range [{chan.min:g}, {chan.max:g}] {chan.unit} needs "
                        f"{volts:g} V, beyond the board's ±{top:g} V on AO {chan.board}"
                    )
                if b.max_slew * abs(chan.scale) > chan.max_slew:
                    raise ValueError(
                        f"{where}: the board's max_slew {b.max_slew:g} V/s is "
                        f"{b.max_slew * abs(chan.scale):g} {chan.unit}/s here, faster than "
                        f"max_slew {chan.max_slew:g}; lower {where_b}.max_slew"
                    )
            require_output(self.channels)
            return self

        def board(self, *, strict: bool = False) -> ScpiDaqSettings:
            """The validated settings of the one board (ValueError naming the key)."""
            if len(self.instruments) != 1:
                raise ValueError(f"instruments: exactly one board, got {sorted(self.instruments)}")
            ((name, entry),) = self.instruments.items()
            return entry_settings(name, entry, {BOARD_TYPE: ScpiDaqSettings}, strict=strict)

        def wiring(self) -> list[Wire]:
            """Every board terminal and the chip channel it is wired to: what virtual
            instruments standing in for the board need (`hil.virtual`)."""
            (board,) = self.instruments
            return [
                Wire(board, BOARD_TYPE, n, c.role, c.scale, c.board)
                for n, c in self.channels.items()
            ]

    def __init__(
        self, settings: AnalogRig.Settings, *, clock: Clock | None = None, instrument: Any = None
    ) -> None:
        """Connect the board (or adopt an open `ScpiDaq` or adapter as `instrument`).

        A refused or failed connect leaves the board released.
        """
        self.settings = settings
        self._clock = clock = settings.make_clock(clock)
        self._spec = self._build_spec()
        channels = settings.channels
        self._inputs = [c.name for c in self._spec.inputs]
        self._controls = [c.name for c in self._spec.controls]
        self._outputs = [c.name for c in self._spec.outputs]
        self._board_of = {n: c.board for n, c in channels.items()}
        self._scale = {n: c.scale for n, c in channels.items()}
        self.board = ScpiDaqBoard(settings.board(), clock=clock)
        self.board.connect(instrument)
        self._open = True

    # -- the Device interface ------------------------------------------------------------------
    def set_controls(self, values: FloatArray) -> None:
        """Set every control's DC level (checked whole before anything is sent)."""
        v = self._checked(values, self._controls, "set_controls")
        self._outputs_on()
        self._apply(self._controls, v)

    def measure(self, inputs: FloatArray) -> FloatArray:
        """One plateau per input row: set the inputs, settle, read every output."""
        x = self._checked_rows(inputs, self._inputs)
        self._outputs_on()
        out = np.empty((x.shape[0], len(self._outputs)))
        for i, row in enumerate(x):
            self._apply(self._inputs, row)
            self._wait(self.settings.settle_time)
            volts = self.board.read()
            if isinstance(self._clock, VirtualClock):  # on a wall clock the reading took it
                self._clock.advance(self.board.settings.sample_count * self.settings.reading_time)
            out[i] = [volts[self._board_of[n]] * self._scale[n] for n in self._outputs]
        return out

    def safe_state(self) -> None:
        """Ramp every AO to 0 V within the board's slew, then switch the outputs off."""
        if self._open:
            self.board.go_safe()

    def close(self) -> None:
        """Safe state and release the board."""
        self._open = False
        self.board.close()

    # -- helpers ---------------------------------------------------------------------------------
    def _build_spec(self) -> DeviceSpec:
        s = self.settings
        board = s.board()
        channels = []
        for name, c in s.channels.items():
            if not c.driven:
                top = board.ai[c.board] * abs(c.scale)
                channels.append(Channel(name=name, role=c.role, min=-top, max=top, unit=c.unit))
            else:
                channels.append(
                    Channel(
                        name=name,
                        role=c.role,
                        min=c.min,
                        max=c.max,
                        unit=c.unit,
                        max_slew=c.max_slew,
                    )
                )
        return DeviceSpec(
            name=s.name,
            channels=tuple(channels),
            settle_time=s.settle_time,
            plateau_samples=board.sample_count,
            sample_rate=1.0 / s.reading_time,
            output_gain=s.output_gain,
        )

    def _apply(self, names: list[str], values: FloatArray) -> None:
        """Send the levels that differ from those held."""
        held = self.board.levels
        volts = {
            self._board_of[n]: float(v) / self._scale[n] for n, v in zip(names, values, strict=True)
        }
        changed = {c: level for c, level in volts.items() if held[c] != level}
        if changed:
            self.board.set_levels(changed)

    def _outputs_on(self) -> None:
        """After a safe state: the outputs back on, at the 0 V they were left at."""
        if not self._open:
            raise RuntimeError(f"rig {self._spec.name!r} is closed")
        if not self.board.enabled:
            self.board.enable()
