"""The guard at transitions, conversions and restores, on the real simulators.

Each test names one promise of the safety model: the entry into a stream and the ramp to the
safe state respect the slew limits, converters cannot round a request past a limit, restores are
checked like requests, limits cannot be loosened at run time, and no ramp can take forever.
"""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest

from hil.core import (
    CapabilityError,
    ConfigError,
    DeviceSpec,
    InstrumentError,
    InstrumentTimeout,
    SafetyViolation,
    Streaming,
)
from hil.safety import SafetyGuard, SafetyLimits, stricter_limits
from simulators.analog_mlp import AnalogMLPDevice
from simulators.analytic import AnalyticDevice
from simulators.crossbar import CrossbarDevice
from simulators.dnpu import DNPUDevice

RATE = 1000.0


def analytic(max_slew: float = 20.0, **timing: float) -> AnalyticDevice:
    settings = AnalyticDevice.Settings.model_validate(
        {
            "n_inputs": 2,
            "n_controls": 2,
            "max_slew": max_slew,
            "timing": {"sample_rate": RATE, "ramp_time": 0.005, "samples_per_plateau": 2, **timing},
        }
    )
    return AnalyticDevice(settings, seed=0)


def levels(device: AnalyticDevice | DNPUDevice) -> np.ndarray:
    return np.asarray(device.state_dict()["levels"], dtype=float)


class PlateauOnly(AnalyticDevice):
    """The analytic device without its streaming capability (plateaus only)."""

    stream = None  # type: ignore[assignment]


# ------------------------------------------------------------------------------------------------
# Transitions


def test_a_stream_cannot_jump_from_the_held_level_to_its_first_sample() -> None:
    device = analytic(max_slew=20.0)  # 0.02 V per sample at 1 kHz
    guard = SafetyGuard(device, SafetyLimits(max_abs_voltage=1.0))
    guard.set_controls(np.array([0.3, 0.0]))  # ramped: ctrl0 holds 0.3 V
    wave = np.zeros((50, 1))
    before = device.clock.now()
    with pytest.raises(SafetyViolation, match=r"entry jump from the held level 0\.3 V") as info:
        guard.stream(wave, ["ctrl0"])  # type: ignore[attr-defined]
    assert info.value.channel == "ctrl0"
    assert info.value.value == pytest.approx(300.0)  # V/s
    assert device.clock.now() == before, "a refused stream must not reach the device"
    # Parking ramps the held level to 0 within the limit; then the same stream is taken.
    guard.park()
    assert levels(device)[2] == 0.0
    guard.stream(wave, ["ctrl0"])  # type: ignore[attr-defined]


def test_after_a_stream_the_channel_holds_its_last_sample_for_the_next_transition() -> None:
    device = analytic(max_slew=20.0)
    guard = SafetyGuard(device, SafetyLimits(max_abs_voltage=1.0, zero_tolerance=0.05))
    up = np.linspace(0.0, 0.04, 5)[:, np.newaxis]  # ends at 0.04 V, inside the zero tolerance
    guard.stream(up, ["in0"])  # type: ignore[attr-defined]
    assert levels(device)[0] == pytest.approx(0.04)
    # A plateau at -0.08 V is 0.12 V away: 24 V/s over the 5 ms ramp, over the 20 V/s limit.
    with pytest.raises(SafetyViolation, match=r"plateau jump 0\.04 -> -0\.08"):
        guard.measure(np.array([[-0.08, 0.0]]))
    guard.measure(np.array([[-0.05, 0.0]]))  # 18 V/s: taken


def test_safe_state_ramps_slew_limited_inputs_by_streaming() -> None:
    device = analytic(max_slew=20.0)
    guard = SafetyGuard(device, SafetyLimits(max_abs_voltage=1.0))
    guard.measure(np.array([[0.05, -0.09]]))  # inputs now held at 0.05, -0.09 V
    streams: list[np.ndarray] = []
    original = device.stream

    def recording(waveform: np.ndarray, channels: object) -> np.ndarray:
        streams.append(np.array(waveform))
        return original(waveform, channels)  # type: ignore[arg-type]

    device.stream = recording  # type: ignore[method-assign]
    guard.safe_state()
    assert len(streams) == 1
    path = np.vstack([[0.05, -0.09], streams[0]])
    assert np.max(np.abs(np.diff(path, axis=0))) * RATE <= 20.0
    assert np.array_equal(streams[0][-1], [0.0, 0.0])
    assert len(streams[0]) == 5  # 0.09 V at 0.02 V per sample
    assert np.array_equal(levels(device), np.zeros(4))


def test_safe_state_ramps_inputs_by_plateaus_without_streaming() -> None:
    device = PlateauOnly(
        AnalyticDevice.Settings.model_validate(
            {"max_slew": 20.0, "timing": {"sample_rate": RATE, "ramp_time": 0.002}}
        ),
        seed=0,
    )
    guard = SafetyGuard(device, SafetyLimits(max_abs_voltage=1.0))
    assert not isinstance(guard, Streaming)
    guard.measure(np.array([[0.03, 0.0]]))
    guard.measure(np.array([[0.06, 0.0]]))  # 0.03 V per 2 ms plateau ramp: 15 V/s
    plateaus = device.plateaus
    guard.safe_state()
    # 0.06 V at most 0.04 V per ramp (20 V/s × 2 ms): two plateaus, 0.03 then 0.
    assert device.plateaus - plateaus == 2
    assert np.array_equal(levels(device), np.zeros(levels(device).shape))


def test_an_input_that_cannot_be_ramped_must_be_allowed_to_drop() -> None:
    settings = AnalyticDevice.Settings.model_validate(
        {"max_slew": 20.0, "timing": {"sample_rate": RATE, "ramp_time": 0.002}}
    )
    spec = PlateauOnly(settings, seed=0).spec.model_copy(update={"ramp_time": 0.0})

    class Instant(PlateauOnly):
        @property
        def spec(self) -> DeviceSpec:
            return spec

    with pytest.raises(ConfigError, match=r"limits\.channels\.in0.*may_drop"):
        SafetyGuard(Instant(settings, seed=0), SafetyLimits(max_abs_voltage=1.0))
    limits = SafetyLimits.model_validate(
        {
            "max_abs_voltage": 1.0,
            "channels": {"in0": {"may_drop": True}, "in1": {"may_drop": True}},
        }
    )
    SafetyGuard(Instant(settings, seed=0), limits).safe_state()


def test_no_ramp_may_take_forever() -> None:
    limits = SafetyLimits.model_validate(
        {"max_abs_voltage": 1.0, "channels": {"ctrl0": {"max_slew": 1e-300}}}
    )
    with pytest.raises(ConfigError, match=r"ctrl0\.max_slew.*max_ramp_time"):
        SafetyGuard(analytic(max_slew=math.inf), limits)
    # A slew that crosses the range within max_ramp_time is accepted; a longer ramp is refused.
    limits = SafetyLimits.model_validate(
        {"max_abs_voltage": 1.0, "max_ramp_time": 0.5, "channels": {"ctrl0": {"max_slew": 4.0}}}
    )
    guard = SafetyGuard(analytic(max_slew=math.inf), limits)
    with pytest.raises(ConfigError, match="max_ramp_time"):
        SafetyGuard(
            analytic(max_slew=math.inf),
            limits.model_copy(update={"max_ramp_time": 0.4}),  # 2 V at 4 V/s takes 0.5 s
        )
    guard.set_controls(np.array([0.9, 0.0]))  # 0.9 V at 4 V/s: 0.225 s


# ------------------------------------------------------------------------------------------------
# Conversions


def test_a_dac_cannot_round_a_request_past_a_limit() -> None:
    device = AnalogMLPDevice(AnalogMLPDevice.Settings.model_validate({"layers": [2, 2]}), seed=0)
    limits = SafetyLimits.model_validate(
        {"max_abs_voltage": 1.0, "channels": {"w0_0_0": {"min": -15.5, "max": 15.5}}}
    )
    guard = SafetyGuard(device, limits)
    values = np.zeros(4)
    values[0] = 15.4  # code 15: inside
    guard.set_controls(values)
    assert device.weights[0][0, 0] == 15
    # 15.5 is inside the limit, but the weight DAC would round it to code 16 (ties to even): the
    # guard's range is narrowed to what converts inside, so the optimizer's box ends there too.
    w = guard.spec.channel("w0_0_0")
    assert (w.min, w.max) == (float(np.nextafter(-15.5, 0)), float(np.nextafter(15.5, 0)))
    values[0] = 15.5
    with pytest.raises(SafetyViolation, match=r"narrowed to .* converter's rounding"):
        guard.set_controls(values)
    assert device.weights[0][0, 0] == 15, "the refused request reached the chip"
    values[0] = w.max
    guard.set_controls(values)
    assert device.weights[0][0, 0] == 15


def test_range_ends_between_dac_codes_move_inward() -> None:
    guard = SafetyGuard(dnpu(), SafetyLimits(max_abs_voltage=1.6))
    e5 = guard.spec.channel("E5")  # [-0.7, 0.3] V on a 16-bit DAC over ±10 V
    assert -0.7 < e5.min < -0.7 + 20 / 2**16
    assert e5.max == 0.3  # 0.3 V rounds inward already
    controls = np.array([c.min for c in guard.spec.controls])  # where a projection lands
    guard.set_controls(controls)


def test_the_crossbars_row_scaling_is_checked_against_the_limits() -> None:
    device = CrossbarDevice(
        CrossbarDevice.Settings.model_validate({"rows": 3, "cols": 2, "construction_seed": 0}),
        seed=0,
    )
    limits = SafetyLimits.model_validate(
        {"max_abs_voltage": 1.0, "channels": {"row1": {"max": 0.55}}}
    )
    guard = SafetyGuard(device, limits)
    # Noise management divides each row by its largest |x|: alone, any positive level on row1
    # is driven at full scale (1.0), so the guard's range for row1 ends at 0 (conservative).
    assert guard.spec.channel("row1").max == 0.0
    with pytest.raises(SafetyViolation, match=r"row1.*narrowed"):
        guard.measure(np.array([[0.0, 0.1, 0.2]]))
    guard.measure(np.array([[0.0, -0.1, 0.2]]))  # row1 gets -0.5: inside


# ------------------------------------------------------------------------------------------------
# Restores


def dnpu() -> DNPUDevice:
    return DNPUDevice(DNPUDevice.Settings.model_validate({"hidden": [8]}), seed=0)


def test_an_edited_checkpoint_cannot_put_a_value_past_a_limit() -> None:
    limits = SafetyLimits(max_abs_voltage=1.6)
    guard = SafetyGuard(dnpu(), limits)
    guard.set_controls(np.full(5, 0.2))
    guard.measure(np.array([[0.1, -0.1]]))
    state = json.loads(json.dumps(guard.state_dict()))
    edited = json.loads(json.dumps(state))
    edited["device"]["levels"][0] = 7.0  # electrode E1, an input: hard limit 1.6 V
    edited["last_inputs"][0] = 7.0  # consistent with the guard's own record, still refused
    target = dnpu()
    before = target.state_dict()
    fresh = SafetyGuard(target, limits)
    with pytest.raises(SafetyViolation, match="E1"):
        fresh.load_state_dict(edited)
    assert target.state_dict() == before, "the refused restore changed the device"
    fresh.load_state_dict(state)  # the unedited checkpoint restores
    assert levels(target).tolist() == state["device"]["levels"]


def test_analog_weight_codes_in_a_checkpoint_are_checked() -> None:
    def build() -> AnalogMLPDevice:
        return AnalogMLPDevice(AnalogMLPDevice.Settings.model_validate({"layers": [2, 2]}), seed=0)

    limits = SafetyLimits.model_validate(
        {"max_abs_voltage": 1.0, "channels": {"w0_1_1": {"min": -8.0, "max": 8.0}}}
    )
    guard = SafetyGuard(build(), limits)
    guard.set_controls(np.array([1.0, 2.0, 3.0, 4.0]))
    state = json.loads(json.dumps(guard.state_dict()))
    state["device"]["weights"][0][1][1] = 20  # code 20 on a weight limited to ±8
    state["last_controls"][3] = 20.0
    with pytest.raises(SafetyViolation, match="w0_1_1"):
        SafetyGuard(build(), limits).load_state_dict(state)


# ------------------------------------------------------------------------------------------------
# Limits and the escape hatch


def test_limits_cannot_be_loosened_once_the_guard_holds_them() -> None:
    limits = SafetyLimits.model_validate(
        {"max_abs_voltage": 1.0, "channels": {"ctrl0": {"max": 0.5}}}
    )
    guard = SafetyGuard(analytic(max_slew=math.inf), limits)
    with pytest.raises(ValueError, match="frozen"):
        guard.limits.max_abs_voltage = 5.0  # type: ignore[misc]
    guard.limits.channels.clear()  # a copy: changes nothing the guard enforces
    limits.channels.clear()  # the caller's object: neither
    with pytest.raises(SafetyViolation, match="ctrl0"):
        guard.set_controls(np.array([0.6, 0.0]))


def test_the_unguarded_device_is_named_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    device = analytic()
    guard = SafetyGuard(device, SafetyLimits(max_abs_voltage=1.0))
    assert not hasattr(guard, "device")
    with caplog.at_level(logging.INFO, logger="hil.safety"):
        assert guard.unguarded_device("calibration probe") is device
    assert "unguarded access to device" in caplog.text
    assert "calibration probe" in caplog.text


def test_a_stateful_device_that_cannot_check_a_restore_is_not_restored() -> None:
    class Opaque(AnalyticDevice):
        restored_levels = None  # type: ignore[assignment]

    guard = SafetyGuard(Opaque(seed=0), SafetyLimits(max_abs_voltage=1.0))
    with pytest.raises(CapabilityError, match="restored_levels"):
        guard.load_state_dict(guard.state_dict())


def test_stricter_limits_keep_the_tighter_value_of_each_key() -> None:
    recorded = SafetyLimits.model_validate(
        {"max_abs_voltage": 1.6, "channels": {"E0": {"min": -1.0, "max": 0.5}}}
    )
    current = SafetyLimits.model_validate(
        {
            "max_abs_voltage": 2.0,
            "channels": {"E0": {"min": -0.4, "max_slew": 50.0}, "E3": {"max": 0.2}},
            "max_pulses_per_device": 3,
        }
    )
    merged, changes = stricter_limits(recorded, current)
    assert merged.max_abs_voltage == 1.6
    e0 = merged.channels["E0"]
    assert (e0.min, e0.max, e0.max_slew) == (-0.4, 0.5, 50.0)
    assert merged.channels["E3"].max == 0.2
    assert merged.max_pulses_per_device == 3
    text = "\n".join(changes)
    assert "limits.max_abs_voltage: recorded 1.6, station file now 2.0; the recorded" in text
    assert "limits.channels.E0.min: recorded -1.0, station file now -0.4; the station" in text
    assert "limits.channels.E0.max: recorded 0.5, station file now None; the recorded" in text
    assert len(changes) == 6
    with pytest.raises(ConfigError, match="no common range"):
        stricter_limits(
            recorded,
            SafetyLimits.model_validate({"max_abs_voltage": 1, "channels": {"E0": {"min": 0.6}}}),
        )


def test_after_a_failed_write_nothing_is_driven_until_the_safe_state() -> None:
    class TimesOut(AnalyticDevice):
        """Applies a control step, then does not confirm it (once)."""

        fail = True

        def set_controls(self, values: np.ndarray) -> None:
            super().set_controls(values)
            if self.fail and values[0] > 0.1:
                self.fail = False
                raise InstrumentTimeout("no answer")

    device = TimesOut(
        AnalyticDevice.Settings.model_validate(
            {"n_controls": 2, "max_slew": 20.0, "timing": {"sample_rate": RATE, "ramp_time": 0.005}}
        ),
        seed=0,
    )
    guard = SafetyGuard(device, SafetyLimits(max_abs_voltage=1.0))
    with pytest.raises(InstrumentTimeout):
        guard.set_controls(np.array([0.3, 0.0]))  # 0.02 V stairs: the 6th (0.12 V) times out
    with pytest.raises(InstrumentError, match="unknown since set_controls failed"):
        guard.measure(np.array([[0.0, 0.0]]))
    with pytest.raises(InstrumentError, match="unknown"):
        guard.park()
    sent: list[float] = []
    original = AnalyticDevice.set_controls

    def recording(values: np.ndarray) -> None:
        sent.append(float(values[0]))
        original(device, values)

    device.set_controls = recording  # type: ignore[method-assign]
    guard.safe_state()
    # The step that was not confirmed is sent again, then the ramp goes down one stair at a time.
    assert sent[0] == pytest.approx(0.12)
    assert np.max(np.abs(np.diff([0.12, *sent]))) <= 0.02 + 1e-12
    assert sent[-1] == 0.0
    guard.measure(np.array([[0.0, 0.0]]))  # driving again after the safe state
