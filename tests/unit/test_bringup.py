"""Bring-up through the safety guard: IV sweeps, noise and step responses of a simulator."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest

from hil.core import ConfigError
from hil.safety import SafetyGuard, SafetyLimits
from protocols.bringup import CalibrationProcedure
from simulators.analytic import AnalyticDevice
from simulators.landscape import LandscapeDevice

FS = 2000.0


def guarded(seed: int = 1, cutoff: float | None = 40.0, **extra: object) -> SafetyGuard:
    settings = AnalyticDevice.Settings.model_validate(
        {
            "n_inputs": 1,
            "n_controls": 2,
            "cutoff": cutoff,
            "noise": {"white": 0.002},
            "timing": {"sample_rate": FS},
            **extra,
        }
    )
    return SafetyGuard(AnalyticDevice(settings, seed=seed), SafetyLimits(max_abs_voltage=1.0))


def procedure(device: SafetyGuard, **settings: object) -> CalibrationProcedure:
    return CalibrationProcedure(
        CalibrationProcedure.Settings.model_validate(settings), device=device
    )


def run(proc: CalibrationProcedure) -> list[Any]:
    while not proc.done:
        proc.step()
    return list(proc.finish()["calibration"])


def test_every_measurement_runs_once_per_electrode_and_measures_the_simulator() -> None:
    device = guarded()
    proc = procedure(
        device,
        what=["iv", "noise", "step"],
        noise={"seconds": 8.0, "mains": 0},
        step={"after": 0.3, "tolerance": 0.05},
    )
    assert proc.total_steps == 3 + 1 + 3  # iv and step per driven electrode, noise once
    results = run(proc)
    by_kind = {r["measurement"]: r for r in results}
    noise = by_kind["noise"]["noise"]["out"]
    assert noise["white"] == pytest.approx(2 * 0.002**2 / FS, abs=4 * noise["white_se"])
    steps = [r for r in results if r["measurement"] == "step"]
    for r in steps:
        response = r["response"]["out"]
        assert response["bandwidth"] == pytest.approx(40.0, abs=4 * response["bandwidth_se"])
        # Within 5 % of a first-order step after ln(20)·τ. The crossing time jitters by the
        # smoothed noise (2 mV / √5) over the slope there (5 % of the step per τ): 4 of those.
        tau = 1 / (2 * math.pi * 40)
        step = abs(response["gain"] * r["step_size"])
        jitter = (0.002 / math.sqrt(5)) * tau / (0.05 * step)
        assert response["settling_time"] == pytest.approx(
            math.log(20) * tau, abs=4 * jitter + 1 / FS
        )
    json.dumps(results)  # the journal's records are JSON


def test_iv_slope_at_zero_is_the_simulator_gradient() -> None:
    """Without an output filter the plateaus settle at once: the slope near 0 V is the exact
    derivative up to the curvature over ±0.05 V and the noise (10 % or 0.02)."""
    device = guarded(cutoff=None)
    proc = procedure(device, what=["iv"], iv={"points": 21, "fraction": 0.2})
    results = run(proc)
    oracle = device.unguarded_device("test oracle")
    assert isinstance(oracle, AnalyticDevice)
    for r in results:
        name = r["channel"]
        h = 1e-4
        controls = [c.name for c in oracle.spec.controls]
        theta, x = np.zeros(2), np.zeros((1, 1))
        if name in controls:
            theta_h = theta.copy()
            theta_h[controls.index(name)] = h
            true = (oracle.true_output(theta_h, x) - oracle.true_output(theta, x))[0, 0] / h
        else:
            true = (oracle.true_output(theta, x + h) - oracle.true_output(theta, x))[0, 0] / h
        assert r["slope_at_zero"][0] == pytest.approx(true, rel=0.1, abs=0.02)


def test_the_state_resumes_where_it_stopped() -> None:
    first = procedure(guarded(), what=["iv"], iv={"points": 5})
    first.step()
    state = json.loads(json.dumps(first.state_dict()))
    second = procedure(guarded(), what=["iv"], iv={"points": 5})
    second.load_state_dict(state)
    assert second.steps_done == 1
    record = second.step()
    assert record["channel"] == second.device.spec.channels[1].name


def test_streaming_measurements_on_a_device_that_does_not_stream_are_a_config_error() -> None:
    device = LandscapeDevice(LandscapeDevice.Settings.model_validate({"dim": 2}), seed=0)
    with pytest.raises(ConfigError, match="needs a streaming device"):
        procedure(device, what=["noise"])  # type: ignore[arg-type]


def test_offset_and_transfer_recover_the_output_chain() -> None:
    """Zero input reads (1+g)·f(0) + offset; ±0.1 V on the input reads (1+g)·∂f/∂x (to the
    curvature over ±0.1 V). Tolerances: 4 standard errors as measured, plus the curvature term."""
    gain_error, offset = 0.07, 0.25
    device = guarded(cutoff=None, gain_error=gain_error, offset=offset)
    results = run(procedure(device, what=["offset"], offset={"repeats": 40}))
    (record,) = results
    oracle = device.unguarded_device("test oracle")
    assert isinstance(oracle, AnalyticDevice)
    theta, x = np.zeros(2), np.zeros((1, 1))
    zero = (1 + gain_error) * oracle.true_output(theta, x)[0, 0] + offset
    measured = record["offset"]["out"]
    assert measured["mean"] == pytest.approx(zero, abs=4 * measured["se"])
    assert measured["sigma"] == pytest.approx(0.002 / math.sqrt(10), rel=0.35)  # 10-sample plateau
    level = record["levels"]["in0"][1]
    assert level == pytest.approx(
        0.1 * min(abs(c) for c in (device.spec.channel("in0").min, device.spec.channel("in0").max))
    )
    h = 1e-5
    slope = (oracle.true_output(theta, x + h) - oracle.true_output(theta, x - h))[0, 0] / (2 * h)
    transfer = record["transfer"]["in0"]["out"]
    third = oracle.true_output(theta, x + level) - oracle.true_output(theta, x - level)
    curvature = abs(third[0, 0] / (2 * level) - slope) * (1 + gain_error)
    assert transfer["gain"] == pytest.approx(
        (1 + gain_error) * slope, abs=4 * transfer["gain_se"] + curvature
    )


@pytest.mark.parametrize("seed", [11, 12])
def test_the_hge_plan_predicts_the_error_it_measures(seed: int) -> None:
    """The check's pooled ratio of measured to predicted spread is 1 within its own standard
    error (about 1/√(2·5·31) = 0.057 for 32 repeats of 5 controls): 3 of them, inside the
    issue's 25 %."""
    device = SafetyGuard(
        AnalyticDevice(
            AnalyticDevice.Settings.model_validate(
                {"n_controls": 5, "noise": {"white": 0.001}, "timing": {"sample_rate": 1000.0}}
            ),
            seed=seed,
        ),
        SafetyLimits(max_abs_voltage=1.0),
    )
    proc = procedure(device, what=["plan", "check"], plan={"target_snr": 300, "repeats": 32})
    plan, check = run(proc)
    assert plan["measurement"] == "plan"
    assert check["check"]["repeats"] == 32
    snr = np.array(plan["predicted_snr"])
    assert np.all(snr[np.array(plan["resolved"])] >= 300 * (1 - 1e-9)) or plan["window"] == 20.0
    ratio = check["check"]["ratio"]
    assert ratio == pytest.approx(1.0, abs=3 * check["check"]["ratio_se"])
    assert abs(ratio - 1) <= 0.25


def test_check_needs_a_plan_before_it() -> None:
    with pytest.raises(ValueError, match="put 'plan' before it"):
        CalibrationProcedure.Settings.model_validate({"what": ["check"]})
