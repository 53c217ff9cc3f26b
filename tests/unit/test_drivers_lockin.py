"""SR830 / SR860 lock-in channels against expected command/response lists (no hardware).

Every command is one the SR830 and SR860 manuals define (chapter "Remote Programming"), in the
exact form PyMeasure or the driver sends it.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from pydantic import ValidationError
from pymeasure.instruments.srs import SR830, SR860
from pymeasure.test import expected_protocol

from drivers.lockin import (
    SETTLE_FACTOR,
    SR830_SENSITIVITIES,
    SR830_TIME_CONSTANTS,
    SR860_SENSITIVITIES,
    SR860_TIME_CONSTANTS,
    LockIn,
    SR830LockIn,
    SR830Settings,
    SR860LockIn,
    SR860Settings,
)
from hil.core import (
    DeviceSaturated,
    InstrumentError,
    InstrumentProtocolError,
    SafetyViolation,
    VirtualClock,
)

IDN_830 = "Stanford_Research_Systems,SR830,s/n12345,ver1.07"
IDN_860 = "Stanford_Research_Systems,SR860,003141,v1.51"

Pairs = list[tuple[str, str | None]]


def settings_830(**changes: object) -> SR830Settings:
    values: dict[str, object] = {
        "name": "demod",
        "address": "GPIB0::8::INSTR",
        "sensitivity": 1e-3,
        "time_constant": 0.3,
        "filter_slope": 24,
        "reference": "external",
        "harmonic": 1,
        "input": "A",
        "coupling": "AC",
        "reserve": "low_noise",
        "retry": {"count": 1, "backoff": 0.01, "factor": 2},
    }
    values.update(changes)
    return SR830Settings.model_validate(values)


def settings_860(**changes: object) -> SR860Settings:
    values: dict[str, object] = {
        "name": "demod",
        "address": "TCPIP::192.0.2.20::INSTR",
        "sensitivity": 1e-3,
        "time_constant": 0.3,
        "filter_slope": 24,
        "input": "A-B",
        "coupling": "DC",
    }
    values.update(changes)
    return SR860Settings.model_validate(values)


CONNECT_830: Pairs = [
    ("*IDN?", IDN_830),
    ("FMOD 0", None),
    ("HARM1", None),
    ("ISRC 0", None),
    ("ICPL 0", None),
    ("RMOD2", None),
    ("SENS17", None),  # 1 mV
    ("OFSL3", None),  # 24 dB/oct
    ("OFLT9", None),  # 300 ms, last: a low-priority setting
    ("FMOD?", "0"),
    ("HARM?", "1"),
    ("ISRC?", "0"),
    ("ICPL?", "0"),
    ("RMOD?", "2"),
    ("SENS?", "17"),
    ("OFSL?", "3"),
    ("OFLT?", "9"),
    ("*ESR?", "0"),
    ("*CLS", None),
]

CONNECT_860: Pairs = [
    ("*IDN?", IDN_860),
    ("RSRC 1", None),
    ("Harm 1", None),
    ("IVMD 0", None),
    ("ISRC 1", None),  # A-B
    ("ICPL 1", None),  # DC
    ("SCAL 9", None),  # 1 mV
    ("OFSL 3", None),
    ("OFLT 11", None),  # 300 ms
    ("RSRC?", "1"),
    ("HARM?", "1"),
    ("IVMD?", "0"),
    ("ISRC?", "1"),
    ("ICPL?", "1"),
    ("SCAL?", "9"),
    ("OFSL?", "3"),
    ("OFLT?", "11"),
    ("*ESR?", "0"),
    ("*CLS", None),
]


def replace(pairs: Pairs, command: str, reply: str) -> Pairs:
    """`pairs` up to and including `command`, whose reply becomes `reply`."""
    index = [c for c, _ in pairs].index(command)
    return [*pairs[:index], (command, reply)]


def test_sr830_connect_writes_settings_and_reads_them_back() -> None:
    with expected_protocol(SR830, CONNECT_830) as inst:
        li = SR830LockIn(settings_830(), clock=VirtualClock())
        li.connect(inst)
    assert isinstance(li, LockIn)
    assert li.who == f"demod ({IDN_830})"


def test_sr830_read_xy_snaps_and_checks_the_status() -> None:
    pairs = [
        *CONNECT_830,
        ("SNAP? 1,2", "1.23457e-05,-2.5e-06"),
        ("LIAS?", "0"),
        ("FREQ?", "137.001"),
        ("LIAS?", "16"),  # a range change only: no overload
        ("*CLS", None),
    ]
    with expected_protocol(SR830, pairs) as inst:
        li = SR830LockIn(settings_830(), clock=VirtualClock())
        li.connect(inst)
        assert li.read_xy() == pytest.approx((1.23457e-5, -2.5e-6))
        assert li.reference_frequency() == pytest.approx(137.001)
        assert not li.overloaded()
        li.clear_status()


@pytest.mark.parametrize("status", ["1", "2", "4", "7"])
def test_sr830_an_overload_while_reading_is_saturated(status: str) -> None:
    pairs = [*CONNECT_830, ("SNAP? 1,2", "0.00105,0"), ("LIAS?", status)]
    with expected_protocol(SR830, pairs) as inst:
        li = SR830LockIn(settings_830(), clock=VirtualClock())
        li.connect(inst)
        with pytest.raises(DeviceSaturated, match=r"demod \(Stanford.*overload.*0\.001"):
            li.read_xy()


def test_sr830_reference_unlock_while_reading_is_an_error() -> None:
    pairs = [*CONNECT_830, ("SNAP? 1,2", "0,0"), ("LIAS?", "8")]
    with expected_protocol(SR830, pairs) as inst:
        li = SR830LockIn(settings_830(), clock=VirtualClock())
        li.connect(inst)
        with pytest.raises(InstrumentError, match="reference unlocked"):
            li.read_xy()


@pytest.mark.parametrize(
    ("command", "reply", "setting"),
    [
        ("FMOD?", "1", "reference"),
        ("HARM?", "2", "harmonic"),
        ("ISRC?", "2", "input"),
        ("RMOD?", "1", "reserve"),
        ("SENS?", "18", "sensitivity"),
        ("OFSL?", "1", "filter_slope"),
        ("OFLT?", "10", "time_constant"),  # raised indirectly: refused, not accepted
    ],
)
def test_sr830_readback_mismatch_refuses_to_start(command: str, reply: str, setting: str) -> None:
    with expected_protocol(SR830, replace(CONNECT_830, command, reply)) as inst:
        li = SR830LockIn(settings_830(), clock=VirtualClock())
        with pytest.raises(InstrumentError, match=f"setting {setting} was written .* refusing"):
            li.connect(inst)
        with pytest.raises(InstrumentError, match="not connected"):
            li.read_xy()


@pytest.mark.parametrize("esr", ["16", "32"])
def test_sr830_an_execution_or_command_error_refuses_to_start(esr: str) -> None:
    with expected_protocol(SR830, replace(CONNECT_830, "*ESR?", esr)) as inst:
        li = SR830LockIn(settings_830(), clock=VirtualClock())
        with pytest.raises(InstrumentError, match=f"\\*ESR {esr}"):
            li.connect(inst)


def test_a_value_between_steps_is_refused_before_sending() -> None:
    bad = settings_830().model_copy(update={"sensitivity": 3e-3})  # bypasses validation
    with expected_protocol(SR830, CONNECT_830[:1]) as inst:
        li = SR830LockIn(bad, clock=VirtualClock())
        with pytest.raises(SafetyViolation, match="allowed sensitivity"):
            li.connect(inst)


def test_reconfigure_sends_the_new_settings_and_keeps_the_old_on_refusal() -> None:
    new = settings_830(sensitivity=5e-3, filter_slope=6)
    again = [(c.replace("SENS17", "SENS19").replace("OFSL3", "OFSL0"), r) for c, r in CONNECT_830]
    again = [("SENS?", "19") if c == "SENS?" else ("OFSL?", "0") if c == "OFSL?" else (c, r)
             for c, r in again[1:]]  # fmt: skip
    with expected_protocol(SR830, [*CONNECT_830, *again]) as inst:
        li = SR830LockIn(settings_830(), clock=VirtualClock())
        li.connect(inst)
        assert li.settle_time() == pytest.approx(10.05 * 0.3)
        li.configure(new)
        assert li.settings.sensitivity == 5e-3
        assert li.settle_time() == pytest.approx(4.61 * 0.3)
        # Settings that bypassed validation are validated again: nothing is sent.
        with pytest.raises(ValidationError, match="time_constant"):
            li.configure(new.model_copy(update={"time_constant": 0.2}))
        with pytest.raises(ValidationError, match="harmonic"):
            li.configure(new.model_copy(update={"harmonic": 0}))
        assert li.settings == new


def test_a_garbled_snap_is_retried_but_a_garbled_status_is_not() -> None:
    pairs = [
        *CONNECT_830,
        ("SNAP? 1,2", "1.0e-05"),  # one value: garbled
        ("SNAP? 1,2", "1.0e-05,2.0e-06"),
        ("LIAS?", "x"),  # reading cleared the latch: a retry would report a clean status
    ]
    with expected_protocol(SR830, pairs) as inst:
        li = SR830LockIn(settings_830(), clock=VirtualClock())
        li.connect(inst)
        with pytest.raises(InstrumentProtocolError, match="read status"):
            li.read_xy()


def test_sr860_connect_and_read() -> None:
    pairs = [
        *CONNECT_860,
        ("SNAP? X, Y", "2.5e-04,1.0e-04"),
        ("LIAS?", "0"),
        ("LIAS?", "16"),  # input range overload
    ]
    with expected_protocol(SR860, pairs) as inst:
        li = SR860LockIn(settings_860(), clock=VirtualClock())
        li.connect(inst)
        assert li.read_xy() == pytest.approx((2.5e-4, 1e-4))
        assert li.overloaded()
    assert li.who == f"demod ({IDN_860})"


def test_sr860_current_input() -> None:
    pairs = [
        ("IVMD 1", None) if c == "IVMD 0" else ("ICUR 1", None) if c == "ISRC 1" else (c, r)
        for c, r in CONNECT_860
    ]
    pairs = [
        ("IVMD?", "1") if c == "IVMD?" else ("ICUR?", "1") if c == "ISRC?" else (c, r)
        for c, r in pairs
    ]
    with expected_protocol(SR860, pairs) as inst:
        SR860LockIn(settings_860(input="I100M"), clock=VirtualClock()).connect(inst)


@pytest.mark.parametrize("status", ["1", "2", "256", "2048"])
def test_sr860_output_overload_is_saturated(status: str) -> None:
    pairs = [*CONNECT_860, ("SNAP? X, Y", "1.1e-03,0"), ("LIAS?", status)]
    with expected_protocol(SR860, pairs) as inst:
        li = SR860LockIn(settings_860(), clock=VirtualClock())
        li.connect(inst)
        with pytest.raises(DeviceSaturated):
            li.read_xy()


def test_sr860_readback_mismatch_refuses_to_start() -> None:
    with expected_protocol(SR860, replace(CONNECT_860, "SCAL?", "8")) as inst:
        li = SR860LockIn(settings_860(), clock=VirtualClock())
        with pytest.raises(InstrumentError, match="setting sensitivity"):
            li.connect(inst)


@pytest.mark.parametrize(
    ("make", "key", "value"),
    [
        (settings_830, "sensitivity", 3e-3),
        (settings_830, "sensitivity", 1e-9),  # the SR830 starts at 2 nV
        (settings_830, "time_constant", 0.2),
        (settings_830, "time_constant", 1e-6),
        (settings_830, "harmonic", 19999),
        (settings_830, "filter_slope", 20),
        (settings_830, "input", "I"),
        (settings_860, "harmonic", 99),
        (settings_860, "reserve", "normal"),
        (settings_830, "sensitivty", 1e-3),
    ],
)
def test_settings_outside_the_instrument_are_refused(make: object, key: str, value: object) -> None:
    with pytest.raises(ValidationError, match=key):
        make(**{key: value})  # type: ignore[operator]


def test_settings_take_the_instruments_own_value() -> None:
    assert settings_830(sensitivity=5.0000000001e-6).sensitivity == 5e-6
    assert settings_860(sensitivity=1e-9, time_constant=1e-6).time_constant == 1e-6


def test_a_lockin_needs_its_own_settings_class() -> None:
    with pytest.raises(TypeError, match="SR860Settings"):
        SR860LockIn(settings_830())


def test_sr860_input_range() -> None:
    pairs = list(CONNECT_860)
    pairs.insert(pairs.index(("ISRC 1", None)) + 1, ("IRNG 3", None))  # 30 mV peak
    pairs.insert(pairs.index(("ISRC?", "1")) + 1, ("IRNG?", "3"))
    with expected_protocol(SR860, pairs) as inst:
        SR860LockIn(settings_860(input_range=0.03), clock=VirtualClock()).connect(inst)
    with pytest.raises(ValidationError, match="input_range"):
        settings_860(input_range=0.5)


def test_the_allowed_lists_are_pymeasures() -> None:
    # PyMeasure maps a value to its index in these lists: they must be the very same numbers.
    assert tuple(SR830.SENSITIVITIES) == SR830_SENSITIVITIES
    assert tuple(SR830.TIME_CONSTANTS) == SR830_TIME_CONSTANTS
    assert tuple(sorted(SR860.SENSITIVITIES)) == SR860_SENSITIVITIES
    assert tuple(SR860.TIME_CONSTANTS) == SR860_TIME_CONSTANTS


@pytest.mark.parametrize(("slope", "stages"), [(6, 1), (12, 2), (18, 3), (24, 4)])
def test_settle_factors_leave_one_percent_of_a_step(slope: int, stages: int) -> None:
    x = SETTLE_FACTOR[slope]
    left = math.exp(-x) * sum(x**k / math.factorial(k) for k in range(stages))
    assert left == pytest.approx(0.01, rel=0.02)


@pytest.mark.parametrize(
    ("make", "pairs"),
    [
        (lambda: SR830LockIn(settings_830(), clock=VirtualClock()), CONNECT_830),
        (lambda: SR860LockIn(settings_860(), clock=VirtualClock()), CONNECT_860),
    ],
)
def test_reattach_reads_back_what_connect_reads_back_and_writes_nothing(
    monkeypatch: pytest.MonkeyPatch, make: Any, pairs: Pairs
) -> None:
    queries = [pair for pair in pairs if pair[0].endswith("?") and pair[0] != "*ESR?"]
    li = make()
    with expected_protocol(SR830 if isinstance(li, SR830LockIn) else SR860, queries) as inst:
        monkeypatch.setattr(li, "_open", lambda: inst)
        li.reattach()
    assert li.instrument is not None
