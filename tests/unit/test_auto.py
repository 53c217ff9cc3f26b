"""`auto` picks the estimator the measured device makes cheapest and reaches the target cosine:
plateau differences where plateaus are fast, homodyne where every level change must settle for
100 ms; it sets a device's plateau averaging where it can (issue 11)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hil.core import Averaging, CapabilityError
from hil.safety import SafetyGuard, SafetyLimits
from protocols.auto import AutoEstimator
from protocols.auto_models import CANDIDATES
from protocols.base import Objective
from protocols.diagnostics import oracle_gradient
from protocols.tasks import MinimizeOutputTask
from simulators.analytic import AnalyticDevice
from simulators.landscape import LandscapeDevice

THETA = np.array([0.1, -0.2, 0.3, 0.0, 0.2])
HOMODYNE = float(CANDIDATES.index("homodyne"))


def analytic(
    settle: float, white: float = 0.002, seed: int = 1
) -> tuple[Objective, AnalyticDevice]:
    device = AnalyticDevice(
        AnalyticDevice.Settings.model_validate(
            {
                "n_inputs": 0,
                "n_controls": 5,
                "timing": {"sample_rate": 1000.0, "settle_time": settle, "samples_per_plateau": 10},
                "noise": {"white": white, "flicker_psd": 1e-5, "flicker_f_ref": 1.0},
            }
        ),
        seed=seed,
    )
    guard = SafetyGuard(device, SafetyLimits(max_abs_voltage=1.0))
    return Objective(guard, MinimizeOutputTask(MinimizeOutputTask.Settings())), device


def cosines(auto: AutoEstimator, objective: Objective, device: AnalyticDevice) -> list[float]:
    true = oracle_gradient(objective, THETA, device).gradient
    out = []
    for _ in range(10):
        g = auto.estimate(objective, THETA).gradient
        out.append(float(g @ true / np.linalg.norm(g) / np.linalg.norm(true)))
    return out


@pytest.mark.parametrize(("settle", "streams"), [(0.001, False), (0.1, True)])
def test_auto_picks_by_the_cost_of_a_level_change_and_reaches_the_target(
    settle: float, streams: bool
) -> None:
    """Fast plateaus: 2d differences cost ~0.01 s, a stream at least its window; 100 ms of
    settling per level makes the differences cost 1 s, a stream pays it once. Ten estimates at
    the target 0.99: their median cosine is above 0.98 (the budget is met on average)."""
    objective, device = analytic(settle)
    auto = AutoEstimator()
    first = auto.estimate(objective, THETA)
    assert (first.extras["auto_candidate"] == HOMODYNE) is streams
    found = cosines(auto, objective, device)
    assert float(np.median(found)) > 0.98
    later = auto.estimate(objective, THETA)
    assert later.device_seconds == pytest.approx(later.extras["auto_predicted_seconds"], rel=0.05)
    predictions = {p["candidate"] for p in auto.measured["predictions"]}
    assert predictions == set(CANDIDATES)


def test_auto_sets_the_plateau_averaging_it_chose() -> None:
    """White noise 50× the default: the cheapest plateau settings average more than one sample;
    the device (through the guard) is left at the count auto predicted with."""
    objective, device = analytic(0.001, white=0.1)
    auto = AutoEstimator(AutoEstimator.Settings(candidates=["central-difference"]))
    est = auto.estimate(objective, THETA)
    samples = int(est.extras["auto_samples"])
    assert samples > 1
    assert device.plateau_samples == samples
    assert objective.device.spec.plateau_samples == samples
    plateaus = auto.measured["plateaus"]
    assert isinstance(plateaus, dict)
    assert plateaus["probes"] == [1, 16]
    low, high = plateaus["variances"]
    assert low > 4 * high  # white noise: 16 samples average it down about 16×


def test_the_choice_is_kept_in_the_checkpoint() -> None:
    objective, _ = analytic(0.1)
    auto = AutoEstimator()
    auto.estimate(objective, THETA)
    state = json.loads(json.dumps(auto.state_dict()))
    again = AutoEstimator()
    again.load_state_dict(state)
    before = objective.evaluations
    est = again.estimate(objective, THETA)
    assert est.extras["auto_candidate"] == HOMODYNE
    assert objective.evaluations - before == est.evaluations  # no new measurement
    assert est.evaluations <= 2  # one stream and the loss


def test_a_device_that_does_not_stream_or_average_gets_plateau_differences() -> None:
    device = LandscapeDevice(LandscapeDevice.Settings.model_validate({"dim": 3}), seed=0)
    assert not isinstance(device, Averaging)
    objective = Objective(device, MinimizeOutputTask(MinimizeOutputTask.Settings()))
    est = AutoEstimator().estimate(objective, np.zeros(3))
    assert est.extras["auto_candidate"] != HOMODYNE
    assert est.extras["auto_samples"] == 0.0  # nothing set


def test_the_guard_offers_averaging_only_where_the_device_has_it() -> None:
    _, device = analytic(0.001)
    guard = SafetyGuard(device, SafetyLimits(max_abs_voltage=1.0))
    assert isinstance(guard, Averaging)
    with pytest.raises(ValueError, match="plateau samples 0"):
        guard.set_plateau_samples(0)
    assert guard.plateau_samples == 10  # unchanged by the refused request
    landscape = LandscapeDevice(LandscapeDevice.Settings.model_validate({"dim": 3}), seed=0)
    plain = SafetyGuard(landscape, SafetyLimits(max_abs_voltage=1.0))
    assert not isinstance(plain, Averaging)
    with pytest.raises(CapabilityError, match="Averaging"):
        plain.set_plateau_samples(4)  # type: ignore[attr-defined]
