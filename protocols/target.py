"""The measured stopping rule of a training run on a task with a target (a gate, an accuracy).

Every check measures the controls unperturbed `repeats` times, judges the mean outputs with the
noise of one measurement (pooled over every check's repeats, so it sharpens as the run goes),
and, for a task with held-out cases, judges those with the threshold fitted on the training
cases. Checks cost device time like any evaluation, so the procedure spaces them: a check is due
when the device seconds spent training since the last one reach the last check's cost divided by
`budget` (checks take at most that share of the run). The first measurement, at the starting
point, also gives the noise the loss's margin scale is set from, once (a scale that moved
during the run would change the loss under the optimizer).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from hil.core import ConfigError, Device, FloatArray, IntArray, JSONDict
from protocols.base import MAX_REPEATS, JudgedTask, Objective, Task, Verdict


class RestartSettings(BaseModel):
    """When a run starts again from a new random point (`procedure.target.restart:`)."""

    model_config = ConfigDict(extra="forbid")

    patience: int = Field(
        default=6,
        ge=1,
        le=1_000_000,
        description="checks in a row that do not improve this start's best score",
    )
    flat: float = Field(
        default=1.0,
        ge=0,
        description="outputs spanning fewer than this many σ over the cases carry no signal "
        "(stuck, e.g. all near 0 nA)",
    )
    saturated: float = Field(
        default=0.01,
        ge=0,
        lt=0.5,
        description="an output within this fraction of its channel's range from a bound is "
        "saturated (channels with a finite range)",
    )
    max_restarts: int = Field(default=20, ge=0, le=100_000)


class TargetSettings(BaseModel):
    """How a run on a task with a target checks it (`procedure.target:`)."""

    model_config = ConfigDict(extra="forbid")

    repeats: int = Field(
        default=4,
        ge=2,
        le=MAX_REPEATS,
        description="unperturbed measurements per check; their spread measures the noise",
    )
    budget: float = Field(
        default=0.1,
        gt=0,
        le=1,
        description="most share of the device time the checks may take; sets their interval",
    )
    stop: bool = Field(default=True, description="end the run when the target is reached")
    restart: RestartSettings | None = Field(
        default_factory=RestartSettings,
        description="start again from a new random point when this start stalls or its "
        "outputs are flat or saturated (false: never)",
    )

    @field_validator("restart", mode="before")
    @classmethod
    def _false_means_off(cls, value: Any) -> Any:
        return None if value is False else value


@dataclass(frozen=True)
class Judgement:
    """One check: where, what it found, what it cost."""

    step: int
    theta: FloatArray  # in the optimizer's parameter space
    outputs: FloatArray  # training cases, mean of the repeats
    held: FloatArray | None  # held-out cases, mean of the repeats (None: none held out)
    labels: IntArray  # class of each training case
    verdict: Verdict
    validation: Verdict | None
    noise: float

    @property
    def reached(self) -> bool:
        """The target on the held-out cases where there are any, else on the training cases."""
        judged = self.validation if self.validation is not None else self.verdict
        return judged.reached

    @property
    def score(self) -> float:
        judged = self.validation if self.validation is not None else self.verdict
        return judged.score

    @property
    def detail(self) -> str:
        judged = self.validation if self.validation is not None else self.verdict
        return judged.detail

    def as_dict(self) -> JSONDict:
        return {
            "step": self.step,
            "reached": self.reached,
            "score": _finite(self.score),
            "detail": self.detail,
            "noise": self.noise,
            "threshold": _finite(self.verdict.threshold),
            "case_outputs": [_finite(v) for v in np.ravel(self.outputs)],
            "case_labels": [int(v) for v in self.labels],
            "metrics": {k: _finite(v) for k, v in self.verdict.metrics.items()},
            "validation": None
            if self.validation is None
            else {
                "reached": self.validation.reached,
                "score": _finite(self.validation.score),
                "detail": self.validation.detail,
                "metrics": {k: _finite(v) for k, v in self.validation.metrics.items()},
            },
            "controls_theta": [float(v) for v in self.theta],
        }


class TargetCheck:
    """Checks a judged task's target on re-measured outputs, spaced to a share of the device
    time; keeps the best point it has seen and the pooled noise (see the module docstring)."""

    def __init__(
        self, objective: Objective, task: JudgedTask, settings: TargetSettings, device: Device
    ) -> None:
        self.objective = objective
        self.task = task
        self.settings = settings
        self.held_out = task.validation
        self.validation = (
            None
            if self.held_out is None
            else Objective(device, self.held_out, normalized=objective.normalized)
        )
        self._squares = 0.0  # pooled Σ (x − x̄)² of every check's repeats, and its dof
        self._dof = 0
        self._since = 0.0  # device seconds of training since the last check
        self._cost = 0.0  # device seconds the last check took
        self._scale_noise: float | None = None
        self.checks = 0
        self.evaluations = 0  # of the held-out cases (the training objective counts its own)
        self.best: Judgement | None = None
        self.last: Judgement | None = None
        self.reached_at: int | None = None  # the step whose check and confirmation reached it
        self.concluded: Judgement | None = None  # the final measurement (`final`)
        self.restarts = 0
        self._start_best = -math.inf  # this start's best score, and checks since it improved
        self._stale = 0
        outputs = device.spec.outputs
        self._out_lower, self._out_upper = (
            np.array([outputs[c].min for c in objective.output_columns], dtype=float),
            np.array([outputs[c].max for c in objective.output_columns], dtype=float),
        )

    @property
    def noise(self) -> float | None:
        """σ of one unperturbed measurement of a case, pooled over every check (None: none)."""
        return math.sqrt(self._squares / self._dof) if self._dof > 0 else None

    def spent(self, seconds: float) -> None:
        """Count device seconds of training (for the spacing of checks)."""
        self._since += max(0.0, seconds)

    @property
    def due(self) -> bool:
        return self.checks == 0 or self._since * self.settings.budget >= self._cost

    def check(self, theta: FloatArray, step: int) -> Judgement:
        """Measure θ `repeats` times, judge it (held-out cases with the training threshold)."""
        start = self.objective.device_time()
        runs = np.array([self.objective.outputs(theta) for _ in range(self.settings.repeats)])
        self._pool(runs)
        noise = self.noise
        assert noise is not None  # repeats ≥ 2 pooled
        if noise <= 0:  # a noiseless device (a simulator without noise): judge exactly
            noise = float(np.finfo(float).tiny)
        if self.checks == 0:  # the loss's scale is set once, from the first check
            self.task.use_noise(noise)
            self._scale_noise = noise
        outputs: FloatArray = runs.mean(axis=0)
        held: FloatArray | None = None
        if self.validation is not None:
            repeats = self.settings.repeats
            held = np.mean([self.validation.outputs(theta) for _ in range(repeats)], axis=0)
            self.evaluations += repeats
        judgement = self._judge(step, np.array(theta, dtype=float), outputs, held, noise)
        self.checks += 1
        self._cost = self.objective.device_time() - start
        self._since = 0.0
        self.last = judgement
        if self.best is None or (judgement.reached, judgement.score) > (
            self.best.reached,
            self.best.score,
        ):
            self.best = judgement
        return judgement

    def stalled(self, judgement: Judgement) -> str | None:
        """Why this start should be abandoned after `judgement` (None: carry on): its outputs
        are flat (no signal to train on) or saturated, or its score stopped improving."""
        restart = self.settings.restart
        if restart is None or judgement.reached or self.restarts >= restart.max_restarts:
            return None
        if judgement.score > self._start_best:
            self._start_best, self._stale = judgement.score, 0
        else:
            self._stale += 1
        outputs = judgement.outputs
        span = float(np.max(outputs) - np.min(outputs))
        if span < restart.flat * judgement.noise:
            return f"outputs flat: they span {span:.3g}, under {restart.flat:g}σ"
        width = self._out_upper - self._out_lower
        finite = np.isfinite(width)
        if np.any(finite):
            room = restart.saturated * width[finite]
            near = (outputs[:, finite] <= self._out_lower[finite] + room) | (
                outputs[:, finite] >= self._out_upper[finite] - room
            )
            if np.any(near):
                return f"outputs saturated: {int(np.sum(near))} case(s) at a bound of the range"
        if self._stale >= restart.patience:
            return f"no better score in {self._stale} checks"
        return None

    def restarted(self) -> None:
        """Count a restart; the new start's stall counters begin afresh."""
        self.restarts += 1
        self._start_best, self._stale = -math.inf, 0

    def after_step(
        self, theta: FloatArray, step: int, seconds: float
    ) -> tuple[JSONDict, str | None]:
        """Count `seconds` of training and check θ when a check is due: (the record's fields,
        why this start should be abandoned or None — `stalled`). A check that reached the
        target is the luckiest of many, so `reached_at` is set (the run stops) only if a fresh
        one agrees."""
        self.spent(seconds)
        if not self.due:
            return {}, None
        start = self.objective.device_time()
        judgement = self.check(theta, step)
        record: JSONDict = {}
        if judgement.reached and self.settings.stop:
            confirmation = self.check(theta, step)
            record["target_confirmation"] = confirmation.as_dict()
            if confirmation.reached:
                self.reached_at = step
        seconds_checking = self.objective.device_time() - start
        record["target"] = {**judgement.as_dict(), "device_seconds": seconds_checking}
        return record, self.stalled(judgement)

    def final(self, theta: FloatArray, step: int) -> Judgement:
        """The end: judge θ and the best point checked (each measured again), keep the better."""
        best = self.best
        final = self.check(theta, step)
        if best is not None and not np.array_equal(best.theta, theta):
            again = self.check(best.theta, best.step)
            if (again.reached, again.score) > (final.reached, final.score):
                final = again
        self.concluded = final
        return final

    def summary(self, final: Judgement) -> JSONDict:
        """The summary's `target` entry."""
        return {**final.as_dict(), "checks": self.checks, "restarts": self.restarts}

    def outcome(self, steps: int, total: int, unit: str) -> tuple[bool, str] | None:
        """(reached, the one line a run's outcome says: where, when, the verdict) once `final`
        has measured; None before."""
        final = self.concluded
        if final is None:
            return None
        where = "the best point checked" if final.step != steps else "the end"
        when = (
            f"stopped at {unit} {self.reached_at} of {total}"
            if self.reached_at is not None
            else f"{steps} {unit}s"
        )
        verb = "target reached" if final.reached else "target NOT reached"
        return final.reached, f"{verb} at {where} ({when}): {final.detail}"

    def progress(self) -> JSONDict:
        """The checks so far: how many, the best, and where the target was reached."""
        best = self.best
        return {
            "target_checks": self.checks,
            "restarts": self.restarts,
            "target_reached_at": self.reached_at,
            "target_best": None
            if best is None
            else {"step": best.step, "reached": best.reached, "detail": best.detail},
        }

    def _pool(self, runs: FloatArray) -> None:
        """Add the repeats' spread around their per-case means to the pooled noise."""
        centred = runs - runs.mean(axis=0)
        self._squares += float(np.sum(centred**2))
        self._dof += (runs.shape[0] - 1) * int(np.prod(runs.shape[1:]))

    def state_dict(self) -> JSONDict:
        return {
            "squares": self._squares,
            "dof": self._dof,
            "since": self._since,
            "cost": self._cost,
            "checks": self.checks,
            "reached_at": self.reached_at,
            "restarts": self.restarts,
            "start_best": self._start_best if math.isfinite(self._start_best) else None,
            "stale": self._stale,
            "scale_noise": self._scale_noise,
            "evaluations": self.evaluations,
            "best": None if self.best is None else _judgement_state(self.best),
            "last": None if self.last is None else _judgement_state(self.last),
        }

    def load_state_dict(self, state: JSONDict) -> None:
        self._squares = float(state["squares"])
        self._dof = int(state["dof"])
        self._since = float(state["since"])
        self._cost = float(state["cost"])
        self.checks = int(state["checks"])
        self.reached_at = state["reached_at"]
        self.restarts = int(state["restarts"])
        self._start_best = -math.inf if state["start_best"] is None else state["start_best"]
        self._stale = int(state["stale"])
        self.evaluations = int(state["evaluations"])
        self._scale_noise = state["scale_noise"]
        if self._scale_noise is not None:  # the task is rebuilt from the config, not its scale
            self.task.use_noise(float(self._scale_noise))
        self.best = None if state["best"] is None else self._rejudge(state["best"])
        self.last = None if state["last"] is None else self._rejudge(state["last"])

    def _judge(
        self,
        step: int,
        theta: FloatArray,
        outputs: FloatArray,
        held: FloatArray | None,
        noise: float,
    ) -> Judgement:
        """The verdicts on measured outputs (held-out cases judged with the training threshold)."""
        verdict = self.task.judge(outputs, noise)
        validation = None
        if self.held_out is not None and held is not None:
            validation = self.held_out.judge(held, noise, verdict.threshold)
        return Judgement(step, theta, outputs, held, self.task.labels, verdict, validation, noise)

    def _rejudge(self, saved: JSONDict) -> Judgement:
        """A saved judgement, judged again from its saved outputs (verdicts are not state)."""
        held = saved["validation_outputs"]
        return self._judge(
            int(saved["step"]),
            np.asarray(saved["theta"], dtype=float),
            np.asarray(saved["outputs"], dtype=float),
            None if held is None else np.asarray(held, dtype=float),
            float(saved["noise"]),
        )


def _judgement_state(judgement: Judgement) -> JSONDict:
    return {
        "step": judgement.step,
        "theta": judgement.theta.tolist(),
        "outputs": judgement.outputs.tolist(),
        "noise": judgement.noise,
        "validation_outputs": None if judgement.held is None else judgement.held.tolist(),
    }


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def target_check(
    objective: Objective, task: Task, target: TargetSettings | None, device: Device
) -> TargetCheck | None:
    """The target check of a procedure on `task` (None for a task without a target; a
    `target:` other than the defaults on such a task is refused). `target` None: judge only
    the start and the end."""
    if not isinstance(task, JudgedTask):
        if target is not None and target != TargetSettings():
            raise ConfigError(
                f"procedure.target: task {type(task).__name__} has no target to check; "
                "use a task with one (gate, classification) or drop `target`",
                key=("procedure", "target"),
            )
        return None
    return TargetCheck(objective, task, target or TargetSettings(stop=False), device)
