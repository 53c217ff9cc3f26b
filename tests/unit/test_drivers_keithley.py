"""Keithley 2400 / 2600 channels against expected command/response lists (no hardware).

Every command below is one the instrument manuals define (2400: SCPI, section 17-18; 2600:
TSP attributes of smuX), in the exact form the driver sends it.
"""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError
from pymeasure.instruments.keithley import Keithley2400, Keithley2600
from pymeasure.test import expected_protocol

from drivers import (
    Keithley2400Channel,
    Keithley2400Settings,
    Keithley2600Channel,
    Keithley2600Settings,
    SourceMeasureChannel,
)
from drivers.instruments import Readback, readback_matches
from hil.core import (
    DeviceSaturated,
    InstrumentError,
    InstrumentProtocolError,
    SafetyViolation,
    VirtualClock,
)

pytestmark = pytest.mark.filterwarnings(
    "ignore:It is not known whether this device support SCPI:FutureWarning"
)

IDN_2400 = "KEITHLEY INSTRUMENTS INC.,MODEL 2400,1234567,C30   Mar 17 2006 09:29:29/A02  /K/J"
IDN_2636 = "Keithley Instruments Inc., Model 2636B, 7654321, 3.2.2"
FORMAT = ":FORMAT:ELEMENTS VOLTAGE, CURRENT, RESISTANCE, TIME, STATUS"
NO_ERROR = '0,"No error"'
EMPTY_QUEUE = "0.00000e+00\tQueue Is Empty\t0.00000e+00\t0.00000e+00"


def settings_2400(**changes: object) -> Keithley2400Settings:
    values: dict[str, object] = {
        "name": "smu1",
        "address": "GPIB0::24::INSTR",
        "compliance_current": 1e-5,
        "source_range": 2.0,
        "measure_range": 1e-5,
        "nplc": 1.0,
        "ramp_step": 0.1,
        "max_slew": 1.0,
    }
    values.update(changes)
    return Keithley2400Settings.model_validate(values)


def settings_2600(**changes: object) -> Keithley2600Settings:
    values: dict[str, object] = {
        "name": "gate",
        "address": "TCPIP::192.0.2.10::INSTR",
        "channel": "smub",
        "compliance_current": 1e-7,
        "source_range": 2.0,
        "measure_range": 1e-6,
        "nplc": 0.5,
        "ramp_step": 0.25,
        "max_slew": 2.0,
    }
    values.update(changes)
    return Keithley2600Settings.model_validate(values)


CONNECT_2400 = [
    (FORMAT, None),  # sent by PyMeasure's Keithley2400 constructor
    ("*IDN?", IDN_2400),
    ("OUTPUT?", "0"),
    (":SOURCE:FUNCTION VOLT", None),
    (":SOURCE:VOLTAGE:MODE FIXED", None),
    (":SOURCE:VOLTAGE:RANGE 2", None),
    (":SOURCE:VOLTAGE 0", None),
    (':SENSE:FUNCTION "CURR"', None),
    (":SENSE:CURRENT:PROTECTION 1e-05", None),
    (":SENSE:CURRENT:RANGE 1e-05", None),
    (":SENSE:CURRENT:NPLCYCLES 1", None),
    (":SOURCE:FUNCTION?", "VOLT"),
    (":SOURCE:VOLTAGE:MODE?", "FIX"),
    (":SOURCE:VOLTAGE:RANGE?", "2.100000E+00"),
    (":SOURCE:VOLTAGE?", "0.000000E+00"),
    (":SENSE:CURRENT:PROTECTION?", "1.000000E-05"),
    (":SENSE:CURRENT:RANGE?", "1.050000E-05"),
    (":SENSE:CURRENT:NPLCYCLES?", "1.000000E+00"),
    ("SYST:ERR?", NO_ERROR),
]

CONNECT_2600 = [
    ("*IDN?", IDN_2636),
    ("print(smub.source.output)", "0.00000e+00"),
    ("smub.source.func=1", None),
    ("smub.source.rangev=2.000000", None),
    ("smub.source.levelv=0.000000", None),
    ("smub.source.limiti=1e-07", None),
    ("smub.measure.rangei=1e-06", None),
    ("smub.measure.nplc=0.5", None),
    ("print(smub.source.func)", "1.00000e+00"),
    ("print(smub.source.rangev)", "2.00000e+00"),
    ("print(smub.source.levelv)", "0.00000e+00"),
    ("print(smub.source.limiti)", "1.00000e-07"),
    ("print(smub.measure.rangei)", "1.00000e-06"),
    ("print(smub.measure.nplc)", "5.00000e-01"),
    ("print(errorqueue.next())", EMPTY_QUEUE),
]


def replace(
    pairs: list[tuple[str, str | None]], command: str, reply: str
) -> list[tuple[str, str | None]]:
    """`pairs` up to and including `command`, whose reply becomes `reply`."""
    index = [c for c, _ in pairs].index(command)
    return [*pairs[:index], (command, reply)]


# -- Keithley 2400 -----------------------------------------------------------------------------


def test_2400_connect_writes_limits_and_reads_them_back() -> None:
    with expected_protocol(Keithley2400, CONNECT_2400) as inst:
        ch = Keithley2400Channel(settings_2400(), clock=VirtualClock())
        ch.connect(inst)
    assert isinstance(ch, SourceMeasureChannel)
    assert ch.who == f"smu1 ({IDN_2400})"
    assert ch.level == 0.0
    assert not ch.enabled


def test_2400_connect_with_auto_range() -> None:
    pairs = [
        (":SENSE:CURRENT:RANGE:AUTO 1", None) if c == ":SENSE:CURRENT:RANGE 1e-05" else (c, r)
        for c, r in CONNECT_2400
    ]
    pairs = [
        (":SENSE:CURRENT:RANGE:AUTO?", "1") if c == ":SENSE:CURRENT:RANGE?" else (c, r)
        for c, r in pairs
    ]
    with expected_protocol(Keithley2400, pairs) as inst:
        Keithley2400Channel(settings_2400(measure_range=None), clock=VirtualClock()).connect(inst)


@pytest.mark.parametrize(
    ("command", "reply", "setting", "written", "read"),
    [
        (":SENSE:CURRENT:PROTECTION?", "1.000000E-04", "compliance_current", "1e-05", "0.0001"),
        (":SENSE:CURRENT:RANGE?", "1.050000E-06", "measure_range", "1e-05", "1.05e-06"),
        (":SENSE:CURRENT:RANGE?", "1.050000E-03", "measure_range", "1e-05", "0.00105"),
        (":SOURCE:VOLTAGE:RANGE?", "2.100000E-01", "source_range", "2.0", "0.21"),
        (":SENSE:CURRENT:NPLCYCLES?", "1.000000E-01", "nplc", "1.0", "0.1"),
        (":SOURCE:FUNCTION?", "CURR", "source function", "'voltage'", "'current'"),
        (":SOURCE:VOLTAGE:MODE?", "SWE", "source voltage mode", "'FIX'", "'SWE'"),
    ],
)
def test_2400_readback_mismatch_refuses_to_start(
    command: str, reply: str, setting: str, written: str, read: str
) -> None:
    # Nothing is sent after the mismatch: the protocol must end exactly at the bad reply.
    with expected_protocol(Keithley2400, replace(CONNECT_2400, command, reply)) as inst:
        ch = Keithley2400Channel(settings_2400(), clock=VirtualClock())
        with pytest.raises(InstrumentError, match="refusing to start") as caught:
            ch.connect(inst)
    message = str(caught.value)
    assert "smu1" in message
    assert "MODEL 2400" in message
    assert f"setting {setting} was written as {written} but reads back {read};" in message


def test_2400_errors_in_queue_refuse_to_start() -> None:
    pairs = [
        *CONNECT_2400[:-1],
        ("SYST:ERR?", '-222,"Data out of range"'),
        ("SYST:ERR?", NO_ERROR),
    ]
    with expected_protocol(Keithley2400, pairs) as inst:
        ch = Keithley2400Channel(settings_2400(), clock=VirtualClock())
        with pytest.raises(InstrumentError, match="Data out of range"):
            ch.connect(inst)


def test_2400_live_output_at_connect_is_refused_before_any_setting() -> None:
    with expected_protocol(Keithley2400, [*CONNECT_2400[:2], ("OUTPUT?", "1")]) as inst:
        ch = Keithley2400Channel(settings_2400(), clock=VirtualClock())
        with pytest.raises(InstrumentError, match="output is on at connect"):
            ch.connect(inst)


def test_2400_set_enable_read_disable() -> None:
    pairs = [
        *CONNECT_2400,
        (":SOURCE:VOLTAGE 0.05", None),
        ("OUTPUT 1", None),
        (":READ?", "+5.000000E-02,+1.234500E-07,+9.910000E+37,+1.234000E+02,+2.150800E+04"),
        ("OUTPUT 0", None),
    ]
    with expected_protocol(Keithley2400, pairs) as inst:
        ch = Keithley2400Channel(settings_2400(), clock=VirtualClock())
        ch.connect(inst)
        ch.set_level(0.05)
        assert ch.level == 0.05
        ch.enable()
        assert ch.enabled
        assert ch.read() == pytest.approx(1.2345e-7)
        ch.disable()
        assert not ch.enabled


@pytest.mark.parametrize(
    ("written", "read", "rule", "ok"),
    [
        (1e-5, "1.00009E-05", "equal", True),  # within readback_rtol 1e-4
        (1e-5, "1.0002E-05", "equal", False),
        (0.0, "0.000000E+00", "equal", True),
        (True, True, "equal", True),
        ("VOLT", "CURR", "equal", False),
        (2.0, "2.100000E+00", "range", True),  # the 2400's 2.1 V range holds 2 V
        (2.0, "2.000000E+01", "range", False),  # the next decade does not
        (1e-5, "1.050000E-05", "range", True),
        (1e-5, "1.000000E-06", "range", False),
    ],
)
def test_one_readback_rule_set(written: object, read: object, rule: Readback, ok: bool) -> None:
    assert readback_matches(written, read, rule, rtol=1e-4) is ok


def test_2400_reading_in_compliance_is_saturated() -> None:
    # Status word 0x5008: V sourced, I measured, bit 3 = in compliance.
    pairs = [
        *CONNECT_2400,
        ("OUTPUT 1", None),
        (":READ?", "+0.000000E+00,+1.000000E-05,+9.910000E+37,+1.0E+00,+2.048800E+04"),
    ]
    with expected_protocol(Keithley2400, pairs) as inst:
        ch = Keithley2400Channel(settings_2400(), clock=VirtualClock())
        ch.connect(inst)
        ch.enable()
        with pytest.raises(
            DeviceSaturated, match="in compliance at 0 V: read 1e-05 A at the 1e-05 A"
        ):
            ch.read()


def test_a_refused_connect_leaves_the_channel_unusable() -> None:
    pairs = replace(CONNECT_2400, ":SENSE:CURRENT:PROTECTION?", "1.050000E-04")
    with expected_protocol(Keithley2400, pairs) as inst:
        ch = Keithley2400Channel(settings_2400(), clock=VirtualClock())
        with pytest.raises(InstrumentError, match="compliance_current"):
            ch.connect(inst)
        with pytest.raises(InstrumentError, match="not connected"):
            ch.enable()


def test_2400_read_with_output_off_is_refused_before_sending() -> None:
    with expected_protocol(Keithley2400, CONNECT_2400) as inst:
        ch = Keithley2400Channel(settings_2400(), clock=VirtualClock())
        ch.connect(inst)
        with pytest.raises(InstrumentError, match="output is off"):
            ch.read()


@pytest.mark.parametrize("volts", [2.0001, -2.5, 300.0, math.nan, math.inf])
def test_2400_level_outside_source_range_is_refused_before_sending(volts: float) -> None:
    with expected_protocol(Keithley2400, CONNECT_2400) as inst:
        ch = Keithley2400Channel(settings_2400(), clock=VirtualClock())
        ch.connect(inst)
        with pytest.raises(SafetyViolation, match=r"instrument range \[-2, 2\] V"):
            ch.set_level(volts)
        with pytest.raises(SafetyViolation):
            ch.ramp_to(volts)
    assert ch.level == 0.0


def test_2400_go_safe_ramps_within_the_slew_then_switches_off() -> None:
    clock = VirtualClock()
    pairs = [
        *CONNECT_2400,
        (":SOURCE:VOLTAGE 0.35", None),
        ("OUTPUT 1", None),
        (":SOURCE:VOLTAGE 0.2625", None),
        (":SOURCE:VOLTAGE 0.175", None),
        (":SOURCE:VOLTAGE 0.0875", None),
        (":SOURCE:VOLTAGE 0", None),
        ("OUTPUT 0", None),
    ]
    with expected_protocol(Keithley2400, pairs) as inst:
        ch = Keithley2400Channel(settings_2400(), clock=clock)
        ch.connect(inst)
        ch.set_level(0.35)
        ch.enable()
        ch.go_safe()
    assert ch.level == 0.0
    assert not ch.enabled
    # 0.35 V at 1 V/s takes 0.35 s: four steps of 0.0875 V (under the 0.1 V step), 87.5 ms each.
    assert clock.now() == pytest.approx(0.35)


def test_2400_go_safe_with_output_off_only_zeroes_and_switches_off() -> None:
    pairs = [
        *CONNECT_2400,
        (":SOURCE:VOLTAGE 1.5", None),
        (":SOURCE:VOLTAGE 0", None),
        ("OUTPUT 0", None),
    ]
    with expected_protocol(Keithley2400, pairs) as inst:
        ch = Keithley2400Channel(settings_2400(), clock=VirtualClock())
        ch.connect(inst)
        ch.set_level(1.5)
        ch.go_safe()


def test_commands_before_connect_are_refused() -> None:
    ch = Keithley2400Channel(settings_2400(), clock=VirtualClock())
    with pytest.raises(InstrumentError, match="not connected"):
        ch.set_level(0.1)
    ch.close()  # closing an unconnected channel is a no-op


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("compliance_current", 2.0),
        ("source_range", 250.0),
        ("measure_range", 1.2),
        ("nplc", 20.0),
        ("nplc", 0.001),
        ("compliance_current", 0.0),
        ("timeout", 0.0),
        ("max_slew", -1.0),
    ],
)
def test_2400_settings_outside_the_instrument_are_refused(key: str, value: float) -> None:
    with pytest.raises(ValidationError, match=key):
        settings_2400(**{key: value})


def test_settings_reject_unknown_keys() -> None:
    with pytest.raises(ValidationError, match="complience"):
        settings_2400(complience_current=1e-5)


def test_adapter_always_gets_a_timeout() -> None:
    kwargs = settings_2400(timeout=0.5).adapter_kwargs()
    assert kwargs["timeout"] == 500
    assert kwargs["read_termination"] == "\n"


# -- Keithley 2600 -----------------------------------------------------------------------------


def test_2600_connect_writes_limits_and_reads_them_back() -> None:
    with expected_protocol(Keithley2600, CONNECT_2600) as inst:
        ch = Keithley2600Channel(settings_2600(), clock=VirtualClock())
        ch.connect(inst)
    assert ch.who == f"gate ({IDN_2636})"


def test_2600_auto_range_on_smua() -> None:
    pairs = [
        (c.replace("smub", "smua"), r)
        for c, r in CONNECT_2600
        if c not in ("smub.measure.rangei=1e-06", "print(smub.measure.rangei)")
    ]
    pairs.insert(6, ("smua.measure.autorangei=1", None))
    pairs.insert(12, ("print(smua.measure.autorangei)", "1.00000e+00"))
    with expected_protocol(Keithley2600, pairs) as inst:
        ch = Keithley2600Channel(
            settings_2600(channel="smua", measure_range=None), clock=VirtualClock()
        )
        ch.connect(inst)


@pytest.mark.parametrize(
    ("command", "reply", "setting"),
    [
        ("print(smub.source.limiti)", "1.00000e-06", "compliance_current"),
        ("print(smub.measure.nplc)", "1.00000e+00", "nplc"),
        ("print(smub.source.rangev)", "2.00000e+01", "source_range"),
        ("print(smub.source.levelv)", "1.00000e-01", "source level"),
    ],
)
def test_2600_readback_mismatch_refuses_to_start(command: str, reply: str, setting: str) -> None:
    with expected_protocol(Keithley2600, replace(CONNECT_2600, command, reply)) as inst:
        ch = Keithley2600Channel(settings_2600(), clock=VirtualClock())
        with pytest.raises(InstrumentError, match=f"setting {setting} was written") as caught:
            ch.connect(inst)
    assert "Model 2636B" in str(caught.value)


def test_2600_set_enable_read_go_safe() -> None:
    clock = VirtualClock()
    pairs = [
        *CONNECT_2600,
        ("smub.source.levelv=-0.600000", None),
        ("smub.source.output=1", None),
        ("print(smub.measure.i(), smub.source.compliance)", "-3.21000e-08\tfalse"),
        ("smub.source.levelv=-0.400000", None),
        ("smub.source.levelv=-0.200000", None),
        ("smub.source.levelv=0.000000", None),
        ("smub.source.output=0", None),
    ]
    with expected_protocol(Keithley2600, pairs) as inst:
        ch = Keithley2600Channel(settings_2600(), clock=clock)
        ch.connect(inst)
        ch.set_level(-0.6)
        ch.enable()
        assert ch.read() == pytest.approx(-3.21e-8)
        ch.go_safe()
    assert clock.now() == pytest.approx(0.3)  # 0.6 V at 2 V/s


@pytest.mark.parametrize(
    ("reply", "match"),
    [
        ("1.00000e-07\ttrue", "in compliance at 1 V: read 1e-07 A at the 1e-07 A limit"),
        ("-1.00000e-07\ttrue", "in compliance at 1 V: read -1e-07 A"),
        ("9.91000e+37\tfalse", "overflow at 1 V: the current is beyond the 1e-06 A measure"),
    ],
)
def test_2600_reading_in_compliance_or_overflow_is_saturated(reply: str, match: str) -> None:
    # One chunk reads the current and the compliance state: no extra round trip.
    pairs = [
        *CONNECT_2600,
        ("smub.source.levelv=1.000000", None),
        ("smub.source.output=1", None),
        ("print(smub.measure.i(), smub.source.compliance)", reply),
    ]
    with expected_protocol(Keithley2600, pairs) as inst:
        ch = Keithley2600Channel(settings_2600(), clock=VirtualClock())
        ch.connect(inst)
        ch.set_level(1.0)
        ch.enable()
        with pytest.raises(DeviceSaturated, match=match):
            ch.read()


@pytest.mark.parametrize("reply", ["1.00000e-07", "1.00000e-07\tmaybe", "true\t1e-07"])
def test_2600_reading_without_a_compliance_state_is_a_protocol_fault(reply: str) -> None:
    # Garbled: retried once (the query is idempotent), then reported naming command and reply.
    command = "print(smub.measure.i(), smub.source.compliance)"
    pairs = [*CONNECT_2600, ("smub.source.output=1", None), (command, reply), (command, reply)]
    with expected_protocol(Keithley2600, pairs) as inst:
        ch = Keithley2600Channel(
            settings_2600(retry={"count": 1, "backoff": 0.0}), clock=VirtualClock()
        )
        ch.connect(inst)
        ch.enable()
        with pytest.raises(InstrumentProtocolError, match=r"true/false.*gave up after 2") as caught:
            ch.read()
    assert f"sent {command!r}, reply {reply!r}" in str(caught.value)


def test_2400_overflow_is_saturated() -> None:
    pairs = [
        *CONNECT_2400,
        ("OUTPUT 1", None),
        # Status 0x5001: the overflow bit, not compliance; the current reads 9.91e37.
        (":READ?", "+0.000000E+00,+9.910000E+37,+9.910000E+37,+1.0E+00,+2.048100E+04"),
    ]
    with expected_protocol(Keithley2400, pairs) as inst:
        ch = Keithley2400Channel(settings_2400(), clock=VirtualClock())
        ch.connect(inst)
        ch.enable()
        with pytest.raises(DeviceSaturated, match=r"overflow at 0 V.*1e-05 A measure range"):
            ch.read()


def test_2600_level_outside_range_is_refused_where_pymeasure_would_truncate() -> None:
    with expected_protocol(Keithley2600, CONNECT_2600) as inst:
        ch = Keithley2600Channel(settings_2600(), clock=VirtualClock())
        ch.connect(inst)
        with pytest.raises(SafetyViolation):
            ch.set_level(250.0)  # PyMeasure's truncated_range would have sent 200 V


def test_2600_settings_bounds() -> None:
    assert settings_2600(compliance_current=1.5).compliance_current == 1.5
    with pytest.raises(ValidationError, match="compliance_current"):
        settings_2600(compliance_current=1.6)
    with pytest.raises(ValidationError, match="channel"):
        settings_2600(channel="smuc")


def test_close_goes_safe_and_releases_the_session() -> None:
    pairs = [*CONNECT_2400, ("OUTPUT 1", None), (":SOURCE:VOLTAGE 0", None), ("OUTPUT 0", None)]
    with expected_protocol(Keithley2400, pairs) as inst:
        with Keithley2400Channel(settings_2400(), clock=VirtualClock()) as ch:
            ch.connect(inst)
            ch.enable()
            ch.set_level(0.0)
        assert ch.instrument is None
        with pytest.raises(InstrumentError, match="not connected"):
            ch.enable()
