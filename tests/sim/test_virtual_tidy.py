"""The crossbar board's server on `ScpiServer`'s transport, and binary replies as bytes, over
loopback: a stop executes and answers every line already received (a GND is not lost), the
board's framing (ERR 23, ERR 24, CR LF) and the transport faults hold, a closed connection
grounds the board; the virtual DAQ's REAL,64 blocks are bytes, joined with text replies as bytes
and sent byte for byte."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from simulators.analog_mlp import AnalogMLPDevice
from simulators.crossbar import CrossbarDevice, CrossbarSettings
from simulators.virtual.backplane import Backplane
from simulators.virtual.crossbar_serial import CrossbarBoardEmulator, CrossbarSerialServer
from simulators.virtual.scpi import nr3
from simulators.virtual.scpi_daq import ScpiDaq, Wire
from simulators.virtual.server import ScpiServer

pytestmark = pytest.mark.timeout(10)

TIMEOUT = 2.0  # s on every socket


def emulator() -> CrossbarBoardEmulator:
    device = CrossbarDevice(CrossbarSettings(rows=4, cols=3, construction_seed=1), seed=2)
    return CrossbarBoardEmulator(device)


@contextmanager
def connected(port: int) -> Iterator[socket.socket]:
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        yield sock


def line(sock: socket.socket) -> bytes:
    """The next reply line, without its LF (read byte by byte: nothing after it is consumed)."""
    data = b""
    while not data.endswith(b"\n"):
        byte = sock.recv(1)
        assert byte, f"connection closed after {data!r}"
        data += byte
    return data[:-1]


def received(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, f"connection closed after {data!r}"
        data += chunk
    return data


def until_closed(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    return data


def eventually(done: Callable[[], bool]) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not done():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.002)


def test_a_stop_executes_and_answers_every_line_already_received() -> None:
    board = emulator()
    server = CrossbarSerialServer(board).start()
    try:
        with connected(server.port) as sock:
            sock.sendall(b"HELLO 1\n")
            assert line(sock) == b"OK XBAR 1 4 3"
            server.set_faults(delay=5.0)  # the reply to SEL is held back when the stop comes
            sock.sendall(b"SEL 1 2\nGND\nSEL?\n")
            eventually(lambda: ("SEL 1 2", "OK") in board.log)
            t0 = time.monotonic()
            server.stop()
            assert time.monotonic() - t0 < 1.0  # the delay is cut short, nothing waits it out
            assert until_closed(sock) == b"OK\nOK\nOK NONE\n"
        assert list(board.log) == [
            ("HELLO 1", "OK XBAR 1 4 3"),
            ("SEL 1 2", "OK"),
            ("GND", "OK"),
            ("SEL?", "OK NONE"),
        ]
        assert (board.lines, board.session) == ("GND", False)
    finally:
        server.stop()


def test_the_board_framing_and_the_transport_faults_hold() -> None:
    board = emulator()
    with CrossbarSerialServer(board) as server, connected(server.port) as sock:
        assert server.url == f"socket://127.0.0.1:{server.port}"
        sock.sendall(b"HELLO 1\n")
        assert line(sock) == b"OK XBAR 1 4 3"
        sock.sendall(b"X" * board.model.max_line)  # no LF within the longest line
        assert line(sock) == b"ERR 23 line too long"
        sock.sendall(b"REST OF THE LONG LINE\nPING\n")  # discarded up to its LF
        assert line(sock) == b"OK"
        sock.sendall(b"PING \xb5\n")
        assert line(sock) == b"ERR 24 non-ASCII byte in the command"
        sock.sendall(b"SEL 0 1\r\n")  # CR LF is accepted
        assert line(sock) == b"OK"
        server.set_faults(garble=1)
        sock.sendall(b"SEL?\n")
        assert line(sock) == b"\xff1 0 KO"
        server.set_faults(drop=1)
        sock.sendall(b"PING\nBIAS?\n")
        assert line(sock) == b"OK V/3"  # the PING's reply was dropped
        assert server.faults.drop == 0  # consumed (hil.virtual sets `faults` from a station)
        server.faults.delay = 0.001
        server.clear_faults()
        sock.sendall(b"PING\n")
        assert line(sock) == b"OK"
    assert [command for command, _ in board.log] == [
        "HELLO 1",
        "PING",
        "SEL 0 1",
        "SEL?",
        "PING",
        "BIAS?",
        "PING",
    ]


def test_a_closed_connection_grounds_the_board_and_ends_the_session() -> None:
    board = emulator()
    with CrossbarSerialServer(board) as server:
        with connected(server.port) as sock:
            sock.sendall(b"HELLO 1\nSEL 2 0\n")
            assert (line(sock), line(sock)) == (b"OK XBAR 1 4 3", b"OK")
            assert (board.lines, board.selected) == ("ACTIVE", (2, 0))
        eventually(lambda: (board.lines, board.session) == ("GND", False))
        assert board.selected is None


@pytest.fixture
def daq() -> ScpiDaq:
    """A board reading the chip's output y0 on AI 101 (×1) and AI 102 (×-1): one of the two
    values is negative or -0.0, so the block holds bytes beyond ASCII."""
    chip = AnalogMLPDevice(AnalogMLPDevice.Settings())
    ai = {101: Wire("y0", 1.0), 102: Wire("y0", -1.0)}
    board = ScpiDaq(Backplane(chip), {}, ai)
    assert board.execute("ROUT:SCAN (@101,102);:FORM REAL,64") is None
    return board


def test_a_real64_reading_is_bytes_joined_with_text_as_bytes(daq: ScpiDaq) -> None:
    block = daq.execute("READ?")
    assert daq.state.last is not None
    payload = struct.pack(">2d", *daq.state.last)
    assert max(payload) >= 0x80
    assert block == b"#216" + payload
    assert daq.execute("FETC?;*OPC?") == block + b";1"
    assert daq.execute("*IDN?;FETC?") == b"HIL,VIRTUAL SCPI DAQ,0,1.0;" + block
    assert daq.execute("FORM ASC;:FETC?") == ",".join(nr3(v) for v in daq.state.last)
    assert daq.execute("SYST:ERR?") == '0,"No error"'


def test_a_block_goes_over_the_wire_byte_for_byte(daq: ScpiDaq) -> None:
    block = daq.execute("READ?")
    assert isinstance(block, bytes)
    with ScpiServer(daq, "daq") as server, connected(server.port) as sock:
        sock.sendall(b"FETC?\n")
        assert received(sock, len(block) + 1) == block + b"\n"
        sock.sendall(b"SYST:ERR?\n")
        assert line(sock) == b'0,"No error"'
