"""Learning-rate schedules: values by hand, Spall's A from the horizon, warm-up, validation."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from protocols.schedules import (
    ConstantSchedule,
    CosineSchedule,
    ExponentialSchedule,
    Schedule,
    SpallSchedule,
    StepSchedule,
)

ADAPTER: TypeAdapter[Schedule] = TypeAdapter(Schedule)


def test_constant() -> None:
    schedule = ConstantSchedule()
    assert [schedule.learning_rate(0.3, k) for k in (0, 1, 1000)] == [0.3, 0.3, 0.3]


def test_spall_values_and_default_stability_constant() -> None:
    schedule = SpallSchedule()
    # A = 10 % of a 200-step horizon = 20; the first step uses lr itself
    assert schedule.stability(200) == 20.0
    assert schedule.learning_rate(0.5, 0, 200) == 0.5
    assert schedule.learning_rate(0.5, 9, 200) == pytest.approx(0.5 * (21 / 30) ** 0.602)
    assert schedule.learning_rate(0.5, 199, 200) == pytest.approx(0.5 * (21 / 220) ** 0.602)
    # an explicit A wins over the horizon and makes it unnecessary
    explicit = SpallSchedule(A=5, alpha=1.0)
    assert explicit.learning_rate(1.0, 4) == pytest.approx(6 / 10)
    assert explicit.stability(10_000) == 5
    assert SpallSchedule(stability_fraction=0.2).stability(50) == 10.0


def test_spall_without_horizon_or_a_says_what_is_missing() -> None:
    with pytest.raises(ValueError, match="give `A` or a horizon"):
        SpallSchedule().learning_rate(0.1, 3)


def test_exponential_and_step() -> None:
    assert ExponentialSchedule(decay=0.9).learning_rate(2.0, 3) == pytest.approx(2.0 * 0.9**3)
    step = StepSchedule(every=10, gamma=0.1)
    rates = [step.learning_rate(1.0, k) for k in (0, 9, 10, 19, 20, 35)]
    assert rates == pytest.approx([1.0, 1.0, 0.1, 0.1, 0.01, 0.001])


def test_cosine_runs_from_lr_to_lr_min_over_the_horizon() -> None:
    cosine = CosineSchedule(lr_min=0.01)
    assert cosine.learning_rate(0.1, 0, 100) == pytest.approx(0.1)
    assert cosine.learning_rate(0.1, 50, 100) == pytest.approx(0.055)
    assert cosine.learning_rate(0.1, 100, 100) == pytest.approx(0.01)
    assert cosine.learning_rate(0.1, 500, 100) == pytest.approx(0.01)  # stays at the floor
    assert CosineSchedule(lr_min=1.0).learning_rate(0.1, 30, 100) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="needs a horizon"):
        cosine.learning_rate(0.1, 0)


def test_warmup_ramps_linearly_then_hands_over() -> None:
    schedule = ExponentialSchedule(decay=0.5, warmup=3)
    rates = [schedule.learning_rate(1.0, k) for k in range(5)]
    assert rates == pytest.approx([1 / 4, 2 / 4 * 0.5, 3 / 4 * 0.25, 0.125, 0.0625])
    assert ConstantSchedule(warmup=1).factor(0) == 0.5


@given(
    lr=st.floats(1e-6, 10),
    k=st.integers(0, 10_000),
    horizon=st.integers(1, 5000),
    kind=st.sampled_from(["constant", "spall", "exponential", "step", "cosine"]),
)
def test_every_schedule_is_positive_and_never_above_the_base_rate(
    lr: float, k: int, horizon: int, kind: str
) -> None:
    settings: dict[str, dict[str, float]] = {"exponential": {"decay": 0.99}, "step": {"every": 7}}
    schedule = ADAPTER.validate_python({"type": kind, **settings.get(kind, {})})
    rate = schedule.learning_rate(lr, k, horizon)
    assert 0 <= rate <= lr * (1 + 1e-12)
    assert math.isfinite(rate)
    assert rate >= schedule.learning_rate(lr, k + 1, horizon) * (1 - 1e-12)  # non-increasing


def test_schedules_are_chosen_by_type_and_validated() -> None:
    assert isinstance(ADAPTER.validate_python({"type": "spall", "A": 3}), SpallSchedule)
    with pytest.raises(ValidationError, match="does not match any of the expected tags"):
        ADAPTER.validate_python({"type": "linear"})
    with pytest.raises(ValidationError, match="decay"):
        ADAPTER.validate_python({"type": "exponential", "decay": 1.5})
    with pytest.raises(ValidationError, match="Extra inputs"):
        ADAPTER.validate_python({"type": "constant", "lr": 1})
    with pytest.raises(ValueError, match="k must be >= 0"):
        ConstantSchedule().learning_rate(0.1, -1)
