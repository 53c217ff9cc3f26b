"""The stand-ins for a rig's instruments: which virtual instrument or fake stands in for each kind
of rig entry, how it is made from the station's simulator, and how the rig reaches it.

Every instrument of a rig is an `Entry`: an item under `instruments:` (SMU and analog rigs, kind =
its `type:`) or a block the rig holds by its settings model (`daq:` of a DAQ rig, `board:` of a
crossbar rig; see `BLOCKS`). `VIRTUAL_INSTRUMENTS` says for each kind how its stand-in is made and
how the rig reaches it — served on a loopback port (its address goes to the entry's address key) or
injected into the rig's constructor (an in-process fake of a vendor API). `hil.virtual` serves them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

from pydantic import BaseModel

from drivers.arc2 import Arc2Settings
from drivers.crossbar_serial import CrossbarSerialSettings
from drivers.nidaq import DaqSettings
from drivers.rigs.crossbar import Arc2CrossbarRig, CrossbarRigSettings
from drivers.rigs.daq import DaqRigSettings
from hil.core import Device, Role, Streaming
from hil.yamlfile import KeyPath
from simulators.crossbar import CrossbarDevice
from simulators.virtual.arc2 import COL_CHANNELS, ROW_CHANNELS, FakeInstrument
from simulators.virtual.backplane import Backplane
from simulators.virtual.crossbar_serial import BoardModel, CrossbarBoardEmulator
from simulators.virtual.dither import virtual_awg, virtual_sr830, virtual_sr860
from simulators.virtual.keithley2400 import Keithley2400
from simulators.virtual.keithley2600 import CHANNELS as TSP_CHANNELS
from simulators.virtual.keithley2600 import Keithley2600
from simulators.virtual.loads import Electrode, Resistor
from simulators.virtual.nidaq import AIReadout, FakeNidaqmx
from simulators.virtual.scpi_daq import Terminal, board_for
from simulators.virtual.station import Servable

VIRTUAL_ADDRESS = "virtual"
"""The address a station file gives an instrument that a virtual one should stand in for."""

VISA = {"visa_library": "@py"}
"""What a served SCPI/TSP entry gets with its address: pyvisa-py reaches `TCPIP::…::SOCKET`."""

OPEN_CIRCUIT = 1e12
"""Ω on a virtual 2600 channel no rig entry uses."""


class Wire(Protocol):
    """One instrument terminal wired to one channel (a rig's `Settings.wiring()` item)."""

    @property
    def instrument(self) -> str: ...

    @property
    def kind(self) -> str: ...

    @property
    def channel(self) -> str: ...

    @property
    def role(self) -> Role: ...

    @property
    def scale(self) -> float: ...


@dataclass(frozen=True)
class BlockWire:
    """A wire of a rig that declares no wiring (DAQ card, crossbar boards), derived here."""

    instrument: str
    kind: str
    channel: str
    role: Role
    scale: float = 1.0


@dataclass(frozen=True)
class Entry:
    """One instrument of the rig: where it sits under `device:`, its kind, as written, wires."""

    name: str
    key: KeyPath
    kind: str
    params: Mapping[str, Any]
    wires: tuple[Wire, ...]

    def address(self) -> Any:
        """What the entry's address key holds (`virtual`, a VISA address, a URL …)."""
        kind = VIRTUAL_INSTRUMENTS.get(self.kind)
        return self.params.get(kind.key if kind else "address")


@dataclass(frozen=True)
class Bench:
    """What a stand-in is made from: the simulator, its backplane and the rig's settings."""

    simulator: Device
    backplane: Backplane
    rig: BaseModel


@dataclass(frozen=True)
class VirtualKind:
    """How the stand-in for one kind of rig entry is made and how the rig reaches it.

    `make` builds it from the bench for the entries it stands in for (ValueError: the station
    does not fit it). `key` is the entry's address key: `virtual` there asks for the stand-in.
    Served (`inject` None): `make` returns a `Servable`, run on a loopback port whose address
    goes to `key`, with `updates`. Injected: the fake goes to the rig's constructor as keyword
    `inject`. `slots`: entries with one address share one instrument, one entry per value of
    their `channel` key (a 2600's smua and smub), as on the bench. `wires`: for a block, its
    wires derived from the rig's settings (an `instruments:` item has the rig's `wiring()`).
    """

    make: Callable[[Bench, Sequence[Entry]], Any]
    key: str = "address"
    inject: str | None = None
    updates: Mapping[str, Any] = field(default_factory=dict)
    slots: tuple[str, ...] = ()
    wires: Callable[[BaseModel, str], list[Wire]] | None = None

    def slot(self, entry: Entry) -> str:
        return str(entry.params.get("channel", self.slots[0])) if self.slots else ""


# -- the stand-ins -------------------------------------------------------------------------------
def _one(entries: Sequence[Entry]) -> Entry:
    (entry,) = entries
    return entry


def _electrode(bench: Bench, wire: Wire) -> Electrode:
    return Electrode(bench.backplane, wire.channel, scale=wire.scale)


def _keithley2400(bench: Bench, entries: Sequence[Entry]) -> Keithley2400:
    (wire,) = _one(entries).wires
    return Keithley2400(_electrode(bench, wire))


def _keithley2600(bench: Bench, entries: Sequence[Entry]) -> Keithley2600:
    """One 2602B; a channel no entry uses is an open circuit."""
    kind = VIRTUAL_INSTRUMENTS["keithley2600"]
    loads: dict[str, Any] = {name: Resistor(OPEN_CIRCUIT) for name in TSP_CHANNELS}
    for entry in entries:
        (wire,) = entry.wires
        loads[kind.slot(entry)] = _electrode(bench, wire)
    return Keithley2600(loads["smua"], loads["smub"])


def _on_backplane(
    make: Callable[[Backplane, Sequence[Wire]], Servable],
) -> Callable[[Bench, Sequence[Entry]], Servable]:
    """A stand-in made from the backplane and the wires of its entries (AWG dithers, lock-ins)."""

    def build(bench: Bench, entries: Sequence[Entry]) -> Servable:
        return make(bench.backplane, [wire for entry in entries for wire in entry.wires])

    return build


def _scpi_daq(bench: Bench, entries: Sequence[Entry]) -> Servable:
    return board_for(bench.backplane, cast(Sequence[Terminal], _one(entries).wires))


def _crossbar(bench: Bench) -> CrossbarDevice:
    if not isinstance(bench.simulator, CrossbarDevice):
        raise ValueError(
            f"a virtual crossbar board needs a crossbar simulator (virtual.device.type: "
            f"crossbar), not {type(bench.simulator).__name__}"
        )
    return bench.simulator


def _serial_board(bench: Bench, entries: Sequence[Entry]) -> Servable:
    rig = cast(CrossbarRigSettings, bench.rig)
    sim = _crossbar(bench)
    board = CrossbarSerialSettings.model_validate(_one(entries).params)
    shape = (sim.settings.rows, sim.settings.cols)
    if (board.word_lines, board.bit_lines) != shape:
        raise ValueError(
            f"word_lines × bit_lines {board.word_lines} × {board.bit_lines} must be the "
            f"simulator's rows × cols {shape[0]} × {shape[1]} (the board reports its size)"
        )
    model = BoardModel(  # the board the station declares: its limits are the hardware's
        max_amplitude=board.max_amplitude,
        max_read_voltage=board.max_read_voltage,
        min_width_ns=board.min_width_ns,
        max_width_ns=board.max_width_ns,
        max_count=board.max_count,
        max_compliance=board.compliance_current,
        g_ref=rig.g_ref,
        g_scale=rig.g_scale,
    )
    return CrossbarBoardEmulator(sim, model, watchdog=board.watchdog)


def _arc2(bench: Bench, entries: Sequence[Entry]) -> FakeInstrument:
    rig = cast(CrossbarRigSettings, bench.rig)
    return FakeInstrument(_crossbar(bench), g_ref=rig.g_ref, g_scale=rig.g_scale)


def _nidaqmx(bench: Bench, entries: Sequence[Entry]) -> FakeNidaqmx:
    """The fake `nidaqmx` module: AO channels drive the simulator's channels, AI channels read
    its outputs through each channel's gain, inversion and offset."""
    rig = cast(DaqRigSettings, bench.rig)
    sim = bench.simulator
    if not isinstance(sim, Streaming):
        raise ValueError(f"the fake NI-DAQmx needs a streaming simulator, not {sim.spec.name!r}")
    daq, outputs = rig.daq, [c.name for c in sim.spec.outputs]
    ao = {daq.physical(c.ao): name for name, c in rig.channels.items() if c.ao is not None}
    ai = {}
    for name, c in rig.channels.items():
        if c.ai is not None:
            s = daq.ai[c.ai]
            ai[daq.physical(c.ai)] = AIReadout(outputs.index(name), s.gain, s.inverted, s.offset)
    devices = {daq.device} | {key.split("/")[0] for key in (*ao, *ai)}
    return FakeNidaqmx(sim, ao, ai, devices=tuple(sorted(devices)))


# -- wires of the blocks -------------------------------------------------------------------------
def _daq_wires(settings: BaseModel, name: str) -> list[Wire]:
    rig = cast(DaqRigSettings, settings)
    return [
        BlockWire(name, "nidaqmx", n, c.role, rig.daq.ai[c.ai].gain if c.ai else 1.0)
        for n, c in rig.channels.items()
    ]


def _crossbar_wires(
    lines: Callable[[CrossbarRigSettings], tuple[list[int], list[int]]],
) -> Callable[[BaseModel, str], list[Wire]]:
    """The rig's rows and columns wired to the simulator's `row{i}` / `col{j}`, with `lines`
    giving the simulator's row of each rig row and column of each rig column."""

    def wires(settings: BaseModel, name: str) -> list[Wire]:
        rig = cast(CrossbarRigSettings, settings)
        rows, cols = lines(rig)
        kind = BLOCKS[type(getattr(rig, name))]
        return [
            *(BlockWire(name, kind, f"row{i}", Role.INPUT) for i in rows),
            *(BlockWire(name, kind, f"col{j}", Role.OUTPUT) for j in cols),
        ]

    return wires


def _serial_lines(rig: CrossbarRigSettings) -> tuple[list[int], list[int]]:
    """The emulated board's word and bit lines are the simulator's rows and columns."""
    words, bits = rig.lines
    return list(words), list(bits)


def _arc2_lines(rig: CrossbarRigSettings) -> tuple[list[int], list[int]]:
    """The fake's k-th row (column) channel, in ArC TWO's order, is the simulator's row
    (column) k."""
    board = cast(Arc2CrossbarRig.Settings, rig).board
    words, bits = rig.lines
    return (
        [ROW_CHANNELS.index(board.row_channels[w]) for w in words],
        [COL_CHANNELS.index(board.col_channels[b]) for b in bits],
    )


VIRTUAL_INSTRUMENTS: dict[str, VirtualKind] = {
    "keithley2400": VirtualKind(_keithley2400, updates=VISA),
    "keithley2600": VirtualKind(_keithley2600, updates=VISA, slots=TSP_CHANNELS),
    "scpi-daq": VirtualKind(_scpi_daq, updates=VISA),
    "keysight33500": VirtualKind(_on_backplane(virtual_awg), updates=VISA),
    "sr830": VirtualKind(_on_backplane(virtual_sr830), updates=VISA),
    "sr860": VirtualKind(_on_backplane(virtual_sr860), updates=VISA),
    "crossbar-serial": VirtualKind(_serial_board, key="url", wires=_crossbar_wires(_serial_lines)),
    "arc2": VirtualKind(
        _arc2, key="firmware", inject="instrument", wires=_crossbar_wires(_arc2_lines)
    ),
    "nidaqmx": VirtualKind(_nidaqmx, key="device", inject="nidaqmx_module", wires=_daq_wires),
}
"""An entry's kind → how its virtual stand-in is made and reached."""

BLOCKS: dict[type[BaseModel], str] = {
    DaqSettings: "nidaqmx",
    CrossbarSerialSettings: "crossbar-serial",
    Arc2Settings: "arc2",
}
"""A rig's settings block (a `daq:` or `board:` key, no `type:`) → its entry kind."""
