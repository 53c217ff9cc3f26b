"""`minimize`: a scipy-style driver for an estimator + optimizer pair, with honest accounting.

    result = minimize(objective, SPSA(), SGD(SGD.Settings(schedule=SpallSchedule())), x0,
                      steps=200, calibrate=CalibrationSettings(target_step=0.1),
                      blocking=True, recommend="average")

or, instead of a step count, an evaluation budget that calibration, steps and the final
measurement share (`budget=2000`): the steps that fit in what calibration leaves set the
optimizer's horizon.

The result is a `scipy.optimize.OptimizeResult`: `x` is the recommendation, `fun` a final
unperturbed measurement of it, `nfev` every evaluation the call made (calibration, gradient
estimates, blocking checks, the final measurement; nothing is hidden), `device_seconds` the
device time they took, and history arrays per step. A callback gets an intermediate result after
every step without costing an evaluation; raising StopIteration in it ends the run cleanly.

`optimization_step` is the step shared with the training procedure: estimate, step, and with
blocking measure the proposed point and take the step back when the loss rose too much.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator
from scipy.optimize import OptimizeResult

from hil.core import FloatArray, JSONDict, SeedLike, seed_sequence
from protocols.base import MAX_REPEATS, GradientEstimate, GradientEstimator, Objective, Optimizer
from protocols.calibration import CalibrationReport, CalibrationSettings, measure_noise
from protocols.calibration import calibrate as run_calibration
from protocols.estimators import SPSA, CentralDifference, ForwardDifference
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
        default=25,
        ge=2,
        le=MAX_REPEATS,
        description="measurements for σ when calibration did not measure it",
    )
    repeats: int = Field(
        default=1, ge=1, le=MAX_REPEATS, description="measurements of the proposed point"
    )

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
    on_estimate: Callable[[GradientEstimate], object] | None = None,
) -> StepOutcome:
    """Estimate at the optimizer's point, step; with `allowed_increase` (blocking), measure the
    proposed point `repeats` times and reject the step if its mean loss exceeds the estimate's
    loss + allowed_increase. `on_estimate` sees the estimate before the optimizer's rate is
    read (`minimize(budget=...)` fixes the horizon there)."""
    e0, t0 = objective.evaluations, objective.device_time()
    theta = optimizer.ask()
    estimate = estimator.estimate(objective, theta)
    if on_estimate is not None:
        on_estimate(estimate)
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


@dataclass(frozen=True)
class _CostModel:
    """What the estimator's coming estimates cost, known without measuring."""

    ahead: Callable[[int], int]  # evaluations of the estimate i places after the next (0: next)
    constant: bool


def _cost_model(estimator: GradientEstimator, objective: Objective) -> _CostModel | None:
    """The estimator's cost ahead, when it can tell: SPSA (2 per resample on its schedule), central
    and forward differences (2 or 1 per coordinate that can move), each + 1 for the measured
    loss. None for the rest (SPSA2's cost depends on where θ lies in the box). A model that
    misses a step's actual cost is dropped (`_BudgetPlan.observe`)."""
    movable = int(np.count_nonzero(objective.upper > objective.lower))
    if isinstance(estimator, SPSA):
        spsa = estimator

        def spsa_cost(i: int) -> int:
            return 2 * spsa.resamples(spsa.k + i) + int(spsa.settings.measure_loss)

        return _CostModel(spsa_cost, isinstance(spsa.settings.resamples, int))
    if isinstance(estimator, CentralDifference):
        central = 2 * movable + int(estimator.settings.measure_loss or movable == 0)
        return _CostModel(lambda i: central, True)
    if isinstance(estimator, ForwardDifference):
        forward = 1 + movable
        return _CostModel(lambda i: forward, True)
    return None


class _BudgetPlan:
    """`minimize(budget=...)`: what is left, whether the next step fits, how many steps do.

    A step costs its estimate plus blocking's `repeats` measurements. The estimate's cost comes
    from the estimator's cost model where it has one (exact, also for a resample schedule);
    otherwise it is the largest step cost seen so far (before the first step: the gain
    calibration's evaluations per estimate, if it ran), which bounds the next step only when
    the cost does not grow beyond everything seen.
    """

    def __init__(
        self,
        objective: Objective,
        estimator: GradientEstimator,
        optimizer: TunableOptimizer,
        *,
        budget: int,
        spent: int,
        reserve: int,
        blocking_cost: int,
        first_iteration: int,
    ) -> None:
        self.objective = objective
        self.budget = budget
        self.setup = spent  # calibration and blocking's σ, before the first step
        self.e0 = objective.evaluations - spent  # the call's start
        self.reserve = reserve  # the final measurement(s)
        self.blocking_cost = blocking_cost
        self.optimizer = optimizer
        self.first_iteration = first_iteration  # the optimizer's step count at the first step
        self.model = _cost_model(estimator, objective)
        self.estimator_name = type(estimator).__name__
        self.largest = 0  # largest step cost seen
        self.guess = 1  # a step's cost before any was seen
        self.predicted: int | None = None  # the model's cost of the step being taken
        self.mispredicted = False
        self.next_cost: int | None = None  # the step that did not fit
        self.planned: int | None = None  # steps in the horizon

    def spent(self) -> int:
        return self.objective.evaluations - self.e0

    def available(self) -> int:
        """Evaluations left for steps (the final measurement kept aside)."""
        return self.budget - self.reserve - self.spent()

    def guess_from_calibration(self, report: CalibrationReport | None) -> None:
        """Before any step: the gain calibration's estimates, made at the start point, cost
        about what the first step's estimate does."""
        gain = None if report is None else report.gain
        if gain is not None and gain.samples > 0:
            self.guess = math.ceil(gain.evaluations / gain.samples) + self.blocking_cost

    def fits(self) -> bool:
        """Does the next step fit in what is left? (Remembers its predicted cost.)"""
        if self.model is not None:
            self.predicted = self.model.ahead(0) + self.blocking_cost
            need = self.predicted
        else:
            need = self.largest if self.largest > 0 else self.guess
        if need > self.available():
            self.next_cost = need
            return False
        return True

    def fix_horizon(self, estimate: GradientEstimate) -> None:
        """After the first estimate, before the schedule is read: horizon = this step + the
        steps that fit in what is left after it."""
        cost = estimate.evaluations + self.blocking_cost
        self._check(cost)
        rest = self.available() - self.blocking_cost  # the estimate is spent, blocking is not
        self.planned = 1 + self.steps_that_fit(rest)
        self.optimizer.horizon = self.first_iteration + self.planned

    def observe(self, outcome: StepOutcome) -> None:
        """After each step, with what it cost (estimate and blocking)."""
        self._check(outcome.evaluations)

    def _check(self, cost: int) -> None:
        if cost < 1:
            raise ValueError(
                f"a step of {self.estimator_name} cost no evaluation, so a budget cannot bound "
                "the run; give steps= instead"
            )
        if self.model is not None and cost != self.predicted:
            self.model, self.mispredicted = None, True  # not what it said: go by costs seen
        self.largest = max(self.largest, cost)

    def steps_that_fit(self, available: int) -> int:
        if self.model is None:
            return max(available, 0) // self.largest
        if self.model.constant:
            return max(available, 0) // (self.model.ahead(0) + self.blocking_cost)
        steps = 0
        while (cost := self.model.ahead(steps) + self.blocking_cost) <= available:
            available -= cost
            steps += 1
        return steps

    def finish(self) -> None:
        """A run that took no step still needs a horizon >= 1 for its schedule."""
        if self.planned is None:
            self.optimizer.horizon = max(self.first_iteration, 1)

    def message(self, nfev: int, steps: int) -> str:
        unspent = self.budget - nfev
        text = (
            f"budget of {self.budget} evaluations: {self.setup} for calibration and noise, "
            f"{steps} steps, {self.reserve} final; {unspent} unspent"
        )
        why = (
            f"{self.estimator_name}'s step cost differed from its known cost"
            if self.mispredicted
            else f"{self.estimator_name} cannot tell its next cost in advance"
        )
        if unspent < 0:
            return (
                f"budget of {self.budget} evaluations EXCEEDED by {-unspent} after {steps} "
                f"steps: a step cost more than any before it (largest {self.largest}); {why}"
            )
        if self.next_cost is None or unspent == 0:
            return text
        if self.model is not None:
            return f"{text}, less than the next step's {self.next_cost}"
        return (
            f"{text}, less than the largest step cost seen ({self.next_cost}); {why}, so a "
            "cheaper step might still have fitted"
        )


def minimize(
    objective: Objective,
    estimator: GradientEstimator,
    optimizer: TunableOptimizer,
    x0: FloatArray | None = None,
    *,
    steps: int | None = None,
    budget: int | None = None,
    callback: Callback | None = None,
    blocking: BlockingSettings | bool | None = None,
    calibrate: CalibrationSettings | bool | None = None,
    recommend: Recommendation | str = "last",
    final_repeats: int = 1,
    seed: SeedLike = None,
) -> OptimizeResult:
    """Run `steps` optimizer steps, or as many as `budget` evaluations allow (exactly one of
    the two); every evaluation is counted in `nfev`.

    x0: start point (inside the objective's box); None continues from the optimizer's current
    iterate, or starts at the centre of the box (0 where a range is infinite). The optimizer's
    horizon becomes its step count plus `steps`, which schedules (spall's A, cosine) and the
    average's start use. `calibrate` (settings, or True for defaults) measures σ and sets the
    estimator's c / h and the optimizer's rate before the first step (`seed` draws the
    perturbation calibration's directions); `blocking` rejects steps that raise the loss by
    more than the allowed increase; `recommend` ('last', 'average' or `Recommendation`) picks
    the reported point, which is finally measured `final_repeats` times.

    `budget`: the evaluations this call may make, calibration, blocking's σ and the final
    measurement(s) included; `nfev` stays within it. Calibration runs first; after the first
    step's estimate, before the schedule is read, the horizon becomes that step plus the
    steps that fit in what is left (their cost: the estimator's own where it can tell, as SPSA,
    also with a resample schedule, and finite differences can; else the first step's), and a
    step is taken only when its cost fits, the final measurement kept aside. An estimator that
    cannot tell its cost is stopped once less is left than the largest step cost seen; if its
    cost then grows beyond everything seen, a step can overrun the budget, which the message
    says. The result adds `budget`, `unspent` and `horizon`, and the message states them. The
    cost of calibration is known only once it ran: a budget that does not cover it, blocking's
    σ and the final measurement is a ValueError (before any evaluation where the fixed part
    alone does not fit).

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
    if (steps is None) == (budget is None):
        raise ValueError(
            "minimize: give exactly one of steps= (optimizer steps) and budget= (device "
            "evaluations, calibration and the final measurement included); got "
            + ("both" if steps is not None else "neither")
        )
    if steps is not None and (steps < 0 or final_repeats < 1):
        raise ValueError(f"steps must be >= 0 and final_repeats >= 1, got {steps}, {final_repeats}")
    blocking_settings: BlockingSettings | None = _as_optional(BlockingSettings, blocking)
    calibration_settings: CalibrationSettings | None = _as_optional(CalibrationSettings, calibrate)
    blocking_noise = 0  # blocking's σ measurement, when neither given nor calibrated
    if (
        blocking_settings is not None
        and blocking_settings.allowed_increase is None
        and calibration_settings is None
    ):
        blocking_noise = blocking_settings.noise_repeats
    if budget is not None:
        if final_repeats < 1:
            raise ValueError(f"final_repeats must be >= 1, got {final_repeats}")
        fixed = final_repeats + blocking_noise
        fixed += calibration_settings.noise_repeats if calibration_settings is not None else 0
        if budget < fixed:
            raise ValueError(
                f"budget must cover the {fixed} evaluations that the noise measurement(s) and "
                f"the final measurement(s) take at least; got budget {budget}"
            )
    e0, t0 = objective.evaluations, objective.device_time()

    fresh = x0 is not None or not _started(optimizer)
    first_iteration = 0 if fresh else optimizer.iterations
    if steps is not None:
        horizon = steps if fresh else optimizer.iterations + steps
        optimizer.horizon = horizon if horizon > 0 else None
    else:
        assert budget is not None
        # provisional (steps cost >= 1 evaluation each); fixed after the first estimate
        optimizer.horizon = first_iteration + budget
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
    if budget is not None:
        spent = objective.evaluations - e0
        if spent + blocking_noise + final_repeats > budget:
            raise ValueError(
                f"calibration used {spent} evaluations of the budget of {budget}, which leaves "
                f"no room for blocking's noise measurement ({blocking_noise}) and "
                f"{final_repeats} final measurement(s); raise the budget"
            )
    allowed: float | None = None
    if blocking_settings is not None:
        allowed, sigma = blocking_threshold(objective, optimizer.ask(), blocking_settings, sigma)
    repeats = blocking_settings.repeats if blocking_settings is not None else 1
    plan: _BudgetPlan | None = None
    if budget is not None:
        plan = _BudgetPlan(
            objective,
            estimator,
            optimizer,
            budget=budget,
            spent=objective.evaluations - e0,
            reserve=final_repeats,
            blocking_cost=repeats if blocking_settings is not None else 0,
            first_iteration=first_iteration,
        )
        plan.guess_from_calibration(report)

    losses: list[float] = []
    proposed: list[float] = []
    rates: list[float] = []
    rejected: list[bool] = []
    evaluations: list[int] = []
    device_time: list[float] = []
    status, message = 0, f"completed {steps} steps"
    counter: Iterable[int] = range(steps) if steps is not None else itertools.count()
    for k in counter:
        if plan is not None and not plan.fits():
            break
        outcome = optimization_step(
            objective,
            estimator,
            optimizer,
            allowed_increase=allowed,
            repeats=repeats,
            on_estimate=plan.fix_horizon if plan is not None and k == 0 else None,
        )
        if plan is not None:
            plan.observe(outcome)
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
                planned = steps if plan is None else plan.planned
                message = f"stopped by the callback (StopIteration) after step {k + 1} of {planned}"
                break
    if plan is not None:
        plan.finish()

    x = optimizer.recommend()
    fun = float(np.mean([objective(x) for _ in range(final_repeats)]))
    nfev = objective.evaluations - e0
    extra: JSONDict = {}
    if plan is not None:
        budget_message = plan.message(nfev, len(losses))
        message = budget_message if status == 0 else f"{message}; {budget_message}"
        extra = {"budget": plan.budget, "unspent": plan.budget - nfev, "horizon": optimizer.horizon}
    return OptimizeResult(
        x=x,
        fun=fun,
        nit=len(losses),
        nfev=nfev,
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
        **extra,
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
