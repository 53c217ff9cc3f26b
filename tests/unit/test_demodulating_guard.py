"""The guard in front of a `Demodulating` device: every dither is checked before anything is sent.

A dither A·sin(2πft) on a control swings it over DC ± A and has the slope 2πfA: both are refused
(`SafetyViolation`, never clamped) outside the channel's effective range (device, station limits,
max_abs_voltage) or max_slew; frequency and amplitude must be finite and positive; the inputs row
is checked as `measure` checks it; after a failure part-way the guard drives nothing until the
safe state.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest

from hil.core import (
    CapabilityError,
    Channel,
    Demodulating,
    DeviceBase,
    DeviceSpec,
    FloatArray,
    InstrumentError,
    Role,
    SafetyViolation,
    VirtualClock,
)
from hil.safety import DemodulatingSafetyGuard, SafetyGuard, SafetyLimits


class FakeLockinDevice(DeviceBase):
    """Records every request that reaches it; the lock-in answers X = 1, Y = 0 per read."""

    def __init__(self, fail: bool = False) -> None:
        self.spec = DeviceSpec(
            name="fake",
            channels=(
                Channel(name="x0", role=Role.INPUT, min=-1.0, max=1.0, unit="V"),
                Channel(name="c0", role=Role.CONTROL, min=-1.0, max=1.0, unit="V"),
                Channel(name="c1", role=Role.CONTROL, min=-0.5, max=0.5, unit="V", max_slew=10.0),
                Channel(name="c2", role=Role.CONTROL, min=-1.0, max=1.0, unit="V"),
                Channel(name="y", role=Role.OUTPUT, unit="nA"),
            ),
            settle_time=0.0,
            ramp_time=0.01,
        )
        self.clock = VirtualClock()
        self.calls: list[tuple[str, Any]] = []
        self.fail = fail

    def set_controls(self, values: FloatArray) -> None:
        self.calls.append(("set_controls", np.array(values)))

    def measure(self, inputs: FloatArray) -> FloatArray:
        self.calls.append(("measure", np.array(inputs)))
        return np.zeros((len(inputs), 1))

    def safe_state(self) -> None:
        self.calls.append(("safe_state", None))

    def dither_channels(self) -> tuple[str, ...]:
        return ("c0", "c1")  # c2 has no AWG

    def max_dithers(self) -> int:
        return 1

    def demodulated_output(self) -> str:
        return "y"

    def demodulate(
        self, inputs: FloatArray, dithers: Mapping[str, tuple[float, float]], reads: int = 1
    ) -> FloatArray:
        self.calls.append(("demodulate", (np.array(inputs), dict(dithers), reads)))
        if self.fail:
            raise InstrumentError("fake lock-in: timeout while reading")
        out = np.zeros((len(dithers), reads, 2))
        out[:, :, 0] = 1.0
        return out


LIMITS = SafetyLimits.model_validate(
    {"max_abs_voltage": 0.9, "channels": {"c0": {"max": 0.6}}, "ramp_interval": 0.001}
)


def guard_on(device: FakeLockinDevice, limits: SafetyLimits) -> DemodulatingSafetyGuard:
    assert isinstance(device, Demodulating)
    guard = SafetyGuard(device, limits)
    assert isinstance(guard, DemodulatingSafetyGuard)
    return guard


def guarded(fail: bool = False) -> tuple[DemodulatingSafetyGuard, FakeLockinDevice]:
    device = FakeLockinDevice(fail)
    guard = guard_on(device, LIMITS)
    guard.set_controls(np.array([0.5, 0.1, 0.0]))
    device.calls.clear()
    return guard, device


def test_the_guard_offers_demodulate_only_when_the_device_does() -> None:
    guard, _ = guarded()
    assert isinstance(guard, Demodulating)
    assert guard.dither_channels() == ("c0", "c1")
    assert guard.max_dithers() == 1
    assert guard.demodulated_output() == "y"

    class Plain(FakeLockinDevice):
        demodulate = None  # type: ignore[assignment]

    plain = SafetyGuard(Plain(), LIMITS)
    assert not isinstance(plain, Demodulating)
    with pytest.raises(CapabilityError, match="Demodulating"):
        plain.demodulate(np.zeros(1), {"c0": (10.0, 0.01)})  # type: ignore[attr-defined]


def test_an_allowed_request_passes_through_unchanged() -> None:
    guard, device = guarded()
    out = guard.demodulate(np.array([0.2]), {"c0": (7.0, 0.1), "c1": (20.0, 0.05)}, reads=3)
    assert out.shape == (2, 3, 2)
    ((name, (row, dithers, reads)),) = device.calls
    assert name == "demodulate"
    np.testing.assert_array_equal(row, [0.2])
    assert dithers == {"c0": (7.0, 0.1), "c1": (20.0, 0.05)}
    assert reads == 3


@pytest.mark.parametrize(
    ("dithers", "match"),
    [
        ({"c0": (7.0, 0.11)}, r"c0.*limits\.channels\.c0"),  # 0.5 + 0.11 above the station's 0.6
        ({"c1": (7.0, 0.61)}, r"c1.*device spec"),  # 0.1 - 0.61 below the device's -0.5
        ({"c1": (1.0, 0.45)}, r"c1.*device spec"),  # 0.55 above the device's 0.5
        ({"c1": (40.0, 0.05)}, r"c1.*max_slew 10"),  # slope 2π·40·0.05 = 12.6 V/s
        ({"c0": (math.nan, 0.01)}, r"c0.*finite positive dither frequency"),
        ({"c0": (0.0, 0.01)}, r"c0.*finite positive dither frequency"),
        ({"c0": (10.0, -0.01)}, r"c0.*finite positive dither amplitude"),
        ({"c0": (10.0, math.inf)}, r"c0.*finite positive dither amplitude"),
        ({"c1": (1.0, 0.01), "c0": (math.inf, 0.01)}, r"c0.*frequency"),  # one bad: none sent
    ],
)
def test_each_refused_dither_sends_nothing(dithers: dict[str, Any], match: str) -> None:
    guard, device = guarded()
    with pytest.raises(SafetyViolation, match=match):
        guard.demodulate(np.array([0.0]), dithers)
    assert device.calls == []


def test_the_ceiling_bounds_the_swing_and_only_dithered_controls_pass() -> None:
    """c0 at -0.85 V: a 0.1 V dither reaches -0.95 V, beyond max_abs_voltage 0.9 (the device
    would take -1 V). c2 has no AWG; an empty request is no request."""
    guard, device = guarded()
    guard.set_controls(np.array([-0.85, 0.1, 0.0]))
    device.calls.clear()
    with pytest.raises(SafetyViolation, match=r"c0.*max_abs_voltage"):
        guard.demodulate(np.array([0.0]), {"c0": (5.0, 0.1)})
    with pytest.raises(ValueError, match=r"c2.*cannot be dithered"):
        guard.demodulate(np.array([0.0]), {"c2": (5.0, 0.01)})
    with pytest.raises(ValueError, match="non-empty"):
        guard.demodulate(np.array([0.0]), {})
    assert device.calls == []


@pytest.mark.parametrize(
    ("inputs", "reads", "error"),
    [
        (np.array([1.5]), 1, SafetyViolation),  # outside x0's range
        (np.array([math.nan]), 1, SafetyViolation),
        (np.array([[0.0]]), 1, ValueError),  # one row, not a matrix
        (np.array([0.0]), 0, ValueError),
    ],
)
def test_the_inputs_row_and_reads_are_checked_first(
    inputs: FloatArray, reads: int, error: type[Exception]
) -> None:
    guard, device = guarded()
    with pytest.raises(error):
        guard.demodulate(inputs, {"c0": (5.0, 0.01)}, reads=reads)
    assert device.calls == []


def test_the_inputs_plateau_jump_is_slew_checked() -> None:
    """Like `measure`: from the inputs held to the new row within ramp_time at max_slew."""
    device = FakeLockinDevice()
    limits = SafetyLimits.model_validate(
        {"max_abs_voltage": 2.0, "channels": {"x0": {"max_slew": 10.0}}}
    )
    guard = guard_on(device, limits)
    with pytest.raises(SafetyViolation, match=r"x0.*max_slew"):
        guard.demodulate(np.array([0.2]), {"c0": (5.0, 0.01)})  # 0.2 V in 10 ms: 20 V/s
    assert device.calls == []
    guard.demodulate(np.array([0.05]), {"c0": (5.0, 0.01)})
    assert [name for name, _ in device.calls] == ["demodulate"]


def test_after_a_failure_nothing_is_driven_until_the_safe_state() -> None:
    guard, device = guarded(fail=True)
    with pytest.raises(InstrumentError, match="timeout"):
        guard.demodulate(np.array([0.3]), {"c0": (5.0, 0.01)})
    device.calls.clear()
    with pytest.raises(InstrumentError, match="unknown since demodulate failed"):
        guard.demodulate(np.array([0.3]), {"c0": (5.0, 0.01)})
    with pytest.raises(InstrumentError, match="unknown"):
        guard.set_controls(np.zeros(3))
    assert device.calls == []
    guard.safe_state()  # ramps from the last levels sent, inputs included (held at 0.3)
    assert device.calls[-1][0] == "safe_state"
    device.fail = False
    device.calls.clear()
    guard.demodulate(np.array([0.0]), {"c0": (5.0, 0.01)})
    assert [name for name, _ in device.calls] == ["demodulate"]
