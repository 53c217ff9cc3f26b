"""Fault translation and retries: timeouts, garbled replies and disconnects from a fake adapter
become the right `InstrumentError`, naming the instrument, the command and the reply."""

from __future__ import annotations

from typing import Any

import pytest
from pymeasure.adapters import Adapter
from pymeasure.instruments.keithley import Keithley2400
from pyvisa.constants import StatusCode
from pyvisa.errors import VisaIOError

from drivers import Keithley2400Channel, Keithley2400Settings, RetrySettings
from drivers.faults import fault_class, with_retry
from hil.core import (
    InstrumentDisconnected,
    InstrumentError,
    InstrumentProtocolError,
    InstrumentTimeout,
    VirtualClock,
)

IDN = "KEITHLEY INSTRUMENTS INC.,MODEL 2400,1234567,C30"
# The 2400 connect sequence (see test_drivers_keithley.py), answered correctly.
CONNECT: list[tuple[str, str | None]] = [
    (":FORMAT:ELEMENTS VOLTAGE, CURRENT, RESISTANCE, TIME, STATUS", None),
    ("*IDN?", IDN),
    ("OUTPUT?", "0"),
    (":SOURCE:FUNCTION VOLT", None),
    (":SOURCE:VOLTAGE:MODE FIXED", None),
    (":SOURCE:VOLTAGE:RANGE 2", None),
    (":SOURCE:VOLTAGE 0", None),
    (':SENSE:FUNCTION "CURR"', None),
    (":SENSE:CURRENT:PROTECTION 1e-05", None),
    (":SENSE:CURRENT:RANGE:AUTO 1", None),
    (":SENSE:CURRENT:NPLCYCLES 1", None),
    (":SOURCE:FUNCTION?", "VOLT"),
    (":SOURCE:VOLTAGE:MODE?", "FIX"),
    (":SOURCE:VOLTAGE:RANGE?", "2.100000E+00"),
    (":SOURCE:VOLTAGE?", "0.000000E+00"),
    (":SENSE:CURRENT:PROTECTION?", "1.000000E-05"),
    (":SENSE:CURRENT:RANGE:AUTO?", "1"),
    (":SENSE:CURRENT:NPLCYCLES?", "1.000000E+00"),
    ("SYST:ERR?", '0,"No error"'),
]
READING = "+1.000000E-01,+2.500000E-08,+9.910000E+37,+1.0E+00,+2.048000E+04"
TIMEOUT = VisaIOError(StatusCode.error_timeout)
LOST = VisaIOError(StatusCode.error_connection_lost)

Reply = str | BaseException | None


class FaultyAdapter(Adapter):  # type: ignore[misc]
    """A scripted adapter whose writes or replies may raise, like a failing VISA session.

    Each step is (expected command, reply); a reply that is an exception is raised on read,
    a command step whose reply is ("raise", exc) raises on write.
    """

    def __init__(self, script: list[tuple[str, Reply]], write_faults: dict[str, Any] | None = None):
        super().__init__()
        self.script = list(script)
        self.write_faults = dict(write_faults or {})
        self.pending: Reply = None
        self.sent: list[str] = []
        self.flushes = 0

    def _write(self, command: str, **kwargs: Any) -> None:
        self.sent.append(command)
        if command in self.write_faults:
            raise self.write_faults.pop(command)
        expected, reply = self.script.pop(0)
        assert command == expected, f"sent {command!r}, expected {expected!r}"
        self.pending = reply

    def _read(self, **kwargs: Any) -> str:
        reply, self.pending = self.pending, None
        if isinstance(reply, BaseException):
            raise reply
        assert reply is not None, "read without a pending reply"
        return reply

    def flush_read_buffer(self) -> None:
        self.flushes += 1
        self.pending = None


def connected(
    extra: list[tuple[str, Reply]], retries: int = 2, write_faults: dict[str, Any] | None = None
) -> tuple[Keithley2400Channel, FaultyAdapter, VirtualClock]:
    adapter = FaultyAdapter([*CONNECT, ("OUTPUT 1", None), *extra], write_faults)
    clock = VirtualClock()
    settings = Keithley2400Settings(
        name="smu1",
        address="GPIB0::24::INSTR",
        compliance_current=1e-5,
        source_range=2.0,
        retry=RetrySettings(count=retries, backoff=0.05, factor=2.0),
    )
    ch = Keithley2400Channel(settings, clock=clock)
    ch.connect(Keithley2400(adapter))
    ch.enable()
    return ch, adapter, clock


def test_timeout_is_retried_with_backoff_then_named() -> None:
    ch, adapter, clock = connected([(":READ?", TIMEOUT)] * 3)
    with pytest.raises(InstrumentTimeout) as caught:
        ch.read()
    message = str(caught.value)
    assert message.startswith(f"smu1 ({IDN}): read current failed: sent ':READ?', no reply")
    assert "VI_ERROR_TMO" in message
    assert message.endswith("; gave up after 3 attempts")
    assert adapter.sent[-3:] == [":READ?"] * 3
    assert adapter.flushes == 2  # before each retry, so a late reply cannot be misread
    assert clock.now() == pytest.approx(0.05 + 0.10)


def test_timeout_then_a_good_reply_succeeds() -> None:
    ch, adapter, _ = connected([(":READ?", TIMEOUT), (":READ?", READING)])
    assert ch.read() == pytest.approx(2.5e-8)
    assert adapter.script == []


@pytest.mark.parametrize("garbage", ["#\x00garbled", "1.0,2.0", "+1.0E+00,NaN-ish,3,4,5"])
def test_garbled_reply_is_a_protocol_error_naming_the_reply(garbage: str) -> None:
    ch, _, _ = connected([(":READ?", garbage)], retries=0)
    with pytest.raises(InstrumentProtocolError) as caught:
        ch.read()
    message = str(caught.value)
    assert f"sent ':READ?', reply {garbage!r}" in message
    assert "MODEL 2400" in message


def test_identity_timeout_at_connect_is_retried() -> None:
    script: list[tuple[str, Reply]] = [CONNECT[0], ("*IDN?", TIMEOUT), *CONNECT[1:]]
    adapter = FaultyAdapter(script)
    ch = Keithley2400Channel(
        Keithley2400Settings(
            name="smu1", address="GPIB0::24::INSTR", compliance_current=1e-5, source_range=2.0
        ),
        clock=VirtualClock(),
    )
    ch.connect(Keithley2400(adapter))
    assert ch.who == f"smu1 ({IDN})"
    assert adapter.flushes == 1
    assert adapter.script == []


def test_disconnect_is_not_retried() -> None:
    ch, adapter, _ = connected([(":READ?", LOST)])
    with pytest.raises(InstrumentDisconnected, match="VI_ERROR_CONN_LOST"):
        ch.read()
    assert adapter.sent.count(":READ?") == 1


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (ConnectionResetError("peer reset"), InstrumentDisconnected),
        (BrokenPipeError("broken pipe"), InstrumentDisconnected),
        (TimeoutError("timed out"), InstrumentTimeout),
        (VisaIOError(StatusCode.error_io), InstrumentDisconnected),
        (VisaIOError(StatusCode.error_invalid_object), InstrumentDisconnected),
        (VisaIOError(StatusCode.error_nonsupported_format), InstrumentError),
        (UnicodeDecodeError("ascii", b"\xff", 0, 1, "bad byte"), InstrumentProtocolError),
    ],
)
def test_fault_classes(exc: BaseException, kind: type[InstrumentError]) -> None:
    assert fault_class(exc) is kind


def test_foreign_errors_pass_unchanged() -> None:
    assert fault_class(RuntimeError("bug")) is None
    assert fault_class(AssertionError("test")) is None


def test_write_failure_names_the_command() -> None:
    ch, _, _ = connected([], write_faults={":SOURCE:VOLTAGE 0.5": LOST})
    with pytest.raises(InstrumentDisconnected) as caught:
        ch.set_level(0.5)
    assert "set level failed: sent ':SOURCE:VOLTAGE 0.5', no reply" in str(caught.value)
    assert ch.level == 0.0  # the level is only taken once the write went through


def test_go_safe_switches_off_even_when_the_ramp_fails() -> None:
    ch, adapter, _ = connected(
        [(":SOURCE:VOLTAGE 0.3", None), ("OUTPUT 0", None)],
        write_faults={":SOURCE:VOLTAGE 0.2": LOST},
    )
    ch.set_level(0.3)
    with pytest.raises(InstrumentDisconnected):
        ch.go_safe()
    assert adapter.sent[-2:] == [":SOURCE:VOLTAGE 0.2", "OUTPUT 0"]
    assert not ch.enabled


def test_with_retry_backoff_sequence() -> None:
    waits: list[float] = []
    failures = iter([InstrumentTimeout("t"), InstrumentProtocolError("p"), InstrumentTimeout("t")])

    def query() -> int:
        failure = next(failures, None)
        if failure is not None:
            raise failure
        return 7

    assert with_retry(query, RetrySettings(count=3, backoff=0.1, factor=3.0), waits.append) == 7
    assert waits == pytest.approx([0.1, 0.3, 0.9])
