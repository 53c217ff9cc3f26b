"""Learning-rate schedules: pure functions of the step number, configured by `type:`.

`schedule.learning_rate(lr, k, horizon)` is the rate of step k (k = 0 is the first step) for a
base rate `lr`; `horizon` is the planned number of steps, which the training procedure and
`minimize` supply (schedules that need it say so when it is missing). `factor(k, horizon)` is
the same divided by `lr` for the schedules that scale the base rate.

- constant:    lr
- spall:       lr · ((1 + A)/(k + 1 + A))^α  (Spall 1998: α = 0.602, A ≈ 10 % of the horizon);
               the first step uses lr itself, so a calibrated first step stays calibrated
- exponential: lr · decay^k
- step:        lr · gamma^⌊k / every⌋
- cosine:      lr_min + (lr − lr_min) · ½(1 + cos(π·min(k, T)/T)), T = horizon; lr_min is
               absolute (a base rate below it gives a constant lr)

Every schedule takes an optional linear warm-up: over the first `warmup` steps the rate is
multiplied by (k + 1)/(warmup + 1), after which the schedule runs on unchanged (its k counts from
the first step, warm-up included, so horizons keep meaning "the whole run").
"""

from __future__ import annotations

import math
from typing import Annotated, Literal, TypeAlias

from pydantic import BaseModel, ConfigDict, Field


class _Schedule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    warmup: int = Field(
        default=0,
        ge=0,
        le=1_000_000,
        description="linear warm-up steps: step k < warmup uses (k+1)/(warmup+1) of the rate",
    )

    def learning_rate(self, lr: float, k: int, horizon: int | None = None) -> float:
        """The rate of step k (0-based) for base rate `lr` over `horizon` planned steps."""
        if k < 0:
            raise ValueError(f"step number k must be >= 0, got {k}")
        rate = self._rate(lr, k, horizon)
        if k < self.warmup:
            rate *= (k + 1) / (self.warmup + 1)
        return rate

    def factor(self, k: int, horizon: int | None = None) -> float:
        """learning_rate(1, k, horizon): the multiplier of a unit base rate."""
        return self.learning_rate(1.0, k, horizon)

    def _rate(self, lr: float, k: int, horizon: int | None) -> float:
        raise NotImplementedError


class ConstantSchedule(_Schedule):
    """The same rate at every step (after the optional warm-up)."""

    type: Literal["constant"] = "constant"

    def _rate(self, lr: float, k: int, horizon: int | None) -> float:
        return lr


class SpallSchedule(_Schedule):
    """Spall's gain sequence a_k = a/(k + 1 + A)^α, normalised so that step 0 uses lr."""

    type: Literal["spall"] = "spall"
    alpha: float = Field(
        default=0.602, gt=0, le=1, description="decay exponent (0.602 practical, 1 asymptotic)"
    )
    A: float | None = Field(
        default=None,
        ge=0,
        le=1e9,
        description="stability constant; default: `stability_fraction` of the horizon",
    )
    stability_fraction: float = Field(
        default=0.1,
        ge=0,
        le=1000,
        description="A as a fraction of the planned steps when A is not given",
    )

    def stability(self, horizon: int | None) -> float:
        """A: as given, else `stability_fraction` × horizon."""
        if self.A is not None:
            return self.A
        if horizon is None:
            raise ValueError(
                "spall schedule: give `A` or a horizon (the planned number of steps); "
                "the training procedure and minimize() supply their step count"
            )
        return self.stability_fraction * horizon

    def _rate(self, lr: float, k: int, horizon: int | None) -> float:
        a = self.stability(horizon)
        return lr * float(((1.0 + a) / (k + 1.0 + a)) ** self.alpha)


class ExponentialSchedule(_Schedule):
    """lr · decay^k."""

    type: Literal["exponential"] = "exponential"
    decay: float = Field(gt=0, le=1, description="factor per step")

    def _rate(self, lr: float, k: int, horizon: int | None) -> float:
        return lr * float(self.decay**k)


class StepSchedule(_Schedule):
    """lr · gamma^⌊k / every⌋: the rate drops by `gamma` every `every` steps."""

    type: Literal["step"] = "step"
    every: int = Field(gt=0, le=1_000_000, description="steps between drops")
    gamma: float = Field(default=0.5, gt=0, le=1, description="factor per drop")

    def _rate(self, lr: float, k: int, horizon: int | None) -> float:
        return lr * float(self.gamma ** (k // self.every))


class CosineSchedule(_Schedule):
    """Half a cosine from lr down to lr_min over the horizon, lr_min afterwards."""

    type: Literal["cosine"] = "cosine"
    lr_min: float = Field(default=0.0, ge=0, description="rate at the end of the horizon")

    def _rate(self, lr: float, k: int, horizon: int | None) -> float:
        if horizon is None or horizon < 1:
            raise ValueError(
                "cosine schedule: needs a horizon (the planned number of steps, >= 1); "
                "the training procedure and minimize() supply their step count"
            )
        low = min(self.lr_min, lr)
        progress = min(k, horizon) / horizon
        return low + (lr - low) * 0.5 * (1.0 + math.cos(math.pi * progress))


Schedule: TypeAlias = Annotated[
    ConstantSchedule | SpallSchedule | ExponentialSchedule | StepSchedule | CosineSchedule,
    Field(discriminator="type"),
]
"""Any schedule, chosen by its `type:` key."""
