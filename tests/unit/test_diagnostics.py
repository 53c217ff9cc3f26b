"""Gradient-quality diagnostics: exact references, averaged references, and the figures."""

from __future__ import annotations

import math

import numpy as np
import pytest

from protocols.base import GradientEstimate, Objective
from protocols.diagnostics import Reference, assess, averaged_gradient, oracle_gradient, oracle_of
from protocols.estimators import CentralDifference
from protocols.tasks import MinimizeOutputTask, RegressionTask
from simulators.analytic import AnalyticDevice
from simulators.landscape import LandscapeDevice
from simulators.sampled import Noise


def _estimate(g: list[float]) -> GradientEstimate:
    return GradientEstimate(np.array(g), 0.0, evaluations=3, device_seconds=0.5)


def test_oracle_is_the_landscape_gradient() -> None:
    device = LandscapeDevice(LandscapeDevice.Settings(dim=4, noise=0.1), seed=0)
    objective = Objective(device, MinimizeOutputTask())
    theta = np.array([0.5, -1.0, 2.0, 0.0])
    oracle = oracle_of(objective)
    assert oracle is not None
    ref = oracle_gradient(objective, theta, oracle)
    np.testing.assert_allclose(ref.gradient, device.true_gradient(theta), rtol=1e-12)
    assert ref.kind == "oracle"
    assert objective.evaluations == 0  # the oracle costs no device time


def test_oracle_follows_normalized_parameters() -> None:
    """∂L/∂θ in [-1, 1] parameters is ∂L/∂V times half the span of each control."""
    settings = AnalyticDevice.Settings(control_min=-2.0, control_max=2.0)
    task = RegressionTask.from_arrays([[0.1, 0.2], [-0.3, 0.4]], [0.5, -0.2])
    physical = Objective(AnalyticDevice(settings, seed=0), task)
    normalized = Objective(AnalyticDevice(settings, seed=0), task, normalized=True)
    volts = np.array([0.2, -0.4, 0.0, 1.0, -1.5])
    g_v = oracle_gradient(physical, volts, oracle_of(physical))  # type: ignore[arg-type]
    theta = normalized.parameters(volts)
    g_n = oracle_gradient(normalized, theta, oracle_of(normalized))  # type: ignore[arg-type]
    np.testing.assert_allclose(g_n.gradient, 2.0 * g_v.gradient, rtol=1e-12)


def test_assess_figures_on_known_estimates() -> None:
    ref = Reference(gradient=np.array([-1.0, -1.0, -1.0]), stderr=None, kind="oracle")
    g = ref.gradient  # −curvatures: [-1, -1, -1]
    q = assess([_estimate(list(g)), _estimate([-1.0, -1.0, 1.0]), _estimate([1.0, 1.0, 1.0])], ref)
    np.testing.assert_allclose(q.cosine, [1.0, 1.0 / 3.0, -1.0])
    np.testing.assert_allclose(q.sign_agreement, [1.0, 2.0 / 3.0, 0.0])
    np.testing.assert_allclose(q.relative_error[0], 0.0, atol=1e-15)
    np.testing.assert_allclose(q.relative_error[2], 2.0)
    assert q.evaluations == 3
    assert q.device_seconds == 0.5
    summary = q.summary()
    assert summary["repeats"] == 3
    assert summary["reference"] == "oracle"


def test_averaged_reference_agrees_with_the_oracle_within_its_standard_error() -> None:
    """The hardware reference (mean of repeated central differences) is unbiased up to O(h²)."""
    settings = AnalyticDevice.Settings(noise=Noise(white=0.02))
    device = AnalyticDevice(settings, seed=3)
    task = RegressionTask.from_arrays([[0.2, -0.1], [0.4, 0.3], [-0.5, 0.1]], [0.3, -0.1, 0.2])
    objective = Objective(device, task)
    theta = np.array([0.1, -0.2, 0.3, 0.0, -0.1])
    exact = oracle_gradient(objective, theta, device)
    avg = averaged_gradient(
        objective, theta, CentralDifference(CentralDifference.Settings(h=0.05)), 40
    )
    assert avg.stderr is not None
    assert avg.kind == "average"
    assert avg.evaluations == 40 * (2 * 5 + 1) == objective.evaluations
    # h = 0.05 makes the central-difference bias O(h²·f''') ≪ the noise; allow 4 SE per coordinate
    z = np.abs(avg.gradient - exact.gradient) / avg.stderr
    assert np.all(z < 4.0), z
    assert np.all(avg.stderr > 0)


def test_averaged_reference_needs_repeats() -> None:
    device = LandscapeDevice(LandscapeDevice.Settings(dim=2))
    with pytest.raises(ValueError, match="at least 2"):
        averaged_gradient(
            Objective(device, MinimizeOutputTask()), np.zeros(2), CentralDifference(), 1
        )


def test_oracle_refuses_several_outputs() -> None:
    device = LandscapeDevice(LandscapeDevice.Settings(dim=2))
    objective = Objective(device, MinimizeOutputTask())
    objective.output_columns = [0, 0]
    with pytest.raises(ValueError, match="single output"):
        oracle_gradient(objective, np.zeros(2), device)
    assert math.isfinite(device.true_value(np.zeros(2)))
