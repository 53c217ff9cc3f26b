"""The SCPI DAQ board driver and the analog-chip rig against expected command/response lists (no
hardware): every command below is in the board's command set (`drivers.scpi_daq`), in the exact
form the driver sends it."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError
from pymeasure.test import expected_protocol

from drivers.rigs.analog import AnalogRig
from drivers.scpi_daq import ScpiDaq, ScpiDaqBoard, ScpiDaqSettings, parse_channel_list
from hil.core import (
    DeviceSaturated,
    InstrumentError,
    InstrumentProtocolError,
    SafetyViolation,
    VirtualClock,
)

IDN = "ACME,DAQ-16,123,1.0"
NO_ERROR = '0,"No error"'
Pairs = list[tuple[str | bytes | None, str | bytes | None]]


def settings(**changes: Any) -> ScpiDaqSettings:
    values: dict[str, Any] = {
        "name": "daq",
        "address": "TCPIP::192.0.2.20::5025::SOCKET",
        "ao": {1: 10.0, 2: 2.5},
        "ai": {101: 1.0, 102: 10.0},
        "max_voltage": 5.0,
        "nplc": 0.5,
        "sample_count": 2,
        "data_format": "ascii",
        "ramp_step": 0.5,
        "max_slew": 1.0,
        "retry": {"count": 0},
    }
    values.update(changes)
    return ScpiDaqSettings.model_validate(values)


def connect_pairs(
    data_format: str = "ASC",
    fmt: str = "ASC",
    ai: tuple[tuple[int, str], ...] = ((101, "1.0"), (102, "10.0")),
    samples: int = 2,
) -> Pairs:
    scan = ",".join(str(c) for c, _ in ai)
    return [
        ("*IDN?", IDN),
        ("OUTP?", "0"),
        ("SOUR:VOLT 0.0,(@1)", None),
        ("SOUR:VOLT:RANG 10.0,(@1)", None),
        ("SOUR:VOLT 0.0,(@2)", None),
        ("SOUR:VOLT:RANG 2.5,(@2)", None),
        *((f"SENS:VOLT:RANG {r},(@{c})", None) for c, r in ai),
        ("SENS:VOLT:NPLC 0.5", None),
        (f"SAMP:COUN {samples}", None),
        (f"ROUT:SCAN (@{scan})", None),
        (f"FORM {data_format}", None),
        ("SOUR:VOLT:RANG? (@1)", "+1.000000E+01"),
        ("SOUR:VOLT? (@1)", "+0.000000E+00"),
        ("SOUR:VOLT:RANG? (@2)", "+2.500000E+00"),
        ("SOUR:VOLT? (@2)", "+0.000000E+00"),
        *((f"SENS:VOLT:RANG? (@{c})", f"{float(r):+.6E}") for c, r in ai),
        ("SENS:VOLT:NPLC?", "+5.000000E-01"),
        ("SAMP:COUN?", str(samples)),
        ("ROUT:SCAN?", f"(@{scan})"),
        ("FORM?", fmt),
        ("SYST:ERR?", NO_ERROR),
    ]


CONNECT = connect_pairs()
AO, AI = (1, 2), (101, 102)


def board(**changes: Any) -> ScpiDaqBoard:
    return ScpiDaqBoard(settings(**changes), clock=VirtualClock())


def replace(pairs: Pairs, command: str, reply: str) -> Pairs:
    assert any(c == command for c, _ in pairs), command
    return [(c, reply if c == command else r) for c, r in pairs]


def test_connect_writes_every_setting_and_reads_it_back() -> None:
    with expected_protocol(ScpiDaq, CONNECT, ao=AO, ai=AI) as inst:
        daq = board()
        daq.connect(inst)
        assert daq.levels == {1: 0.0, 2: 0.0}
        assert not daq.enabled


def test_connect_in_binary_format() -> None:
    with expected_protocol(ScpiDaq, connect_pairs("REAL,64", "REAL,64"), ao=AO, ai=AI) as inst:
        board(data_format="real64").connect(inst)


@pytest.mark.parametrize(
    ("command", "reply", "setting"),
    [
        ("SOUR:VOLT:RANG? (@2)", "+5.000000E+00", "ao 2 range"),
        ("SOUR:VOLT? (@1)", "+1.000000E-03", "ao 1 level"),
        ("SENS:VOLT:RANG? (@101)", "+1.000000E-01", "ai 101 range"),
        ("SENS:VOLT:NPLC?", "+1.000000E+00", "nplc"),
        ("SAMP:COUN?", "1", "sample_count"),
        ("ROUT:SCAN?", "(@101)", "scan list"),
        ("FORM?", "REAL,64", "data_format"),
    ],
)
def test_a_readback_mismatch_refuses_to_start(command: str, reply: str, setting: str) -> None:
    pairs = replace(CONNECT, command, reply)
    cut = next(i for i, (c, _) in enumerate(pairs) if c == command) + 1
    with expected_protocol(ScpiDaq, pairs[:cut], ao=AO, ai=AI) as inst:
        daq = board()
        with pytest.raises(InstrumentError, match=f"setting {setting} was written") as caught:
            daq.connect(inst)
    assert IDN in str(caught.value)
    assert daq.instrument is None


def test_a_live_output_or_a_queued_error_refuses_to_start() -> None:
    live = [("*IDN?", IDN), ("OUTP?", "1")]
    with (
        expected_protocol(ScpiDaq, live, ao=AO, ai=AI) as inst,
        pytest.raises(InstrumentError, match="outputs are on at connect"),
    ):
        board().connect(inst)
    pairs = [*CONNECT[:-1], ("SYST:ERR?", '-222,"Data out of range"'), ("SYST:ERR?", NO_ERROR)]
    with (
        expected_protocol(ScpiDaq, pairs, ao=AO, ai=AI) as inst,
        pytest.raises(InstrumentError, match="Data out of range"),
    ):
        board().connect(inst)


def test_levels_are_set_then_synchronised() -> None:
    pairs = [
        *CONNECT,
        ("SOUR:VOLT 1.25,(@1)", None),
        ("SOUR:VOLT -2.5,(@2)", None),
        ("*OPC?", "1"),
        ("OUTP 1", None),
    ]
    with expected_protocol(ScpiDaq, pairs, ao=AO, ai=AI) as inst:
        daq = board()
        daq.connect(inst)
        daq.set_levels({1: 1.25, 2: -2.5})
        daq.enable()
    assert daq.levels == {1: 1.25, 2: -2.5}
    assert daq.enabled


def test_a_garbled_sync_is_retried_and_without_a_sync_query_none_is_sent() -> None:
    # The board syncs through the session's `sync_query`, retried like any idempotent query.
    pairs = [
        *CONNECT,
        ("SOUR:VOLT 1.25,(@1)", None),
        ("*OPC?", "x"),
        ("*OPC?", "1"),
        ("SOUR:VOLT 1.0,(@1)", None),
    ]
    with expected_protocol(ScpiDaq, pairs, ao=AO, ai=AI) as inst:
        daq = board(retry={"count": 1, "backoff": 0.0})
        daq.connect(inst)
        daq.set_levels({1: 1.25})
        daq.settings = settings(sync_query=None)
        daq.set_levels({1: 1.0})
    assert daq.levels == {1: 1.0, 2: 0.0}


@pytest.mark.parametrize(
    ("channel", "volts", "limit"),
    [
        (1, 5.5, "±5 V"),  # max_voltage below the 10 V range
        (2, -2.6, "±2.5 V"),  # the channel's range
        (1, math.nan, "±5 V"),
        (3, 0.0, "configured AO channels"),
    ],
)
def test_a_level_outside_the_instrument_range_is_refused_before_sending(
    channel: int, volts: float, limit: str
) -> None:
    with expected_protocol(ScpiDaq, CONNECT, ao=AO, ai=AI) as inst:
        daq = board()
        daq.connect(inst)
        with pytest.raises(SafetyViolation, match=limit):
            daq.set_levels({2: 0.5, channel: volts})  # nothing is sent, not even AO 2
    assert daq.levels == {1: 0.0, 2: 0.0}


def test_an_ascii_reading_is_averaged_per_channel() -> None:
    reply = "+1.000000E-01,+2.000000E+00,+3.000000E-01,+4.000000E+00"
    with expected_protocol(ScpiDaq, [*CONNECT, ("READ?", reply)], ao=AO, ai=AI) as inst:
        daq = board()
        daq.connect(inst)
        assert daq.read() == pytest.approx({101: 0.2, 102: 3.0})


def test_a_binary_reading_is_a_block_read_by_pyvisa() -> None:
    pairs = [*connect_pairs("REAL,64", "REAL,64"), ("READ?", None)]
    block = [0.5, -1.5, 0.25, -1.0]
    with expected_protocol(
        ScpiDaq, pairs, ao=AO, ai=AI, connection_methods={"read_binary_values": block}
    ) as inst:
        daq = board(data_format="real64")
        daq.connect(inst)
        assert daq.read() == {101: 0.375, 102: -1.25}
        inst.adapter.connection.read_binary_values.assert_called_once_with(
            datatype="d", is_big_endian=True, expect_termination=True
        )


def test_an_overload_or_a_short_reading_is_an_instrument_error() -> None:
    overload = "+1.000000E-01,+9.900000E+37,+3.000000E-01,+4.000000E+00"
    pairs = [*CONNECT, ("READ?", overload), ("READ?", "+1.0E-01,+2.0E+00")]
    with expected_protocol(ScpiDaq, pairs, ao=AO, ai=AI) as inst:
        daq = board()
        daq.connect(inst)
        with pytest.raises(DeviceSaturated, match="AI102"):
            daq.read()
        with pytest.raises(InstrumentProtocolError, match=r"sent 'READ\?'"):
            daq.read()


def test_go_safe_ramps_every_output_together_then_switches_off() -> None:
    pairs = [
        *CONNECT,
        ("OUTP 1", None),
        ("SOUR:VOLT 1.0,(@1)", None),
        ("SOUR:VOLT -0.5,(@2)", None),
        ("*OPC?", "1"),
        ("SOUR:VOLT 0.5,(@1)", None),  # steps of at most ramp_step (0.5 V) on any channel
        ("SOUR:VOLT -0.25,(@2)", None),
        ("*OPC?", "1"),
        ("SOUR:VOLT 0.0,(@1)", None),
        ("SOUR:VOLT 0.0,(@2)", None),
        ("*OPC?", "1"),
        ("OUTP 0", None),
        ("OUTP 0", None),  # close: safe again (nothing to ramp), then release
    ]
    with expected_protocol(ScpiDaq, pairs, ao=AO, ai=AI) as inst:
        daq = board()
        daq.connect(inst)
        daq.enable()
        daq.set_levels({1: 1.0, 2: -0.5})
        daq.go_safe()
        assert daq.clock.now() == pytest.approx(1.0)  # 1 V at max_slew 1 V/s
        daq.close()
    assert daq.levels == {1: 0.0, 2: 0.0}
    assert not daq.enabled
    with pytest.raises(InstrumentError, match="not connected"):
        daq.enable()


def test_settings_refuse_what_the_board_cannot_do() -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"ao": {1: 3.0}}, "range 3 V is not one of"),
        ({"ao": {100: 10.0}}, "channel 100 is not in 1–99"),
        ({"ai": {}}, "at least one input channel"),
        ({"ai": {101: 5.0}}, "range 5 V is not one of"),
        ({"nplc": 200.0}, "nplc 200 is outside"),
        ({"max_voltage": 12.0}, "less than or equal to 10"),
        ({"extra": 1}, "Extra inputs are not permitted"),
    ]
    for change, message in cases:
        with pytest.raises(ValidationError, match=message):
            settings(**change)


def test_channel_lists() -> None:
    assert parse_channel_list("(@101,102)") == [101, 102]
    assert parse_channel_list("(@101:103,105)") == [101, 102, 103, 105]
    assert parse_channel_list("(@)") == []
    with pytest.raises(ValueError, match="not a channel list"):
        parse_channel_list("101,102")


# -- the analog-chip rig on the board ---------------------------------------------------------


def rig_settings() -> AnalogRig.Settings:
    return AnalogRig.Settings.model_validate(
        {
            "name": "chip",
            "instruments": {
                "chip-board": {
                    "type": "scpi-daq",
                    **settings(
                        sample_count=1, ai={101: 10.0}, max_voltage=10.0, ramp_step=8.0
                    ).model_dump(exclude={"name"}),  # named by its key
                }
            },
            "channels": {
                "x": {"role": "input", "board": 1, "min": 0, "max": 31, "unit": "LSB", "scale": 4},
                "w": {"role": "control", "board": 2, "min": -8, "max": 8, "scale": 4},
                "y": {"role": "output", "board": 101, "unit": "LSB", "scale": 16},
            },
            "settle_time": 0.01,
            "reading_time": 0.02,
            "clock": "virtual",
        }
    )


RIG_CONNECT = connect_pairs(ai=((101, "10.0"),), samples=1)


def test_the_rig_sends_controls_and_plateaus_in_board_volts() -> None:
    pairs = [
        *RIG_CONNECT,
        ("OUTP 1", None),  # outputs on at 0 V with the first request
        ("SOUR:VOLT -2.0,(@2)", None),  # w = -8 LSB at 4 LSB/V
        ("*OPC?", "1"),
        ("SOUR:VOLT 7.75,(@1)", None),  # x = 31
        ("*OPC?", "1"),
        ("READ?", "+1.000000E+00"),  # 16 LSB
        ("READ?", "-5.000000E-01"),  # x unchanged: nothing sent before the reading
        ("SOUR:VOLT 0.0,(@1)", None),  # safe state: one ramp step (ramp_step 8 V)
        ("SOUR:VOLT 0.0,(@2)", None),
        ("*OPC?", "1"),
        ("OUTP 0", None),
        ("OUTP 0", None),  # close: safe again, then release
    ]
    with expected_protocol(ScpiDaq, pairs, ao=AO, ai=(101,)) as inst:
        rig = AnalogRig(rig_settings(), instrument=inst)
        rig.set_controls(np.array([-8.0]))
        with pytest.raises(SafetyViolation, match="'w'"):
            rig.set_controls(np.array([8.5]))
        out = rig.measure(np.array([[31.0], [31.0]]))
        assert out.tolist() == [[16.0], [-8.0]]
        assert rig.clock.now() == pytest.approx(2 * rig.spec.plateau_time())
        assert rig.spec.plateau_time() == pytest.approx(0.01 + 0.02)
        with rig:
            pass
    assert rig.clock.now() == pytest.approx(0.06 + 7.75)  # 7.75 V at 1 V/s
    with pytest.raises(RuntimeError, match="closed"):
        rig.set_controls(np.array([0.0]))
    spec = rig.spec
    assert [c.name for c in spec.inputs] == ["x"]
    assert (spec.outputs[0].min, spec.outputs[0].max) == (-160.0, 160.0)
    assert rig.board.settings.name == "chip-board"
    assert [(w.channel, w.role.value, w.terminal) for w in rig.settings.wiring()] == [
        ("x", "input", 1),
        ("w", "control", 2),
        ("y", "output", 101),
    ]


def test_rig_settings_name_the_key_that_is_wrong() -> None:
    data = rig_settings().model_dump()
    data["instruments"]["chip-board"]["type"] = "keithley2400"
    with pytest.raises(ValidationError, match=r"instruments\.chip-board\.type: 'keithley2400'"):
        AnalogRig.Settings.model_validate(data)
    data = rig_settings().model_dump()
    data["instruments"]["chip-board"]["nplc"] = -1
    with pytest.raises(ValidationError, match=r"instruments\.chip-board: nplc -1 is outside"):
        AnalogRig.Settings.model_validate(data)
    data = rig_settings().model_dump()
    data["instruments"]["other"] = data["instruments"]["chip-board"]
    with pytest.raises(ValidationError, match="exactly one board"):
        AnalogRig.Settings.model_validate(data)
    data = rig_settings().model_dump()
    data["channels"]["y"]["board"] = 102
    with pytest.raises(ValidationError, match=r"AI 102 is not under instruments\.chip-board\.ai"):
        AnalogRig.Settings.model_validate(data)


def test_a_board_without_a_read_back_refuses_to_reattach_and_is_released(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Re-attaching takes over a live instrument only by its read-back; without one it refuses
    after identifying (queries only) rather than trust what it finds."""
    daq = board()
    with expected_protocol(ScpiDaq, [("*IDN?", IDN)], ao=AO, ai=AI) as inst:
        monkeypatch.setattr(daq, "_open", lambda: inst)
        with pytest.raises(InstrumentError, match="ScpiDaqBoard has no read-back to re-attach"):
            daq.reattach()
    assert daq.instrument is None
