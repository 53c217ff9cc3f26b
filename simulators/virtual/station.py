"""Start several virtual instruments at once and hand out their addresses.

A `VirtualStation` maps instrument names to virtual instruments — `ScpiDevice`s, served as VISA
`TCPIP::127.0.0.1::PORT::SOCKET` resources, and serial boards (`CrossbarBoardEmulator`), served
as pyserial `socket://127.0.0.1:PORT` URLs — serves each on its own free loopback port, and
stops them all on exit (also when one fails to start). `hil serve` and `hil.virtual` build on it.
"""

from __future__ import annotations

from collections.abc import Mapping

from hil.core import Serving
from simulators.virtual.crossbar_serial import CrossbarBoardEmulator, CrossbarSerialServer
from simulators.virtual.scpi import ScpiDevice
from simulators.virtual.server import ScpiServer

Servable = ScpiDevice | CrossbarBoardEmulator
"""What a station serves: a SCPI/TSP instrument or a serial board."""


class VirtualStation(Serving):
    """A set of virtual instruments served together; a context manager."""

    def __init__(self, devices: Mapping[str, Servable]) -> None:
        self.servers: dict[str, ScpiServer | CrossbarSerialServer] = {
            name: ScpiServer(device, name)
            if isinstance(device, ScpiDevice)
            else CrossbarSerialServer(device, name)
            for name, device in devices.items()
        }

    @property
    def addresses(self) -> dict[str, str]:
        """Instrument name → its address: `TCPIP::127.0.0.1::PORT::SOCKET` (pyvisa-py) for a
        SCPI instrument, `socket://127.0.0.1:PORT` (pyserial) for a serial board."""
        return {
            name: server.address if isinstance(server, ScpiServer) else server.url
            for name, server in self.servers.items()
        }

    def start(self) -> dict[str, str]:
        """Start every server; return the addresses."""
        try:
            for server in self.servers.values():
                server.start()
        except BaseException:
            self.stop()
            raise
        return self.addresses

    def stop(self) -> None:
        """Stop every server that runs (each finishes the messages it has received)."""
        for server in self.servers.values():
            server.stop()
