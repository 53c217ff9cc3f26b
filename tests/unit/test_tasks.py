"""RegressionTask: both data forms, path resolution, shapes, loss and metrics."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from hil.core import ConfigError
from protocols.base import Task
from protocols.tasks import RegressionTask

INPUTS = [[0.0, 0.1], [0.2, -0.3], [0.5, 0.5], [-1.0, 1.0]]
TARGETS = [1.0, 2.0, 3.0, 4.0]


def inline_task() -> RegressionTask:
    return RegressionTask(RegressionTask.Settings(inputs=INPUTS, targets=TARGETS))


def test_inline_data_and_the_task_protocol() -> None:
    task = inline_task()
    assert isinstance(task, Task)
    assert task.inputs.dtype == np.float64
    np.testing.assert_array_equal(task.inputs, INPUTS)
    assert task.targets.shape == (4, 1)


def test_targets_given_as_rows_keep_several_outputs() -> None:
    rows = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]]
    task = RegressionTask(RegressionTask.Settings(inputs=INPUTS, targets=rows))
    assert task.targets.shape == (4, 2)


def test_loss_is_mse_and_metrics_agree() -> None:
    task = inline_task()
    outputs = np.array([[1.5], [2.0], [2.0], [4.0]])
    mse = (0.25 + 0 + 1 + 0) / 4
    assert task.loss(outputs) == pytest.approx(mse)
    metrics = task.metrics(outputs)
    assert set(metrics) == {"mse", "rmse", "r2"}
    assert metrics["mse"] == pytest.approx(mse)
    assert metrics["rmse"] == pytest.approx(math.sqrt(mse))
    assert metrics["r2"] == pytest.approx(1 - 1.25 / 5.0)  # SS_tot of 1..4 is 5
    assert task.metrics(task.targets)["r2"] == 1.0


def test_r2_for_constant_targets_is_finite() -> None:
    task = RegressionTask.from_arrays(np.zeros((3, 1)), np.ones(3))
    assert task.metrics(np.ones((3, 1)))["r2"] == 1.0
    assert task.metrics(np.zeros((3, 1)))["r2"] == 0.0


def test_output_shape_mismatch_is_explained() -> None:
    task = inline_task()
    with pytest.raises(ValueError, match=r"outputs have shape \(4,\).*\(4, 1\)"):
        task.loss(np.zeros(4))
    with pytest.raises(ValueError, match="n_cases × n_outputs"):
        task.metrics(np.zeros((3, 1)))


def test_inputs_are_read_only() -> None:
    task = inline_task()
    with pytest.raises(ValueError, match="read-only"):
        task.inputs[0, 0] = 9.0


def test_npz_data_relative_to_the_base_dir(tmp_path: Path) -> None:
    np.savez(tmp_path / "set.npz", inputs=np.array(INPUTS), targets=np.array(TARGETS))
    settings = RegressionTask.Settings.model_validate(
        {"data": "set.npz"}, context={"base_dir": tmp_path}
    )
    assert settings.data == tmp_path / "set.npz"
    task = RegressionTask(settings)
    np.testing.assert_array_equal(task.inputs, INPUTS)
    np.testing.assert_array_equal(task.targets[:, 0], TARGETS)


def test_relative_path_without_context_stays_relative() -> None:
    settings = RegressionTask.Settings.model_validate({"data": "sub/set.npz"})
    assert settings.data == Path("sub/set.npz")


def test_npz_problems_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        RegressionTask(RegressionTask.Settings(data=tmp_path / "missing.npz"))
    np.savez(tmp_path / "partial.npz", inputs=np.array(INPUTS))
    with pytest.raises(ConfigError, match=r"no array\(s\) \['targets'\]"):
        RegressionTask(RegressionTask.Settings(data=tmp_path / "partial.npz"))
    np.savez(tmp_path / "short.npz", inputs=np.array(INPUTS), targets=np.array(TARGETS[:3]))
    with pytest.raises(ConfigError, match="4 input rows but 3 targets"):
        RegressionTask(RegressionTask.Settings(data=tmp_path / "short.npz"))


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({}, "`inputs` is missing"),
        ({"inputs": INPUTS}, "`targets` is missing"),
        ({"data": "x.npz", "inputs": INPUTS, "targets": TARGETS}, "both `data` and inline"),
        ({"inputs": INPUTS, "targets": TARGETS[:3]}, "4 input rows but 3 targets"),
        ({"inputs": [[0.0, 1.0], [0.0]], "targets": [1.0, 2.0]}, "different lengths"),
        ({"inputs": [], "targets": []}, "non-empty"),
        ({"inputs": [[math.nan]], "targets": [1.0]}, "NaN"),
        ({"inputs": INPUTS, "targets": TARGETS, "loss": "mae"}, "Extra inputs"),
    ],
)
def test_settings_say_which_keys_to_give(given: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message) as info:
        RegressionTask.Settings.model_validate(given)
    if "missing" in message:
        assert "`data`" in str(info.value)


def test_default_settings_are_refused_with_guidance() -> None:
    with pytest.raises(ValidationError, match="give either `inputs`"):
        RegressionTask()
