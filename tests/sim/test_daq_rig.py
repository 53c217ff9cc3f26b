"""The DNPU-on-a-DAQ rig end to end over the fake `nidaqmx`, backed by a simulated DNPU.

The fake plays every AO buffer through the `DNPUDevice` and reads its output current back as AI
volts (a transimpedance of 1/28.5 V/nA and a 3 mV amplifier offset), so the rig's whole path —
channel map, waveform building, the two DAQmx tasks, gain and offset correction — runs as on a
card. Conformance: the checks of `hil.testing` that apply to a rig (see `RIG_CHECKS`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from drivers.rigs.daq import DaqRig, DaqRigSettings
from hil.core import Device, InstrumentError, SafetyViolation, Streaming, VirtualClock
from hil.safety import SafetyGuard, SafetyLimits
from hil.testing import CHECKS, DeviceFactory
from simulators.dnpu import DNPUDevice
from simulators.virtual.nidaq import (
    SAMPLES_NOT_YET_AVAILABLE,
    AIReadout,
    FakeNidaqmx,
)

pytestmark = pytest.mark.timeout(30)

QUIET = {"white": 0.0, "relative": 0.0, "flicker_psd": 0.0, "drift_std": 0.0}
VOLTS_PER_NA = 1 / 28.5  # the transimpedance after the DNPU's amplifier
AI_OFFSET = 0.003  # V the fake's amplifier adds
MAX_SLEW = 5000.0  # V/s: a plateau ramp of 0.5 ms may cross 2.5 V
RANGES = [(-1.2, 0.6)] * 5 + [(-0.7, 0.3)] * 2


def dnpu(seed: int, noise: bool, **changes: Any) -> DNPUDevice:
    settings: dict[str, Any] = {"hidden": [16, 16], **changes}
    if not noise:
        settings["noise"] = QUIET
    return DNPUDevice(DNPUDevice.Settings.model_validate(settings), seed=seed)


def rig_settings(**changes: Any) -> DaqRigSettings:
    channels: dict[str, Any] = {
        f"E{i}": {
            "ao": f"ao{i}",
            "role": "input" if i in (1, 2) else "control",
            "min": lo,
            "max": hi,
            "max_slew": MAX_SLEW,
        }
        for i, (lo, hi) in enumerate(RANGES)
    }
    channels["Iout"] = {"ai": "ai0", "role": "output", "unit": "nA"}
    values: dict[str, Any] = {
        "name": "dnpu-daq",
        "daq": {
            "device": "Dev1",
            "sample_rate": 10_000.0,
            "ao": {f"ao{i}": {"min": -2.0, "max": 2.0} for i in range(7)},
            "ai": {
                "ai0": {
                    "min": -10.0,
                    "max": 10.0,
                    "terminal": "diff",
                    "gain": VOLTS_PER_NA,
                    "offset": AI_OFFSET,
                }
            },
            "offset_samples": 200,
        },
        "channels": channels,
        "ramp_time": 5e-4,
        "settle_time": 1e-3,
        "plateau_samples": 10,
        "clock": "virtual",
        **changes,
    }
    return DaqRig.Settings.model_validate(values)


def fake_for(sim: DNPUDevice) -> FakeNidaqmx:
    return FakeNidaqmx(
        sim,
        {f"Dev1/ao{i}": f"E{i}" for i in range(7)},
        {"Dev1/ai0": AIReadout(output=0, volts_per_unit=VOLTS_PER_NA, offset=AI_OFFSET)},
    )


def make_rig(seed: int, noise: bool, **sim_changes: Any) -> tuple[DaqRig, FakeNidaqmx]:
    fake = fake_for(dnpu(seed, noise, **sim_changes))
    return DaqRig(rig_settings(), nidaqmx_module=fake), fake


def rig(seed: int, noise: bool) -> Device:
    return make_rig(seed, noise)[0]


def quiet_memoryless_rig(seed: int, noise: bool) -> Device:
    """A rig over a DNPU without noise or output filter: the backing for `safe_state`, whose
    twin comparison is exact only if moving to θ and back leaves no trace (see RIG_CHECKS)."""
    return make_rig(seed, False, cutoff=None)[0]


# A rig moves physically: set_controls and safe_state play ramps that cost samples, so with noise
# on (or a filter with memory) "safe_state behaves as if set to zero" cannot hold sample-exactly;
# it is checked over a quiet, memoryless DNPU. A rig has no RNG (no noise_streams) and no
# checkpointable state (no state_round_trip).
RIG_CHECKS: dict[str, DeviceFactory] = {
    "spec": rig,
    "seeds": rig,
    "range_refused": rig,
    "clock": rig,
    "stream_matches_measure": rig,
    "safe_state": quiet_memoryless_rig,
}


@pytest.mark.parametrize("name", list(RIG_CHECKS))
def test_conformance(name: str) -> None:
    CHECKS[name](RIG_CHECKS[name])


def test_the_rig_is_a_streaming_device_with_the_channel_map_as_spec() -> None:
    device, _ = make_rig(0, True)
    assert isinstance(device, Device)
    assert isinstance(device, Streaming)
    spec = device.spec
    assert [c.name for c in spec.inputs] == ["E1", "E2"]
    assert [c.name for c in spec.controls] == ["E0", "E3", "E4", "E5", "E6"]
    assert [(c.name, c.unit) for c in spec.outputs] == [("Iout", "nA")]
    assert spec.sample_rate == 10_000.0
    assert spec.plateau_time() == pytest.approx(5e-4 + 1e-3 + 10 / 10_000)
    assert not hasattr(device, "noise_streams")


def test_a_stream_equals_the_simulators_own_stream_up_to_the_gain_round_trip() -> None:
    device, fake = make_rig(21, True)
    twin = dnpu(21, True)
    rng = np.random.default_rng(3)
    theta = rng.uniform(-0.3, 0.2, size=5)
    device.set_controls(theta)
    # the twin gets the same ramp the rig played to reach θ (the card moves, it cannot jump)
    ramp_calls = [c for c in fake.calls if c.name.endswith("ao.write")]
    assert len(ramp_calls) == 1
    twin.stream(np.array(ramp_calls[0].args[0]).T, [f"E{i}" for i in range(7)])
    t = np.arange(400) / 10_000
    wave = np.column_stack(
        [0.3 * np.sin(2 * np.pi * 50 * t) ** 2, -0.4 * np.sin(2 * np.pi * 75 * t) ** 2]
    )
    out = device.stream(wave, ["E1", "E2"])
    expected = twin.stream(wave, ["E1", "E2"])
    # AI volts = I/28.5 + 3 mV, then (V − 3 mV)·28.5: equal to rounding
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-9)
    assert device.clock.now() == pytest.approx(twin.clock.now(), rel=1e-12)
    assert device.held["E1"] == wave[-1, 0]
    assert device.held["E0"] == theta[0]


def test_measured_offset_replaces_the_configured_one() -> None:
    device, fake = make_rig(5, False, cutoff=None)
    sim = fake.simulator
    assert isinstance(sim, DNPUDevice)
    zero_current = float(sim.true_output(np.zeros(5), np.zeros((1, 2)))[0, 0])
    offsets = device.measure_offset()
    # with every AO at 0 V the AI reads the amplifier offset and the DNPU's zero-bias current
    expected = AI_OFFSET + zero_current * VOLTS_PER_NA
    np.testing.assert_allclose(offsets, [expected], atol=2 * 0.00025)  # an ADC step of the DNPU
    x = np.array([[0.2, -0.3]])
    with_offset = device.measure(x)[0, 0]
    assert with_offset == pytest.approx(
        float(sim.true_output(np.zeros(5), x)[0, 0]) - (offsets[0] - AI_OFFSET) / VOLTS_PER_NA,
        abs=0.01,
    )


def test_safe_state_ramps_every_electrode_to_zero_and_is_idempotent() -> None:
    device, fake = make_rig(1, True)
    device.set_controls(np.array([0.5, -1.0, 0.3, -0.6, 0.25]))
    device.measure(np.array([[0.4, -0.8]]))
    t0 = device.clock.now()
    writes = len([c for c in fake.calls if c.name.endswith("ao.write")])
    device.safe_state()
    assert all(v == 0.0 for v in device.held.values())
    ramp = np.array([c for c in fake.calls if c.name.endswith("ao.write")][-1].args[0])
    steps = np.abs(np.diff(ramp, axis=1)) * 10_000
    assert steps.max() <= MAX_SLEW * (1 + 1e-9)  # within max_slew
    assert (ramp[:, -1] == 0).all()
    assert device.clock.now() - t0 == pytest.approx(ramp.shape[1] / 10_000)
    device.safe_state()
    assert len([c for c in fake.calls if c.name.endswith("ao.write")]) == writes + 1
    assert fake.open_tasks == []


def test_leaving_the_block_after_an_exception_leaves_the_card_at_zero() -> None:
    device, fake = make_rig(2, True)

    def protocol() -> None:
        with device:
            device.set_controls(np.array([0.5, -1.0, 0.3, -0.6, 0.25]))
            raise RuntimeError("the protocol failed")

    with pytest.raises(RuntimeError):
        protocol()
    assert all(v == 0.0 for v in device.held.values())
    sim = fake.simulator
    assert isinstance(sim, DNPUDevice)
    assert (sim.controls == 0).all()
    with pytest.raises(InstrumentError, match="closed"):
        device.measure(np.zeros((1, 2)))


def test_a_fault_mid_read_leaves_the_held_level_known_and_safe_state_ramps_from_it() -> None:
    device, fake = make_rig(3, True)
    theta = np.array([0.5, -1.0, 0.3, -0.6, 0.25])
    fake.fail_next("read", SAMPLES_NOT_YET_AVAILABLE)
    with pytest.raises(InstrumentError, match="-200284"):
        device.set_controls(theta)
    assert fake.open_tasks == []
    # the fake generated the whole ramp before the read failed: the card holds θ
    assert [device.held[f"E{i}"] for i in (0, 3, 4, 5, 6)] == theta.tolist()
    device.close()
    assert all(v == 0.0 for v in device.held.values())
    sim = fake.simulator
    assert isinstance(sim, DNPUDevice)
    assert (sim.controls == 0).all()


def test_requests_outside_the_channel_map_are_refused_before_any_task() -> None:
    device, fake = make_rig(4, True)
    with pytest.raises(SafetyViolation, match="E0"):
        device.set_controls(np.array([0.7, 0, 0, 0, 0]))  # E0 max is 0.6 V
    with pytest.raises(SafetyViolation, match="max_slew"):
        device.stream(np.array([[0.0, 0.0], [0.6, 0.0]]), ["E1", "E2"])  # 6000 V/s
    assert fake.calls == []
    assert device.clock.now() == 0.0


def test_the_settings_refuse_a_range_beyond_the_card_and_unwired_channels() -> None:
    with pytest.raises(ValueError, match="inside the AO range"):
        rig_settings(
            daq={"sample_rate": 1e4, "ao": {"ao0": {"max": 0.5}}, "ai": {"ai0": {}}},
            channels={
                "E0": {"ao": "ao0", "role": "control", "min": -1, "max": 1},
                "I": {"ai": "ai0", "role": "output"},
            },
        )
    with pytest.raises(ValueError, match="exactly one"):
        rig_settings(
            daq={"sample_rate": 1e4, "ao": {"ao0": {}, "ao1": {}}, "ai": {"ai0": {}}},
            channels={
                "E0": {"ao": "ao0", "role": "control", "min": -1, "max": 1},
                "I": {"ai": "ai0", "role": "output"},
            },
        )
    with pytest.raises(ValueError, match="whole number of samples"):
        rig_settings(ramp_time=1.5e-4 / 3)


def test_a_wall_clock_is_not_advanced_by_the_rig() -> None:
    fake = fake_for(dnpu(0, False))
    clock = VirtualClock()
    device = DaqRig(rig_settings(clock="wall"), clock=clock, nidaqmx_module=fake)
    assert device.clock is clock
    device.measure(np.zeros((2, 2)))
    assert clock.now() == 0.0  # the card's play took the time; nothing is added on top


def test_a_driven_channel_in_the_spec_has_the_tighter_of_its_own_and_the_ao_slew() -> None:
    base = rig_settings()
    daq = base.daq.model_copy(
        update={
            "ao": {**base.daq.ao, "ao0": base.daq.ao["ao0"].model_copy(update={"max_slew": 100.0})}
        }
    )
    fake = fake_for(dnpu(0, False))
    device = DaqRig(base.model_copy(update={"daq": daq}), nidaqmx_module=fake)
    assert device.spec.channel("E0").max_slew == 100.0
    assert device.spec.channel("E3").max_slew == MAX_SLEW


def test_behind_the_safety_guard_the_rig_trains_streams_and_ends_at_zero() -> None:
    device, fake = make_rig(6, True)
    with SafetyGuard(device, SafetyLimits(max_abs_voltage=1.5)) as guard:
        assert isinstance(guard, Streaming)
        guard.set_controls(np.array([0.2, -0.3, 0.1, -0.2, 0.1]))
        before = guard.measure(np.array([[0.1, -0.2], [-0.4, 0.3]]))
        assert before.shape == (2, 1)
        guard.park()
        t = np.arange(200) / 10_000
        tone = 0.05 * np.sin(2 * np.pi * 100 * t)[:, np.newaxis]
        tone[-1] = 0.0  # streams begin and end at 0 V (the guard's zero ends)
        trace = guard.stream(tone, ["E0"])
        assert trace.shape == (200, 1)
    assert all(v == 0.0 for v in device.held.values())
    assert fake.open_tasks == []
