"""`minimize`: a scipy-style driver for an estimator + optimizer pair, with honest accounting.

    result = minimize(objective, SPSA(), SGD(SGD.Settings(schedule=SpallSchedule())), x0,
                      steps=200, calibrate=CalibrationSettings(target_step=0.1),
                      blocking=True, recommend="average")

The result is a `scipy.optimize.OptimizeResult`: `x` is the recommendation, `fun` a final
unperturbed measurement of it, `nfev` every evaluation the call made (calibration, gradient
estimates, blocking checks, the final measurement; nothing is hidden), `device_seconds` the
device time they took, and history arrays per step. A callback gets an intermediate result after
every step without costing an evaluation; raising StopIteration in it ends the run cleanly.

`optimization_step` is the step shared with the training procedure: estimate, step, and with
blocking measure the proposed point and take the step back when the loss rose too much.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator
from scipy.optimize import OptimizeResult

from hil.core import FloatArray, JSONDict, SeedLike, seed_sequence
from protocols.base import GradientEstimate, GradientEstimator, Objective, Optimizer
from protocols.calibration import CalibrationReport, CalibrationSettings, measure_noise
from protocols.calibration import calibrate as run_calibration
from protocols.optimizers import Recommendation, TunableOptimizer, as_tunable


class BlockingSettings(BaseModel):
    """Take back steps that raise the loss (Spall's blocking; `blocking: true`: defaults).

    After each step the proposed point is measured (counted) and the step is undone when that
    loss exceeds the loss the estimator reported at the current point by more than the allowed
    increase. That reference is measured afresh every step (with the estimators' default
    `measure_loss: true`), so one lucky low reading cannot block the following steps; with
    `measure_loss: false` it is the mean of the perturbed values, which lies above L(θ) by the
    curvature term, and blocking becomes more lenient.
    """

    model_config = ConfigDict(extra="forbid")

    allowed_increase: float | None = Field(
        default=None, ge=0, description="loss units; default sigma_multiple × the measured σ"
    )
    sigma_multiple: float = Field(default=2.0, ge=0, description="allowed increase in σ")
    noise_repeats: int = Field(
        default=25, ge=2, description="measurements for σ when calibration did not measure it"
    )
    repeats: int = Field(default=1, ge=1, description="measurements of the proposed point")

    @model_validator(mode="before")
    @classmethod
    def _true_means_defaults(cls, data: Any) -> Any:
        return {} if data is True else data


@dataclass(frozen=True)
class StepOutcome:
    """One optimizer step: the estimate at θ, the rate used, and what blocking decided."""

    theta: FloatArray  # where the gradient was estimated
    estimate: GradientEstimate
    learning_rate: float | None  # None: the optimizer does not expose one
    rejected: bool
    proposed_loss: float | None  # blocking's measurement of the proposed point
    evaluations: int  # estimate + blocking
    device_seconds: float

    def record(self) -> JSONDict:
        return {
            "learning_rate": self.learning_rate,
            "rejected": self.rejected,
            "proposed_loss": self.proposed_loss,
        }


def optimization_step(
    objective: Objective,
    estimator: GradientEstimator,
    optimizer: Optimizer,
    *,
    allowed_increase: float | None = None,
    repeats: int = 1,
) -> StepOutcome:
    """Estimate at the optimizer's point, step; with `allowed_increase` (blocking), measure the
    proposed point `repeats` times and reject the step if its mean loss exceeds the estimate's
    loss + allowed_increase."""
    e0, t0 = objective.evaluations, objective.device_time()
    theta = optimizer.ask()
    estimate = estimator.estimate(objective, theta)
    tunable = as_tunable(optimizer)
    lr = tunable.learning_rate if tunable is not None else None
    optimizer.tell(estimate.gradient)
    rejected, proposed_loss = False, None
    if allowed_increase is not None:
        if tunable is None:
            raise TypeError(
                f"blocking needs an optimizer with reject(); {type(optimizer).__name__} has none"
            )
        proposed = optimizer.ask()
        proposed_loss = float(np.mean([objective(proposed) for _ in range(repeats)]))
        if proposed_loss > estimate.loss + allowed_increase:
            tunable.reject()
            rejected = True
    return StepOutcome(
        theta=theta,
        estimate=estimate,
        learning_rate=lr,
        rejected=rejected,
        proposed_loss=proposed_loss,
        evaluations=objective.evaluations - e0,
        device_seconds=objective.device_time() - t0,
    )


def blocking_threshold(
    objective: Objective,
    theta: FloatArray,
    settings: BlockingSettings,
    sigma: float | None,
) -> tuple[float, float | None]:
    """(allowed increase, σ used): as given, or sigma_multiple × σ, measuring σ at θ (counted)
    when it is not known yet."""
    if settings.allowed_increase is not None:
        return settings.allowed_increase, sigma
    if sigma is None:
        sigma = measure_noise(objective, theta, settings.noise_repeats).sigma
    return settings.sigma_multiple * sigma, sigma


Callback = Callable[[OptimizeResult], object]


def _as_optional(model: type[BaseModel], value: Any) -> Any:
    if value is None or value is False:
        return None
    return value if isinstance(value, model) else model.model_validate(value)


def minimize(
    objective: Objective,
    estimator: GradientEstimator,
    optimizer: TunableOptimizer,
    x0: FloatArray | None = None,
    *,
    steps: int,
    callback: Callback | None = None,
    blocking: BlockingSettings | bool | None = None,
    calibrate: CalibrationSettings | bool | None = None,
    recommend: Recommendation | str = "last",
    final_repeats: int = 1,
    seed: SeedLike = None,
) -> OptimizeResult:
    """Run `steps` optimizer steps on the objective; every evaluation is counted in `nfev`.

    x0: start point (inside the objective's box); None continues from the optimizer's current
    iterate, or starts at the centre of the box (0 where a range is infinite). The optimizer's
    horizon becomes its step count plus `steps`, which schedules (spall's A, cosine) and the
    average's start use. `calibrate` (settings, or True for defaults) measures σ and sets the
    estimator's c / h and the optimizer's rate before the first step (`seed` draws the
    perturbation calibration's directions); `blocking` rejects steps that raise the loss by
    more than the allowed increase; `recommend` ('last', 'average' or `Recommendation`) picks
    the reported point, which is finally measured `final_repeats` times.

    The callback receives an OptimizeResult with x (the current recommendation), fun (the
    latest loss measured: at the proposed point when blocking accepted the step, else at the
    point the gradient was estimated, `x_fun`), nit, nfev, device_seconds, learning_rate and
    rejected, at no extra evaluation. Raising StopIteration stops after that step: the result
    is complete and valid, with success False and status 99 as in scipy.
    """
    if as_tunable(optimizer) is None:
        raise TypeError(
            f"minimize needs an optimizer with a learning rate, reject() and recommend() "
            f"(SGD, Adam); got {type(optimizer).__name__}"
        )
    if steps < 0 or final_repeats < 1:
        raise ValueError(f"steps must be >= 0 and final_repeats >= 1, got {steps}, {final_repeats}")
    blocking_settings: BlockingSettings | None = _as_optional(BlockingSettings, blocking)
    calibration_settings: CalibrationSettings | None = _as_optional(CalibrationSettings, calibrate)
    e0, t0 = objective.evaluations, objective.device_time()

    fresh = x0 is not None or not _started(optimizer)
    horizon = steps if fresh else optimizer.iterations + steps
    optimizer.horizon = horizon if horizon > 0 else None
    if fresh:
        start = _centre(objective) if x0 is None else np.asarray(x0, dtype=float)
        optimizer.start(start, objective.lower, objective.upper)
    optimizer.set_recommendation(
        recommend
        if isinstance(recommend, Recommendation)
        else Recommendation.model_validate(recommend)
    )

    report: CalibrationReport | None = None
    sigma: float | None = None
    if calibration_settings is not None:
        rng = np.random.default_rng(seed_sequence(seed))
        report = run_calibration(
            objective, estimator, optimizer, optimizer.ask(), calibration_settings, rng=rng
        )
        sigma = report.sigma
    allowed: float | None = None
    if blocking_settings is not None:
        allowed, sigma = blocking_threshold(objective, optimizer.ask(), blocking_settings, sigma)

    losses: list[float] = []
    proposed: list[float] = []
    rates: list[float] = []
    rejected: list[bool] = []
    evaluations: list[int] = []
    device_time: list[float] = []
    status, message = 0, f"completed {steps} steps"
    for k in range(steps):
        outcome = optimization_step(
            objective,
            estimator,
            optimizer,
            allowed_increase=allowed,
            repeats=blocking_settings.repeats if blocking_settings is not None else 1,
        )
        losses.append(outcome.estimate.loss)
        proposed.append(math.nan if outcome.proposed_loss is None else outcome.proposed_loss)
        rates.append(math.nan if outcome.learning_rate is None else outcome.learning_rate)
        rejected.append(outcome.rejected)
        evaluations.append(objective.evaluations - e0)
        device_time.append(objective.device_time() - t0)
        if callback is not None:
            accepted_measure = outcome.proposed_loss is not None and not outcome.rejected
            intermediate = OptimizeResult(
                x=optimizer.recommend(),
                fun=outcome.proposed_loss if accepted_measure else outcome.estimate.loss,
                x_fun=optimizer.ask() if accepted_measure else outcome.theta,
                nit=k + 1,
                nfev=evaluations[-1],
                device_seconds=device_time[-1],
                learning_rate=outcome.learning_rate,
                rejected=outcome.rejected,
            )
            try:
                callback(intermediate)
            except StopIteration:
                status = 99
                message = f"stopped by the callback (StopIteration) after step {k + 1} of {steps}"
                break

    x = optimizer.recommend()
    fun = float(np.mean([objective(x) for _ in range(final_repeats)]))
    return OptimizeResult(
        x=x,
        fun=fun,
        nit=len(losses),
        nfev=objective.evaluations - e0,
        device_seconds=objective.device_time() - t0,
        success=status == 0,
        status=status,
        message=message,
        calibration=None if report is None else report.as_dict(),
        sigma=sigma,
        allowed_increase=allowed,
        rejections=int(sum(rejected)),
        learning_rate=optimizer.learning_rate,
        losses=np.array(losses),
        proposed_losses=np.array(proposed),
        learning_rates=np.array(rates),
        rejected=np.array(rejected, dtype=bool),
        evaluations=np.array(evaluations, dtype=int),
        device_time=np.array(device_time),
    )


def _started(optimizer: Optimizer) -> bool:
    try:
        optimizer.ask()
    except RuntimeError:
        return False
    return True


def _centre(objective: Objective) -> FloatArray:
    lower, upper = objective.lower, objective.upper
    both = np.isfinite(lower) & np.isfinite(upper)
    centre: FloatArray = np.where(both, (lower + upper) / 2.0, 0.0)
    clipped: FloatArray = np.clip(centre, lower, upper)
    return clipped
