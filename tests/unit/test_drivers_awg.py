"""Keysight 33500 channel against expected command/response lists (no hardware).

Every command is one the 33500 Series SCPI reference defines, in the exact form PyMeasure's
`Agilent33500` or the driver sends it.
"""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError
from pymeasure.instruments.agilent import Agilent33500
from pymeasure.test import expected_protocol

from drivers.awg import Keysight33500Channel, Keysight33500Settings
from hil.core import InstrumentError, SafetyViolation, VirtualClock

IDN = "Agilent Technologies,33522B,MY52400000,4.00-1.19-2.00-58-00"
NO_ERROR = '0,"No error"'

Pairs = list[tuple[str, str | None]]


def settings(**changes: object) -> Keysight33500Settings:
    values: dict[str, object] = {
        "name": "dither",
        "address": "TCPIP::192.0.2.30::INSTR",
        "channel": 2,
        "load": "high_z",
        "frequency": 137.0,
        "amplitude": 0.05,
        "offset": 0.1,
        "max_voltage": 1.0,
        "retry": {"count": 1, "backoff": 0.01, "factor": 2},
    }
    values.update(changes)
    return Keysight33500Settings.model_validate(values)


CONNECT: Pairs = [
    ("*IDN?", IDN),
    ("OUTP2?", "0"),
    ("SOUR2:FUNC SIN", None),
    ("SOUR2:VOLT:UNIT VPP", None),
    ("OUTP2:LOAD INF", None),
    ("SOUR2:FREQ 137.000000", None),
    ("SOUR2:VOLT 0.050000", None),
    ("SOUR2:VOLT:OFFS 0.100000", None),
    ("OUTP:SYNC:SOUR CH2", None),
    ("OUTP:SYNC 1", None),
    ("SOUR2:FUNC?", "SIN"),
    ("SOUR2:VOLT:UNIT?", "VPP"),
    ("OUTP2:LOAD?", "+9.900000000000000E+37"),
    ("SOUR2:FREQ?", "+1.370000000000000E+02"),
    ("SOUR2:VOLT?", "+5.000000000000000E-02"),
    ("SOUR2:VOLT:OFFS?", "+1.000000000000000E-01"),
    ("OUTP:SYNC:SOUR?", "CH2"),
    ("OUTP:SYNC?", "1"),
    ("SYST:ERR?", NO_ERROR),
]


def replace(pairs: Pairs, command: str, reply: str) -> Pairs:
    index = [c for c, _ in pairs].index(command)
    return [*pairs[:index], (command, reply)]


def connected(pairs: Pairs) -> Pairs:
    return [*CONNECT, *pairs]


def test_connect_writes_the_sine_and_reads_it_back() -> None:
    with expected_protocol(Agilent33500, CONNECT) as inst:
        gen = Keysight33500Channel(settings(), clock=VirtualClock())
        gen.connect(inst)
    assert (gen.frequency, gen.amplitude, gen.offset, gen.enabled) == (137.0, 0.05, 0.1, False)
    assert gen.who == f"dither ({IDN})"


def test_connect_on_channel_1_into_50_ohm_without_sync() -> None:
    pairs = [
        ("*IDN?", IDN),
        ("OUTP1?", "0"),
        ("SOUR1:FUNC SIN", None),
        ("SOUR1:VOLT:UNIT VPP", None),
        ("OUTP1:LOAD 50", None),
        ("SOUR1:FREQ 1000.000000", None),
        ("SOUR1:VOLT 0.001000", None),  # the 50 Ω minimum
        ("SOUR1:VOLT:OFFS 0.000000", None),
        ("OUTP:SYNC 0", None),
        ("SOUR1:FUNC?", "SIN"),
        ("SOUR1:VOLT:UNIT?", "VPP"),
        ("OUTP1:LOAD?", "+5.000000000000000E+01"),
        ("SOUR1:FREQ?", "+1.000000000000000E+03"),
        ("SOUR1:VOLT?", "+1.000000000000000E-03"),
        ("SOUR1:VOLT:OFFS?", "+0.000000000000000E+00"),
        ("OUTP:SYNC?", "0"),
        ("SYST:ERR?", NO_ERROR),
    ]
    with expected_protocol(Agilent33500, pairs) as inst:
        s = settings(channel=1, load="50", frequency=1000.0, amplitude=None, offset=0.0, sync=False)
        Keysight33500Channel(s, clock=VirtualClock()).connect(inst)


@pytest.mark.parametrize(
    ("command", "reply", "setting"),
    [
        ("SOUR2:FUNC?", "SQU", "function"),
        ("OUTP2:LOAD?", "+5.000000000000000E+01", "load"),
        ("SOUR2:FREQ?", "+1.000000000000000E+03", "frequency"),
        ("SOUR2:VOLT?", "+1.000000000000000E-01", "amplitude"),
        ("SOUR2:VOLT:OFFS?", "+0.000000000000000E+00", "offset"),
        ("OUTP:SYNC:SOUR?", "CH1", "sync source"),
    ],
)
def test_readback_mismatch_refuses_to_start(command: str, reply: str, setting: str) -> None:
    with expected_protocol(Agilent33500, replace(CONNECT, command, reply)) as inst:
        gen = Keysight33500Channel(settings(), clock=VirtualClock())
        with pytest.raises(InstrumentError, match=f"setting {setting} was written .* refusing"):
            gen.connect(inst)
        with pytest.raises(InstrumentError, match="not connected"):
            gen.enable()


def test_errors_in_the_queue_refuse_to_start() -> None:
    pairs = [*CONNECT[:-1], ("SYST:ERR?", '-221,"Settings conflict"'), ("SYST:ERR?", NO_ERROR)]
    gen = Keysight33500Channel(settings(), clock=VirtualClock())
    with (
        expected_protocol(Agilent33500, pairs) as inst,
        pytest.raises(InstrumentError, match="Settings conflict"),
    ):
        gen.connect(inst)


def test_a_live_output_at_connect_is_refused_before_any_setting() -> None:
    gen = Keysight33500Channel(settings(), clock=VirtualClock())
    with (
        expected_protocol(Agilent33500, [("*IDN?", IDN), ("OUTP2?", "1")]) as inst,
        pytest.raises(InstrumentError, match="output is on at connect"),
    ):
        gen.connect(inst)


def test_each_change_is_read_back() -> None:
    pairs = connected(
        [
            ("SOUR2:FREQ 211.500000", None),
            ("SOUR2:FREQ?", "+2.115000000000000E+02"),
            ("SOUR2:VOLT 0.020000", None),
            ("SOUR2:VOLT?", "+2.000000000000000E-02"),
            ("SOUR2:VOLT:OFFS -0.300000", None),
            ("SOUR2:VOLT:OFFS?", "-3.000000000000000E-01"),
            ("OUTP2 1", None),
            ("OUTP2?", "1"),
        ]
    )
    with expected_protocol(Agilent33500, pairs) as inst:
        gen = Keysight33500Channel(settings(), clock=VirtualClock())
        gen.connect(inst)
        gen.set_frequency(211.5)
        gen.set_amplitude(0.02)
        gen.set_offset(-0.3)
        gen.enable()
    assert (gen.frequency, gen.amplitude, gen.offset, gen.enabled) == (211.5, 0.02, -0.3, True)


def test_a_change_that_reads_back_different_is_an_error() -> None:
    pairs = connected([("SOUR2:VOLT 0.020000", None), ("SOUR2:VOLT?", "+1.000000000000000E-01")])
    with expected_protocol(Agilent33500, pairs) as inst:
        gen = Keysight33500Channel(settings(), clock=VirtualClock())
        gen.connect(inst)
        with pytest.raises(InstrumentError, match=r"amplitude was written as 0\.02 but reads back"):
            gen.set_amplitude(0.02)


def test_set_sine_orders_amplitude_and_offset_within_the_ceiling() -> None:
    # From 0.05 Vpp at 0.1 V to 1.6 Vpp at 0.1 V … then to 0.2 Vpp at 0.85 V: the shrinking
    # amplitude goes first (1.6/2 + 0.85 would exceed 1 V), the growing one last.
    pairs = connected(
        [
            ("SOUR2:VOLT 1.600000", None),
            ("SOUR2:VOLT?", "+1.600000000000000E+00"),
            ("SOUR2:VOLT 0.200000", None),
            ("SOUR2:VOLT?", "+2.000000000000000E-01"),
            ("SOUR2:VOLT:OFFS 0.850000", None),
            ("SOUR2:VOLT:OFFS?", "+8.500000000000000E-01"),
            ("SOUR2:VOLT:OFFS 0.000000", None),
            ("SOUR2:VOLT:OFFS?", "+0.000000000000000E+00"),
            ("SOUR2:VOLT 1.000000", None),
            ("SOUR2:VOLT?", "+1.000000000000000E+00"),
        ]
    )
    with expected_protocol(Agilent33500, pairs) as inst:
        gen = Keysight33500Channel(settings(), clock=VirtualClock())
        gen.connect(inst)
        gen.set_sine(137.0, 1.6, 0.1)
        gen.set_sine(137.0, 0.2, 0.85)
        gen.set_sine(137.0, 1.0, 0.0)


@pytest.mark.parametrize(
    ("call", "value", "limit"),
    [
        ("set_offset", 0.98, "max_voltage 1 V"),  # 0.98 + 0.025 > 1
        ("set_offset", math.nan, "max_voltage"),
        ("set_amplitude", 1e-3, "amplitude range"),  # below the high-Z 2 mVpp
        ("set_amplitude", 1.9, "max_voltage"),  # 0.95 + 0.1 > 1
        ("set_frequency", 25e6, "sine range"),  # above the 20 MHz default model limit
        ("set_frequency", 0.0, "sine range"),
    ],
)
def test_values_outside_the_limits_are_refused_before_sending(
    call: str, value: float, limit: str
) -> None:
    with expected_protocol(Agilent33500, CONNECT) as inst:
        gen = Keysight33500Channel(settings(), clock=VirtualClock())
        gen.connect(inst)
        with pytest.raises(SafetyViolation, match=limit):
            getattr(gen, call)(value)
    assert (gen.frequency, gen.amplitude, gen.offset) == (137.0, 0.05, 0.1)


def test_close_goes_safe_and_releases() -> None:
    pairs = connected(
        [
            ("OUTP2 1", None),
            ("OUTP2?", "1"),
            ("SOUR2:VOLT 0.002000", None),  # the high-Z minimum
            ("SOUR2:VOLT:OFFS 0.000000", None),  # 0.1 V: one ramp step
            ("OUTP2 0", None),
        ]
    )
    with (
        expected_protocol(Agilent33500, pairs) as inst,
        Keysight33500Channel(settings(), clock=VirtualClock()) as gen,
    ):
        gen.connect(inst)
        gen.enable()
    assert gen.instrument is None
    assert (gen.amplitude, gen.offset, gen.enabled) == (2e-3, 0.0, False)
    gen.close()  # closing again is a no-op


def test_go_safe_ramps_a_live_offset_within_the_slew() -> None:
    clock = VirtualClock()
    pairs = connected(
        [
            ("OUTP2 1", None),
            ("OUTP2?", "1"),
            ("SOUR2:VOLT 0.002000", None),
            ("SOUR2:VOLT:OFFS 0.066667", None),
            ("SOUR2:VOLT:OFFS 0.033333", None),
            ("SOUR2:VOLT:OFFS 0.000000", None),
            ("OUTP2 0", None),
        ]
    )
    with expected_protocol(Agilent33500, pairs) as inst:
        gen = Keysight33500Channel(settings(ramp_step=0.04, max_slew=0.5), clock=clock)
        gen.connect(inst)
        gen.enable()
        gen.go_safe()
    assert clock.now() == pytest.approx(0.2)  # 0.1 V at 0.5 V/s


def test_an_output_that_does_not_switch_on_is_an_error() -> None:
    pairs = connected([("OUTP2 1", None), ("OUTP2?", "0")])
    with expected_protocol(Agilent33500, pairs) as inst:
        gen = Keysight33500Channel(settings(retry={"count": 0}), clock=VirtualClock())
        gen.connect(inst)
        with pytest.raises(InstrumentError, match="switched on but reads back False"):
            gen.enable()


def test_a_value_is_checked_as_it_will_be_sent() -> None:
    # 0.9750006 V + 0.025 V is within 1.0000008 V as asked, but `%f` sends 0.975001 V.
    with expected_protocol(Agilent33500, CONNECT) as inst:
        gen = Keysight33500Channel(settings(max_voltage=1.0000008), clock=VirtualClock())
        gen.connect(inst)
        with pytest.raises(SafetyViolation, match="max_voltage"):
            gen.set_offset(0.9750006)
    assert gen.offset == 0.1


def test_one_channel_models_have_no_sync_source() -> None:
    pairs = [
        (c.replace("SOUR2", "SOUR1").replace("OUTP2", "OUTP1"), r)
        for c, r in CONNECT
        if not c.startswith("OUTP:SYNC:SOUR")
    ]
    with expected_protocol(Agilent33500, pairs) as inst:
        s = settings(channel=1, two_channel=False)
        Keysight33500Channel(s, clock=VirtualClock()).connect(inst)
    with pytest.raises(ValidationError, match="two-channel"):
        settings(channel=2, two_channel=False)


def test_go_safe_switches_the_output_off_even_if_a_write_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Broken(Exception):
        pass

    with expected_protocol(Agilent33500, connected([("OUTP2 0", None)])) as inst:
        gen = Keysight33500Channel(settings(), clock=VirtualClock())
        gen.connect(inst)

        def refuse(self: object, value: float) -> None:
            raise Broken

        monkeypatch.setattr(type(gen._ch), "amplitude", property(lambda self: 0.0, refuse))
        with pytest.raises(Broken):
            gen.go_safe()
    assert not gen.enabled


def test_a_garbled_readback_is_retried() -> None:
    pairs = connected(
        [
            ("SOUR2:FREQ 200.000000", None),
            ("SOUR2:FREQ?", "\xff20+"),
            ("SOUR2:FREQ?", "+2.000000000000000E+02"),
        ]
    )
    with expected_protocol(Agilent33500, pairs) as inst:
        gen = Keysight33500Channel(settings(), clock=VirtualClock())
        gen.connect(inst)
        gen.set_frequency(200.0)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("max_voltage", 10.5),  # above the 10 V high-Z limit
        ("amplitude", 25.0),
        ("offset", 0.99),  # with 0.05 Vpp: over max_voltage
        ("frequency", 21e6),
        ("max_frequency", 40e6),
        ("channel", 3),
        ("load", "1k"),
        ("ampltude", 0.1),
    ],
)
def test_settings_outside_the_instrument_are_refused(key: str, value: object) -> None:
    with pytest.raises(ValidationError, match=key):
        settings(**{key: value})


def test_50_ohm_limits_are_half() -> None:
    with pytest.raises(ValidationError, match="max_voltage"):
        settings(load="50", max_voltage=6.0)
    assert settings(load="50", max_voltage=5.0).min_amplitude == 1e-3


def test_reattach_reads_the_setup_back_without_a_command_and_widens_the_validators(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A live AWG's sine is the rig's, not connect's: only what holds throughout is read back.
    The new PyMeasure object takes the high-Z range, so going safe may send the 2 mVpp minimum
    (its own validator stops at 10 mVpp)."""
    pairs: Pairs = [
        ("*IDN?", IDN),
        ("SOUR2:FUNC?", "SIN"),
        ("SOUR2:VOLT:UNIT?", "VPP"),
        ("OUTP2:LOAD?", "+9.900000000000000E+37"),
        ("OUTP:SYNC?", "1"),
        ("SOUR2:VOLT 0.002000", None),
        ("OUTP2 0", None),
    ]
    gen = Keysight33500Channel(settings(), clock=VirtualClock())
    with expected_protocol(Agilent33500, pairs) as inst:
        monkeypatch.setattr(gen, "_open", lambda: inst)
        gen.reattach()
        gen.go_safe()


def test_a_reset_awg_fails_to_reattach_and_is_released(monkeypatch: pytest.MonkeyPatch) -> None:
    pairs: Pairs = [("*IDN?", IDN), ("SOUR2:FUNC?", "SQU")]
    gen = Keysight33500Channel(settings(), clock=VirtualClock())
    with expected_protocol(Agilent33500, pairs) as inst:
        monkeypatch.setattr(gen, "_open", lambda: inst)
        with pytest.raises(InstrumentError, match="setting function was written as 'SIN'"):
            gen.reattach()
    assert gen.instrument is None
