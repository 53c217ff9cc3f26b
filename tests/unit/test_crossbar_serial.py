"""The XBAR/1 serial driver against expected command/reply lists (no port, no server), and the
board emulator's strictness, command by command (docs/crossbar-protocol.md)."""

from __future__ import annotations

import socket
from collections.abc import Sequence

import numpy as np
import pytest

from drivers.crossbar_serial import CrossbarSerialBoard, CrossbarSerialSettings, PulseShape
from hil.core import (
    DeviceSaturated,
    InstrumentDisconnected,
    InstrumentError,
    InstrumentProtocolError,
    InstrumentTimeout,
    SafetyViolation,
    VirtualClock,
)
from simulators.crossbar import CrossbarDevice, CrossbarSettings
from simulators.virtual.crossbar_serial import BoardModel, CrossbarBoardEmulator

Exchange = tuple[str, str | None]  # command sent, reply line (None: no reply, a timeout)

CONNECT: list[Exchange] = [
    ("HELLO 1", "OK XBAR 1 4 3"),
    ("IDN?", "OK ACME,XB-1,42,2.1"),
    ("HWLIMITS?", "OK 1.0e+01 1.0e+00 10 1000000 10000 1.0e-02"),
    ("LIMITS 2 0.5 10 1000 100", "OK"),
    ("LIMITS?", "OK 2.0e+00 5.0e-01 10 1000 100"),
    ("CC 0.0001", "OK"),
    ("CC?", "OK 1.0e-04"),
    ("BIAS V/2", "OK"),
    ("BIAS?", "OK V/2"),
    ("WDT 2.5", "OK"),
    ("WDT?", "OK 2.5e+00"),
    ("GND", "OK"),
]
SET = PulseShape(amplitude=1.2, width_ns=100, gap_ns=500)


class ScriptedPort:
    """A pyserial port that checks every line written against the script and answers it."""

    def __init__(self, script: Sequence[Exchange], fail_on: str | None = None) -> None:
        self.script = list(script)
        self.sent: list[str] = []
        self.timeout = 0.0
        self.timeouts: list[float] = []
        self.closed = False
        self.fail_on = fail_on
        self._reply: str | None = None

    def write(self, data: bytes) -> int:
        line = data.decode("ascii")
        assert line.endswith("\n"), f"unterminated {line!r}"
        command = line[:-1]
        if command == self.fail_on:
            raise OSError(5, "Input/output error")  # what pyserial raises on a lost port
        assert self.script, f"unexpected command {command!r} after the script ended"
        expected, self._reply = self.script.pop(0)
        assert command == expected, f"sent {command!r}, expected {expected!r}"
        self.sent.append(command)
        self.timeouts.append(self.timeout)
        return len(data)

    def readline(self) -> bytes:
        reply, self._reply = self._reply, None
        return b"" if reply is None else reply.encode("latin-1") + b"\n"

    def reset_input_buffer(self) -> None:
        """Nothing is buffered."""

    def close(self) -> None:
        self.closed = True


def settings(**changes: object) -> CrossbarSerialSettings:
    values: dict[str, object] = {
        "name": "xbar",
        "url": "socket://127.0.0.1:1",
        "timeout": 0.5,
        "retry": {"count": 1, "backoff": 0.01, "factor": 2},
        "word_lines": 4,
        "bit_lines": 3,
        "max_amplitude": 2.0,
        "max_read_voltage": 0.5,
        "max_width_ns": 1000,
        "max_count": 100,
        "compliance_current": 1e-4,
        "bias": "V/2",
        "watchdog": 2.5,
    }
    values.update(changes)
    return CrossbarSerialSettings.model_validate(values)


def board(
    script: Sequence[Exchange], **changes: object
) -> tuple[CrossbarSerialBoard, ScriptedPort]:
    port = ScriptedPort(script)
    return CrossbarSerialBoard(settings(**changes), clock=VirtualClock(), port=port), port


def test_connect_checks_size_and_limits_writes_reads_back_and_grounds() -> None:
    xbar, port = board(CONNECT)
    xbar.connect()
    assert port.script == []
    assert xbar.identity == "ACME,XB-1,42,2.1"
    assert xbar.who == "xbar (ACME,XB-1,42,2.1)"
    assert set(port.timeouts) == {0.5}  # every reply is awaited with the configured timeout


def test_operations_send_exactly_the_protocol_lines() -> None:
    script = [
        *CONNECT,
        ("SEL 2 1", "OK"),
        ("READ 0.2", "OK 1.5e-05"),
        ("PULSE SET 1.2 100 7 500", "OK 7"),
        ("PULSE RESET 1.2 100 3 500", "OK 3"),
        ("READROW 3 -0.2", "OK -1.0e-05 -1.1e-05 -1.2e-05"),
        ("VMM 0.1 0 -0.25 0.5", "OK 1.0e-06 2.0e-06 3.0e-06"),
        ("FLOAT", "OK"),
        ("PING", "OK"),
        ("GND", "OK"),
    ]
    xbar, port = board(script)
    xbar.connect()
    xbar.select(2, 1)
    assert xbar.read(0.2) == 1.5e-5
    assert xbar.pulse("SET", SET, 7) == 7
    assert port.timeouts[-1] == pytest.approx(0.5 + 7 * 600e-9)  # the train's time is added
    assert xbar.pulse("RESET", SET, np.int64(3)) == 3
    np.testing.assert_array_equal(xbar.read_row(3, -0.2), [-1e-5, -1.1e-5, -1.2e-5])
    np.testing.assert_array_equal(xbar.vmm([0.1, 0.0, -0.25, 0.5]), [1e-6, 2e-6, 3e-6])
    xbar.float_all()
    xbar.ping()
    xbar.close()
    xbar.close()  # idempotent: nothing more is sent
    assert port.script == []
    assert port.closed


@pytest.mark.parametrize(
    "request_",
    [
        lambda b: b.pulse("SET", PulseShape(amplitude=2.5, width_ns=100), 1),
        lambda b: b.pulse("SET", PulseShape(amplitude=1.0, width_ns=5), 1),
        lambda b: b.pulse("SET", PulseShape(amplitude=1.0, width_ns=5000), 1),
        lambda b: b.pulse("RESET", SET, 101),
        lambda b: b.pulse("RESET", SET, -1),
        lambda b: b.read(0.6),
        lambda b: b.read(float("nan")),
        lambda b: b.read_row(0, -0.7),
        lambda b: b.vmm([0.1, 0.2, 0.8, 0.0]),
    ],
    ids=["amplitude", "short", "long", "count", "negative", "vread", "nan", "row", "vmm"],
)
def test_out_of_range_is_refused_before_sending(request_: object) -> None:
    xbar, port = board(CONNECT)
    xbar.connect()
    with pytest.raises(SafetyViolation, match="xbar"):
        request_(xbar)  # type: ignore[operator]
    assert len(port.sent) == len(CONNECT)


def test_a_board_of_another_size_is_refused_and_released() -> None:
    xbar, port = board([("HELLO 1", "OK XBAR 1 8 3")])
    with pytest.raises(InstrumentError, match="8 × 3 lines"):
        xbar.connect()
    assert port.closed
    with pytest.raises(InstrumentError, match="not connected"):
        xbar.ground_all()


def test_settings_beyond_the_hardware_are_refused() -> None:
    script = [*CONNECT[:2], ("HWLIMITS?", "OK 1.5e+00 1.0e+00 10 1000000 10000 1.0e-02")]
    xbar, port = board(script)
    with pytest.raises(InstrumentError, match=r"max_amplitude 2 is beyond .* 1.5"):
        xbar.connect()
    assert port.closed


def test_a_limit_that_reads_back_different_refuses_to_start() -> None:
    script = [*CONNECT[:6], ("CC?", "OK 1.0e-03")]
    xbar, port = board(script)
    with pytest.raises(InstrumentError, match=r"compliance_current .* reads back 0.001"):
        xbar.connect()
    assert port.closed


def test_compliance_is_a_saturation_naming_board_command_and_reply() -> None:
    script = [*CONNECT, ("SEL 0 0", "OK"), ("READ 0.5", "ERR 40 compliance 1e-04 A reached")]
    xbar, _ = board(script)
    xbar.connect()
    xbar.select(0, 0)
    with pytest.raises(DeviceSaturated, match=r"xbar \(ACME.*'READ 0.5'.*ERR 40"):
        xbar.read(0.5)


def test_garbled_replies_and_timeouts_are_retried_then_reported() -> None:
    script = [*CONNECT, ("READROW 0 0.2", "\xffOK 1"), ("READROW 0 0.2", "OK 1e-5 2e-5 3e-5")]
    xbar, _ = board(script)
    xbar.connect()
    np.testing.assert_array_equal(xbar.read_row(0, 0.2), [1e-5, 2e-5, 3e-5])
    xbar2, _ = board([*CONNECT, ("PING", None), ("PING", None)])
    xbar2.connect()
    with pytest.raises(InstrumentTimeout, match=r"xbar .*'PING', no reply.*2 attempts"):
        xbar2.ping()
    xbar3, _ = board([*CONNECT, ("READ 0.1", "OK nan"), ("READ 0.1", "OK inf")])
    xbar3.connect()
    with pytest.raises(InstrumentProtocolError, match="'OK inf'"):
        xbar3.read(0.1)


def test_a_pulse_train_is_never_retried() -> None:
    xbar, port = board([*CONNECT, ("SEL 0 0", "OK"), ("PULSE SET 1.2 100 1 500", None)])
    xbar.connect()
    xbar.select(0, 0)
    with pytest.raises(InstrumentTimeout, match="pulse failed"):
        xbar.pulse("SET", SET, 1)
    assert port.script == []


def test_a_lost_port_is_a_disconnect() -> None:
    xbar, port = board(CONNECT)
    xbar.connect()
    port.fail_on = "SEL 1 1"
    with pytest.raises(InstrumentDisconnected, match=r"xbar .*'SEL 1 1'"):
        xbar.select(1, 1)


# -- the emulator: one command line in, one reply line out ------------------------------------


@pytest.fixture
def emulator() -> CrossbarBoardEmulator:
    device = CrossbarDevice(CrossbarSettings(rows=4, cols=3, construction_seed=1), seed=2)
    return CrossbarBoardEmulator(device, BoardModel(g_ref=1e-5, g_scale=1e-5))


@pytest.mark.parametrize(
    ("line", "reply"),
    [
        ("READ 0.2", "ERR 11 "),
        ("HELLO 2", "ERR 10 "),
        ("HELLO one", "ERR 22 "),
        ("HELLO", "ERR 21 "),
    ],
)
def test_the_emulator_needs_a_hello_of_version_1(
    emulator: CrossbarBoardEmulator, line: str, reply: str
) -> None:
    assert emulator.handle(line).startswith(reply)


@pytest.mark.parametrize(
    ("line", "reply"),
    [
        ("IDN?", "OK HIL,XBAR-EMULATOR,0,1.0"),
        ("read 0.2", "ERR 20 "),
        ("SEL  1 1", "ERR 20 "),
        ("SEL 4 0", "ERR 30 "),
        ("SEL 1", "ERR 21 "),
        ("READ 0.2", "ERR 32 "),
        ("READ 2", "ERR 30 "),
        ("READ 0x1", "ERR 22 "),
        ("PULSE UP 1 100 1 0", "ERR 22 "),
        ("PULSE SET 11 100 1 0", "ERR 30 "),
        ("PULSE SET 1 100 1 0", "ERR 32 "),
        ("BIAS V/4", "ERR 22 "),
        ("BIAS?", "OK V/3"),
        ("SEL?", "OK NONE"),
        ("WDT 0.01", "ERR 30 "),
        ("CC 1", "ERR 30 "),
        ("VMM 0.1 0.1", "ERR 21 "),
        ("PING", "OK"),
    ],
)
def test_the_emulator_answers_every_line_strictly(
    emulator: CrossbarBoardEmulator, line: str, reply: str
) -> None:
    assert emulator.handle("HELLO 1") == "OK XBAR 1 4 3"
    assert emulator.handle(line).startswith(reply)


def test_session_limits_and_compliance_are_enforced_by_the_board(
    emulator: CrossbarBoardEmulator,
) -> None:
    assert emulator.handle("HELLO 1").startswith("OK")
    assert emulator.handle("LIMITS 2 0.5 10 1000 100") == "OK"
    assert emulator.handle("SEL 1 2") == "OK"
    assert emulator.handle("SEL?") == "OK 1 2"
    assert emulator.handle("PULSE SET 3 100 1 0").startswith("ERR 31 amplitude")
    assert emulator.handle("PULSE SET 1 100 101 0").startswith("ERR 31 count")
    assert emulator.handle("READ 0.6").startswith("ERR 31 ")
    assert emulator.handle("CC 1e-9") == "OK"
    assert emulator.handle("READ 0.5").startswith("ERR 40 ")
    assert emulator.handle("PULSE SET 1 100 5 0").startswith("ERR 41 ")
    assert emulator.handle("CC 1e-3") == "OK"
    before = emulator.device.weights[1, 2]
    assert emulator.handle("PULSE SET 0.5 100 5 0") == "OK 5"  # below v_switch: no change
    assert emulator.device.weights[1, 2] == before
    assert emulator.handle("PULSE SET 1 100 5 0") == "OK 5"
    assert emulator.device.weights[1, 2] > before
    current = float(emulator.handle("READ 0.2").split()[1])
    assert current == pytest.approx(0.2 * (1e-5 + 1e-5 * emulator.device.weights[1, 2]))
    emulator.disconnect()
    assert emulator.selected is None
    assert emulator.lines == "GND"
    assert emulator.handle("SEL 0 0").startswith("ERR 11 ")


def test_a_port_that_cannot_be_opened_names_the_board() -> None:
    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        url = f"socket://127.0.0.1:{probe.getsockname()[1]}"
    xbar = CrossbarSerialBoard(settings(url=url), clock=VirtualClock())
    with pytest.raises(InstrumentDisconnected, match=r"xbar \(socket://127.0.0.1:\d+\): connect"):
        xbar.connect()
