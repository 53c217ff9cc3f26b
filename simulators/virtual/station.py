"""Start several virtual instruments at once and hand out their VISA addresses.

The launcher `hil serve` will build on: a `VirtualStation` maps instrument names to `ScpiDevice`s,
serves each on its own free loopback port, and stops them all on exit (also when one fails to
start).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType

from simulators.virtual.scpi import ScpiDevice
from simulators.virtual.server import ScpiServer


class VirtualStation:
    """A set of virtual instruments served together; a context manager."""

    def __init__(self, devices: Mapping[str, ScpiDevice]) -> None:
        self.servers = {name: ScpiServer(device, name) for name, device in devices.items()}

    @property
    def addresses(self) -> dict[str, str]:
        """Instrument name → `TCPIP::127.0.0.1::PORT::SOCKET` (pyvisa-py)."""
        return {name: server.address for name, server in self.servers.items()}

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
        """Stop every server that runs."""
        for server in self.servers.values():
            server.stop()

    def __enter__(self) -> VirtualStation:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
