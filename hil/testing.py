"""Conformance checks every device must pass: simulators now, instrument rigs later.

`device_checks(factory)` returns named checks, each a function that raises AssertionError on
failure, like scikit-learn's estimator checks; a test module parametrises over them:

    @pytest.mark.parametrize(("name", "check"), device_checks(make_dnpu), ids=...)
    def test_conformance(name, check): check()

The factory builds a fresh device: `factory(seed, noise)`; with noise=False every random noise
source is off (deterministic non-idealities such as filters and quantisers stay on).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from functools import partial
from typing import Protocol

import numpy as np

from hil.core import (
    Device,
    DeviceSpec,
    FloatArray,
    ProgrammableState,
    Role,
    SafetyViolation,
    Stateful,
    Streaming,
)


class DeviceFactory(Protocol):
    def __call__(self, seed: int, noise: bool) -> Device: ...


Check = Callable[[], None]


def _inside(spec: DeviceSpec, role: Role, fraction: float, rng: np.random.Generator) -> FloatArray:
    """Random values well inside the ranges of the channels with `role` (finite ranges assumed)."""
    lo, hi = spec.bounds(role)
    lo, hi = np.maximum(lo, -1e3), np.minimum(hi, 1e3)
    mid, half = (lo + hi) / 2, (hi - lo) / 2
    return mid + fraction * half * rng.uniform(-1.0, 1.0, size=lo.shape)


def _workload(device: Device, rng: np.random.Generator, n_cases: int = 4) -> FloatArray:
    """Set some controls, pulse (if programmable) and measure a few plateaus."""
    spec = device.spec
    if spec.controls:
        device.set_controls(_inside(spec, Role.CONTROL, 0.5, rng))
    if isinstance(device, ProgrammableState):
        shape = np.shape(device.read_state())
        device.apply_pulses(rng.integers(-3, 4, size=shape))
    inputs = np.vstack([_inside(spec, Role.INPUT, 0.8, rng) for _ in range(n_cases)])
    return device.measure(inputs)


def check_spec(factory: DeviceFactory) -> None:
    """The spec is complete: outputs exist, driven ranges contain 0 V, streaming has a rate."""
    device = factory(0, True)
    spec = device.spec
    assert isinstance(spec, DeviceSpec)
    assert spec.outputs, "a device must have at least one output channel"
    for channel in (*spec.inputs, *spec.controls):
        assert channel.min <= 0.0 <= channel.max, f"{channel.name}: 0 V must be in range"
    if isinstance(device, Streaming):
        assert spec.sample_rate is not None, "a streaming device needs spec.sample_rate"
    assert spec.plateau_time() >= 0.0


def check_seeds(factory: DeviceFactory) -> None:
    """Identical seeds give identical results."""
    a = _workload(factory(7, True), np.random.default_rng(1))
    b = _workload(factory(7, True), np.random.default_rng(1))
    np.testing.assert_array_equal(a, b)


def check_noise_streams(factory: DeviceFactory) -> None:
    """Each noise source has its own generator, spawned from the one seed (SeedSequence.spawn)."""
    device = factory(3, True)
    streams = getattr(device, "noise_streams", None)
    assert isinstance(streams, dict), "expose noise_streams: name -> Generator"
    assert streams, "noise_streams is empty"
    sequences = [g.bit_generator.seed_seq for g in streams.values()]
    assert all(isinstance(s, np.random.SeedSequence) for s in sequences)
    assert len({s.entropy for s in sequences}) == 1, "all streams come from the same seed"
    keys = [s.spawn_key for s in sequences]
    assert len(set(keys)) == len(keys), f"spawn keys must differ: {keys}"
    states = [json.dumps(g.bit_generator.state, sort_keys=True) for g in streams.values()]
    assert len(set(states)) == len(states), "generator states must differ"


def check_range_refused(factory: DeviceFactory) -> None:
    """Out-of-range and NaN requests raise SafetyViolation and change nothing."""
    device, twin = factory(5, True), factory(5, True)
    spec = device.spec
    rng = np.random.default_rng(2)
    bad_requests: list[Callable[[], object]] = []
    if spec.controls:
        good = _inside(spec, Role.CONTROL, 0.5, rng)
        device.set_controls(good)
        twin.set_controls(good)
        for value in (spec.controls[0].max + 1.0, math.nan):
            bad = good.copy()
            bad[0] = value
            bad_requests.append(partial(device.set_controls, bad))
    inputs = np.vstack([_inside(spec, Role.INPUT, 0.8, rng) for _ in range(3)])
    if spec.inputs:
        too_high = inputs.copy()
        too_high[1, 0] = spec.inputs[0].max + 1.0
        bad_requests.append(lambda: device.measure(too_high))
    assert bad_requests, "the device has no driven channel to check"
    for request in bad_requests:
        try:
            request()
        except SafetyViolation:
            continue
        raise AssertionError("an out-of-range request was accepted")
    np.testing.assert_array_equal(device.measure(inputs), twin.measure(inputs))
    assert device.clock.now() == twin.clock.now(), "a refused request must not cost device time"


def check_safe_state(factory: DeviceFactory) -> None:
    """safe_state() puts the controls to 0 V: afterwards the device behaves as if set to zero."""
    device, twin = factory(9, True), factory(9, True)
    spec = device.spec
    rng = np.random.default_rng(4)
    if spec.controls:
        device.set_controls(_inside(spec, Role.CONTROL, 0.7, rng))
        twin.set_controls(np.zeros(len(spec.controls)))
    device.safe_state()
    device.safe_state()  # idempotent
    inputs = np.vstack([_inside(spec, Role.INPUT, 0.5, rng) for _ in range(2)])
    np.testing.assert_array_equal(device.measure(inputs), twin.measure(inputs))


def check_clock(factory: DeviceFactory) -> None:
    """A measurement advances the device clock by exactly what its plateaus take."""
    device = factory(11, True)
    spec = device.spec
    rng = np.random.default_rng(5)
    for n_cases in (1, 5):
        inputs = np.vstack([_inside(spec, Role.INPUT, 0.5, rng) for _ in range(n_cases)])
        t0 = device.clock.now()
        device.measure(inputs)
        elapsed = device.clock.now() - t0
        expected = n_cases * spec.plateau_time()
        assert math.isclose(elapsed, expected, rel_tol=1e-9, abs_tol=1e-12), (
            f"{n_cases} plateaus took {elapsed} s of device time, expected {expected} s"
        )


def check_stream_matches_measure(factory: DeviceFactory) -> None:
    """The plateau mean of a stream equals `measure` (noise off: exactly)."""
    device, twin = factory(13, False), factory(13, False)
    if not isinstance(device, Streaming) or not isinstance(twin, Streaming):
        return
    spec = device.spec
    assert spec.sample_rate is not None
    assert spec.plateau_samples is not None
    rng = np.random.default_rng(6)
    if spec.controls:
        theta = _inside(spec, Role.CONTROL, 0.5, rng)
        device.set_controls(theta)
        twin.set_controls(theta)
    x = _inside(spec, Role.INPUT, 0.8, rng)
    measured = device.measure(x[np.newaxis, :])[0]
    n_ramp = round(spec.ramp_time * spec.sample_rate)
    n_hold = round(spec.settle_time * spec.sample_rate) + spec.plateau_samples
    ramp = x[np.newaxis, :] * (np.arange(1, n_ramp + 1) / max(n_ramp, 1))[:, np.newaxis]
    waveform = np.vstack([ramp, np.tile(x, (n_hold, 1))])
    trace = twin.stream(waveform, [c.name for c in spec.inputs])
    streamed = trace[-spec.plateau_samples :].mean(axis=0)
    np.testing.assert_allclose(streamed, measured, rtol=1e-9, atol=1e-12)
    assert math.isclose(device.clock.now(), twin.clock.now(), rel_tol=1e-12)


def check_state_round_trip(factory: DeviceFactory) -> None:
    """A state_dict (through JSON) put into another instance reproduces the future exactly."""
    device = factory(17, True)
    if not isinstance(device, Stateful):
        return
    _workload(device, np.random.default_rng(7))
    state = json.loads(json.dumps(device.state_dict()))
    other = factory(18, True)  # a different seed: everything random must come from the state
    assert isinstance(other, Stateful)
    other.load_state_dict(state)
    a = _workload(device, np.random.default_rng(8))
    b = _workload(other, np.random.default_rng(8))
    np.testing.assert_array_equal(a, b)
    assert device.clock.now() == other.clock.now()


CHECKS: dict[str, Callable[[DeviceFactory], None]] = {
    "spec": check_spec,
    "seeds": check_seeds,
    "noise_streams": check_noise_streams,
    "range_refused": check_range_refused,
    "safe_state": check_safe_state,
    "clock": check_clock,
    "stream_matches_measure": check_stream_matches_measure,
    "state_round_trip": check_state_round_trip,
}


OWN_RANDOMNESS = ("noise_streams",)
"""Checks that apply only to a device with random generators of its own (a simulator)."""


def device_checks(
    factory: DeviceFactory, *, own_randomness: bool = True
) -> list[tuple[str, Check]]:
    """Every conformance check bound to `factory`, with its name.

    A rig (`own_randomness=False`) has no generators: its noise is the hardware's, or that of
    the simulator behind its virtual instruments, which `factory(seed, noise)` seeds; the
    checks on a device's own noise streams do not apply to it.
    """
    return [
        (name, _bind(check, factory))
        for name, check in CHECKS.items()
        if own_randomness or name not in OWN_RANDOMNESS
    ]


def _bind(check: Callable[[DeviceFactory], None], factory: DeviceFactory) -> Check:
    return lambda: check(factory)
