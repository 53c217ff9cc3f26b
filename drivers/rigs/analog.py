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

import logging
import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from drivers.scpi_daq import AI_IDS, AO_IDS, ScpiDaqBoard, ScpiDaqSettings
from hil.core import (
    Channel,
    Clock,
    DeviceBase,
    DeviceSpec,
    FloatArray,
    Role,
    SafetyViolation,
    VirtualClock,
    WallClock,
)

log = logging.getLogger(__name__)

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


class BoardChannel(BaseModel):
    """One channel of the chip and the board channel that drives or reads it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    role: Literal["input", "control", "output"]
    board: int = Field(description="board channel: AO 1–99 (driven), AI 101–199 (outputs)")
    min: float = Field(default=0.0, description="lowest value, in `unit` (driven channels)")
    max: float = Field(default=0.0, description="highest value, in `unit` (driven channels)")
    unit: str = "V"
    max_slew: float = Field(default=math.inf, gt=0, description="unit/s (driven channels)")
    scale: float = Field(default=1.0, description="units of the channel per board volt")

    @property
    def kind(self) -> Role:
        return Role(self.role)

    @model_validator(mode="after")
    def _consistent(self) -> BoardChannel:
        if self.scale == 0 or not math.isfinite(self.scale):
            raise ValueError(f"scale {self.scale!r} must be finite and non-zero")
        ids = AI_IDS if self.kind is Role.OUTPUT else AO_IDS
        if self.board not in ids:
            raise ValueError(f"board channel {self.board} of an {self.role} must be in {ids}")
        if self.kind is not Role.OUTPUT and not (self.min <= 0.0 <= self.max > self.min):
            raise ValueError(f"range [{self.min:g}, {self.max:g}] must contain 0 and not be empty")
        return self


class AnalogRig(DeviceBase):
    """A `hil.core.Device` on one SCPI DAC/ADC board (an analog chip, say)."""

    class Settings(BaseModel):
        """The station file's `device:` block of an analog-chip rig."""

        model_config = ConfigDict(extra="forbid", frozen=True)

        name: str = Field(default="analog-chip", min_length=1)
        instruments: dict[str, dict[str, Any]] = Field(
            description="the one board: name → {type: scpi-daq, …its settings}"
        )
        channels: dict[str, BoardChannel] = Field(description="chip channel → role, board, range")
        settle_time: float = Field(default=0.01, ge=0, le=60, description="s after a change")
        reading_time: float = Field(
            default=0.02, gt=0, le=60, description="s per sample (the board's NPLC at the mains)"
        )
        output_gain: float = Field(default=1.0, description="what protocols see as gain")
        clock: Literal["wall", "virtual"] = Field(
            default="wall",
            description="wall: waits sleep; virtual: waits advance a virtual clock "
            "(virtual instruments only: nothing physical settles)",
        )

        @model_validator(mode="after")
        def _wired(self) -> AnalogRig.Settings:
            b = self.board()
            where_b = f"instruments.{b.name}"
            used = [c.board for c in self.channels.values()]
            for name, chan in self.channels.items():
                where = f"channels.{name}"
                if used.count(chan.board) > 1:
                    raise ValueError(f"{where}: board channel {chan.board} is wired twice")
                if chan.kind is Role.OUTPUT:
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
            if not any(c.kind is Role.OUTPUT for c in self.channels.values()):
                raise ValueError("channels: at least one output is needed")
            return self

        def board(self) -> ScpiDaqSettings:
            """The validated settings of the one board (ValueError naming the key)."""
            if len(self.instruments) != 1:
                raise ValueError(f"instruments: exactly one board, got {sorted(self.instruments)}")
            ((name, entry),) = self.instruments.items()
            entry = dict(entry)
            kind = entry.pop("type", None)
            if kind != BOARD_TYPE:
                raise ValueError(f"instruments.{name}.type: {kind!r} is not {BOARD_TYPE!r}")
            try:
                return ScpiDaqSettings.model_validate({"name": name, **entry})
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(p) for p in (name, *first["loc"]))
                message = first["msg"].removeprefix("Value error, ")
                raise ValueError(f"instruments.{where}: {message}") from None

        def wiring(self) -> list[Wire]:
            """Every board terminal and the chip channel it is wired to: what virtual
            instruments standing in for the board need (`hil.virtual`)."""
            (board,) = self.instruments
            return [
                Wire(board, BOARD_TYPE, n, c.kind, c.scale, c.board)
                for n, c in self.channels.items()
            ]

    def __init__(
        self, settings: AnalogRig.Settings, *, clock: Clock | None = None, instrument: Any = None
    ) -> None:
        """Connect the board (or adopt an open `ScpiDaq` or adapter as `instrument`).

        A refused or failed connect leaves the board released.
        """
        self.settings = settings
        if clock is None:
            clock = VirtualClock() if settings.clock == "virtual" else WallClock()
        self._clock = clock
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
    @property
    def spec(self) -> DeviceSpec:
        return self._spec

    @property
    def clock(self) -> Clock:
        return self._clock

    def set_controls(self, values: FloatArray) -> None:
        """Set every control's DC level (checked whole before anything is sent)."""
        v = self._checked(values, self._controls, "set_controls")
        self._outputs_on()
        self._apply(self._controls, v)

    def measure(self, inputs: FloatArray) -> FloatArray:
        """One plateau per input row: set the inputs, settle, read every output."""
        x = np.array(inputs, dtype=float)
        if x.ndim != 2 or x.shape[0] < 1:
            n = len(self._inputs)
            raise ValueError(f"measure: expected shape (n_cases, {n}), got {x.shape}")
        for row in x:
            self._checked(row, self._inputs, "measure")
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
            if c.kind is Role.OUTPUT:
                top = board.ai[c.board] * abs(c.scale)
                channels.append(Channel(name=name, role=c.kind, min=-top, max=top, unit=c.unit))
            else:
                channels.append(
                    Channel(
                        name=name,
                        role=c.kind,
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

    def _checked(self, values: FloatArray, names: list[str], what: str) -> FloatArray:
        """Shape, finiteness and channel ranges, before anything is sent."""
        v = np.array(values, dtype=float)
        if v.shape != (len(names),):
            raise ValueError(f"{what}: expected shape ({len(names)},), got {v.shape}")
        for name, value in zip(names, v, strict=True):
            chan = self._spec.channel(name)
            if not (math.isfinite(value) and chan.min <= value <= chan.max):
                raise SafetyViolation(
                    name,
                    float(value),
                    f"the rig's range [{chan.min:g}, {chan.max:g}] {chan.unit}",
                    f"{what}; nothing was sent",
                )
        return v

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

    def _wait(self, seconds: float) -> None:
        if seconds > 0:
            self._clock.advance(seconds)
