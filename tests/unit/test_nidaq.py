"""DaqStream against the recording fake of `nidaqmx` (no NI hardware or driver here).

The fake is backed by a loopback "simulator": AI channel j reads AO channel j back, so every
sample's alignment, the transimpedance gain, the inversion and the offset are checked exactly;
every play's whole call sequence is compared with the one DAQmx expects.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from drivers.nidaq import DaqSettings, DaqStream
from hil.core import (
    FloatArray,
    InstrumentDisconnected,
    InstrumentError,
    InstrumentProtocolError,
    InstrumentTimeout,
    SafetyViolation,
)
from simulators.virtual import nidaq as fake_ni
from simulators.virtual.nidaq import AIReadout, Call, DaqError, DaqReadError, FakeNidaqmx

FINITE = fake_ni.AcquisitionType.FINITE
RATE = 1000.0


class Loopback:
    """A two-channel wire: output j is what AO channel "a"/"b" holds; levels persist."""

    def __init__(self) -> None:
        self.levels = np.zeros(2)
        self.streams: list[tuple[FloatArray, list[str]]] = []

    def stream(self, waveform: FloatArray, channels: Sequence[str]) -> FloatArray:
        self.streams.append((np.array(waveform), list(channels)))
        out = np.tile(self.levels, (waveform.shape[0], 1))
        for j, name in enumerate(channels):
            out[:, "ab".index(name)] = waveform[:, j]
        if waveform.shape[0]:
            self.levels = out[-1].copy()
        return out


def make(
    *, ai_offset: float = 0.02, offset: float = 0.02, **changes: Any
) -> tuple[DaqStream, FakeNidaqmx]:
    """Two AO channels, two AI channels: ai0 behind an inverting 1e6 V/A amplifier."""
    values: dict[str, Any] = {
        "device": "Dev1",
        "sample_rate": RATE,
        "ao": {"ao0": {"min": -2.0, "max": 2.0, "max_slew": 1000.0}, "ao1": {}},
        "ai": {
            "ai0": {"terminal": "diff", "gain": 1e6, "inverted": True, "offset": offset},
            "ai1": {"min": -5.0, "max": 5.0},
        },
        "timeout_margin": 1.0,
        "offset_samples": 8,
        **changes,
    }
    fake = FakeNidaqmx(
        Loopback(),
        {"Dev1/ao0": "a", "Dev1/ao1": "b"},
        {
            # the card reads ai0 = -(1e6 V/A × 1e-6 A per V of AO) + offset: inverting amplifier
            "Dev1/ai0": AIReadout(output=0, volts_per_unit=1.0, inverted=True, offset=ai_offset),
            "Dev1/ai1": AIReadout(output=1, volts_per_unit=1.0),
        },
    )
    return DaqStream(DaqSettings.model_validate(values), fake), fake


WAVE = np.array([[0.0, 0.0], [0.5, 1.0], [1.0, -1.0], [0.5, 2.0], [0.0, 0.0]])


def expected_play(wave: FloatArray, timeout: float) -> list[Call]:
    n = wave.shape[0]
    ao, ai = "hil-Dev1-ao", "hil-Dev1-ai"
    return [
        Call("Task", (ao,), {}),
        Call(
            f"{ao}.ao_channels.add_ao_voltage_chan",
            ("Dev1/ao0",),
            {"min_val": -2.0, "max_val": 2.0},
        ),
        Call(
            f"{ao}.ao_channels.add_ao_voltage_chan",
            ("Dev1/ao1",),
            {"min_val": -10.0, "max_val": 10.0},
        ),
        Call(
            f"{ao}.timing.cfg_samp_clk_timing",
            (RATE,),
            {"source": "", "sample_mode": FINITE, "samps_per_chan": n},
        ),
        Call(
            f"{ao}.triggers.start_trigger.cfg_dig_edge_start_trig", ("/Dev1/ai/StartTrigger",), {}
        ),
        Call(f"{ao}.write", (wave.T.tolist(),), {"auto_start": False, "timeout": timeout}),
        Call("Task", (ai,), {}),
        Call(
            f"{ai}.ai_channels.add_ai_voltage_chan",
            ("Dev1/ai0",),
            {
                "terminal_config": fake_ni.TerminalConfiguration.DIFF,
                "min_val": -10.0,
                "max_val": 10.0,
            },
        ),
        Call(
            f"{ai}.ai_channels.add_ai_voltage_chan",
            ("Dev1/ai1",),
            {
                "terminal_config": fake_ni.TerminalConfiguration.DEFAULT,
                "min_val": -5.0,
                "max_val": 5.0,
            },
        ),
        Call(
            f"{ai}.timing.cfg_samp_clk_timing",
            (RATE,),
            {"sample_mode": FINITE, "samps_per_chan": n},
        ),
        Call(f"{ao}.start", (), {}),
        Call(f"{ai}.start", (), {}),
        Call(f"{ai}.read", (), {"number_of_samples_per_channel": n, "timeout": timeout}),
        Call(f"{ao}.wait_until_done", (), {"timeout": timeout}),
        Call(f"{ai}.stop", (), {}),
        Call(f"{ao}.stop", (), {}),
        Call(f"{ai}.close", (), {}),
        Call(f"{ao}.close", (), {}),
    ]


def test_a_play_is_the_expected_daqmx_call_sequence() -> None:
    daq, fake = make()
    daq.play(WAVE)
    assert fake.calls == expected_play(WAVE, timeout=5 / RATE + 1.0)
    assert fake.open_tasks == []


def test_a_play_is_sample_exact_with_gain_inversion_and_offset_undone() -> None:
    daq, fake = make()
    out = daq.play(WAVE)
    assert out.shape == (5, 2)
    # ai0: -(V) + 20 mV read, offset 20 mV removed, inverted back and divided by 1e6 V/A
    np.testing.assert_allclose(out[:, 0], WAVE[:, 0] / 1e6, rtol=1e-12, atol=1e-20)
    np.testing.assert_array_equal(out[:, 1], WAVE[:, 1])
    played, names = fake.simulator.streams[-1]  # type: ignore[attr-defined]
    np.testing.assert_array_equal(played, WAVE)
    assert names == ["a", "b"]
    np.testing.assert_array_equal(daq.held, [0.0, 0.0])


def test_one_ao_channel_writes_a_flat_list() -> None:
    values = {"sample_rate": RATE, "ao": {"ao0": {}}, "ai": {"ai1": {}}}
    fake = FakeNidaqmx(Loopback(), {"Dev1/ao0": "a"}, {"Dev1/ai1": AIReadout(0, 1.0)})
    daq = DaqStream(DaqSettings.model_validate(values), fake)
    out = daq.play(np.array([[0.0], [0.25], [0.0]]))
    write = next(c for c in fake.calls if c.name.endswith(".write"))
    assert write.args == ([0.0, 0.25, 0.0],)
    np.testing.assert_array_equal(out[:, 0], [0.0, 0.25, 0.0])


def test_the_offset_is_measured_with_the_ao_at_zero_and_subtracted_afterwards() -> None:
    daq, fake = make(ai_offset=0.05, offset=0.0)
    np.testing.assert_array_equal(daq.offsets, [0.0, 0.0])
    offsets = daq.measure_offset()
    np.testing.assert_allclose(offsets, [0.05, 0.0], atol=1e-15)
    write = next(c for c in fake.calls if c.name.endswith(".write"))
    assert write.args == ([[0.0] * 8, [0.0] * 8],)
    assert (
        next(c for c in fake.calls if c.name.endswith(".read")).kwargs[
            "number_of_samples_per_channel"
        ]
        == 8
    )
    out = daq.play(WAVE)
    np.testing.assert_allclose(out[:, 0], WAVE[:, 0] / 1e6, rtol=1e-12, atol=1e-20)
    # re-measurable: the amplifier drifted
    fake.ai_map["Dev1/ai0"] = AIReadout(output=0, volts_per_unit=1.0, inverted=True, offset=-0.01)
    np.testing.assert_allclose(daq.measure_offset(4), [-0.01, 0.0], atol=1e-15)


@pytest.mark.parametrize(
    ("row", "col", "value", "match"),
    [
        (2, 0, 2.5, "range"),  # above the AO range of ao0
        (2, 1, -10.5, "range"),
        (2, 1, np.nan, "finite"),
        (3, 0, np.inf, "finite"),
        (0, 1, 0.1, "first sample"),
        (4, 0, -0.1, "last sample"),
        (1, 0, 1.5, "max_slew"),  # 1.5 V in 1 ms = 1500 V/s > 1000 V/s
    ],
)
def test_bad_waveforms_are_refused_before_any_task(
    row: int, col: int, value: float, match: str
) -> None:
    daq, fake = make()
    bad = WAVE.copy()
    bad[row, col] = value
    with pytest.raises(SafetyViolation, match=match):
        daq.play(bad)
    assert fake.calls == []


def test_a_play_needs_the_card_at_zero_and_drive_checks_the_entry_from_the_held_level() -> None:
    daq, fake = make()
    daq.drive(np.array([[0.5, 0.0], [1.0, 0.0]]))
    np.testing.assert_array_equal(daq.held, [1.0, 0.0])
    calls = len(fake.calls)
    with pytest.raises(SafetyViolation, match="park"):
        daq.play(WAVE)  # a stream starts from 0 V
    with pytest.raises(SafetyViolation, match="max_slew"):
        daq.drive(np.array([[-0.5, 0.0]]))
    assert len(fake.calls) == calls
    assert daq.park(min_samples=4) == 4
    np.testing.assert_array_equal(daq.held, [0.0, 0.0])
    ramp = np.array([c for c in fake.calls if c.name.endswith(".write")][-1].args[0])
    np.testing.assert_allclose(ramp[0], [0.75, 0.5, 0.25, 0.0])
    assert daq.park() == 0  # idempotent: nothing moves, no task
    assert len([c for c in fake.calls if c.name == "Task"]) == 4  # the drive and the park


def test_a_fault_mid_read_closes_both_tasks_and_is_a_timeout() -> None:
    daq, fake = make()
    fake.fail_next("read", fake_ni.SAMPLES_NOT_YET_AVAILABLE, generated=3)
    with pytest.raises(InstrumentTimeout) as info:
        daq.drive(np.array([[0.5, 0.0], [1.0, 0.5], [1.0, 1.0], [0.5, 0.5]]))
    message = str(info.value)
    for part in ("Dev1", "hil-Dev1-ai", "read", "-200284"):
        assert part in message
    assert fake.open_tasks == []
    tail = [c.name for c in fake.calls[-4:]]
    assert tail == [
        "hil-Dev1-ai.read",
        "hil-Dev1-ao.out_stream.total_samp_per_chan_generated",
        "hil-Dev1-ai.close",
        "hil-Dev1-ao.close",
    ]
    # the card generated 3 of 4 samples before the fault: it holds the third
    np.testing.assert_array_equal(daq.held, [1.0, 1.0])


def test_a_fault_the_card_cannot_report_on_leaves_the_level_unknown_until_parked() -> None:
    daq, fake = make()
    fake.fail_next("read", -200279)  # SamplesNoLongerAvailable
    fake.fail_next("total_samp_per_chan_generated", fake_ni.DEVICE_REMOVED)
    with pytest.raises(InstrumentError, match="-200279"):
        daq.drive(np.array([[0.5, 0.0]]))
    assert fake.open_tasks == []
    assert np.isnan(daq.held).all()
    with pytest.raises(InstrumentError, match="unknown"):
        daq.drive(np.array([[0.5, 0.0]]))
    assert daq.park() == 1  # one sample at 0 V: the only way to a known level
    np.testing.assert_array_equal(daq.held, [0.0, 0.0])


def test_a_fault_while_configuring_closes_the_task_already_made() -> None:
    daq, fake = make(start_trigger="/Dev1/PFI99")
    with pytest.raises(InstrumentError, match="-200254") as info:
        daq.play(WAVE)
    assert "cfg_dig_edge_start_trig" in str(info.value)
    assert [c.name for c in fake.calls if c.name == "Task"] == ["Task"]  # AI never made
    assert fake.open_tasks == []
    np.testing.assert_array_equal(daq.held, [0.0, 0.0])


def test_a_fault_when_ai_starts_leaves_the_armed_ao_unplayed_and_closed() -> None:
    daq, fake = make()
    fake.fail_next("start", fake_ni.DEVICE_REMOVED, task="hil-Dev1-ai")
    with pytest.raises(InstrumentDisconnected, match="-200045"):
        daq.drive(np.array([[0.5, 0.0]]))
    assert fake.open_tasks == []
    np.testing.assert_array_equal(daq.held, [0.0, 0.0])  # the AO never left its level


def test_a_failing_close_is_reported_when_nothing_else_failed() -> None:
    daq, fake = make()
    original = fake_ni.FakeTask.close

    def close(self: fake_ni.FakeTask) -> None:
        original(self)
        if self.name.endswith("-ao"):
            raise DaqError("Task specified is invalid", fake_ni.INVALID_TASK, self.name)

    fake_ni.FakeTask.close = close  # type: ignore[method-assign]
    try:
        with pytest.raises(InstrumentError, match="close failed with DAQmx error -200088"):
            daq.play(WAVE)
    finally:
        fake_ni.FakeTask.close = original  # type: ignore[method-assign]
    assert fake.open_tasks == []


def test_a_read_that_is_not_sample_exact_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    daq, fake = make()
    original = fake_ni.FakeTask.read

    def short_read(self: fake_ni.FakeTask, *args: Any, **kwargs: Any) -> Any:
        data = original(self, *args, **kwargs)
        return [column[:-1] for column in data]

    monkeypatch.setattr(fake_ni.FakeTask, "read", short_read)
    with pytest.raises(InstrumentProtocolError, match="sample-exact"):
        daq.play(WAVE)
    assert fake.open_tasks == []


def test_without_nidaqmx_the_error_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "nidaqmx", None)
    settings = DaqSettings.model_validate(
        {"sample_rate": RATE, "ao": {"ao0": {}}, "ai": {"ai0": {}}}
    )
    with pytest.raises(InstrumentError, match=r"pip install 'hil\[nidaq\]'"):
        DaqStream(settings)


def test_settings_refuse_unknown_keys_and_an_ao_range_without_zero() -> None:
    base: dict[str, Any] = {"sample_rate": RATE, "ao": {"ao0": {}}, "ai": {"ai0": {}}}
    with pytest.raises(ValidationError, match="extra"):
        DaqSettings.model_validate({**base, "rate": 5})
    with pytest.raises(ValidationError, match="hold 0 V"):
        DaqSettings.model_validate({**base, "ao": {"ao0": {"min": 0.5, "max": 2}}})
    with pytest.raises(ValidationError, match="channel names"):
        DaqSettings.model_validate({**base, "ai": {"ai0, ai1": {}}})
    s = DaqSettings.model_validate({**base, "ao": {"cDAQ1Mod3/ao0": {}}})
    assert s.physical("cDAQ1Mod3/ao0") == "cDAQ1Mod3/ao0"
    assert s.physical("ai0") == "Dev1/ai0"
    assert s.trigger == "/Dev1/ai/StartTrigger"


def test_the_fake_enforces_daqmx_usage() -> None:
    fake = FakeNidaqmx(Loopback(), {"Dev1/ao0": "a"}, {"Dev1/ai0": AIReadout(0, 1.0)})
    ai = fake.Task("t-ai")
    ai.ai_channels.add_ai_voltage_chan("Dev1/ai0")
    ai.timing.cfg_samp_clk_timing(RATE, samps_per_chan=3)
    with pytest.raises(DaqReadError) as read_error:
        ai.read(number_of_samples_per_channel=3)
    assert read_error.value.error_code == fake_ni.CANNOT_READ_TASK_NOT_RUNNING
    ai.start()
    with pytest.raises(DaqReadError) as too_many:
        ai.read(number_of_samples_per_channel=4)
    assert too_many.value.error_code == fake_ni.SAMPLES_WILL_NEVER_BE_AVAILABLE
    ao = fake.Task("t-ao")
    with pytest.raises(DaqError) as missing:
        ao.ao_channels.add_ao_voltage_chan("Dev1/ao7")
    assert missing.value.error_code == fake_ni.PHYSICAL_CHAN_DOES_NOT_EXIST
    ao.ao_channels.add_ao_voltage_chan("Dev1/ao0", min_val=-1.0, max_val=1.0)
    ao.timing.cfg_samp_clk_timing(RATE, samps_per_chan=2)
    with pytest.raises(DaqError) as empty:
        ao.start()
    assert empty.value.error_code == fake_ni.OUTPUT_BUFFER_EMPTY
    with pytest.raises(fake_ni.DaqWriteError) as outside:
        ao.write([0.0, 1.5], auto_start=False)
    assert outside.value.error_code == fake_ni.SAMPLE_VALUE_OUT_OF_RANGE
    with pytest.raises(TypeError):
        ao.write([0.0, 0.5], autostart=False)  # not nidaqmx's keyword
    ao.close()
    with pytest.raises(DaqError) as closed:
        ao.start()
    assert closed.value.error_code == fake_ni.INVALID_TASK
    ai.close()
    assert fake.open_tasks == []


def test_an_ao_started_after_ai_misses_the_trigger_and_times_out() -> None:
    fake = FakeNidaqmx(Loopback(), {"Dev1/ao0": "a"}, {"Dev1/ai0": AIReadout(0, 1.0)})
    daq = DaqStream(
        DaqSettings.model_validate({"sample_rate": RATE, "ao": {"ao0": {}}, "ai": {"ai0": {}}}),
        fake,
    )
    ai = fake.Task("ai")
    ai.ai_channels.add_ai_voltage_chan("Dev1/ai0")
    ai.timing.cfg_samp_clk_timing(RATE, samps_per_chan=2)
    ao = fake.Task("ao")
    ao.ao_channels.add_ao_voltage_chan("Dev1/ao0")
    ao.timing.cfg_samp_clk_timing(RATE, samps_per_chan=2)
    ao.triggers.start_trigger.cfg_dig_edge_start_trig("/Dev1/ai/StartTrigger")
    ao.write([0.0, 0.5], auto_start=False)
    ai.start()  # the wrong order: the trigger fires before AO is armed
    ao.start()
    assert ai.read(number_of_samples_per_channel=2) == [0.0, 0.0]
    with pytest.raises(InstrumentTimeout, match="-200560"):
        daq._call("ao", "wait_until_done", ao.wait_until_done, timeout=1.0)
    ao.close()
    ai.close()


def test_a_missing_ni_daqmx_driver_is_an_instrument_error_naming_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    daq, fake = make()

    def no_driver(new_task_name: str = "") -> Any:
        raise fake_ni.DaqNotFoundError("Could not find an installation of NI-DAQmx")

    monkeypatch.setattr(fake, "Task", no_driver)
    with pytest.raises(InstrumentError, match="Task failed with DaqNotFoundError: Could not find"):
        daq.play(WAVE)
