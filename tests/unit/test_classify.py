"""Gate and classification tasks: the pairwise soft-minimum loss, judging, data and settings."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from hil.core import ConfigError, FloatArray
from hil.registry import Kind, resolve
from protocols.base import JudgedTask
from protocols.classify import GATES, ClassificationTask, GateTask, fit_threshold
from protocols.datasets import Generate, generate, radii

RING_DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "ring_gap0.40.npz"


def gate(name: str = "XOR", **settings: object) -> GateTask:
    return GateTask(GateTask.Settings.model_validate({"gate": name, **settings}))


def column(*values: float) -> FloatArray:
    return np.array(values, dtype=float)[:, np.newaxis]


def random_task(seed: int = 1, n: int = 40, **settings: object) -> ClassificationTask:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    settings = {"validation": 0.0, "scale": 0.3, **settings}
    return ClassificationTask.from_arrays(rng.uniform(-1, 1, (n, 2)), labels, **settings)


def test_both_tasks_are_registered_judged_tasks() -> None:
    assert resolve(Kind.TASK, "gate") is GateTask
    assert resolve(Kind.TASK, "classification") is ClassificationTask
    tasks: list[JudgedTask] = [gate(), random_task()]
    for task in tasks:
        assert isinstance(task, JudgedTask)
        assert task.n_outputs == 1
        assert task.mapping.input_scaling == "range"


def test_output_gradient_matches_central_differences() -> None:
    task = random_task()
    y = np.random.default_rng(2).normal(0, 0.5, (40, 1))
    h = 1e-6
    numeric = np.zeros_like(y)
    for i in range(y.shape[0]):
        step = np.zeros_like(y)
        step[i] = h
        numeric[i] = (task.loss(y + step) - task.loss(y - step)) / (2 * h)
    gradient = task.output_gradient(y)
    assert gradient.shape == (40, 1)
    np.testing.assert_allclose(gradient, numeric, rtol=0, atol=1e-8)
    # the soft minimum weights class 1 by −1 in all and class 0 by +1: offset-invariant
    assert gradient[task.labels == 1].sum() == pytest.approx(-1.0)
    assert gradient[task.labels == 0].sum() == pytest.approx(1.0)


def test_factorised_loss_equals_the_pairwise_formula() -> None:
    task = random_task(seed=3, n=31)
    s = 0.3
    y = np.random.default_rng(4).normal(0, 2.0, (31, 1))
    high, low = y[task.labels == 1, 0], y[task.labels == 0, 0]
    pairwise = s * np.log(np.mean(np.exp(-(high[:, None] - low[None, :]) / s)))
    assert task.loss(y) == pytest.approx(pairwise, rel=1e-12)
    assert task.loss(y + 5.0) == pytest.approx(task.loss(y), rel=1e-12)


def test_loss_keeps_falling_as_the_margin_grows() -> None:
    task = gate("AND", scale=0.1)
    truth = np.array(GATES["AND"], dtype=float)[:, None]
    spread = column(0.0, 0.02, -0.01, 0.0)
    margins = np.linspace(0.0, 50.0, 101)
    losses = np.array([task.loss(m * truth + spread) for m in margins])
    assert np.all(np.diff(losses) < 0)
    # far beyond the scale the slope stays −1 per output unit: no saturation for Adam
    slope = np.diff(losses[-10:]) / np.diff(margins[-10:])
    np.testing.assert_allclose(slope, -1.0, rtol=1e-6)
    assert np.abs(task.output_gradient(50.0 * truth + spread)).sum() == pytest.approx(2.0)


def test_loss_is_finite_for_outputs_far_beyond_the_scale() -> None:
    task = gate("OR", scale=1e-3)
    loss = task.loss(column(-5.0, 5.0, 5.0, 5.0))
    assert np.isfinite(loss)
    assert loss == pytest.approx(-10.0, rel=1e-3)


@pytest.mark.parametrize("name", list(GATES))
def test_truth_tables_of_the_six_gates(name: str) -> None:
    task = gate(name.lower())
    assert task.settings.gate == name
    np.testing.assert_array_equal(task.inputs, [[-0.6, -0.6], [-0.6, 0.6], [0.6, -0.6], [0.6, 0.6]])
    operators: dict[str, Callable[[bool, bool], bool]] = {
        "AND": lambda a, b: a and b,
        "OR": lambda a, b: a or b,
        "NAND": lambda a, b: not (a and b),
        "NOR": lambda a, b: not (a or b),
        "XOR": lambda a, b: a != b,
        "XNOR": lambda a, b: a == b,
    }
    table = [int(operators[name](a, b)) for a, b in itertools.product((False, True), repeat=2)]
    np.testing.assert_array_equal(task.labels, table)
    verdict = task.judge(task.labels[:, None].astype(float), noise=0.1)
    assert verdict.reached
    assert verdict.metrics["accuracy"] == 1.0


def test_gate_levels_are_settings() -> None:
    task = gate("AND", low=-0.2, high=0.5)
    np.testing.assert_array_equal(task.inputs, [[-0.2, -0.2], [-0.2, 0.5], [0.5, -0.2], [0.5, 0.5]])


def test_gate_is_judged_by_the_margin_in_noise_units() -> None:
    task = gate("XOR")
    outputs = column(0.0, 3.0, 3.5, -0.5)  # separation 3.0: min(3.0, 3.5) − max(0.0, −0.5)
    at_margin = task.judge(outputs, noise=1.0)
    assert at_margin.reached
    assert at_margin.score == pytest.approx(3.0)
    assert at_margin.threshold == pytest.approx(1.5)
    assert at_margin.metrics["separation"] == pytest.approx(3.0)
    assert at_margin.detail == "XOR realised: separation 3.00σ ≥ 3σ"
    assert "loss" not in at_margin.metrics  # no scale set yet
    below = task.judge(outputs, noise=1.01)
    assert not below.reached
    assert below.score == pytest.approx(3.0 / 1.01)
    assert below.detail == "XOR not realised: separation 2.97σ < 3σ (accuracy 100 %)"
    overlapping = task.judge(column(0.0, 1.0, 0.2, 0.3), noise=0.1)
    assert not overlapping.reached
    assert overlapping.score == pytest.approx(-1.0)
    assert overlapping.metrics["accuracy"] == 0.75
    assert "(accuracy 75 %)" in overlapping.detail
    assert gate("XOR", margin=0.0).judge(outputs, noise=1.01).reached


def test_judge_reports_the_loss_once_the_scale_is_set() -> None:
    task = gate("NOR")
    task.use_noise(0.05)
    assert task.scale == pytest.approx(0.1)
    verdict = task.judge(column(1.0, 0.0, 0.0, 0.0), noise=0.05)
    assert verdict.metrics["loss"] == pytest.approx(task.loss(column(1.0, 0.0, 0.0, 0.0)))
    assert verdict.metrics["separation_sigma"] == pytest.approx(20.0)


def test_fitted_threshold_for_separable_outputs_is_the_midpoint() -> None:
    labels = np.array([0, 1, 0, 1, 1])
    outputs = np.array([0.1, 0.9, -0.3, 0.5, 2.0])
    assert fit_threshold(outputs, labels) == pytest.approx((0.5 + 0.1) / 2)


def test_fitted_threshold_maximises_accuracy_and_ties_take_the_widest_gap() -> None:
    labels = np.array([0, 0, 1, 0, 1, 1])
    outputs = np.array([0.0, 1.0, 2.0, 3.0, 4.0, 5.0])
    # best accuracy 5/6 between 1 and 2 or between 3 and 4 (equal gaps: the lower)
    assert fit_threshold(outputs, labels) == pytest.approx(1.5)
    outputs = np.array([0.0, 1.0, 1.5, 3.0, 4.0, 5.0])  # the gap 1.5 … 3 is wider
    assert fit_threshold(outputs, labels) == pytest.approx(3.5)
    # a tie between "all class 1" and a real split goes to the split
    assert fit_threshold(np.array([0.0, 1.0, 2.0]), np.array([1, 0, 1])) == pytest.approx(1.5)


def test_fitted_threshold_may_put_every_case_on_one_side() -> None:
    labels = np.array([1, 1, 0])
    outputs = np.array([0.0, 0.2, 5.0])  # class 0 highest: calling all class 1 gives 2/3
    threshold = fit_threshold(outputs, labels)
    assert threshold < 0.0
    assert threshold == pytest.approx(-2.4)  # half the widest gap below the lowest output
    assert fit_threshold(np.zeros(3), labels) == pytest.approx(-1.0)  # all equal: ±1


def test_classification_judge_fits_or_takes_the_threshold() -> None:
    task = ClassificationTask.from_arrays(
        np.zeros((8, 1)), [0, 0, 0, 0, 1, 1, 1, 1], validation=0.5, accuracy=0.9
    )
    held = task.validation
    assert held is not None
    assert held.validation is None
    np.testing.assert_array_equal(held.labels, [0, 0, 1, 1])  # cases keep their order
    np.testing.assert_array_equal(task.labels, [0, 0, 1, 1])
    outputs = column(-1.0, -0.5, 0.4, 0.8)
    fitted = held.judge(outputs, noise=0.1)
    assert fitted.reached
    assert fitted.score == 1.0
    assert fitted.threshold == pytest.approx(-0.05)
    given = held.judge(outputs, noise=0.1, threshold=0.5)
    assert given.threshold == 0.5
    assert given.score == 0.75
    assert not given.reached
    assert given.detail == "validation accuracy 0.75 (3/4) < 0.9"
    assert task.judge(column(0, 0, 1, 1), 0.1).detail == "training accuracy 1 (4/4) ≥ 0.9"


def test_metrics_report_accuracy_separation_and_the_loss_when_scaled() -> None:
    task = ClassificationTask.from_arrays(np.zeros((4, 1)), [0, 1, 0, 1], validation=0.0)
    outputs = column(0.0, 1.0, 1.5, 2.0)
    metrics = task.metrics(outputs)
    assert metrics == {"accuracy": 0.75, "separation": pytest.approx(-0.5)}
    task.use_noise(0.25)
    assert task.scale == pytest.approx(0.5)
    assert task.metrics(outputs)["loss"] == pytest.approx(task.loss(outputs))


def test_unset_scale_is_explained() -> None:
    task = gate("AND")
    assert task.scale is None
    for call in (task.loss, task.output_gradient):
        with pytest.raises(ValueError, match="procedure sets it from the measured output noise"):
            call(column(0, 0, 0, 1))


def test_use_noise_sets_or_keeps_the_scale_and_refuses_bad_noise() -> None:
    task = gate("AND", scale_noise=3.0)
    task.use_noise(0.5)
    assert task.scale == pytest.approx(1.5)
    fixed = gate("AND", scale=0.2)
    fixed.use_noise(5.0)
    assert fixed.scale == 0.2
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="positive finite"):
            task.use_noise(bad)
        with pytest.raises(ValueError, match="positive finite"):
            task.judge(column(0, 0, 0, 1), noise=bad)


def test_validation_task_shares_the_scale() -> None:
    task = ClassificationTask(
        ClassificationTask.Settings(generate=Generate(shape="ring", n=40), scale_noise=2.0)
    )
    held = task.validation
    assert held is not None
    assert held.scale is None
    task.use_noise(0.1)
    assert held.scale == pytest.approx(0.2)


def test_output_shape_is_checked() -> None:
    with pytest.raises(ValueError, match=r"shape \(4,\), expected \(4, 1\)"):
        gate("AND", scale=1.0).loss(np.zeros(4))


@pytest.mark.parametrize("shape", ["ring", "sphere"])
def test_generated_data_are_deterministic_balanced_and_apart(shape: str) -> None:
    spec = Generate.model_validate({"shape": shape, "n": 201, "gap": 0.4, "seed": 7})
    inputs, labels = generate(spec)
    again, same = generate(spec)
    np.testing.assert_array_equal(inputs, again)
    np.testing.assert_array_equal(labels, same)
    assert not np.array_equal(inputs, generate(spec.model_copy(update={"seed": 8}))[0])
    dim = 2 if shape == "ring" else 3
    assert inputs.shape == (201, dim)
    assert np.count_nonzero(labels == 0) == 100
    assert np.count_nonzero(labels == 1) == 101
    assert np.abs(inputs).max() <= 1.0
    zero, one = inputs[labels == 0], inputs[labels == 1]
    distances = np.linalg.norm(zero[:, None, :] - one[None, :, :], axis=2)
    assert distances.min() >= 0.4 - 1e-12
    r0, r_out = radii(dim, 0.4)
    assert np.linalg.norm(zero, axis=1).max() <= r0 + 1e-12
    assert np.linalg.norm(one, axis=1).min() >= r0 + 0.4 - 1e-12
    assert np.linalg.norm(one, axis=1).max() <= r_out + 1e-12
    # ball and shell have equal volume, so the classes have the same density
    assert r0**dim == pytest.approx(r_out**dim - (r0 + 0.4) ** dim)


def test_split_is_stratified_and_deterministic() -> None:
    def task(split_seed: int) -> ClassificationTask:
        settings = ClassificationTask.Settings.model_validate(
            {"generate": {"shape": "ring", "n": 200}, "split_seed": split_seed}
        )
        return ClassificationTask(settings)

    first = task(0)
    held = first.validation
    assert held is not None
    assert first.inputs.shape == (150, 2)
    assert held.inputs.shape == (50, 2)
    for part in (first.labels, held.labels):
        assert np.count_nonzero(part == 1) == np.count_nonzero(part == 0)
    everything, _ = generate(Generate(shape="ring", n=200))
    rows = {tuple(r) for r in everything}
    train_rows, held_rows = {tuple(r) for r in first.inputs}, {tuple(r) for r in held.inputs}
    assert not train_rows & held_rows
    assert train_rows | held_rows == rows
    np.testing.assert_array_equal(task(0).inputs, first.inputs)
    assert not np.array_equal(task(1).inputs, first.inputs)
    none_held = ClassificationTask.from_arrays(everything, np.arange(200) % 2, validation=0)
    assert none_held.validation is None
    assert none_held.inputs.shape == (200, 2)


def test_split_that_empties_a_class_is_refused() -> None:
    labels = [0, 0, 0, 1, 1, 1, 1, 1, 1, 1]
    with pytest.raises(ConfigError, match="class-0 cases keeps none for validation") as info:
        ClassificationTask.from_arrays(np.zeros((10, 1)), labels, validation=0.1)
    assert info.value.key == ("task", "validation")
    with pytest.raises(ConfigError, match="class-0 cases leaves none for training"):
        ClassificationTask.from_arrays(np.zeros((10, 1)), labels, validation=0.9)


def test_inputs_are_read_only() -> None:
    task = random_task()
    with pytest.raises(ValueError, match="read-only"):
        task.inputs[0, 0] = 1.0


def test_npz_data_with_any_label_name(tmp_path: Path) -> None:
    inputs = np.array([[0.0, 0.1], [0.9, 0.0], [0.1, 0.0], [0.0, -0.8]])
    for name in ("target", "targets", "labels"):
        arrays: dict[str, Any] = {"inputs": inputs, name: np.array([0.0, 1.0, 0.0, 1.0])}
        np.savez(tmp_path / "set.npz", **arrays)
        settings = ClassificationTask.Settings.model_validate(
            {"data": "set.npz", "validation": 0}, context={"base_dir": tmp_path}
        )
        task = ClassificationTask(settings)
        np.testing.assert_array_equal(task.inputs, inputs)
        np.testing.assert_array_equal(task.labels, [0, 1, 0, 1])


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"inputs": np.zeros((4, 2))}, r"has no label array \(one of \['target'"),
        ({"target": np.zeros(4)}, "has no array 'inputs'"),
        (
            {"inputs": np.zeros((4, 2)), "target": np.ones(4), "labels": np.ones(4)},
            r"several label arrays \['target', 'labels'\]",
        ),
        (
            {"inputs": np.zeros((4, 2)), "target": np.array([0, 1, 2, 1])},
            r"\('target'\): the labels hold values other than 0 and 1 \(e.g. 2\)",
        ),
        ({"inputs": np.zeros((4, 2)), "target": np.ones(4)}, "no case of class 0"),
        ({"inputs": np.zeros((4, 2)), "target": np.ones(3)}, "one label .* per input row"),
        (
            {"inputs": np.full((4, 2), np.nan), "target": np.array([0, 1, 0, 1])},
            "NaN or infinite",
        ),
    ],
)
def test_bad_data_files_name_the_file_and_the_fix(
    tmp_path: Path, arrays: dict[str, Any], message: str
) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(ConfigError, match=message) as info:
        ClassificationTask(ClassificationTask.Settings(data=path))
    assert str(path) in str(info.value)
    assert info.value.key == ("task", "data")


@pytest.mark.skipif(not RING_DATA.is_file(), reason="shared ring data not present")
def test_shared_ring_data_loads() -> None:
    task = ClassificationTask(ClassificationTask.Settings(data=RING_DATA))
    held = task.validation
    assert held is not None
    assert task.inputs.shape[0] + held.inputs.shape[0] == 132
    assert task.inputs.shape[1] == 2
    assert np.count_nonzero(task.labels) == np.count_nonzero(task.labels == 0)


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"gate": "XAND"}, "unknown gate 'XAND'; give one of AND, OR, NAND, NOR, XOR, XNOR"),
        ({"gate": 1}, "unknown gate 1"),
        ({}, "gate\n  Field required"),
        ({"gate": "and", "low": 0.6, "high": 0.6}, r"`low` \(0.6\) must be below `high`"),
        ({"gate": "and", "high": 1.5}, "must lie in \\[-1, 1\\]"),
        ({"gate": "and", "high": float("inf"), "input_scaling": "volts"}, "finite number"),
        ({"gate": "and", "scale": 0}, "greater than 0"),
        ({"gate": "and", "scale": "auto"}, "should be 'noise'"),
        ({"gate": "and", "margin": -1}, "greater than or equal to 0"),
    ],
)
def test_gate_settings_errors(given: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        GateTask.Settings.model_validate(given)


def test_levels_in_volts_may_leave_the_unit_range() -> None:
    task = gate("or", low=-1.5, high=2.0, input_scaling="volts")
    assert task.inputs.max() == 2.0


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"data": "x.npz", "generate": {"shape": "ring"}}, "exactly one of .*; both were given"),
        ({}, "exactly one of `data`.*neither was given"),
        ({"generate": {"shape": "cube"}}, "'ring' or 'sphere'"),
        ({"generate": {"shape": "ring", "n": 3}}, "greater than or equal to 4"),
        ({"generate": {"shape": "ring", "gap": 1.0}}, "less than 1"),
        ({"generate": {"shape": "ring"}, "validation": 0.95}, "less than or equal to 0.9"),
        ({"generate": {"shape": "ring"}, "accuracy": 0}, "greater than 0"),
    ],
)
def test_classification_settings_errors(given: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ClassificationTask.Settings.model_validate(given)


def test_from_arrays_checks_the_data() -> None:
    with pytest.raises(ValueError, match="from_arrays: the labels hold values other than 0"):
        ClassificationTask.from_arrays(np.zeros((4, 1)), [0, 1, 0.5, 1])
    with pytest.raises(ValidationError, match="takes the data as arrays"):
        ClassificationTask.from_arrays(np.zeros((4, 1)), [0, 1, 0, 1], data="x.npz")
