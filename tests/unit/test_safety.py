"""The safety guard: nothing outside the experiment limits ever reaches the device.

A recording fake device stands in for hardware: it keeps every value that reaches it, so the
properties below can check what was really sent, not what the guard says it sent.
"""

from __future__ import annotations

import itertools
import math
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from pydantic import ValidationError

from hil.core import (
    CapabilityError,
    Channel,
    ConfigError,
    Device,
    DeviceBase,
    DeviceSpec,
    FloatArray,
    HilError,
    JSONDict,
    Role,
    SafetyViolation,
    Stateful,
    Streaming,
    VirtualClock,
)
from hil.safety import (
    ChannelLimit,
    PulsingSafetyGuard,
    SafetyGuard,
    SafetyLimits,
    StreamingSafetyGuard,
    Terminated,
    sigterm_raises,
)

REPO = Path(__file__).resolve().parents[2]

# ------------------------------------------------------------------------------------------------
# A recording fake device


@dataclass
class Call:
    kind: str
    values: FloatArray | None
    t: float
    channels: tuple[str, ...] = ()


class FakeDevice(DeviceBase):
    """Records every call and every value that reaches it; returns zeros."""

    def __init__(self, spec: DeviceSpec) -> None:
        self._spec = spec
        self._clock = VirtualClock()
        self.calls: list[Call] = []

    @property
    def spec(self) -> DeviceSpec:
        return self._spec

    @property
    def clock(self) -> VirtualClock:
        return self._clock

    def set_controls(self, values: FloatArray) -> None:
        self.calls.append(Call("set_controls", np.array(values, dtype=float), self._clock.now()))

    def measure(self, inputs: FloatArray) -> FloatArray:
        self.calls.append(Call("measure", np.array(inputs, dtype=float), self._clock.now()))
        return np.zeros((len(inputs), len(self._spec.outputs)))

    def safe_state(self) -> None:
        self.calls.append(Call("safe_state", None, self._clock.now()))

    def close(self) -> None:
        self.calls.append(Call("close", None, self._clock.now()))

    def of(self, kind: str) -> list[Call]:
        return [c for c in self.calls if c.kind == kind]


class StreamingFake(FakeDevice):
    def stream(self, waveform: FloatArray, channels: Sequence[str]) -> FloatArray:
        wf = np.array(waveform, dtype=float)
        self.calls.append(Call("stream", wf, self._clock.now(), tuple(channels)))
        return np.zeros((len(wf), len(self._spec.outputs)))


class StatefulFake(FakeDevice):
    """Its state holds the controls last sent, as a simulator's does."""

    def __init__(self, spec: DeviceSpec) -> None:
        super().__init__(spec)
        self.loaded: JSONDict | None = None

    def _controls(self) -> list[float]:
        sent = self.of("set_controls")
        values = sent[-1].values if sent else None
        return [0.0] * len(self._spec.controls) if values is None else values.tolist()

    def state_dict(self) -> JSONDict:
        return {"t": self._clock.now(), "controls": self._controls()}

    def load_state_dict(self, state: JSONDict) -> None:
        self.loaded = state

    def restored_levels(self, state: JSONDict) -> dict[str, float]:
        names = [c.name for c in self._spec.controls]
        return dict(zip(names, map(float, state["controls"]), strict=True))


class UncheckableStateful(FakeDevice):
    """Stateful, but cannot say what its state would put on the channels."""

    def state_dict(self) -> JSONDict:
        return {}

    def load_state_dict(self, state: JSONDict) -> None:
        raise AssertionError("must never be restored unchecked")


# ------------------------------------------------------------------------------------------------
# The test station: spec, limits and the effective limits they must give (computed by hand)

SAMPLE_RATE = 1000.0
RAMP_TIME = 0.005
SPEC = DeviceSpec(
    name="fake",
    channels=(
        Channel(name="in0", role=Role.INPUT, min=-1.5, max=1.5),
        Channel(name="in1", role=Role.INPUT, min=-1.0, max=1.0),
        Channel(name="ctrl0", role=Role.CONTROL, min=-1.2, max=1.2),
        Channel(name="ctrl1", role=Role.CONTROL, min=-0.9, max=1.2, max_slew=100.0),
        Channel(name="ctrl2", role=Role.CONTROL),
        Channel(name="out0", role=Role.OUTPUT, min=-10.0, max=10.0),
    ),
    sample_rate=SAMPLE_RATE,
    ramp_time=RAMP_TIME,
)
LIMITS = SafetyLimits(
    max_abs_voltage=1.0,
    channels={
        "ctrl0": ChannelLimit(min=-0.5, max=0.8, max_slew=50.0),
        "in1": ChannelLimit(max=0.6, max_slew=200.0),
        "ctrl1": ChannelLimit(max_slew=500.0),
    },
    ramp_interval=1e-3,
    zero_tolerance=1e-3,
)
INF = math.inf
# name: (min, max, max_slew)
EFFECTIVE: dict[str, tuple[float, float, float]] = {
    "in0": (-1.0, 1.0, INF),
    "in1": (-1.0, 0.6, 200.0),
    "ctrl0": (-0.5, 0.8, 50.0),
    "ctrl1": (-0.9, 1.0, 100.0),
    "ctrl2": (-1.0, 1.0, INF),
    "out0": (-10.0, 10.0, INF),
}
INPUTS = ("in0", "in1")
CONTROLS = ("ctrl0", "ctrl1", "ctrl2")
DRIVEN = INPUTS + CONTROLS


def bounds(names: Sequence[str]) -> tuple[FloatArray, FloatArray, FloatArray]:
    lo, hi, slew = zip(*(EFFECTIVE[n] for n in names), strict=True)
    return np.array(lo), np.array(hi), np.array(slew)


def make(device_cls: type[FakeDevice] = StreamingFake) -> tuple[SafetyGuard, FakeDevice]:
    device = device_cls(SPEC)
    return SafetyGuard(device, LIMITS), device


def in_range(arr: FloatArray, names: Sequence[str]) -> bool:
    lo, hi, _ = bounds(names)
    return bool(np.all(np.isfinite(arr)) and np.all(arr >= lo) and np.all(arr <= hi))


# ------------------------------------------------------------------------------------------------
# Strategies

in_range_value = st.floats(-0.5, 0.6)  # inside every driven channel's range
value = st.one_of(
    in_range_value,
    in_range_value,
    st.floats(-1.3, 1.3),
    st.sampled_from([0.0, math.nan, math.inf, -math.inf, 0.8, -0.5, 0.6, 1.0, -1.0, -0.9]),
    st.sampled_from([0.8, -0.5, 0.6, 1.0, -1.0, -0.9]).map(  # just outside a bound
        lambda b: float(np.nextafter(b, math.copysign(math.inf, b)))
    ),
    st.floats(allow_nan=True, allow_infinity=True),
)


@st.composite
def control_requests(draw: st.DrawFn) -> FloatArray:
    shape = draw(st.one_of(st.just((3,)), st.just((3,)), st.sampled_from([(2,), (4,), (1, 3), ()])))
    arr: FloatArray = draw(hnp.arrays(np.float64, shape, elements=value))
    return arr


@st.composite
def measure_requests(draw: st.DrawFn) -> FloatArray:
    shape = draw(
        st.one_of(
            st.tuples(st.integers(1, 5), st.just(2)),
            st.tuples(st.integers(1, 5), st.just(2)),
            st.tuples(st.integers(1, 5), st.just(2)),
            st.sampled_from([(2,), (0, 2), (3, 3), (2, 1)]),
        )
    )
    arr: FloatArray = draw(hnp.arrays(np.float64, shape, elements=value))
    return arr


@st.composite
def stream_requests(draw: st.DrawFn) -> tuple[FloatArray, list[str]]:
    if draw(st.integers(0, 7)) == 0:  # sometimes duplicates, outputs, unknown names
        pool = st.sampled_from([*DRIVEN, "out0", "nope"])
        names = draw(st.lists(pool, min_size=1, max_size=4))
    else:
        names = draw(st.lists(st.sampled_from(DRIVEN), min_size=1, max_size=4, unique=True))
    n = draw(st.integers(1, 200))
    amplitudes = np.array(
        draw(st.lists(st.floats(-1.3, 1.3), min_size=len(names), max_size=len(names)))
    )
    k = np.arange(n)[:, np.newaxis]
    wave: FloatArray = amplitudes * np.sin(np.pi * k / max(n - 1, 1))  # zero at both ends
    if draw(st.booleans()):  # corrupt one sample
        wave[draw(st.integers(0, n - 1)), draw(st.integers(0, len(names) - 1))] = draw(value)
    if draw(st.integers(0, 9)) == 0:  # wrong shape
        wave = wave[:, :-1] if draw(st.booleans()) else wave[:0]
    return wave, names


# ------------------------------------------------------------------------------------------------
# An independent model of what the guard must accept


class Oracle:
    """Decides acceptance from the limits alone and tracks the levels the guard must track."""

    def __init__(self) -> None:
        self.inputs = np.zeros(2)
        self.controls = np.zeros(3)

    def set_controls(self, arr: FloatArray) -> type[Exception] | None:
        if arr.shape != (3,):
            return ValueError
        if not in_range(arr, CONTROLS):
            return SafetyViolation
        self.controls = arr.copy()
        return None

    def held(self, name: str) -> float:
        if name in INPUTS:
            return float(self.inputs[INPUTS.index(name)])
        return float(self.controls[CONTROLS.index(name)])

    def measure(self, arr: FloatArray) -> type[Exception] | None:
        if arr.ndim != 2 or arr.shape[1] != 2 or arr.shape[0] < 1:
            return ValueError
        if not in_range(arr, INPUTS):
            return SafetyViolation
        _, _, slew = bounds(INPUTS)
        levels = np.vstack([self.inputs, arr])
        for a, b in itertools.pairwise(levels):
            if np.any(np.abs(b - a) / RAMP_TIME > slew):
                return SafetyViolation
        self.inputs = arr[-1].copy()
        return None

    def stream(self, arr: FloatArray, names: list[str]) -> type[Exception] | None:
        if len(set(names)) != len(names) or "nope" in names:
            return ValueError
        if arr.ndim != 2 or arr.shape[1] != len(names) or arr.shape[0] < 1:
            return ValueError
        if "out0" in names or not in_range(arr, names):
            return SafetyViolation
        tol = LIMITS.zero_tolerance
        if np.any(np.abs(arr[0]) > tol) or np.any(np.abs(arr[-1]) > tol):
            return SafetyViolation
        _, _, slew = bounds(names)
        if np.any(np.abs(np.diff(arr, axis=0)) * SAMPLE_RATE > slew):
            return SafetyViolation
        held = np.array([self.held(n) for n in names])
        if np.any(np.abs(arr[0] - held) * SAMPLE_RATE > slew):  # entry from the held level
            return SafetyViolation
        for col, name in enumerate(names):
            if name in INPUTS:
                self.inputs[INPUTS.index(name)] = arr[-1, col]
            else:
                self.controls[CONTROLS.index(name)] = arr[-1, col]
        return None


def check_history(device: FakeDevice) -> None:
    """Every value that ever reached the device is inside its channel's effective range."""
    for call in device.calls:
        if call.kind == "set_controls":
            assert call.values is not None
            assert in_range(call.values, CONTROLS), call
        elif call.kind == "measure":
            assert call.values is not None
            assert in_range(call.values, INPUTS), call
        elif call.kind == "stream":
            assert call.values is not None
            assert set(call.channels) <= set(DRIVEN)
            assert in_range(call.values, call.channels), call


operation = st.one_of(
    st.tuples(st.just("set_controls"), control_requests()),
    st.tuples(st.just("measure"), measure_requests()),
    st.tuples(st.just("stream"), stream_requests()),
)


# ------------------------------------------------------------------------------------------------
# Properties


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(operation, min_size=1, max_size=6))
def test_only_in_limit_requests_reach_the_device_whole_and_exact(
    ops: list[tuple[str, Any]],
) -> None:
    guard, device = make()
    assert isinstance(guard, StreamingSafetyGuard)
    oracle = Oracle()
    for kind, request in ops:
        before = len(device.calls)
        error: BaseException | None = None
        try:
            if kind == "set_controls":
                expected = oracle.set_controls(request)
                guard.set_controls(request)
            elif kind == "measure":
                expected = oracle.measure(request)
                out = guard.measure(request)
                assert out.shape == (len(request), 1)
            else:
                wave, names = request
                expected = oracle.stream(wave, names)
                guard.stream(wave, names)
        except (SafetyViolation, ValueError) as exc:
            error = exc
        new = device.calls[before:]
        if expected is None:
            assert error is None, f"refused an in-limit {kind}: {error}"
            # Reaches the device exactly, never clamped.
            assert new, kind
            last = new[-1]
            assert last.kind == kind
            assert last.values is not None
            if kind == "stream":
                assert np.array_equal(last.values, request[0])
                assert last.channels == tuple(request[1])
            else:
                assert np.array_equal(last.values, request)
            assert all(c.kind == kind for c in new)
        else:
            assert error is not None, f"accepted a {kind} that breaks a limit: {request!r}"
            assert type(error) is expected, (error, expected)
            assert new == [], "a refused request sent something"
    check_history(device)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(-0.5, 0.8), st.floats(-0.9, 1.0), st.floats(-1.0, 1.0)),
        min_size=1,
        max_size=5,
    )
)
def test_ramped_set_controls_respects_slew_and_ends_exactly(
    targets: list[tuple[float, float, float]],
) -> None:
    guard, device = make()
    _, _, slew = bounds(CONTROLS)
    max_step = np.where(np.isfinite(slew), slew * LIMITS.ramp_interval, np.inf)
    previous, t_previous = np.zeros(3), -np.inf
    for target in targets:
        before = len(device.calls)
        guard.set_controls(np.array(target))
        sent = device.calls[before:]
        assert sent
        assert sent[-1].values is not None
        assert np.array_equal(sent[-1].values, np.array(target))
        for call in sent:
            assert call.kind == "set_controls"
            assert call.values is not None
            step = np.abs(call.values - previous)
            assert np.all(step <= max_step * (1 + 1e-9)), (step, max_step)
            if np.any(step[np.isfinite(slew)] > 0):
                assert call.t - t_previous >= LIMITS.ramp_interval * (1 - 1e-9)
            previous, t_previous = call.values, call.t
    # Leaving ramps back to zero within the same limits, then makes safe.
    before = len(device.calls)
    guard.safe_state()
    for call in device.calls[before:-1]:
        assert call.values is not None
        assert np.all(np.abs(call.values - previous) <= max_step * (1 + 1e-9))
        previous = call.values
    assert np.array_equal(previous, np.zeros(3))
    assert device.calls[-1].kind == "safe_state"


def test_ramp_step_count_and_clock() -> None:
    guard, device = make()
    t0 = guard.clock.now()
    guard.set_controls(np.array([0.8, 0.0, 0.0]))  # 0.8 V at 50 V/s in 1 ms steps: 16 steps
    sets = device.of("set_controls")
    assert len(sets) == 16
    assert [c.values[0] for c in sets if c.values is not None] == pytest.approx(
        [0.05 * k for k in range(1, 17)]
    )
    assert guard.clock.now() - t0 == pytest.approx(15e-3)
    # A channel without a slew limit moves in one call.
    device.calls.clear()
    guard.set_controls(np.array([0.8, 0.0, 1.0]))
    assert len(device.of("set_controls")) == 1


@settings(max_examples=80, deadline=None)
@given(
    spec_lo=st.floats(-3, 1),
    width=st.floats(0.01, 4),
    lim_lo=st.one_of(st.none(), st.floats(-3, 1)),
    lim_width=st.floats(0.01, 4),
    has_max=st.booleans(),
    ceiling=st.floats(0.05, 3),
    spec_slew=st.one_of(st.just(math.inf), st.floats(1, 1e3)),
    lim_slew=st.one_of(st.none(), st.floats(1, 1e3)),
    role=st.sampled_from([Role.CONTROL, Role.INPUT, Role.OUTPUT]),
)
def test_effective_spec_is_the_intersection(
    spec_lo: float,
    width: float,
    lim_lo: float | None,
    lim_width: float,
    has_max: bool,
    ceiling: float,
    spec_slew: float,
    lim_slew: float | None,
    role: Role,
) -> None:
    spec_hi = spec_lo + width
    lim_hi = ((lim_lo if lim_lo is not None else -1.0) + lim_width) if has_max else None
    spec = DeviceSpec(
        name="d",
        channels=(
            Channel(name="x", role=role, min=spec_lo, max=spec_hi, max_slew=spec_slew),
            Channel(name="c", role=Role.CONTROL),
        ),
        ramp_time=1e-3,  # a slew-limited input can then be ramped to 0 by plateaus
    )
    limits = SafetyLimits(
        max_abs_voltage=ceiling,
        channels={"x": ChannelLimit(min=lim_lo, max=lim_hi, max_slew=lim_slew)},
    )
    driven = role is not Role.OUTPUT
    lo = max(spec_lo, -INF if lim_lo is None else lim_lo, -ceiling if driven else -INF)
    hi = min(spec_hi, INF if lim_hi is None else lim_hi, ceiling if driven else INF)
    if not lo < hi or (driven and not lo <= 0 <= hi):
        with pytest.raises(ConfigError, match=r"limits\.channels\.x"):
            SafetyGuard(FakeDevice(spec), limits)
        return
    guard = SafetyGuard(FakeDevice(spec), limits)
    x = guard.spec.channel("x")
    assert (x.min, x.max) == (lo, hi)
    assert x.max_slew == min(spec_slew, INF if lim_slew is None else lim_slew)
    assert x.role is role
    # The global ceiling applies to every driven channel, also those without their own limit.
    assert guard.spec.channel("c").range == (-ceiling, ceiling)


def test_effective_spec_of_the_test_station() -> None:
    guard, _ = make()
    got = {c.name: (c.min, c.max, c.max_slew) for c in guard.spec.channels}
    assert got == EFFECTIVE
    assert guard.spec.sample_rate == SAMPLE_RATE
    assert guard.spec.ramp_time == RAMP_TIME
    lo, hi = guard.spec.bounds(Role.CONTROL)
    assert lo.tolist() == [-0.5, -0.9, -1.0]
    assert hi.tolist() == [0.8, 1.0, 1.0]


# ------------------------------------------------------------------------------------------------
# Configuration errors and messages


def test_unknown_limit_channel_is_a_config_error_listing_the_channels() -> None:
    limits = SafetyLimits(max_abs_voltage=1.0, channels={"ctrl9": ChannelLimit(max=0.1)})
    with pytest.raises(ConfigError) as info:
        SafetyGuard(FakeDevice(SPEC), limits)
    message = str(info.value)
    assert "limits.channels.ctrl9" in message
    for name in EFFECTIVE:
        assert name in message


def test_empty_intersection_is_a_config_error_naming_both_ranges() -> None:
    limits = SafetyLimits(max_abs_voltage=1.0, channels={"ctrl0": ChannelLimit(min=1.5, max=2.0)})
    with pytest.raises(ConfigError) as info:
        SafetyGuard(FakeDevice(SPEC), limits)
    message = str(info.value)
    assert "limits.channels.ctrl0" in message
    assert "[-1.2, 1.2]" in message
    assert "[1.5, 2]" in message


def test_driven_range_must_contain_zero() -> None:
    limits = SafetyLimits(max_abs_voltage=1.0, channels={"ctrl0": ChannelLimit(min=0.2)})
    with pytest.raises(ConfigError, match="excludes 0"):
        SafetyGuard(FakeDevice(SPEC), limits)


def test_limit_models_reject_bad_values() -> None:
    with pytest.raises(ValueError, match="below"):
        ChannelLimit(min=1.0, max=0.0)
    with pytest.raises(ValidationError, match="greater than 0"):
        ChannelLimit(max_slew=0.0)
    with pytest.raises(ValidationError, match="finite"):
        ChannelLimit(max=math.nan)
    with pytest.raises(ValidationError, match="greater than 0"):
        SafetyLimits(max_abs_voltage=0.0)
    with pytest.raises(ValidationError, match="Extra inputs"):
        SafetyLimits(max_abs_voltage=1.0, unknown_key=1)  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="greater than or equal to 0"):
        SafetyLimits(max_abs_voltage=1.0, zero_tolerance=-1.0)
    parsed = SafetyLimits.model_validate(
        {"max_abs_voltage": 2, "channels": {"ctrl0": {"min": -1, "max_slew": 5}}}
    )
    assert parsed.channels["ctrl0"] == ChannelLimit(min=-1.0, max_slew=5.0)


def test_violation_messages_name_channel_value_limit_and_fix() -> None:
    guard, device = make()
    with pytest.raises(SafetyViolation) as info:
        guard.set_controls(np.array([0.9, 0.0, 0.0]))
    v = info.value
    assert (v.channel, v.value) == ("ctrl0", 0.9)
    assert "[-0.5, 0.8]" in v.limit
    assert "limits.channels.ctrl0" in str(v)
    with pytest.raises(SafetyViolation, match=r"limits\.max_abs_voltage") as info:
        guard.set_controls(np.array([0.0, 0.0, -1.1]))
    assert info.value.channel == "ctrl2"
    with pytest.raises(SafetyViolation, match="finite") as info:
        guard.set_controls(np.array([0.0, math.nan, 0.0]))
    assert info.value.channel == "ctrl1"
    # Slew between plateaus: 0 -> 0.6 V in 5 ms is 120 V/s, fine; then -0.6 V is 240 V/s > 200.
    guard.measure(np.array([[0.0, 0.6]]))
    with pytest.raises(SafetyViolation, match="max_slew") as info:
        guard.measure(np.array([[0.0, 0.5], [0.0, -0.6]]))
    assert info.value.channel == "in1"
    assert info.value.value == pytest.approx(1.1 / RAMP_TIME)
    # Zero start / zero end of a stream.
    wave = np.zeros((5, 1))
    wave[-1, 0] = 0.01
    assert isinstance(guard, StreamingSafetyGuard)
    with pytest.raises(SafetyViolation, match="zero end") as info:
        guard.stream(wave, ["in0"])
    assert info.value.channel == "in0"
    with pytest.raises(SafetyViolation, match="output"):
        guard.stream(np.zeros((3, 1)), ["out0"])
    assert device.of("stream") == []


def test_zero_ramp_time_rejects_any_jump_on_a_slew_limited_input() -> None:
    spec = SPEC.model_copy(update={"ramp_time": 0.0})
    # Such an input could not be ramped to 0 by the safe state: the station must say it may drop.
    with pytest.raises(ConfigError, match=r"limits\.channels\.in1.*may_drop"):
        SafetyGuard(FakeDevice(spec), LIMITS)
    channels = {**LIMITS.channels, "in1": ChannelLimit(max=0.6, max_slew=200.0, may_drop=True)}
    device = FakeDevice(spec)
    guard = SafetyGuard(device, LIMITS.model_copy(update={"channels": channels}))
    with pytest.raises(SafetyViolation, match="max_slew") as info:
        guard.measure(np.array([[0.0, 0.01]]))
    assert info.value.value == math.inf
    guard.measure(np.array([[0.5, 0.0], [-0.5, 0.0]]))  # in0 has no slew limit
    assert len(device.of("measure")) == 1


def test_shape_errors_are_value_errors() -> None:
    guard, device = make()
    assert isinstance(guard, StreamingSafetyGuard)
    with pytest.raises(ValueError, match="shape"):
        guard.set_controls(np.zeros(2))
    with pytest.raises(ValueError, match="shape"):
        guard.measure(np.zeros(2))
    with pytest.raises(ValueError, match="shape"):
        guard.stream(np.zeros(4), ["in0"])
    with pytest.raises(ValueError, match="no channel"):
        guard.stream(np.zeros((4, 1)), ["bogus"])
    with pytest.raises(ValueError, match="duplicate"):
        guard.stream(np.zeros((4, 2)), ["in0", "in0"])
    with pytest.raises(ValueError, match="sequence"):
        guard.stream(np.zeros((4, 3)), "in0")
    assert device.calls == []


# ------------------------------------------------------------------------------------------------
# Capabilities


def test_protocols_reflect_the_wrapped_device() -> None:
    plain = SafetyGuard(FakeDevice(SPEC), LIMITS)
    streaming = SafetyGuard(StreamingFake(SPEC), LIMITS)
    for guard in (plain, streaming):
        assert isinstance(guard, Device)
        assert isinstance(guard, Stateful)
    assert isinstance(streaming, Streaming)
    assert not isinstance(plain, Streaming)
    assert type(plain) is SafetyGuard
    assert not hasattr(plain, "stream")
    with pytest.raises(HilError, match="it is not Streaming"):
        plain.stream(np.zeros((2, 1)), ["in0"])  # type: ignore[attr-defined]
    with pytest.raises(CapabilityError):
        plain.stream  # type: ignore[attr-defined]  # noqa: B018
    with pytest.raises(AttributeError, match="nonsense"):
        plain.nonsense  # type: ignore[attr-defined]  # noqa: B018


def test_state_dict_round_trip() -> None:
    device = StatefulFake(SPEC)
    guard = SafetyGuard(device, LIMITS)
    guard.set_controls(np.array([0.1, 0.2, 0.3]))
    guard.measure(np.array([[0.1, 0.2]]))
    state = guard.state_dict()
    assert state["last_controls"] == [0.1, 0.2, 0.3]
    assert state["last_inputs"] == [0.1, 0.2]
    assert state["device"] == device.state_dict()

    other_device = StatefulFake(SPEC)
    other = SafetyGuard(other_device, LIMITS)
    other.load_state_dict(state)
    assert other_device.loaded == state["device"]
    assert other.state_dict()["last_controls"] == [0.1, 0.2, 0.3]
    assert other.state_dict()["last_control_time"] == state["last_control_time"]
    # The restored input level counts for the slew check: 0.2 -> -0.9 V in 5 ms is too fast.
    with pytest.raises(SafetyViolation):
        other.measure(np.array([[0.0, -0.9]]))
    with pytest.raises(ValueError, match="keys"):
        other.load_state_dict({"last_controls": [0.0, 0.0, 0.0]})
    with pytest.raises(SafetyViolation):
        other.load_state_dict({**state, "last_controls": [5.0, 0.0, 0.0]})

    # What the device part would put on the device is checked like a request ...
    other_device.loaded = None
    edited = {**state, "device": {**state["device"], "controls": [7.0, 0.2, 0.3]}}
    with pytest.raises(SafetyViolation, match=r"ctrl0.*restored device state"):
        other.load_state_dict(edited)
    # ... and must agree with the levels the guard recorded beside it.
    edited = {**state, "device": {**state["device"], "controls": [0.1, 0.25, 0.3]}}
    with pytest.raises(ValueError, match=r"ctrl1.*inconsistent"):
        other.load_state_dict(edited)
    with pytest.raises(ValueError, match="mapping"):
        other.load_state_dict({**state, "device": None})
    assert other_device.loaded is None, "a refused restore reached the device"
    uncheckable = SafetyGuard(UncheckableStateful(SPEC), LIMITS)
    with pytest.raises(CapabilityError, match="restored_levels"):
        uncheckable.load_state_dict(uncheckable.state_dict())

    # Without a Stateful device there is no device entry, and the real (tracked) levels are kept.
    plain = SafetyGuard(FakeDevice(SPEC), LIMITS)
    assert "device" not in plain.state_dict()
    plain.load_state_dict(
        {"last_controls": [0.1, 0.2, 0.3], "last_inputs": [0.0, 0.0], "last_control_time": 1.0}
    )
    assert plain.state_dict()["last_controls"] == [0.0, 0.0, 0.0]


# ------------------------------------------------------------------------------------------------
# Safe state on every exit


def assert_made_safe(device: FakeDevice) -> None:
    kinds = [c.kind for c in device.calls]
    assert kinds[-2:] == ["safe_state", "close"]
    last_set = device.of("set_controls")[-1]
    assert last_set.values is not None
    assert np.array_equal(last_set.values, np.zeros(3))
    assert kinds.index("safe_state") > kinds.index("set_controls")


def test_safe_state_on_normal_exit() -> None:
    guard, device = make()
    with guard as g:
        assert g is guard
        g.set_controls(np.array([0.4, -0.3, 0.5]))
    assert_made_safe(device)


def run_and_raise(guard: SafetyGuard, exc: BaseException) -> None:
    with guard:
        guard.set_controls(np.array([0.4, -0.3, 0.5]))
        raise exc


def test_safe_state_on_exception() -> None:
    guard, device = make()
    with pytest.raises(RuntimeError, match="boom"):
        run_and_raise(guard, RuntimeError("boom"))
    assert_made_safe(device)


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, Terminated])
def test_safe_state_on_interrupt(interrupt: type[BaseException]) -> None:
    guard, device = make()
    with pytest.raises(interrupt):
        run_and_raise(guard, interrupt())
    assert_made_safe(device)


def test_safe_state_after_a_refused_request_and_idempotent() -> None:
    guard, device = make()
    guard.set_controls(np.array([0.4, -0.3, 0.5]))
    with pytest.raises(SafetyViolation), guard:
        guard.set_controls(np.array([2.0, 0.0, 0.0]))
    assert_made_safe(device)
    n_sets = len(device.of("set_controls"))
    guard.safe_state()
    guard.safe_state()
    assert len(device.of("set_controls")) == n_sets  # already at zero: nothing to ramp
    assert len(device.of("safe_state")) == 3


class FailingFake(FakeDevice):
    def set_controls(self, values: FloatArray) -> None:
        super().set_controls(values)
        if len(self.of("set_controls")) > 3:
            raise OSError("instrument gone")


def test_safe_state_is_reached_even_if_the_ramp_fails() -> None:
    device = FailingFake(SPEC)
    guard = SafetyGuard(device, LIMITS)
    guard.set_controls(np.array([0.1, 0.0, 0.0]))  # 2 steps
    guard.safe_state()  # ramp down fails on the second step, device safe state still runs
    assert device.calls[-1].kind == "safe_state"
    assert guard.state_dict()["last_controls"] == [0.0, 0.0, 0.0]


# ------------------------------------------------------------------------------------------------
# SIGTERM

CHILD = textwrap.dedent(
    """
    import sys
    import time

    import numpy as np

    from hil.core import Channel, DeviceBase, DeviceSpec, Role, VirtualClock
    from hil.safety import SafetyGuard, SafetyLimits, sigterm_raises

    LOG = sys.argv[1]

    def note(line):
        with open(LOG, "a") as f:
            f.write(line + "\\n")

    class Fake(DeviceBase):
        spec = DeviceSpec(name="child", channels=(Channel(name="c0", role=Role.CONTROL),))
        clock = VirtualClock()

        def set_controls(self, values):
            note("set " + repr(float(values[0])))

        def measure(self, inputs):
            return np.zeros((len(inputs), 0))

        def safe_state(self):
            note("safe_state")

        def close(self):
            note("close")

    limits = SafetyLimits(max_abs_voltage=1.0, channels={"c0": {"max_slew": 100.0}})
    with sigterm_raises(), SafetyGuard(Fake(), limits) as guard:
        guard.set_controls(np.array([0.5]))
        print("ready", flush=True)
        while True:
            time.sleep(0.05)
    """
)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="POSIX signals")
def test_sigterm_makes_safe_and_exits_nonzero(tmp_path: Path) -> None:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    log = tmp_path / "device.log"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, str(script), str(log)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == "ready", proc.stderr.read() if proc.stderr else ""
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0
    assert "Terminated" in stderr
    lines = log.read_text().splitlines()
    assert lines[-3:] == ["set 0.0", "safe_state", "close"]
    assert "set 0.5" in lines
    ramp_down = lines[lines.index("set 0.5") + 1 : -2]
    assert len(ramp_down) == 5  # 0.5 V at 100 V/s in 1 ms steps


def test_sigterm_raises_restores_the_previous_handler() -> None:
    previous = signal.getsignal(signal.SIGTERM)
    with sigterm_raises():
        assert signal.getsignal(signal.SIGTERM) is not previous
    assert signal.getsignal(signal.SIGTERM) == previous


def test_voltage_ceiling_spares_channels_in_other_units() -> None:
    spec = DeviceSpec(
        name="smu",
        channels=(
            Channel(name="v", role=Role.CONTROL, min=-5.0, max=5.0),
            Channel(name="i", role=Role.CONTROL, min=-5.0, max=5.0, unit="A"),
            Channel(name="out", role=Role.OUTPUT),
        ),
    )
    guard = SafetyGuard(FakeDevice(spec), SafetyLimits(max_abs_voltage=1.0))
    assert guard.spec.channel("v").range == (-1.0, 1.0)
    assert guard.spec.channel("i").range == (-5.0, 5.0)


# -- programmable state behind the guard ---------------------------------------------------------


def _crossbar_guard(**limits: Any) -> SafetyGuard:
    from simulators.crossbar import CrossbarDevice, CrossbarSettings

    device = CrossbarDevice(CrossbarSettings(rows=4, cols=3, construction_seed=0), seed=1)
    return SafetyGuard(device, SafetyLimits(max_abs_voltage=1.0, **limits))


def test_pulses_within_the_limits_reach_the_device() -> None:
    from hil.core import ProgrammableState

    guard = _crossbar_guard(max_pulses_per_device=5, max_pulses_per_request=40)
    assert isinstance(guard, PulsingSafetyGuard)
    assert isinstance(guard, ProgrammableState)
    before = guard.read_state()
    counts = np.zeros((4, 3), dtype=int)
    counts[1, 2] = 5
    guard.apply_pulses(counts)
    after = guard.read_state()
    assert after[1, 2] > before[1, 2]  # potentiated


@pytest.mark.parametrize(
    ("limits", "counts", "message"),
    [
        ({"max_pulses_per_device": 3}, {(0, 0): 4}, "max_pulses_per_device 3"),
        ({"max_pulses_per_device": 3}, {(2, 1): -4}, "max_pulses_per_device 3"),
        ({"max_pulses_per_request": 5}, {(0, 0): 3, (1, 1): -3}, "max_pulses_per_request 5"),
    ],
)
def test_pulse_requests_over_a_limit_are_refused_whole(
    limits: dict[str, int], counts: dict[tuple[int, int], int], message: str
) -> None:
    guard = _crossbar_guard(**limits)
    device = guard.unguarded_device("test: count the pulse trains that reached the array")
    trains = device.pulse_trains  # type: ignore[attr-defined]
    pulses = np.zeros((4, 3), dtype=int)
    for index, n in counts.items():
        pulses[index] = n
    with pytest.raises(SafetyViolation, match=message):
        guard.apply_pulses(pulses)  # type: ignore[attr-defined]
    assert device.pulse_trains == trains  # type: ignore[attr-defined]  # nothing reached it


def test_fractional_pulse_counts_are_refused() -> None:
    guard = _crossbar_guard()
    with pytest.raises(SafetyViolation, match="whole pulse counts"):
        guard.apply_pulses(np.full((4, 3), 0.5))  # type: ignore[attr-defined]


def test_a_plain_guard_names_the_missing_capability() -> None:
    guard = SafetyGuard(FakeDevice(SPEC), SafetyLimits(max_abs_voltage=5.0))
    with pytest.raises(HilError, match="not ProgrammableState"):
        guard.apply_pulses(np.zeros(3))  # type: ignore[attr-defined]
