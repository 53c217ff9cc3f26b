"""Accounting audit: every registered estimator reports the evaluations and device seconds it
really spent — read from the objective's counter and the device clock, nothing hidden."""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import pytest

from hil.registry import BUILTIN, Kind, resolve
from protocols.base import GradientEstimator, Objective
from protocols.pulsed import WeightGradientEstimator
from protocols.tasks import RegressionTask
from simulators.analog_mlp import AnalogMLPDevice
from simulators.analytic import AnalyticDevice
from simulators.crossbar import CrossbarDevice, CrossbarSettings
from simulators.virtual.dither import InProcessLockin

PLATEAU_ONLY = {
    "central-difference",
    "forward-difference",
    "spsa",
    "spsa2",
    "gaussian-smoothing",
    "antithetic-es",
    "weight-perturbation",
}


class CountingDevice:
    """Wraps a device and counts every plateau that reaches it (the ground truth)."""

    def __init__(self, device: Any) -> None:
        self._device = device
        self.plateaus = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._device, name)

    def measure(self, inputs: Any) -> Any:
        self.plateaus += len(inputs)
        return self._device.measure(inputs)


def _objective(name: str) -> tuple[Objective, Any]:
    if name == "homodyne-lockin":  # needs a Demodulating device: dither + lock-in in process
        lockin = InProcessLockin(AnalyticDevice(AnalyticDevice.Settings(), seed=0))
        task = RegressionTask.from_arrays([[0.2, -0.1], [0.4, 0.3], [-0.5, 0.1]], [0.3, -0.1, 0.2])
        return Objective(lockin, task), lockin
    if name == "node-perturbation":
        device: Any = AnalogMLPDevice(AnalogMLPDevice.Settings(layers=[3, 4, 2]), seed=0)
        task = RegressionTask.from_arrays([[3, 10, 20], [30, 1, 5]], [[5, -5], [0, 10]])
        return Objective(device, task), device
    if name in ("delta-rule", "intrinsic-node-perturbation"):
        device = CrossbarDevice(CrossbarSettings(rows=4, cols=2), seed=0)
        task = RegressionTask.from_arrays([[0.5, -0.5, 0.2, 0.1]], [[0.1, -0.2]])
        return Objective(device, task), device
    device = CountingDevice(AnalyticDevice(AnalyticDevice.Settings(), seed=0))
    task = RegressionTask.from_arrays([[0.2, -0.1], [0.4, 0.3], [-0.5, 0.1]], [0.3, -0.1, 0.2])
    return Objective(device, task), device


@pytest.mark.parametrize("name", sorted(BUILTIN[Kind.ESTIMATOR]))
def test_every_estimator_reports_what_it_spent(name: str) -> None:
    cls: Any = resolve(Kind.ESTIMATOR, name)
    kwargs: dict[str, Any] = {"seed": 1} if "seed" in inspect.signature(cls).parameters else {}
    estimator = cls(cls.Settings(), **kwargs)
    objective, device = _objective(name)
    theta = np.full(objective.dim, 0.1)
    for _ in range(2):
        e0, t0 = objective.evaluations, objective.device_time()
        if isinstance(estimator, GradientEstimator):
            estimate: Any = estimator.estimate(objective, theta)
        else:
            assert isinstance(estimator, WeightGradientEstimator)
            estimate = estimator.weight_gradient(objective)
        assert estimate.evaluations == objective.evaluations - e0 > 0
        assert estimate.device_seconds == pytest.approx(objective.device_time() - t0, abs=1e-12)
        assert estimate.device_seconds > 0
    if name in PLATEAU_ONLY:
        # every evaluation is one plateau per case, each charged plateau_time: nothing unseen
        n_cases = len(objective.device_inputs)
        assert device.plateaus == objective.evaluations * n_cases
        assert objective.device_time() == pytest.approx(
            device.plateaus * device.spec.plateau_time(), rel=1e-9
        )
