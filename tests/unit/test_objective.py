"""Objective: a task's data columns reach the right device channels, scaled as configured."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from hil.core import ConfigError
from protocols.base import Objective
from protocols.tasks import RegressionTask
from simulators.analytic import AnalyticDevice


class Recorder(AnalyticDevice):
    """The analytic device, remembering the last inputs it measured."""

    last_inputs: np.ndarray

    def measure(self, inputs: np.ndarray) -> np.ndarray:
        self.last_inputs = np.array(inputs)
        return super().measure(inputs)


def device(**settings: Any) -> Recorder:
    return Recorder(AnalyticDevice.Settings.model_validate({"n_inputs": 4, **settings}), seed=0)


def task(inputs: list[list[float]], **mapping: Any) -> RegressionTask:
    targets = [0.0] * len(inputs)
    return RegressionTask(RegressionTask.Settings(inputs=inputs, targets=targets, **mapping))


def test_columns_drive_the_first_inputs_by_default_and_the_rest_sit_at_zero() -> None:
    dev = device()
    Objective(dev, task([[0.1, 0.2], [0.3, 0.4]]))(np.zeros(5))
    np.testing.assert_array_equal(dev.last_inputs, [[0.1, 0.2, 0, 0], [0.3, 0.4, 0, 0]])


def test_named_channels_and_range_scaling() -> None:
    dev = device(input_min=-1.2, input_max=0.6)
    t = task([[-1.0, 1.0], [0.0, 0.5]], input_channels=["in3", "in1"], input_scaling="range")
    objective = Objective(dev, t)
    objective(np.zeros(5))
    expected = np.array([[0, 0.6, 0, -1.2], [0, 0.15, 0, -0.3]])
    np.testing.assert_allclose(dev.last_inputs, expected)
    assert objective.outputs(np.zeros(5)).shape == (2, 1)


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        ({"input_channels": ["in0", "in9"]}, "name distinct channels"),
        ({"input_channels": ["in0"]}, "one channel per column"),
        ({"output_channels": ["nope"]}, "its outputs are"),
        ({"input_scaling": "range"}, r"must lie in \[-1, 1\]"),
    ],
)
def test_bad_mappings_are_config_errors(mapping: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Objective(device(), task([[0.1, 2.0]], **mapping))


def test_held_inputs_sit_at_their_values_for_every_case() -> None:
    dev = device(input_min=-1.2, input_max=0.6)
    Objective(dev, task([[0.1], [0.2]], held_inputs={"in2": 0.5, "in3": -1.0}))(np.zeros(5))
    np.testing.assert_array_equal(dev.last_inputs, [[0.1, 0, 0.5, -1.0], [0.2, 0, 0.5, -1.0]])


@pytest.mark.parametrize(
    ("held", "message"),
    [
        ({"in0": 0.1}, "a data column already drives input 'in0'"),
        ({"in7": 0.1}, "has no input 'in7'"),
        ({"in2": 0.9}, r"0.9 is outside the input's allowed range \[-1.2, 0.6\]"),
        ({"in2": float("nan")}, "outside the input's allowed range"),
    ],
)
def test_bad_held_inputs_are_config_errors(held: dict[str, float], message: str) -> None:
    dev = device(input_min=-1.2, input_max=0.6)
    with pytest.raises(ConfigError, match=message) as caught:
        Objective(dev, task([[0.1]], held_inputs=held))
    assert caught.value.key == ("task", "held_inputs", next(iter(held)))


def test_more_columns_than_device_inputs_is_an_error() -> None:
    with pytest.raises(ConfigError, match="has only 4 inputs"):
        Objective(device(), task([[0.0] * 5]))


def test_normalized_parameters_span_the_control_ranges() -> None:
    dev = device(control_min=-0.7, control_max=0.3)
    objective = Objective(dev, task([[0.0, 0.0]]), normalized=True)
    np.testing.assert_array_equal(objective.lower, -np.ones(5))
    np.testing.assert_array_equal(objective.upper, np.ones(5))
    theta = np.array([-1.0, -0.5, 0.0, 0.5, 1.0])
    physical = objective.physical(theta)
    np.testing.assert_allclose(physical, [-0.7, -0.45, -0.2, 0.05, 0.3])
    assert physical.max() <= 0.3  # exactly on the bound, not a rounding step beyond it
    np.testing.assert_allclose(objective.parameters(physical), theta)
    objective(theta)  # the device accepts the end points
    with pytest.raises(ValueError, match=r"must lie in \[-1, 1\]"):
        objective.physical(np.full(5, 1.5))


def test_normalized_parameters_need_finite_ranges() -> None:
    dev = device(control_min=-np.inf)
    with pytest.raises(ConfigError, match="need finite control ranges"):
        Objective(dev, task([[0.0, 0.0]]), normalized=True)
