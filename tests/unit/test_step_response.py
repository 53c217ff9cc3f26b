"""The step fit recovers a simulator's amplifier bandwidth and its settling time."""

from __future__ import annotations

import math

import numpy as np
import pytest

from protocols.step_response import fit_step
from simulators.analytic import AnalyticDevice

FS = 10_000.0
BEFORE, AFTER = 2000, 4000


def step_trace(seed: int, cutoff: float) -> np.ndarray:
    settings = AnalyticDevice.Settings.model_validate(
        {
            "n_inputs": 1,
            "n_controls": 1,
            "cutoff": cutoff,
            "noise": {"white": 0.001},
            "timing": {"sample_rate": FS},
        }
    )
    device = AnalyticDevice(settings, seed=seed)
    wave = np.zeros((BEFORE + AFTER + 1, 1))
    wave[BEFORE : BEFORE + AFTER, 0] = 0.5
    trace = device.stream(wave, [device.spec.inputs[0].name])
    return np.asarray(trace[: BEFORE + AFTER, 0])


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_bandwidth_and_settling_of_a_first_order_output(seed: int) -> None:
    """Cutoff 50 Hz: bandwidth within 4 standard errors; settling to 1 % at ln(100)·τ within
    0.7 ms (three times the crossing-time jitter the 1 mV noise gives over 5-sample smoothing)."""
    fit = fit_step(step_trace(seed, 50.0), FS, BEFORE, 0.5, tolerance=0.01)
    assert fit.bandwidth == pytest.approx(50.0, abs=4 * fit.bandwidth_se)
    tau = 1 / (2 * math.pi * 50.0)
    assert fit.settling_time == pytest.approx(math.log(100) * tau, abs=7e-4)
    assert fit.residual_rms == pytest.approx(0.001, rel=0.1)  # what is left is the white noise


def test_a_response_that_never_settles_says_so() -> None:
    """Cutoff 0.5 Hz: τ = 0.32 s, longer than the 0.4 s record: no settling time."""
    fit = fit_step(step_trace(1, 0.5), FS, BEFORE, 0.5)
    assert math.isnan(fit.settling_time)


def test_bad_steps_are_refused() -> None:
    trace = step_trace(1, 50.0)
    with pytest.raises(ValueError, match="step_index"):
        fit_step(trace, FS, 0, 0.5)
    with pytest.raises(ValueError, match="step_size"):
        fit_step(trace, FS, BEFORE, 0.0)
    with pytest.raises(ValueError, match="non-finite"):
        fit_step(np.full(100, np.nan), FS, 10, 0.5)
