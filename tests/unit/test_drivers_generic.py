"""The generic channel: any PyMeasure instrument named by import path in the station file."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError
from pymeasure.instruments.keithley import Keithley2400, Keithley2600
from pymeasure.test import expected_protocol

from drivers import (
    GenericChannel,
    GenericSettings,
    SourceMeasureChannel,
)
from drivers.generic import resolve_class
from hil.core import ConfigError, InstrumentError, SafetyViolation, VirtualClock

pytestmark = pytest.mark.filterwarnings(
    "ignore:It is not known whether this device support SCPI:FutureWarning"
)

IDN = "KEITHLEY INSTRUMENTS INC.,MODEL 2400,1234567,C30"

# As it would appear in a station file (YAML), keys and all.
STATION_2400: dict[str, Any] = {
    "name": "drain",
    "address": "GPIB0::24::INSTR",
    "class": "pymeasure.instruments.keithley.Keithley2400",
    "set": "source_voltage",
    "read": "current",
    "enable": "enable_source",
    "disable": "disable_source",
    "output_state": "source_enabled",
    "limits": {"compliance_current": 1e-5, "source_voltage_range": 2},
    "level_min": -1.0,
    "level_max": 1.5,
    "ramp_step": 0.5,
    "max_slew": 10.0,
}

CONNECT_2400 = [
    (":FORMAT:ELEMENTS VOLTAGE, CURRENT, RESISTANCE, TIME, STATUS", None),
    ("*IDN?", IDN),
    ("OUTPUT?", "0"),
    (":SENSE:CURRENT:PROTECTION 1e-05", None),
    (":SOURCE:VOLTAGE:RANGE 2", None),
    (":SENSE:CURRENT:PROTECTION?", "1.000000E-05"),
    (":SOURCE:VOLTAGE:RANGE?", "2.000000E+00"),
    ("OUTPUT 0", None),
    (":SOURCE:VOLTAGE 0", None),
    (":SOURCE:VOLTAGE?", "0.000000E+00"),
]


def settings(**changes: Any) -> GenericSettings:
    return GenericSettings.model_validate({**STATION_2400, **changes})


def test_settings_from_station_keys() -> None:
    s = settings()
    assert s.class_path == "pymeasure.instruments.keithley.Keithley2400"
    assert resolve_class(s.class_path) is Keithley2400


def test_generic_2400_connect_set_read_go_safe() -> None:
    clock = VirtualClock()
    pairs = [
        *CONNECT_2400,
        (":SOURCE:VOLTAGE 1.2", None),
        ("OUTPUT 1", None),
        # PyMeasure's `current` property: :MEASure:CURRent? with the elements V, I, R, t, status
        (":MEASURE:CURRENT?", "+1.2E+00,+4.0E-07,+9.91E+37,+1.0E+00,+2.15E+04"),
        (":SOURCE:VOLTAGE 0.8", None),
        (":SOURCE:VOLTAGE 0.4", None),
        (":SOURCE:VOLTAGE 0", None),
        ("OUTPUT 0", None),
    ]
    with expected_protocol(Keithley2400, pairs) as inst:
        ch = GenericChannel(settings(), clock=clock)
        ch.connect(inst)
        assert isinstance(ch, SourceMeasureChannel)
        assert ch.who == f"drain ({IDN})"
        ch.set_level(1.2)
        ch.enable()
        assert ch.read() == pytest.approx(4e-7)
        ch.go_safe()
    assert not ch.enabled
    assert clock.now() == pytest.approx(0.12)  # 1.2 V at 10 V/s


def test_generic_limit_mismatch_refuses_to_start() -> None:
    pairs = [*CONNECT_2400[:5], (":SENSE:CURRENT:PROTECTION?", "1.050000E-04")]
    with expected_protocol(Keithley2400, pairs) as inst:
        ch = GenericChannel(settings(), clock=VirtualClock())
        with pytest.raises(InstrumentError) as caught:
            ch.connect(inst)
    assert str(caught.value).startswith(
        f"drain ({IDN}): setting compliance_current was written as 1e-05 but reads back 0.000105"
    )


def test_generic_live_output_is_refused() -> None:
    with expected_protocol(Keithley2400, [*CONNECT_2400[:2], ("OUTPUT?", "1")]) as inst:
        ch = GenericChannel(settings(), clock=VirtualClock())
        with pytest.raises(InstrumentError, match="source_enabled reads True at connect"):
            ch.connect(inst)


@pytest.mark.parametrize("volts", [1.51, -1.01])
def test_generic_level_range_is_checked_before_sending(volts: float) -> None:
    with expected_protocol(Keithley2400, CONNECT_2400) as inst:
        ch = GenericChannel(settings(), clock=VirtualClock())
        ch.connect(inst)
        with pytest.raises(SafetyViolation, match=r"\[-1, 1.5\] V"):
            ch.set_level(volts)


def test_generic_2600_channel_with_property_actions() -> None:
    station = {
        "name": "gate",
        "address": "TCPIP::192.0.2.10::INSTR",
        "class": "pymeasure.instruments.keithley.Keithley2600",
        "channel": "ChA",
        "set": "source_voltage",
        "read": "current",
        "enable": {"source_output": "ON"},
        "disable": {"source_output": "OFF"},
        "limits": {"source_mode": "voltage", "compliance_current": 0.001},
        "level_min": -0.5,
        "level_max": 0.5,
        "identify": None,
    }
    pairs = [
        ("smua.source.func=1", None),
        ("smua.source.limiti=0.001000", None),
        ("print(smua.source.func)", "1.00000e+00"),
        ("print(smua.source.limiti)", "1.00000e-03"),
        ("smua.source.output=0", None),
        ("smua.source.levelv=0.000000", None),
        ("print(smua.source.levelv)", "0.00000e+00"),
        ("smua.source.levelv=0.250000", None),
        ("smua.source.output=1", None),
        ("print(smua.measure.i())", "1.50000e-09"),
    ]
    with expected_protocol(Keithley2600, pairs) as inst:
        ch = GenericChannel(GenericSettings.model_validate(station), clock=VirtualClock())
        ch.connect(inst)
        assert ch.who == "gate (TCPIP::192.0.2.10::INSTR)"
        ch.set_level(0.25)
        ch.enable()
        assert ch.read() == pytest.approx(1.5e-9)


@pytest.mark.parametrize(
    ("path", "match"),
    [
        ("Keithley2400", "full import path"),
        ("pymeasure.instruments.nothere.Foo", "cannot be imported"),
        ("pymeasure.instruments.keithley.NoSuchModel", "cannot be imported"),
        ("pymeasure.instruments.keithley.keithley2400.log", "not a class"),
    ],
)
def test_bad_class_path_is_a_config_error(path: str, match: str) -> None:
    ch = GenericChannel(settings(**{"class": path}), clock=VirtualClock())
    with pytest.raises(ConfigError, match=match):
        ch.connect()


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"level_min": 2.0}, "level_min"),
        ({"level_max": float("inf")}, "finite"),
        ({"enable": {"a": 1, "b": 2}}, "exactly one property"),
        ({"sett": "x"}, "sett"),
    ],
)
def test_generic_settings_validation(changes: dict[str, Any], match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        settings(**changes)


@pytest.mark.parametrize(
    ("output_state", "state_pairs", "on"),
    [
        ("source_enabled", [("OUTPUT?", "1")], True),
        ("source_enabled", [("OUTPUT?", "0")], False),
        (None, [], True),  # no state to read: taken as on, so going safe ramps down
    ],
)
def test_generic_reattach_takes_over_the_level_and_output_state(
    monkeypatch: pytest.MonkeyPatch,
    output_state: str | None,
    state_pairs: list[tuple[str, str]],
    on: bool,
) -> None:
    pairs = [
        CONNECT_2400[0],
        ("*IDN?", IDN),
        (":SENSE:CURRENT:PROTECTION?", "1.000000E-05"),
        (":SOURCE:VOLTAGE:RANGE?", "2.000000E+00"),
        *state_pairs,
        (":SOURCE:VOLTAGE?", "7.000000E-01"),
    ]
    ramp = [(":SOURCE:VOLTAGE 0.35", None), (":SOURCE:VOLTAGE 0", None)]
    safe = [*(ramp if on else [(":SOURCE:VOLTAGE 0", None)]), ("OUTPUT 0", None)]
    ch = GenericChannel(settings(output_state=output_state), clock=VirtualClock())
    with expected_protocol(Keithley2400, [*pairs, *safe]) as inst:
        monkeypatch.setattr(ch, "_open", lambda: inst)
        ch.reattach()
        assert (ch.level, ch.enabled) == (0.7, on)
        ch.go_safe()
    assert (ch.level, ch.enabled) == (0.0, False)
