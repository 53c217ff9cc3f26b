"""A station's simulator served as its virtual instruments, and the rig connected to them.

A station file whose rig names `address: virtual` for an instrument, and which has a `virtual:`
section naming a simulator, runs through the real drivers: the simulator goes behind a
`Backplane`, every instrument terminal the rig declares (`Settings.wiring()`) is served as the
matching virtual instrument on a free loopback port, and the rig is built with those addresses
(pyvisa-py). The servers stop when the rig closes. `hil serve` does the same in the foreground
and prints a station file that points at the servers, for a rig in another process.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from hil.config import ResolvedStation
from hil.core import ConfigError, Device, DeviceSpec, Role
from hil.yamlfile import KeyPath
from simulators.virtual.backplane import Backplane
from simulators.virtual.keithley2400 import Keithley2400
from simulators.virtual.loads import Electrode
from simulators.virtual.scpi import ScpiDevice
from simulators.virtual.station import VirtualStation

log = logging.getLogger(__name__)

VIRTUAL_ADDRESS = "virtual"
"""The address a station file gives an instrument that a virtual one should stand in for."""


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


InstrumentFactory = Callable[[Backplane, Sequence[Wire]], ScpiDevice]


def _smu(model: Callable[[Electrode], ScpiDevice]) -> InstrumentFactory:
    def build(backplane: Backplane, wires: Sequence[Wire]) -> ScpiDevice:
        (wire,) = wires
        return model(Electrode(backplane, wire.channel, scale=wire.scale))

    return build


VIRTUAL_INSTRUMENTS: dict[str, InstrumentFactory] = {
    "keithley2400": _smu(Keithley2400),
}
"""A rig entry's `type:` → the virtual instrument that stands in for it on a backplane."""


@dataclass
class ServedStation:
    """Virtual instruments running for a station, and the rig settings that point at them."""

    servers: VirtualStation
    simulator: Device
    device_params: dict[str, Any]  # the station's `device:` block with the served addresses

    def stop(self) -> None:
        """Stop the servers and close the simulator."""
        try:
            self.servers.stop()
        finally:
            self.simulator.close()


def is_virtual(station: ResolvedStation) -> bool:
    """Whether any instrument of the station's rig is to be served virtually."""
    instruments = getattr(station.device.settings, "instruments", None)
    return isinstance(instruments, dict) and any(
        isinstance(entry, dict) and entry.get("address") == VIRTUAL_ADDRESS
        for entry in instruments.values()
    )


def serve_station(
    station: ResolvedStation, seed: np.random.SeedSequence, *, every: bool = False
) -> ServedStation:
    """Serve the station's simulator as the instruments its rig declares.

    Instruments with `address: virtual` are served (all of them with `every`). The simulator
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
    fixed = station.config.virtual.seed
    sim_seed = np.random.SeedSequence(fixed) if fixed is not None else seed
    simulator: Device = station.virtual.cls(station.virtual.settings, seed=sim_seed)
    try:
        wiring = _wiring(station, simulator.spec)
        backplane = Backplane(simulator)
        devices = _instruments(station, wiring, backplane, every)
        servers = VirtualStation(devices)
        addresses = servers.start()
    except BaseException:
        simulator.close()
        raise
    params = copy.deepcopy(station.device.as_dict())
    for name, address in addresses.items():
        params["instruments"][name].update(address=address, visa_library="@py")
        log.info("virtual %s for %r at %s", wiring[name][0].kind, name, address)
    return ServedStation(servers=servers, simulator=simulator, device_params=params)


def build_virtual_rig(station: ResolvedStation, seed: np.random.SeedSequence) -> Device:
    """The station's rig connected to its virtual instruments; closing it stops the servers."""
    served = serve_station(station, seed)
    params = dict(served.device_params)
    params.pop("type")
    cls = station.device.cls
    try:
        settings = cls.Settings.model_validate(params)
        rig: Device = _stopping(cls, served)(settings)
    except BaseException:
        served.stop()
        raise
    return rig


def _wiring(station: ResolvedStation, sim_spec: DeviceSpec) -> dict[str, list[Wire]]:
    """The rig's terminals by instrument, each checked against the simulator's channels."""
    settings = station.device.settings
    wiring = getattr(settings, "wiring", None)
    if not callable(wiring):
        key: KeyPath = ("device", "type")
        raise ConfigError(
            f"{station.where(key)}: {station.device.name!r} does not declare its wiring "
            "(Settings.wiring()), so no virtual instruments can stand in for it",
            key=key,
        )
    assert station.virtual is not None
    by_instrument: dict[str, list[Wire]] = {}
    for wire in wiring():
        key = ("device", "channels", wire.channel)
        try:
            role = sim_spec.channel(wire.channel).role
        except KeyError:
            names = [c.name for c in sim_spec.channels]
            raise ConfigError(
                f"{station.where(key)}: the simulator {station.virtual.name!r} has no channel "
                f"{wire.channel!r} (it has {names}); name the rig's channels as the simulator's",
                key=key,
            ) from None
        if role is not wire.role:
            raise ConfigError(
                f"{station.where(key)}: the rig wires {wire.channel!r} as {wire.role.value} "
                f"but the simulator's channel is {role.value}",
                key=key,
            )
        by_instrument.setdefault(wire.instrument, []).append(wire)
    return by_instrument


def _instruments(
    station: ResolvedStation, wiring: dict[str, list[Wire]], backplane: Backplane, every: bool
) -> dict[str, ScpiDevice]:
    instruments: dict[str, Any] = getattr(station.device.settings, "instruments", {})
    devices = {}
    for name, wires in wiring.items():
        if not every and instruments.get(name, {}).get("address") != VIRTUAL_ADDRESS:
            continue
        kind = wires[0].kind
        if kind not in VIRTUAL_INSTRUMENTS:
            key = ("device", "instruments", name, "type")
            raise ConfigError(
                f"{station.where(key)}: no virtual instrument stands in for {kind!r} "
                f"(available: {sorted(VIRTUAL_INSTRUMENTS)}); give {name!r} a real address",
                key=key,
            )
        devices[name] = VIRTUAL_INSTRUMENTS[kind](backplane, wires)
    return devices


def _stopping(cls: type[Any], served: ServedStation) -> Callable[[Any], Device]:
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
