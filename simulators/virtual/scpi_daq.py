"""A virtual SCPI DAC/ADC board backed by a simulator: AO channels hold levels on the device's
driven channels, AI channels read its outputs.

The command set is the one `drivers.scpi_daq` documents (AO channels 1..n, AI channels 101..100+n,
channel lists `(@1,2)` / `(@101:104)`): `SOUR:VOLT[:LEV] <v>,(@list)` and its query,
`SOUR:VOLT:RANG <r>,(@list)` (2.5 | 5 | 10 V; a value selects the smallest range holding it) and
its query, `OUTP[:STAT] <b>`, `[SENS:]VOLT[:DC]:RANG[:UPP] <r>,(@list)` (0.1 | 1 | 10 V) and its
query, `[SENS:]VOLT[:DC]:NPLC <n>`, `SAMP:COUN <n>`, `ROUT:SCAN (@list)`, `FORM[:DATA]
ASC|REAL[,64]`, `READ?`, `FETC?` — every one with its query where it has one — plus the common
commands and `SYST:ERR?`. Strict like the virtual 2400: a level beyond its channel's range is
-222, a range below the level it must hold -221, a channel the board lacks -224, `FETC?` before
any reading -230, a reading with an empty scan list -221.

Wiring (`Wire`: a device channel and its scale, device units per volt; `board_for` builds a
board from a rig's wiring): with the outputs on, an
AO channel holds `volts × scale` on its device channel through the `Backplane`; with them off, 0.
One sample is one plateau of the device (`Backplane.measure`); an AI channel reads its output
divided by the scale, 9.9E37 beyond the channel's range, 0 V when unwired. A `REAL,64` reading
is an IEEE 488.2 definite-length block of big-endian float64 values, returned as bytes (the
server sends them unchanged).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from simulators.virtual.backplane import Backplane
from simulators.virtual.scpi import (
    Command,
    Reply,
    ScpiDevice,
    ScpiError,
    boolean,
    mnemonic,
    no_args,
    nr3,
    number,
    one_arg,
)

AO_RANGES = (2.5, 5.0, 10.0)
AI_RANGES = (0.1, 1.0, 10.0)
AI_BASE = 100
NPLC_RANGE = (0.02, 100.0)
MAX_SAMPLES = 1_000_000
OVERLOAD = 9.9e37


@dataclass(frozen=True)
class Wire:
    """A board channel wired to a device channel: device units per volt on the board."""

    channel: str
    scale: float = 1.0


class Terminal(Protocol):
    """A rig's wiring item for a board terminal (`drivers.rigs.analog` `Settings.wiring()`)."""

    @property
    def channel(self) -> str: ...

    @property
    def scale(self) -> float: ...

    @property
    def terminal(self) -> int: ...


def board_for(backplane: Backplane, terminals: Sequence[Terminal]) -> ScpiDaq:
    """A virtual board wired as a rig declares it: 16 AO / 8 AI, more if the wiring needs them."""
    ao = {t.terminal: Wire(t.channel, t.scale) for t in terminals if t.terminal <= AI_BASE}
    ai = {t.terminal: Wire(t.channel, t.scale) for t in terminals if t.terminal > AI_BASE}
    n_ao = max(16, *ao) if ao else 16
    n_ai = max(8, *(c - AI_BASE for c in ai)) if ai else 8
    return ScpiDaq(backplane, ao, ai, n_ao=n_ao, n_ai=n_ai)


@dataclass
class _State:
    """The board's settings (`*RST` restores them) and its last reading."""

    ao_levels: dict[int, float]
    ao_ranges: dict[int, float]
    ai_ranges: dict[int, float]
    output: bool = False
    nplc: float = 1.0
    samples: int = 1
    scan: list[int] = field(default_factory=list)
    binary: bool = False
    last: list[float] | None = None


def _range_for(value: float, ranges: Sequence[float]) -> float:
    """The smallest range holding |value| (-222 above the top one), as the board selects it."""
    for r in ranges:
        if abs(value) <= r:
            return r
    raise ScpiError(-222, f"{value:g} V is beyond the top range {ranges[-1]:g} V")


class ScpiDaq(ScpiDevice):
    """A DAC/ADC board with `n_ao` outputs and `n_ai` inputs, wired to a `Backplane`."""

    idn = "HIL,VIRTUAL SCPI DAQ,0,1.0"

    def __init__(
        self,
        backplane: Backplane,
        ao: Mapping[int, Wire],
        ai: Mapping[int, Wire],
        *,
        n_ao: int = 16,
        n_ai: int = 8,
    ) -> None:
        self.backplane = backplane
        self.n_ao, self.n_ai = n_ao, n_ai
        bad = sorted(set(ao) - set(self._ao_ids)) + sorted(set(ai) - set(self._ai_ids))
        if bad:
            raise ValueError(f"channels {bad} are not on a board with {n_ao} AO and {n_ai} AI")
        for wire in (*ao.values(), *ai.values()):
            backplane.role(wire.channel)  # KeyError for a channel the device lacks
        self.ao, self.ai = dict(ao), dict(ai)
        self.state = self._power_on()
        super().__init__()

    def _power_on(self) -> _State:
        return _State(
            ao_levels=dict.fromkeys(range(1, self.n_ao + 1), 0.0),
            ao_ranges=dict.fromkeys(range(1, self.n_ao + 1), AO_RANGES[-1]),
            ai_ranges=dict.fromkeys(range(AI_BASE + 1, AI_BASE + self.n_ai + 1), AI_RANGES[-1]),
        )

    def reset(self) -> None:
        self.state = self._power_on()
        self._drive()

    def commands(self) -> list[Command]:
        sens = "[:SENSe]:VOLTage[:DC]"
        return [
            Command(
                ":SOURce:VOLTage[:LEVel][:IMMediate][:AMPLitude]", self._set_level, self._level
            ),
            Command(":SOURce:VOLTage:RANGe", self._set_ao_range, self._ao_range),
            Command(":OUTPut[:STATe]", self._set_output, self._output),
            Command(f"{sens}:RANGe[:UPPer]", self._set_ai_range, self._ai_range),
            Command(f"{sens}:NPLCycles", self._set_nplc, self._nplc),
            Command(":SAMPle:COUNt", self._set_samples, self._samples),
            Command(":ROUTe:SCAN", self._set_scan, self._scan),
            Command(":FORMat[:DATA]", self._set_format, self._format),
            Command(":READ", read=self._read),
            Command(":FETCh", read=self._fetch),
        ]

    # -- channel lists ---------------------------------------------------------------------------
    @staticmethod
    def _check_channel(channel: int, allowed: range) -> int:
        if channel not in allowed:
            raise ScpiError(
                -224, f"no channel {channel} (this board has {allowed[0]}-{allowed[-1]})"
            )
        return channel

    def _channels(self, args: Sequence[str], allowed: range) -> list[int]:
        """The channel list that `args` end with, e.g. ["(@1", "2:3)"] (split at commas)."""
        text = ",".join(args).replace(" ", "")
        if not (text.startswith("(@") and text.endswith(")")) or len(text) < 4:
            raise ScpiError(-104, f"{text!r} is not a channel list")
        channels: list[int] = []
        for part in text[2:-1].split(","):
            first, _, last = part.partition(":")
            try:
                span = range(int(first), int(last or first) + 1)
            except ValueError:
                raise ScpiError(-104, f"{part!r} is not a channel or range") from None
            if not span:
                raise ScpiError(-224, f"empty channel range {part!r}")
            channels.extend(self._check_channel(c, allowed) for c in span)
        return channels

    def _value_and_channels(self, args: Sequence[str], allowed: range) -> tuple[str, list[int]]:
        if len(args) < 2:
            raise ScpiError(-109, "a value and a channel list")
        return args[0], self._channels(args[1:], allowed)

    @property
    def _ao_ids(self) -> range:
        return range(1, self.n_ao + 1)

    @property
    def _ai_ids(self) -> range:
        return range(AI_BASE + 1, AI_BASE + self.n_ai + 1)

    # -- outputs ---------------------------------------------------------------------------------
    def _set_level(self, args: Sequence[str]) -> None:
        arg, channels = self._value_and_channels(args, self._ao_ids)
        values = {}
        for c in channels:  # every channel is checked before any changes
            top = self.state.ao_ranges[c]
            values[c] = number(arg, -top, top, {"MIN": -top, "MAX": top, "DEF": 0.0})
        self.state.ao_levels.update(values)
        self._drive()

    def _level(self, args: Sequence[str]) -> str:
        return ",".join(nr3(self.state.ao_levels[c]) for c in self._channels(args, self._ao_ids))

    def _set_ao_range(self, args: Sequence[str]) -> None:
        arg, channels = self._value_and_channels(args, self._ao_ids)
        top = AO_RANGES[-1]
        selected = _range_for(number(arg, -top, top, {"MIN": AO_RANGES[0], "MAX": top}), AO_RANGES)
        for c in channels:
            if abs(self.state.ao_levels[c]) > selected:
                raise ScpiError(-221, f"range {selected:g} V below the level of channel {c}")
        self.state.ao_ranges.update(dict.fromkeys(channels, selected))

    def _ao_range(self, args: Sequence[str]) -> str:
        return ",".join(nr3(self.state.ao_ranges[c]) for c in self._channels(args, self._ao_ids))

    def _set_output(self, args: Sequence[str]) -> None:
        self.state.output = boolean(one_arg(args))
        self._drive()

    def _output(self, args: Sequence[str]) -> str:
        no_args(args)
        return str(int(self.state.output))

    def _drive(self) -> None:
        """Put the wired AO levels on the device (0 with the outputs off)."""
        for c, wire in self.ao.items():
            volts = self.state.ao_levels[c] if self.state.output else 0.0
            self.backplane.set_level(wire.channel, volts * wire.scale)

    # -- inputs ----------------------------------------------------------------------------------
    def _set_ai_range(self, args: Sequence[str]) -> None:
        arg, channels = self._value_and_channels(args, self._ai_ids)
        top = AI_RANGES[-1]
        selected = _range_for(number(arg, 0.0, top, {"MIN": AI_RANGES[0], "MAX": top}), AI_RANGES)
        self.state.ai_ranges.update(dict.fromkeys(channels, selected))

    def _ai_range(self, args: Sequence[str]) -> str:
        return ",".join(nr3(self.state.ai_ranges[c]) for c in self._channels(args, self._ai_ids))

    def _set_nplc(self, args: Sequence[str]) -> None:
        low, high = NPLC_RANGE
        self.state.nplc = number(one_arg(args), low, high, {"MIN": low, "MAX": high, "DEF": 1.0})

    def _nplc(self, args: Sequence[str]) -> str:
        no_args(args)
        return nr3(self.state.nplc)

    def _set_samples(self, args: Sequence[str]) -> None:
        value = number(one_arg(args), 1, MAX_SAMPLES, {"MIN": 1, "MAX": MAX_SAMPLES, "DEF": 1})
        if value != int(value):
            raise ScpiError(-224, f"sample count {value:g} is not an integer")
        self.state.samples = int(value)

    def _samples(self, args: Sequence[str]) -> str:
        no_args(args)
        return str(self.state.samples)

    def _set_scan(self, args: Sequence[str]) -> None:
        self.state.scan = self._channels(args, self._ai_ids)

    def _scan(self, args: Sequence[str]) -> str:
        no_args(args)
        return "(@" + ",".join(str(c) for c in self.state.scan) + ")"

    def _set_format(self, args: Sequence[str]) -> None:
        if not args or len(args) > 2:
            raise ScpiError(-109 if not args else -108)
        binary = mnemonic(args[0], ["ASCii", "REAL"]) == "REAL"
        if len(args) == 2 and (not binary or number(args[1], 0, 64) != 64):
            raise ScpiError(-224, "only REAL,64 or ASCii")
        self.state.binary = binary

    def _format(self, args: Sequence[str]) -> str:
        no_args(args)
        return "REAL,64" if self.state.binary else "ASC"

    def _read(self, args: Sequence[str]) -> Reply:
        no_args(args)
        if not self.state.scan:
            raise ScpiError(-221, "the scan list is empty (ROUT:SCAN)")
        data: list[float] = []
        for _ in range(self.state.samples):
            outputs = self.backplane.measure()
            data.extend(self._volts(c, outputs) for c in self.state.scan)
        self.state.last = data
        return self._encode(data)

    def _fetch(self, args: Sequence[str]) -> Reply:
        no_args(args)
        if self.state.last is None:
            raise ScpiError(-230, "no reading since the last reset")
        return self._encode(self.state.last)

    def _volts(self, channel: int, outputs: Mapping[str, float]) -> float:
        wire = self.ai.get(channel)
        if wire is None:
            return 0.0
        volts = outputs[wire.channel] / wire.scale
        return volts if abs(volts) <= self.state.ai_ranges[channel] else OVERLOAD

    def _encode(self, data: Sequence[float]) -> Reply:
        """The reading in the current format: NR3 text, or a REAL,64 block as bytes."""
        if not self.state.binary:
            return ",".join(nr3(v) for v in data)
        payload = struct.pack(f">{len(data)}d", *data)
        length = str(len(payload))
        return f"#{len(length)}{length}".encode("ascii") + payload
