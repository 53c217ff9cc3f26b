"""A station's simulator served as its virtual instruments, and the rig connected to them.

A station file whose rig names `virtual` as an instrument's address, and which has a `virtual:`
section naming a simulator, runs through the real drivers. Every instrument of the rig is an
`Entry` (`hil.stand_ins`), and `VIRTUAL_INSTRUMENTS` says for each kind how its stand-in is made
from the simulator and how the rig reaches it — the one mechanism, two ways:

- served: a SCPI/TSP instrument or a serial board on a free loopback port; its address replaces
  the entry's address key (`TCPIP::127.0.0.1::PORT::SOCKET` with pyvisa-py, `socket://…`);
- injected: an in-process fake (the `nidaqmx` module, a `pyarc2.Instrument`) passed to the rig's
  constructor; it cannot be reached from another process.

The address key that says `virtual` is the entry's own: `address` (SCPI/TSP), `url` (serial
board), `device` (DAQ card), `firmware` (ArC TWO). Entries of a 2600 with one address share one
virtual 2602B, an smua and an smub each (`VirtualKind.slots`), as on the bench.

The simulator sits behind a `Backplane` (instruments hold levels on its channels as they
change); the servers stop and the simulator closes when the rig closes. `hil serve` serves every
instrument of a station in the foreground and prints a station file that points at them.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import yaml
from pydantic import BaseModel

from hil.config import ResolvedStation
from hil.core import ConfigError, Device, DeviceSpec
from hil.stand_ins import (
    BLOCKS,
    VIRTUAL_ADDRESS,
    VIRTUAL_INSTRUMENTS,
    Bench,
    BlockWire,
    Entry,
    Wire,
)
from hil.yamlfile import KeyPath, dotted
from simulators.virtual.backplane import Backplane
from simulators.virtual.station import VirtualStation

log = logging.getLogger(__name__)


# -- serving -------------------------------------------------------------------------------------
@dataclass
class ServedStation:
    """Virtual instruments running for a station, and the rig settings that point at them."""

    servers: VirtualStation
    simulator: Device
    device_params: dict[str, Any]  # the station's `device:` block with the served addresses
    injected: dict[str, Any] = field(default_factory=dict)  # rig constructor keyword → fake
    addresses: dict[str, str] = field(default_factory=dict)  # entry name → served address
    source: dict[str, Any] = field(default_factory=dict)  # the station as written
    changes: dict[KeyPath, dict[str, Any]] = field(default_factory=dict)  # entry key → keys set

    def station_file(self) -> dict[str, Any]:
        """The station as written, pointing at the served instruments, without `virtual:`: a
        rig in another process (`hil run`) trains against them."""
        data = copy.deepcopy(self.source)
        data.pop("virtual", None)
        _apply(data["device"], self.changes)
        return data

    def station_text(self) -> str:
        """`station_file()` as YAML (no anchors: every entry written out)."""
        return yaml.dump(self.station_file(), Dumper=_Plain, sort_keys=False, allow_unicode=True)

    def stop(self) -> None:
        """Stop the servers and close the simulator."""
        try:
            self.servers.stop()
        finally:
            self.simulator.close()


def entries(station: ResolvedStation) -> list[Entry]:
    """Every instrument of the station's rig with its wires: `instruments:` items, blocks."""
    settings = station.device.settings
    declared = _declared(settings)
    listed = any(key[0] == "instruments" for key, _, _ in declared)
    wiring = _declared_wiring(station) if listed else []
    found = []
    for key, kind, params in declared:
        name = str(key[-1])
        if key[0] == "instruments":
            wires = tuple(w for w in wiring if w.instrument == name)
        else:
            derive = VIRTUAL_INSTRUMENTS[kind].wires
            assert derive is not None, f"{kind}: a block kind derives its wires"
            wires = tuple(derive(settings, name))
        found.append(Entry(name, key, kind, params, wires))
    return found


def is_virtual(station: ResolvedStation) -> bool:
    """Whether any instrument of the station's rig is to be served virtually."""
    return any(
        params.get(_address_key(kind)) == VIRTUAL_ADDRESS
        for _, kind, params in _declared(station.device.settings)
    )


def serve_station(
    station: ResolvedStation, seed: np.random.SeedSequence, *, every: bool = False
) -> ServedStation:
    """Serve the station's simulator as the instruments its rig declares.

    Instruments whose address is `virtual` get their stand-in; with `every` all of them do,
    for a rig in another process (`hil serve`), so an in-process fake is refused. The simulator
    takes `virtual.seed` if the station gives one, else `seed`. Errors name the station key.
    """
    if station.virtual is None or station.config.virtual is None:
        key: KeyPath = ("virtual",)
        raise ConfigError(
            f"{station.where(key)}: the station serves virtual instruments but has no "
            "`virtual:` section naming the simulator behind them; add `virtual: {device: "
            "{type: dnpu, ...}}`",
            key=key,
        )
    found = entries(station)
    chosen = [e for e in found if every or e.address() == VIRTUAL_ADDRESS]
    _check_kinds(station, chosen, every)
    fixed = station.config.virtual.seed
    sim_seed = np.random.SeedSequence(fixed) if fixed is not None else seed
    simulator: Device = station.virtual.cls(station.virtual.settings, seed=sim_seed)
    try:
        _check_wiring(station, found, simulator.spec)
        bench = Bench(simulator, Backplane(simulator), station.device.settings)
        groups = _groups(chosen)
        to_serve, injected = {}, {}
        for name, group in groups.items():
            inject = VIRTUAL_INSTRUMENTS[group[0].kind].inject
            stand_in = _make(station, bench, group)
            if inject is None:
                to_serve[name] = stand_in
            else:
                injected[inject] = stand_in
        servers = VirtualStation(to_serve)
        served = servers.start()
        try:
            _inject_faults(station, servers, groups)
        except BaseException:
            servers.stop()
            raise
    except BaseException:
        simulator.close()
        raise
    addresses, changes = {}, {}
    for name, address in served.items():
        for entry in groups[name]:
            kind = VIRTUAL_INSTRUMENTS[entry.kind]
            addresses[entry.name] = address
            changes[entry.key] = {kind.key: address, **kind.updates}
            log.info("virtual %s for %r at %s", entry.kind, entry.name, address)
    params = copy.deepcopy(station.device.as_dict())
    _apply(params, changes)
    return ServedStation(
        servers=servers,
        simulator=simulator,
        device_params=params,
        injected=injected,
        addresses=addresses,
        source=copy.deepcopy(_at(station.doc.data, station.prefix)),
        changes=changes,
    )


def _inject_faults(
    station: ResolvedStation, servers: VirtualStation, groups: Mapping[str, Sequence[Entry]]
) -> None:
    """Arm the transport faults `virtual.faults` asks of served instruments."""
    assert station.config.virtual is not None
    for name, faults in station.config.virtual.faults.items():
        group = next((g for g, members in groups.items() if name in {e.name for e in members}), "")
        server = servers.servers.get(group)
        if server is None:
            key: KeyPath = ("virtual", "faults", name)
            raise ConfigError(
                f"{station.where(key)}: {name!r} is not an instrument served over a transport "
                f"here (served: {sorted(e.name for g in groups.values() for e in g)}; in-process "
                "fakes take no transport faults); name a served instrument",
                key=key,
            )
        for setting, value in faults.model_dump().items():
            setattr(server.faults, setting, value)
        log.info("virtual %r injects faults %s", name, faults.model_dump())


def build_virtual_rig(station: ResolvedStation, seed: np.random.SeedSequence) -> Device:
    """The station's rig connected to its virtual instruments; closing it stops the servers."""
    served = serve_station(station, seed)
    params = dict(served.device_params)
    params.pop("type")
    cls = station.device.cls
    try:
        settings = cls.Settings.model_validate(params)
        rig: Device = _stopping(cls, served)(settings, **served.injected)
    except BaseException:
        served.stop()
        raise
    return rig


# -- helpers -------------------------------------------------------------------------------------
def _address_key(kind: Any) -> str:
    known = VIRTUAL_INSTRUMENTS.get(str(kind))
    return known.key if known else "address"


def _declared(settings: BaseModel) -> list[tuple[KeyPath, str, dict[str, Any]]]:
    """(key under `device:`, kind, entry as written) of every instrument the rig declares."""
    found: list[tuple[KeyPath, str, dict[str, Any]]] = []
    instruments = getattr(settings, "instruments", None)
    if isinstance(instruments, dict):
        for name, params in instruments.items():
            if isinstance(params, dict):
                found.append((("instruments", name), str(params.get("type")), dict(params)))
    for name in type(settings).model_fields:
        block = getattr(settings, name)
        if type(block) in BLOCKS:
            found.append(((name,), BLOCKS[type(block)], block.model_dump(mode="json")))
    return found


def _declared_wiring(station: ResolvedStation) -> list[Wire]:
    wiring = getattr(station.device.settings, "wiring", None)
    if not callable(wiring):
        key: KeyPath = ("device", "type")
        raise ConfigError(
            f"{station.where(key)}: {station.device.name!r} does not declare its wiring "
            "(Settings.wiring()), so no virtual instruments can stand in for it",
            key=key,
        )
    return list(wiring())


def _check_kinds(station: ResolvedStation, chosen: Sequence[Entry], every: bool) -> None:
    """Every chosen entry has a stand-in, and one another process can reach with `every`."""
    for entry in chosen:
        kind = VIRTUAL_INSTRUMENTS.get(entry.kind)
        if kind is None:
            key = ("device", *entry.key, "type")
            raise ConfigError(
                f"{station.where(key)}: no virtual instrument stands in for {entry.kind!r} "
                f"(available: {sorted(VIRTUAL_INSTRUMENTS)}); give {entry.name!r} a real "
                "address",
                key=key,
            )
        if every and kind.inject is not None:
            key = ("device", *entry.key, kind.key)
            raise ConfigError(
                f"{station.where(key)}: the virtual {entry.kind} for {entry.name!r} is an "
                "in-process fake (passed to the rig as its "
                f"{kind.inject!r}), which another process cannot reach: it cannot be served; "
                f"run the station in-process instead (hil run with {dotted(key)}: virtual)",
                key=key,
            )


def _check_wiring(station: ResolvedStation, found: Sequence[Entry], sim_spec: DeviceSpec) -> None:
    """Every terminal of the rig is wired to a simulator channel of the same role."""
    assert station.virtual is not None
    for entry in found:
        for wire in entry.wires:
            key: KeyPath = ("device", "channels", wire.channel)
            if isinstance(wire, BlockWire):
                key = ("device", *entry.key)
            try:
                role = sim_spec.channel(wire.channel).role
            except KeyError:
                names = [c.name for c in sim_spec.channels]
                shown = names if len(names) <= 12 else [*names[:12], "…"]
                raise ConfigError(
                    f"{station.where(key)}: the simulator {station.virtual.name!r} has no "
                    f"channel {wire.channel!r} (it has {shown}); name the rig's channels as "
                    "the simulator's",
                    key=key,
                ) from None
            if role is not wire.role:
                raise ConfigError(
                    f"{station.where(key)}: the rig wires {wire.channel!r} as {wire.role.value} "
                    f"but the simulator's channel is {role.value}",
                    key=key,
                )


def _groups(chosen: Sequence[Entry]) -> dict[str, list[Entry]]:
    """Entries by the instrument that stands in for them: one each, except that entries of a
    kind with slots share one while they have the same address and distinct slots."""
    groups: list[list[Entry]] = []
    for entry in chosen:
        kind = VIRTUAL_INSTRUMENTS[entry.kind]
        home = next(
            (
                group
                for group in groups
                if kind.slots
                and group[0].kind == entry.kind
                and group[0].address() == entry.address()
                and kind.slot(entry) not in {kind.slot(e) for e in group}
            ),
            None,
        )
        if home is None:
            groups.append([entry])
        else:
            home.append(entry)
    return {"+".join(e.name for e in group): group for group in groups}


def _make(station: ResolvedStation, bench: Bench, group: Sequence[Entry]) -> Any:
    entry = group[0]
    try:
        return VIRTUAL_INSTRUMENTS[entry.kind].make(bench, group)
    except ValueError as exc:
        key = ("device", *entry.key)
        raise ConfigError(
            f"{station.where(key)}: no virtual {entry.kind} for {entry.name!r}: {exc}", key=key
        ) from None


def _at(data: Any, key: KeyPath) -> Any:
    for part in key:
        data = data[part]
    return data


def _apply(device: dict[str, Any], changes: Mapping[KeyPath, Mapping[str, Any]]) -> None:
    """Set keys of entries under `device` (each entry copied: YAML aliases share them)."""
    for key, change in changes.items():
        parent = _at(device, key[:-1])
        parent[key[-1]] = {**parent[key[-1]], **change}


class _Plain(yaml.SafeDumper):
    """A YAML dumper that writes shared objects out again instead of as anchors."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _stopping(cls: type[Any], served: ServedStation) -> Callable[..., Device]:
    """`cls` whose `close()` also stops the served station (a subclass, so every capability
    check on the rig still holds)."""

    class Served(cls):  # type: ignore[misc]
        def close(self) -> None:
            try:
                super().close()
            finally:
                served.stop()

    Served.__name__ = Served.__qualname__ = f"Virtual{cls.__name__}"
    Served.__module__ = cls.__module__
    return Served
