"""Population methods as a procedure: CMA-ES, nevergrad or the DNPU papers' genetic algorithm.

    procedure: {type: population, method: cma, generations: 60, cma: {sigma0: 0.3, popsize: 8}}

One step is one generation: ask the method for its candidates, measure every one of them
through the `Objective` (so through the station's safety guard, counted like every other
evaluation, timed by the device clock), tell the losses. For pycma with its NoiseHandler a
generation includes the re-evaluations it asks for; nevergrad proposes one candidate at a time,
so a nevergrad generation is `nevergrad.per_generation` of them. The optimizers are the adapters
of `protocols.external` and `protocols.genetic`.

A task with a target (gate, classification) is judged as `TrainingProcedure` judges it
(`protocols.target`): the first step measures the start point (the noise sets the loss's
scale, before any loss is computed), checks of the method's recommendation are spaced to a
share of the device time, the run ends when a check and a fresh confirmation both reach the
target, and the end measures the recommendation and the best point checked and keeps the better.

Restarts: when a start stalls (the target check's rule), every method starts again from a
uniformly random point of the box with a fresh strategy (CMA-ES: a new distribution with the
same population size; GA: a new population; nevergrad: a new optimizer). When pycma stops by
its own criteria (tolx, tolfun, …) it restarts the IPOP way (pycma's `fmin` restart regime):
from a random point with the population size multiplied by `cma.incpopsize`, at most
`cma.restarts` times; after that the run ends early. nevergrad and the GA never stop by
themselves.

The checkpoint holds the optimizer's exact state (pickled for pycma and nevergrad, with a sha256
checked before it is unpickled; JSON for the GA), so a resumed run is the uninterrupted one.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from hil.core import ConfigError, Device, FloatArray, JSONDict, SeedLike, seed_sequence
from hil.core.types import generator_state, restore_generator
from protocols.base import MAX_REPEATS, MAX_STEPS, Objective, Task
from protocols.external import (
    CMAAdapter,
    NevergradAdapter,
    ResumablePopulationOptimizer,
)
from protocols.genetic import GeneticAdapter
from protocols.progress import Stepped, StepProgress
from protocols.starts import initial_controls
from protocols.target import TargetSettings, target_check

log = logging.getLogger(__name__)

Method = Literal["cma", "nevergrad", "genetic"]
METHODS: tuple[Method, ...] = ("cma", "nevergrad", "genetic")


class CMASettings(CMAAdapter.Settings):
    """pycma's settings (`protocols.external.CMAAdapter`) and its IPOP restarts."""

    restarts: int = Field(
        default=0,
        ge=0,
        le=1000,
        description="restarts when pycma stops by its own criteria (then the run ends)",
    )
    incpopsize: float = Field(
        default=2.0, ge=1.0, le=10.0, description="population size factor per such restart"
    )


class NevergradSettings(NevergradAdapter.Settings):
    """A nevergrad optimizer (`protocols.external.NevergradAdapter`) and its generation size."""

    per_generation: int = Field(
        default=8, ge=1, le=10_000, description="candidates measured per step (one at a time)"
    )


class PopulationProcedure(Stepped):
    """Optimise a device's controls on a task with a population method, one generation a step."""

    class Settings(BaseModel):
        model_config = ConfigDict(extra="forbid")

        method: Method = Field(description="cma (pycma), nevergrad, or genetic (the DNPU GA)")
        generations: int = Field(gt=0, le=MAX_STEPS, description="steps (generations), at most")
        cma: CMASettings = Field(default_factory=CMASettings, description="method cma")
        nevergrad: NevergradSettings = Field(
            default_factory=NevergradSettings,
            description="method nevergrad (budget: None plans for generations × per_generation)",
        )
        genetic: GeneticAdapter.Settings = Field(
            default_factory=GeneticAdapter.Settings, description="method genetic"
        )
        parameters: Literal["physical", "normalized"] = Field(
            default="normalized",
            description="'normalized': candidates are θ in [-1, 1] spanning each control's "
            "allowed range (sizes such as sigma0 are fractions of the range); 'physical': "
            "control values",
        )
        initial_controls: list[float] | dict[str, float] | None = Field(
            default=None,
            description="start values (list in channel order, or by name; missing names start "
            "at 0); default all zeros",
        )
        final_repeats: int = Field(
            default=1,
            ge=1,
            le=MAX_REPEATS,
            description="measurements of the recommendation averaged for the final loss",
        )
        target: TargetSettings | None = Field(
            default_factory=TargetSettings,
            description="tasks with a target (gate, classification): measured checks and the "
            "stop on reaching it (false: judge only the start and the end)",
        )

        @field_validator("target", mode="before")
        @classmethod
        def _false_means_off(cls, value: Any) -> Any:
            return None if value is False else value

        @model_validator(mode="after")
        def _one_method(self) -> PopulationProcedure.Settings:
            # by value, not by presence: a run's recorded config lists every section's defaults
            others = [
                m
                for m in METHODS
                if m != self.method and getattr(self, m) != type(getattr(self, m))()
            ]
            if others:
                raise ValueError(
                    f"`{others[0]}:` settings are given but method is {self.method!r}; "
                    f"set method: {others[0]}, or drop them"
                )
            return self

    def __init__(
        self,
        settings: Settings,
        *,
        device: Device,
        task: Task,
        estimator: object | None = None,
        optimizer: object | None = None,
        seed: SeedLike = None,
    ) -> None:
        for part, given in (("estimator", estimator), ("optimizer", optimizer)):
            if given is not None:
                raise ConfigError(
                    f"{part}: procedure population measures and ranks whole candidates itself "
                    f"(method {settings.method}); drop the `{part}:` section",
                    key=(part,),
                )
        self.settings = settings
        self.control_names = [c.name for c in device.spec.controls]
        if not self.control_names:
            raise ConfigError(
                f"device {device.spec.name!r} has no control channels to optimise",
                key=("procedure", "type"),
            )
        self.objective = Objective(device, task, normalized=settings.parameters == "normalized")
        adapter_seed, rng_seed = seed_sequence(seed).spawn(2)
        self._cma: CMAAdapter | None = None
        self.adapter = self._adapter(adapter_seed)
        theta0 = self.objective.parameters(
            initial_controls(settings.initial_controls, self.control_names, self.objective)
        )
        try:
            self.adapter.start(theta0, self.objective.lower, self.objective.upper)
        except ValueError as exc:
            raise ConfigError(f"procedure: {exc}", key=("procedure",)) from None
        self._theta0 = theta0
        self._rng = np.random.default_rng(rng_seed)
        self._prepared = False
        self._progress = StepProgress(settings.generations)
        self._best_controls = self.objective.physical(theta0).tolist()
        self._check = target_check(self.objective, task, settings.target, device)
        self._restarts = 0  # every new start
        self._library_restarts = 0  # pycma's IPOP restarts
        self._stopped: str | None = None  # why the method ended the run early
        self._projections = 0

    def _adapter(self, seed: np.random.SeedSequence) -> ResumablePopulationOptimizer:
        s = self.settings
        if s.method == "cma":
            self._cma = CMAAdapter(s.cma, seed=seed)
            return self._cma
        if s.method == "nevergrad":
            ng = s.nevergrad
            if ng.budget is None:
                ng = ng.model_copy(update={"budget": s.generations * ng.per_generation})
            try:
                return NevergradAdapter(ng, seed=seed)
            except ValueError as exc:
                raise ConfigError(
                    f"procedure.nevergrad.optimizer: {exc}",
                    key=("procedure", "nevergrad", "optimizer"),
                ) from None
        return GeneticAdapter(s.genetic, seed=seed)

    # -- Procedure -----------------------------------------------------------------------------

    @property
    def done(self) -> bool:
        reached = self._check is not None and self._check.reached_at is not None
        return self._progress.done or reached or self._stopped is not None

    def controls(self) -> dict[str, float]:
        """The recommended control values by channel name (nothing measured)."""
        values = self.objective.physical(self.adapter.recommend())
        return dict(zip(self.control_names, values.tolist(), strict=True))

    def step(self) -> JSONDict:
        """One generation: ask, measure every candidate, tell; then a target check if due."""
        e0 = self._evaluations()
        t0 = self.objective.device_time()
        extra: JSONDict = {}
        if not self._prepared:  # first: the loss's scale may come from this check's noise
            if self._check is not None:
                extra["target_start"] = self._check.check(self._theta0, 0).as_dict()
            self._prepared = True
        t1 = self.objective.device_time()
        points, losses = self._generation()
        values = np.array(losses)
        best = int(np.argmin(values))
        if self._progress.record(float(values[best])):
            self._best_controls = self.objective.physical(points[best]).tolist()
        extra.update(self._check_target(self.objective.device_time() - t1))
        if "restart" not in extra:
            extra.update(self._library_stop())
        return {
            "step": self._progress.steps_done,
            "loss": float(values[best]),  # the generation's lowest (noisy) loss
            "loss_median": float(np.median(values)),
            "loss_max": float(np.max(values)),
            "best_loss": self._progress.best_loss,
            "candidates": len(losses),
            "evaluations": self._evaluations() - e0,  # checks included
            "device_seconds": self.objective.device_time() - t0,
            "device_time": self.objective.device_time(),
            "controls": self.objective.physical(self.adapter.recommend()).tolist(),
            "optimizer": self.adapter.state(),
            **extra,
        }

    def _generation(self) -> tuple[list[FloatArray], list[float]]:
        """Ask/measure/tell until the method's generation is complete."""
        points: list[FloatArray] = []
        losses: list[float] = []
        rounds = 0
        while True:
            candidates = self.adapter.ask()
            measured = []
            for candidate in candidates:
                x = np.asarray(candidate, dtype=float)
                inside = self.objective.project(x)
                if not np.array_equal(inside, x):
                    self._projections += 1
                measured.append(self.objective(inside))
            self.adapter.tell(candidates, measured)
            points.extend(np.asarray(c, dtype=float) for c in candidates)
            losses.extend(measured)
            rounds += 1
            if self._generation_complete(rounds):
                return points, losses

    def _generation_complete(self, rounds: int) -> bool:
        if self._cma is not None:
            return self._cma.generation_complete
        if self.settings.method == "nevergrad":
            return rounds >= self.settings.nevergrad.per_generation
        return True

    def _evaluations(self) -> int:
        """Evaluations so far, the held-out cases' checks included."""
        held = self._check.evaluations if self._check is not None else 0
        return self.objective.evaluations + held

    def _check_target(self, seconds: float) -> JSONDict:
        """After a generation: check the recommendation when a check is due."""
        check = self._check
        if check is None or self.settings.target is None:
            return {}
        steps = self._progress.steps_done
        record, reason = check.after_step(self.adapter.recommend(), steps, seconds)
        if reason is not None:
            record["restart"] = self._restart(reason, grow=False)
        return record

    def _library_stop(self) -> JSONDict:
        """pycma stopped by its own criteria: an IPOP restart while allowed, else the end."""
        reason = self.adapter.stop_reason
        if reason is None or self.done:
            return {}
        if self._cma is not None and self._library_restarts < self.settings.cma.restarts:
            self._library_restarts += 1
            return {"restart": self._restart(f"pycma stopped: {reason}", grow=True)}
        self._stopped = reason
        log.info("the %s method stopped by its own criteria: %s", self.settings.method, reason)
        return {"stopped": reason}

    def _restart(self, reason: str, *, grow: bool) -> JSONDict:
        """Start the method again from a uniformly random point of the box (IPOP for pycma's
        own stops: a larger population)."""
        lower, upper = self.objective.lower, self.objective.upper
        theta = self._rng.uniform(lower, upper)
        record: JSONDict = {}
        if grow and self._cma is not None:
            popsize = round(int(self._cma.state()["popsize"]) * self.settings.cma.incpopsize)
            self._cma.settings = self._cma.settings.model_copy(update={"popsize": popsize})
            record["popsize"] = popsize
        self.adapter.start(theta, lower, upper)
        self._restarts += 1
        if self._check is not None:
            self._check.restarted()
        log.info("restart %d: %s; new start %s", self._restarts, reason, np.round(theta, 4))
        return {
            "number": self._restarts,
            "reason": reason,
            "controls": self.objective.physical(theta).tolist(),
            **record,
        }

    def outcome(self) -> tuple[bool, str] | None:
        """Whether the final measurement reached the task's target (None: no target, or not
        measured yet)."""
        if self._check is None:
            return None
        return self._check.outcome(self._progress.steps_done, self._progress.total, "generation")

    def finish(self) -> JSONDict:
        """Measure the recommendation unperturbed (counted like every other evaluation); with a
        target, also the best point checked, and keep the better."""
        theta = self.adapter.recommend()
        target: JSONDict = {}
        if self._check is not None:
            final = self._check.final(theta, self._progress.steps_done)
            theta, target = final.theta, {"target": self._check.summary(final)}
        outputs = np.mean(
            [self.objective.outputs(theta) for _ in range(self.settings.final_repeats)], axis=0
        )
        return {
            "final_loss": self.objective.task.loss(outputs),
            "metrics": self.objective.task.metrics(outputs),
            **target,
            "final_controls": dict(
                zip(self.control_names, self.objective.physical(theta).tolist(), strict=True)
            ),
            **self.progress(),
        }

    def progress(self) -> JSONDict:
        """Where the run stands, without measuring anything."""
        return {
            **self._progress.summary(),
            "method": self.settings.method,
            "best_controls": dict(zip(self.control_names, self._best_controls, strict=True)),
            "controls": self.controls(),
            "evaluations": self._evaluations(),
            "device_time": self.objective.device_time(),
            **({} if self._check is None else self._check.progress()),
            "restarts": self._restarts,
            "stopped": self._stopped,
            "projections": self._projections,
            "optimizer": self.adapter.state(),
        }

    def state_dict(self) -> JSONDict:
        return {
            **self._progress.state_dict(),
            "method": self.settings.method,
            "best_controls": self._best_controls,
            "evaluations": self.objective.evaluations,
            "optimizer": self.adapter.checkpoint(),
            "popsize": None if self._cma is None else self._cma.settings.popsize,
            "prepared": self._prepared,
            "rng": generator_state(self._rng),
            "target": None if self._check is None else self._check.state_dict(),
            "restarts": self._restarts,
            "library_restarts": self._library_restarts,
            "stopped": self._stopped,
            "projections": self._projections,
        }

    def load_state_dict(self, state: JSONDict) -> None:
        if state["method"] != self.settings.method:
            raise ValueError(
                f"the checkpoint is of method {state['method']!r}, the config names "
                f"{self.settings.method!r}"
            )
        self._progress.load_state_dict(state)
        self._best_controls = [float(v) for v in state["best_controls"]]
        self.objective.evaluations = int(state["evaluations"])
        self.adapter.restore(state["optimizer"])
        if self._cma is not None:  # an IPOP restart may have grown the population
            self._cma.settings = self._cma.settings.model_copy(update={"popsize": state["popsize"]})
        self._prepared = bool(state["prepared"])
        restore_generator(self._rng, state["rng"])
        if self._check is not None and state["target"] is not None:
            self._check.load_state_dict(state["target"])
        self._restarts = int(state["restarts"])
        self._library_restarts = int(state["library_restarts"])
        self._stopped = state["stopped"]
        self._projections = int(state["projections"])
