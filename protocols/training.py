"""Training procedure: estimate a gradient, take an optimizer step, repeat; checkpointable.

Optional, configured in the procedure's settings:

- `calibration:` before the first step, measure the loss noise σ and (optionally) set the
  estimator's perturbation and the optimizer's learning rate (`protocols.calibration`). It runs
  once, inside step 1, its results go into that step's record and into the summary, and the
  checkpoint keeps them: a resumed run does not calibrate again.
- `blocking:` after each step measure the proposed point and take the step back when the loss
  rose by more than an allowed increase (a number, or a multiple of the measured σ).
- `recommend:` the point measured at the end: the last iterate or the Polyak average.
- `target:` on a task with a target (`gate`, `classification`), the measured stopping rule of
  `protocols.target`: the first step measures the start point (the noise sets the loss's
  margin scale), checks re-measure the iterate at an interval that keeps them to a share of
  the device time, the run ends when a check and a fresh confirmation of it both reach the
  target, and the end measures both the recommended point and the best point checked and keeps
  the better. `false`: no checks between the start and the end.

The optimizer's schedule horizon is `steps`. Every step record carries the learning rate used
and whether the step was rejected; every evaluation (calibration and blocking included) is
counted in the step's `evaluations`.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from hil.core import ConfigError, Device, FloatArray, JSONDict, SeedLike, seed_sequence
from hil.core.types import generator_state, restore_generator
from protocols.base import (
    MAX_REPEATS,
    MAX_STEPS,
    GradientEstimator,
    Objective,
    Optimizer,
    Preflight,
    Task,
)
from protocols.calibration import (
    CalibrationSettings,
    calibrate,
    perturbation_setting,
    set_perturbation,
)
from protocols.minimize import BlockingSettings, blocking_threshold, optimization_step
from protocols.optimizers import Recommendation, TunableOptimizer, as_tunable
from protocols.progress import Stepped, StepProgress
from protocols.starts import initial_controls
from protocols.target import TargetCheck, TargetSettings, target_check

log = logging.getLogger(__name__)


class TrainingProcedure(Stepped):
    """Gradient-based training of a device's controls on a task, one step per optimizer update."""

    class Settings(BaseModel):
        model_config = ConfigDict(extra="forbid")

        steps: int = Field(gt=0, le=MAX_STEPS, description="number of gradient steps")
        initial_controls: list[float] | dict[str, float] | None = Field(
            default=None,
            description="start values (list in channel order, or by name; missing names start "
            "at 0); default all zeros",
        )
        final_repeats: int = Field(
            default=1,
            ge=1,
            le=MAX_REPEATS,
            description="unperturbed measurements averaged for the final loss",
        )
        parameters: Literal["physical", "normalized"] = Field(
            default="physical",
            description="'physical': the optimizer moves control values; 'normalized': it moves "
            "θ in [-1, 1] spanning each control's allowed range, so step sizes and perturbations "
            "are fractions of the range and mean the same on every station",
        )
        calibration: CalibrationSettings | None = Field(
            default=None,
            description="measure σ and calibrate perturbation / learning rate before step 1 "
            "(true: defaults)",
        )
        blocking: BlockingSettings | None = Field(
            default=None, description="reject steps that raise the loss too much (true: defaults)"
        )
        recommend: Recommendation = Field(
            default_factory=Recommendation,
            description="the point measured at the end: 'last' or 'average' (Polyak–Ruppert)",
        )
        target: TargetSettings | None = Field(
            default_factory=TargetSettings,
            description="tasks with a target (gate, classification): measured checks and the "
            "stop on reaching it (false: judge only the start and the end)",
        )

        @field_validator("calibration", "blocking", "target", mode="before")
        @classmethod
        def _false_means_off(cls, value: Any) -> Any:
            return None if value is False else value

    def __init__(
        self,
        settings: Settings,
        *,
        device: Device,
        task: Task,
        estimator: GradientEstimator,
        optimizer: Optimizer,
        seed: SeedLike = None,
    ) -> None:
        self.settings = settings
        self.control_names = [c.name for c in device.spec.controls]
        if not self.control_names:
            raise ConfigError(
                f"device {device.spec.name!r} has no control channels to train; a device whose "
                "weights change only through pulses (programmable state) needs a pulse-based "
                "procedure",
                key=("procedure", "type"),
            )
        if not isinstance(estimator, GradientEstimator):
            raise ConfigError(
                f"procedure train needs a gradient estimator (estimate, state_dict, "
                f"load_state_dict), not {type(estimator).__name__}; for pulse-programmed "
                "weights use procedure pulse-train",
                key=("estimator", "type"),
            )
        self.objective = Objective(device, task, normalized=settings.parameters == "normalized")
        self.estimator = estimator
        self.optimizer = optimizer
        self.tunable = self._tunable(optimizer)
        calibration = settings.calibration
        if calibration and calibration.perturbation and perturbation_setting(estimator) is None:
            raise ConfigError(
                f"procedure.calibration.perturbation: estimator {type(estimator).__name__} "
                "has no `c` or `h` setting to calibrate; set perturbation: false",
                key=("procedure", "calibration", "perturbation"),
            )
        if self.tunable is not None:
            self.tunable.horizon = settings.steps
            self.tunable.set_recommendation(settings.recommend)
        theta0 = self.objective.parameters(
            initial_controls(settings.initial_controls, self.control_names, self.objective)
        )
        try:
            optimizer.start(theta0, self.objective.lower, self.objective.upper)
        except ValueError as exc:
            raise ConfigError(f"optimizer: {exc}", key=("optimizer",)) from None
        if isinstance(estimator, Preflight):
            try:
                estimator.preflight(self.objective, theta0)
            except ConfigError as exc:
                raise ConfigError(str(exc), key=exc.key or ("estimator",)) from None
        self._rng = np.random.default_rng(seed_sequence(seed))
        self._prepared = False  # calibration and blocking threshold done (first step)
        self._calibration: JSONDict | None = None
        self._allowed_increase: float | None = None
        self._sigma: float | None = None
        self._rejections = 0
        self._progress = StepProgress(settings.steps)
        self._best_controls = self.objective.physical(theta0).tolist()
        self._check = target_check(self.objective, task, settings.target, device)

    def _tunable(self, optimizer: Optimizer) -> TunableOptimizer | None:
        """The optimizer as a TunableOptimizer, or None; refuses settings that need one."""
        s = self.settings
        tunable = as_tunable(optimizer)
        if tunable is not None:
            return tunable
        wanted = [
            key
            for key, used in (
                ("calibration", s.calibration is not None and s.calibration.target_step),
                ("blocking", s.blocking is not None),
                ("recommend", s.recommend.policy == "average"),
            )
            if used
        ]
        if wanted:
            raise ConfigError(
                f"procedure.{wanted[0]}: optimizer {type(optimizer).__name__} has no learning "
                "rate, reject() or recommend() to work with; use sgd or adam, or drop the setting",
                key=("procedure", wanted[0]),
            )
        return None

    def controls(self) -> dict[str, float]:
        """The current control values by channel name."""
        values = self.objective.physical(self.optimizer.ask())
        return dict(zip(self.control_names, values.tolist(), strict=True))

    def _prepare(self) -> JSONDict:
        """Once, before the first step: calibration and the blocking threshold."""
        s = self.settings
        extra: JSONDict = {}
        theta = self.optimizer.ask()
        if self._check is not None:  # first: the loss's scale may come from this noise
            extra["target_start"] = self._check.check(theta, 0).as_dict()
        if s.calibration is not None:
            report = calibrate(
                self.objective,
                self.estimator,
                self.tunable,
                theta,
                s.calibration,
                rng=self._rng,
            )
            self._calibration = report.as_dict()
            self._sigma = report.sigma
            extra["calibration"] = self._calibration
        if s.blocking is not None:
            self._allowed_increase, self._sigma = blocking_threshold(
                self.objective, theta, s.blocking, self._sigma
            )
            extra["allowed_increase"] = self._allowed_increase
            extra["sigma"] = self._sigma
        self._prepared = True
        return extra

    @property
    def done(self) -> bool:
        reached = self._check is not None and self._check.reached_at is not None
        return self._progress.done or reached

    def _evaluations(self) -> int:
        """Evaluations so far, the held-out cases' checks included."""
        held = self._check.evaluations if self._check is not None else 0
        return self.objective.evaluations + held

    def _check_target(self, training_seconds: float) -> JSONDict:
        """After a step: check the target when a check is due (see `protocols.target`)."""
        check = self._check
        if check is None or self.settings.target is None:
            return {}
        steps = self._progress.steps_done
        record, reason = check.after_step(self._recommended(), steps, training_seconds)
        if reason is not None:
            record["restart"] = self._restart(check, reason)
        return record

    def _restart(self, check: TargetCheck, reason: str) -> JSONDict:
        """Start the optimizer again from a uniformly random point of the control box."""
        lower, upper = self.objective.lower, self.objective.upper
        theta = self._rng.uniform(lower, upper)
        self.optimizer.start(theta, lower, upper)
        check.restarted()
        log.info("restart %d: %s; new start %s", check.restarts, reason, np.round(theta, 4))
        return {
            "number": check.restarts,
            "reason": reason,
            "controls": self.objective.physical(theta).tolist(),
        }

    def _recommended(self) -> FloatArray:
        return self.optimizer.ask() if self.tunable is None else self.tunable.recommend()

    def outcome(self) -> tuple[bool, str] | None:
        """Whether the final measurement reached the task's target (None: no target, or not
        measured yet)."""
        if self._check is None:
            return None
        return self._check.outcome(self._progress.steps_done, self._progress.total, "step")

    def step(self) -> JSONDict:
        e0, t0 = self._evaluations(), self.objective.device_time()
        extra = {} if self._prepared else self._prepare()
        outcome = optimization_step(
            self.objective,
            self.estimator,
            self.optimizer,
            allowed_increase=self._allowed_increase,
            repeats=self.settings.blocking.repeats if self.settings.blocking else 1,
        )
        theta, estimate = outcome.theta, outcome.estimate
        self._rejections += outcome.rejected
        if self._progress.record(estimate.loss):
            self._best_controls = self.objective.physical(theta).tolist()
        extra.update(self._check_target(self.objective.device_time() - t0))
        return {
            "step": self._progress.steps_done,
            "loss": estimate.loss,
            "best_loss": self._progress.best_loss,
            "grad_norm": float(np.linalg.norm(estimate.gradient)),
            "evaluations": self._evaluations() - e0,  # calibration, blocking, checks included
            "device_seconds": self.objective.device_time() - t0,
            "device_time": self.objective.device_time(),
            "controls": self.objective.physical(theta).tolist(),
            "gradient": estimate.gradient.tolist(),  # in the optimizer's parameter space
            "gradient_stderr": _finite_or_none(estimate.stderr),  # where the estimator knows it
            "estimator_extras": {  # what it reports of itself (auto: its choice and prediction)
                k: float(v) for k, v in estimate.extras.items() if math.isfinite(v)
            },
            **outcome.record(),
            **extra,
        }

    def finish(self) -> JSONDict:
        """Measure the recommended controls unperturbed (counted like every other evaluation);
        with a target, also the best point checked, and keep the better."""
        theta = self._recommended()
        target: JSONDict = {}
        if self._check is not None:
            final = self._check.final(theta, self._progress.steps_done)
            theta, target = final.theta, {"target": self._check.summary(final)}
        outputs = np.mean(
            [self.objective.outputs(theta) for _ in range(self.settings.final_repeats)], axis=0
        )
        metrics = self.objective.task.metrics(outputs)
        return {
            "final_loss": self.objective.task.loss(outputs),
            "metrics": metrics,
            **target,
            "final_controls": dict(
                zip(self.control_names, self.objective.physical(theta).tolist(), strict=True)
            ),
            "recommend": self.settings.recommend.policy,
            **self.progress(),
        }

    def progress(self) -> JSONDict:
        """Where training stands, without measuring anything."""
        return {
            **self._progress.summary(),
            "best_controls": dict(zip(self.control_names, self._best_controls, strict=True)),
            "controls": self.controls(),
            "evaluations": self._evaluations(),
            "device_time": self.objective.device_time(),
            **({} if self._check is None else self._check.progress()),
            "learning_rate": None if self.tunable is None else self.tunable.learning_rate,
            "rejected_steps": self._rejections,
            "calibration": self._calibration,
            "noise_sigma": self._sigma,
            "allowed_increase": self._allowed_increase,
        }

    def state_dict(self) -> JSONDict:
        return {
            **self._progress.state_dict(),
            "best_controls": self._best_controls,
            "evaluations": self.objective.evaluations,
            "optimizer": self.optimizer.state_dict(),
            "estimator": self.estimator.state_dict(),
            "prepared": self._prepared,
            "calibration": self._calibration,
            "allowed_increase": self._allowed_increase,
            "sigma": self._sigma,
            "rejected_steps": self._rejections,
            "rng": generator_state(self._rng),
            "target": None if self._check is None else self._check.state_dict(),
        }

    def load_state_dict(self, state: JSONDict) -> None:
        self._progress.load_state_dict(state)
        self._best_controls = [float(v) for v in state["best_controls"]]
        self.objective.evaluations = int(state["evaluations"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.estimator.load_state_dict(state["estimator"])
        # checkpoints from before calibration/blocking lack these keys: nothing was calibrated
        self._prepared = bool(state.get("prepared", self._progress.steps_done > 0))
        self._calibration = state.get("calibration")
        self._allowed_increase = state.get("allowed_increase")
        self._sigma = state.get("sigma")
        self._rejections = int(state.get("rejected_steps", 0))
        if "rng" in state:
            restore_generator(self._rng, state["rng"])
        if self._check is not None and state.get("target") is not None:
            self._check.load_state_dict(state["target"])
        calibrated = self._calibration
        if calibrated is not None and calibrated.get("c") is not None:
            set_perturbation(self.estimator, float(calibrated["c"]))  # settings are not state


def _finite_or_none(values: FloatArray | None) -> list[float | None] | None:
    """Per-coordinate standard errors as JSON (a non-finite one as null)."""
    if values is None:
        return None
    return [float(v) if math.isfinite(v) else None for v in np.ravel(values)]
