"""The ArC TWO wrapper against the recording fake of `pyarc2.Instrument`: the exact calls, the
refusals before any call, the translated errors, and the fake's own argument checks."""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np
import pytest

from drivers.arc2 import Arc2Board, Arc2Settings
from drivers.crossbar_serial import PulseShape
from hil.core import DeviceSaturated, InstrumentError, SafetyViolation
from simulators.crossbar import CrossbarDevice, CrossbarSettings
from simulators.virtual.arc2 import ArC2Error, BiasOrder, FakeInstrument, ReadAfter, ReadAt

SET = PulseShape(amplitude=1.2, width_ns=100)
RESET = PulseShape(amplitude=1.5, width_ns=200)
GROUND = [("ground_all", ()), ("execute", ()), ("wait", ())]


def device(seed: int = 3) -> CrossbarDevice:
    return CrossbarDevice(CrossbarSettings(rows=3, cols=2, construction_seed=5), seed=seed)


def settings(**changes: object) -> Arc2Settings:
    values: dict[str, object] = {
        "firmware": "/opt/arc2/fw.bin",
        "row_channels": (1, 0),
        "col_channels": (16, 17),
        "max_amplitude": 2.0,
        "max_read_voltage": 0.5,
        "max_width_ns": 1000,
        "max_count": 50,
    }
    values.update(changes)
    return Arc2Settings.model_validate(values)


def connected(**changes: object) -> tuple[Arc2Board, FakeInstrument]:
    fake = FakeInstrument(device(), g_ref=1e-5, g_scale=1e-5)
    board = Arc2Board(settings(**changes), instrument=fake)
    board.connect()
    return board, fake


def test_connect_grounds_every_channel() -> None:
    board, fake = connected()
    assert fake.calls == GROUND
    assert fake.state == "ground"
    assert (board.word_lines, board.bit_lines) == (2, 2)


def test_reads_call_read_one_and_read_all_on_the_mapped_channels() -> None:
    board, fake = connected()
    fake.calls.clear()
    g = 1e-5 + 1e-5 * fake.device.weights
    assert board.read(0, 1, 0.2) == pytest.approx(0.2 * g[1, 1])  # word line 0 is row channel 1
    currents = board.read_array(-0.3)
    np.testing.assert_allclose(currents, -0.3 * g[[1, 0]][:, :2])
    assert fake.calls == [("read_one", (1, 17, 0.2)), ("read_all", (-0.3, BiasOrder.Rows))]
    np.testing.assert_allclose(board.vmm(np.array([[0.1, 0.2]]), 0.2), [[0.1, 0.2]] @ g[[1, 0]])


def test_pulse_trains_are_queued_grounded_and_executed_once() -> None:
    board, fake = connected()
    twin = device()
    fake.calls.clear()
    counts = np.array([[2, 0], [0, -1]])
    board.pulse_trains(counts, SET, RESET)
    released = fake.calls[0]
    assert released[0] == "connect_to_gnd"
    assert released[1] == ((),)
    assert fake.calls[1:] == [
        ("pulse_one", (1, 16, 1.2, 100)),
        ("pulse_one", (1, 16, 1.2, 100)),
        ("pulse_one", (0, 17, -1.5, 200)),
        *GROUND,
    ]
    twin.apply_pulses([*counts[[1, 0]].tolist(), [0, 0]])  # word line 0 is device row 1
    np.testing.assert_array_equal(fake.device.weights, twin.weights)
    fake.calls.clear()
    board.pulse_trains(np.zeros((2, 2), dtype=int), SET, RESET)
    assert fake.calls == []  # nothing to pulse: nothing sent


@pytest.mark.parametrize(
    "request_",
    [
        lambda b: b.read(0, 0, 0.6),
        lambda b: b.read_array(float("nan")),
        lambda b: b.vmm(np.array([[0.1, -0.7]]), 0.2),
        lambda b: b.pulse_trains(
            np.ones((2, 2), dtype=int), PulseShape(amplitude=3, width_ns=100), RESET
        ),
        lambda b: b.pulse_trains(
            np.ones((2, 2), dtype=int), SET, PulseShape(amplitude=1, width_ns=5)
        ),
        lambda b: b.pulse_trains(np.full((2, 2), -51), SET, RESET),
    ],
    ids=["read", "nan", "vmm", "amplitude", "width", "count"],
)
def test_out_of_range_is_refused_before_any_call(request_: Any) -> None:
    board, fake = connected()
    fake.calls.clear()
    with pytest.raises(SafetyViolation, match="arc2"):
        request_(board)
    assert fake.calls == []


def test_settings_hold_arc2_channels_and_ranges() -> None:
    with pytest.raises(ValueError, match="not ArC TWO row channels"):
        settings(row_channels=(16,))
    with pytest.raises(ValueError, match="listed twice"):
        settings(col_channels=(16, 16))
    with pytest.raises(ValueError, match="less than or equal to 10"):
        settings(max_amplitude=12.0)
    with pytest.raises(ValueError, match="extra"):
        settings(compliance=1e-3)


def test_an_instrument_error_names_the_board_and_the_call() -> None:
    board, fake = connected()
    fake.fail_next("read_all", ArC2Error("USB transfer failed"))
    with pytest.raises(InstrumentError, match=r"arc2 \(ArC TWO #0\): read_all\(0.2.*USB transfer"):
        board.read_array(0.2)
    fake.fail_next("execute", OSError(19, "No such device"))
    with pytest.raises(InstrumentError, match="ground_all, execute, wait failed"):
        board.go_safe()


def test_a_reading_at_the_current_limit_saturates() -> None:
    board, _ = connected(max_current=1e-6)
    with pytest.raises(DeviceSaturated, match="1e-06 A"):
        board.read_array(0.2)


def test_close_grounds_once_and_commands_then_refuse() -> None:
    board, fake = connected()
    fake.calls.clear()
    with board:
        pass
    board.close()
    assert fake.calls == GROUND
    with pytest.raises(InstrumentError, match="not connected"):
        board.read_array(0.2)


def test_without_pyarc2_connect_says_which_extra_to_install() -> None:
    if importlib.util.find_spec("pyarc2") is not None:
        pytest.skip("pyarc2 is installed here")
    with pytest.raises(InstrumentError, match="optional extra `arc2`"):
        Arc2Board(settings()).connect()


# -- the fake checks arguments as the instrument does -----------------------------------------


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda f: f.pulse_one(64, 16, 1.0, 100), ArC2Error),
        (lambda f: f.pulse_one(0, 0, 1.0, 100), ArC2Error),
        (lambda f: f.pulse_one(0, 1, 1.0, 100), ArC2Error),  # two row channels
        (lambda f: f.pulse_one(0, 16, 10.5, 100), ArC2Error),
        (lambda f: f.pulse_one(0, 16, 1.0, 0), ArC2Error),
        (lambda f: f.pulse_one(0, 16, 1.0, 1.5), TypeError),
        (lambda f: f.pulse_one(True, 16, 1.0, 100), TypeError),
        (lambda f: f.read_all(0.2, "rows"), TypeError),
        (
            lambda f: f.generate_ramp(
                0, 16, 0.0, -0.1, 1.0, 100, 0, 1, ReadAt.Never, ReadAfter.Never
            ),
            ArC2Error,
        ),
        (
            lambda f: f.generate_ramp(
                0, 16, 0.0, 0.1, 1.0, 100, 0, 1, ReadAt.Bias, ReadAfter.Pulse
            ),
            ArC2Error,
        ),
        (lambda f: f.pulse_one(0, 16, 1.0, 100).read_one(0, 16, 0.2), ArC2Error),  # queued
    ],
)
def test_the_fake_refuses_what_the_instrument_would(call: Any, error: type[Exception]) -> None:
    fake = FakeInstrument(device())
    with pytest.raises(error):
        call(fake)


def test_the_fake_applies_queued_pulses_only_on_execute() -> None:
    fake = FakeInstrument(device(), v_switch=0.8)
    twin = device()
    before = fake.device.weights.copy()
    fake.pulse_one(16, 0, -1.0, 100)  # the row 1 V below the column: a SET of (0, 0)
    fake.generate_ramp(1, 17, 0.5, 0.25, 1.0, 100, 1000, 2, ReadAt.Never, ReadAfter.Never)
    fake.pulse_all(0.5, 100, BiasOrder.Cols)  # below v_switch: moves nothing
    np.testing.assert_array_equal(fake.device.weights, before)
    fake.execute().wait()
    assert not fake.busy()
    counts = np.zeros((3, 2), dtype=int)
    counts[0, 0], counts[1, 1] = 1, 2  # ramp 0.5, 0.75, 1.0 V × 2: only 1.0 V ≥ v_switch
    twin.apply_pulses(counts)
    np.testing.assert_array_equal(fake.device.weights, twin.weights)
    assert fake.read_one(0, 48, 0.2) == 0.0  # beyond the 3 × 2 device: an open crosspoint
