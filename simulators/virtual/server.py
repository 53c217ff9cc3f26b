"""A threaded loopback TCP server that puts a `ScpiDevice` on the wire, with fault injection.

Bound to 127.0.0.1 only, on a port the OS picks; pyvisa-py reaches it as
`TCPIP::127.0.0.1::<port>::SOCKET` with `\\n` termination (`\\r\\n` is accepted too). One thread
accepts, one serves each connection; `stop()` (or leaving the `with` block) closes the listening
socket, lets every connection finish the messages it has already received (a safe-state command
sent just before the stop is executed, not dropped), closes it and joins every thread, so tests
leak neither. A reply is text (ASCII) or bytes (an IEEE 488.2 binary block), sent as it is.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass

from hil.core import Serving
from simulators.virtual.scpi import ScpiDevice, ScpiError

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
POLL = 0.05
"""s between checks of the stop flag while waiting for a connection or a byte."""
MAX_LINE = 1 << 20
"""Longest message accepted; a longer one is dropped whole and queues -102."""
STOP_WAIT = 2.0
"""s a connection gets at `stop()` to finish what it received before it is cut."""


@dataclass
class Faults:
    """Transport faults a test can inject; the counts are consumed across connections.

    `delay`: s before every response. `drop`: the next N responses are not sent.
    `garble`: the next N responses are sent corrupted (a 0xFF byte, then the text reversed).
    `disconnect_after`: the connection is closed instead of handling the message that follows the
    next N messages (0: the very next one); then the fault clears itself.
    """

    delay: float = 0.0
    drop: int = 0
    garble: int = 0
    disconnect_after: int | None = None


class ScpiServer(Serving):
    """Serve one virtual instrument on loopback TCP; a context manager that starts and stops it."""

    def __init__(self, device: ScpiDevice, name: str = "instrument") -> None:
        self.device = device
        self.name = name
        self.faults = Faults()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self._threads: list[threading.Thread] = []
        self._clients: set[socket.socket] = set()

    @property
    def port(self) -> int:
        """The TCP port the OS assigned (after `start`)."""
        if self._listener is None:
            raise RuntimeError(f"virtual instrument {self.name!r} is not started")
        port: int = self._listener.getsockname()[1]
        return port

    @property
    def address(self) -> str:
        """The pyvisa-py resource name of this server."""
        return f"TCPIP::{HOST}::{self.port}::SOCKET"

    def set_faults(self, **changes: float | int | None) -> None:
        """Change fault settings atomically, e.g. `set_faults(drop=2)`."""
        with self._lock:
            for key, value in changes.items():
                if not hasattr(self.faults, key):
                    raise TypeError(f"unknown fault {key!r}")
                setattr(self.faults, key, value)

    def clear_faults(self) -> None:
        """Switch every fault off."""
        with self._lock:
            self.faults = Faults()

    def start(self) -> ScpiServer:
        """Bind a free loopback port and start accepting connections."""
        if self._listener is not None:
            raise RuntimeError(f"virtual instrument {self.name!r} is already started")
        self._stop.clear()
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind((HOST, 0))
        listener.listen()
        listener.settimeout(POLL)
        self._listener = listener
        self._acceptor = threading.Thread(
            target=self._accept_loop, name=f"{self.name}-accept", daemon=True
        )
        self._acceptor.start()
        log.debug("virtual instrument %s serving on %s", self.name, self.address)
        return self

    def stop(self) -> None:
        """Stop accepting; let every connection handle the messages already received, then
        close it and the listening socket; join all threads (a connection still busy after
        `STOP_WAIT` s is cut)."""
        self._stop.set()
        if self._acceptor is not None:
            self._acceptor.join(timeout=5.0)
            self._acceptor = None
        with self._lock:
            threads, self._threads = self._threads, []
        for thread in threads:
            thread.join(timeout=STOP_WAIT)
        with self._lock:
            stuck = list(self._clients)
        for client in stuck:
            _shutdown(client)
        for thread in threads:
            thread.join(timeout=5.0)
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def _spawn(self, target: Callable[[socket.socket], None], client: socket.socket) -> None:
        thread = threading.Thread(
            target=target, args=(client,), name=f"{self.name}-client", daemon=True
        )
        with self._lock:
            self._clients.add(client)
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        listener = self._listener
        assert listener is not None
        while not self._stop.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(POLL)
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._spawn(self._serve, client)

    def _serve(self, client: socket.socket) -> None:
        buffer = b""
        try:
            while not self._stop.is_set():
                try:
                    chunk = client.recv(65536)
                except TimeoutError:
                    continue
                if not chunk:
                    return
                _quick_ack(client)
                buffer, more = self._lines(client, buffer + chunk)
                if not more:
                    return
            # Stopping: what the client sent before the stop is still executed, in order.
            while chunk := _received(client):
                buffer, more = self._lines(client, buffer + chunk)
                if not more:
                    return
        except OSError:
            return  # the client went away mid-reply
        finally:
            with self._lock:
                self._clients.discard(client)
            _shutdown(client)
            client.close()

    def _lines(self, client: socket.socket, buffer: bytes) -> tuple[bytes, bool]:
        """Handle every complete message in `buffer`: the rest, and False to disconnect."""
        while b"\n" in buffer:
            raw, buffer = buffer.split(b"\n", 1)
            if not self._handle(client, raw.removesuffix(b"\r")):
                return b"", False
        if len(buffer) > MAX_LINE:
            buffer = b""
            self.device.push_error(ScpiError(-102, "message too long"))
        return buffer, True

    def _handle(self, client: socket.socket, raw: bytes) -> bool:
        """Execute one message and send its reply through the faults; False to disconnect."""
        with self._lock:
            after = self.faults.disconnect_after
            if after is not None:
                self.faults.disconnect_after = None if after == 0 else after - 1
            delay = self.faults.delay
        if after == 0:
            log.debug("%s: injected disconnect", self.name)
            return False
        try:
            message = raw.decode("ascii")
        except UnicodeDecodeError:
            self.device.push_error(ScpiError(-102, "non-ASCII byte in message"))
            return True
        reply = self.device.execute(message)
        if reply is None:
            return True
        with self._lock:
            drop = self.faults.drop > 0
            garble = not drop and self.faults.garble > 0
            if drop:
                self.faults.drop -= 1
            if garble:
                self.faults.garble -= 1
        if delay > 0:
            self._stop.wait(delay)  # cut short by a stop: the reply still goes out
        if drop:
            return True
        data = self._encode(reply)
        if garble:
            data = b"\xff" + data[::-1]
        client.sendall(data + b"\n")
        return True

    def _encode(self, reply: str | bytes) -> bytes:
        """Bytes as they are (a binary block); text as ASCII, a character beyond it replaced by
        `?` and logged (an emulation bug, which must not cost the connection)."""
        if isinstance(reply, bytes):
            return reply
        try:
            return reply.encode("ascii")
        except UnicodeEncodeError:
            log.warning("%s: non-ASCII reply %r sent with '?' in place", self.name, reply)
            return reply.encode("ascii", errors="replace")


def _received(sock: socket.socket) -> bytes:
    """What the peer has sent and is waiting in the socket, without waiting (b"": nothing)."""
    readable, _, _ = select.select([sock], [], [], 0)
    return sock.recv(65536) if readable else b""


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def _quick_ack(sock: socket.socket) -> None:
    """Acknowledge at once (Linux): a client that writes a command and then a query would
    otherwise wait ~40 ms for the delayed ACK of the first before Nagle lets the second out."""
    option = getattr(socket, "TCP_QUICKACK", None)
    if option is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, option, 1)
