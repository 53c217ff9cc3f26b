"""First-order ask/tell optimizers on a box: SGD (with momentum / Nesterov) and Adam.

Each step is followed by a projection onto [lower, upper], so every iterate is a valid set of
control voltages. The learning rate follows a schedule (`protocols.schedules`, constant by
default) over a horizon (the planned number of steps), can be reset by calibration
(`set_learning_rate`), and the last step can be taken back (`reject`, for blocking). What to
report as the result is a policy (`recommend`): the last iterate, or the Polyak–Ruppert mean of
the iterates from some step on. The state (iterate, box, moments, count, rate, averages) goes
into checkpoints as plain JSON.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Literal, Protocol, cast

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from hil.core import FloatArray, JSONDict
from protocols.base import MAX_STEPS, Optimizer
from protocols.schedules import ConstantSchedule, Schedule


def _bounds_to_json(values: FloatArray) -> list[float | None]:
    """Infinite bounds become null so the state stays strict JSON."""
    return [float(v) if math.isfinite(v) else None for v in values]


def _bounds_from_json(values: list[float | None], missing: float) -> FloatArray:
    return np.array([missing if v is None else float(v) for v in values], dtype=float)


class Recommendation(BaseModel):
    """Which point an optimizer reports as its result.

    'last': the current iterate. 'average': the Polyak–Ruppert mean of the iterates x_k for
    k ≥ the start step (x_0 is the start point, x_k the iterate after k steps), which averages
    out the noise a decaying-gain method leaves in its last iterate. A rejected step repeats
    the iterate it returned to, as the iterate sequence does. Written `recommend: average` for
    short.
    """

    model_config = ConfigDict(extra="forbid")

    policy: Literal["last", "average"] = "last"
    average_from: float = Field(
        default=0.5,
        ge=0,
        lt=1,
        description="'average': iterates from this fraction of the horizon on (0.5: 2nd half)",
    )
    average_from_step: int | None = Field(
        default=None,
        ge=0,
        le=MAX_STEPS,
        description="'average': from this step on (overrides average_from)",
    )

    @model_validator(mode="before")
    @classmethod
    def _policy_alone(cls, data: Any) -> Any:
        return {"policy": data} if isinstance(data, str) else data

    def start_step(self, horizon: int | None) -> int:
        """The first k whose iterate enters the mean."""
        if self.average_from_step is not None:
            return self.average_from_step
        if horizon is None:
            return 0
        return math.ceil(self.average_from * horizon)


class TunableOptimizer(Optimizer, Protocol):
    """An optimizer with the controls calibration, blocking and recommendation need."""

    @property
    def iterations(self) -> int: ...

    @property
    def learning_rate(self) -> float:
        """The rate the next step will use (base rate × schedule at the step count)."""
        ...

    @property
    def base_learning_rate(self) -> float:
        """The rate the schedule scales."""
        ...

    @property
    def horizon(self) -> int | None: ...

    @horizon.setter
    def horizon(self, steps: int | None) -> None: ...

    def set_learning_rate(self, lr: float) -> None: ...

    def first_step_rate(self, target_step: float, gradient_scale: float) -> float: ...

    def reject(self) -> None: ...

    def set_recommendation(self, recommendation: Recommendation) -> None: ...

    def recommend(self) -> FloatArray: ...


_TUNABLE_MEMBERS = (
    "iterations",
    "learning_rate",
    "base_learning_rate",
    "horizon",
    "set_learning_rate",
    "first_step_rate",
    "reject",
    "set_recommendation",
    "recommend",
)


def as_tunable(optimizer: Optimizer) -> TunableOptimizer | None:
    """The optimizer if it has every TunableOptimizer member, else None.

    Looked up on the class, so no property is evaluated (a schedule without its horizon would
    raise); isinstance on a protocol with properties would evaluate them.
    """
    cls = type(optimizer)
    if all(hasattr(cls, name) for name in _TUNABLE_MEMBERS):
        return cast(TunableOptimizer, optimizer)
    return None


class BoxOptimizer:
    """Shared bookkeeping: the box, the iterate, the step count, projection, learning-rate
    schedule, step rejection, recommendation and checkpoints.

    Subclasses implement `_reset` (fresh moments for dimension n), `_step` (the unconstrained
    update for a gradient at a learning rate) and `_moments_state` / `_load_moments`.
    """

    normalizes_gradient: ClassVar[bool] = False
    """True when the first step's size does not depend on the gradient's scale (Adam)."""

    def __init__(self, lr: float = 0.01, schedule: Schedule | None = None) -> None:
        self._x: FloatArray | None = None
        self._lower: FloatArray = np.zeros(0)
        self._upper: FloatArray = np.zeros(0)
        self._iterations = 0
        self._lr = float(lr)
        self.schedule: Schedule = schedule if schedule is not None else ConstantSchedule()
        self._horizon: int | None = None
        self._previous: FloatArray | None = None
        self._rejections = 0
        self._average: FloatArray = np.zeros(0)
        self._average_count = 0
        self.recommendation = Recommendation()

    # -- ask/tell ------------------------------------------------------------------------------

    def start(self, x0: FloatArray, lower: FloatArray, upper: FloatArray) -> None:
        """Begin at x0, which must be finite and inside [lower, upper]."""
        x = np.array(x0, dtype=float)
        lo = np.array(lower, dtype=float)
        hi = np.array(upper, dtype=float)
        if x.ndim != 1 or lo.shape != x.shape or hi.shape != x.shape:
            raise ValueError(
                f"x0, lower and upper must be vectors of one length, got shapes "
                f"{x.shape}, {lo.shape}, {hi.shape}"
            )
        for i in range(x.size):
            if np.isnan(lo[i]) or np.isnan(hi[i]) or not lo[i] <= hi[i]:
                raise ValueError(f"coordinate {i}: lower {lo[i]} must not exceed upper {hi[i]}")
            if not math.isfinite(x[i]) or not lo[i] <= x[i] <= hi[i]:
                raise ValueError(
                    f"x0[{i}] = {x[i]} is outside its range [{lo[i]}, {hi[i]}]; "
                    "start from a finite point inside the box"
                )
        self.schedule.learning_rate(self._lr, 0, self._horizon)  # a schedule lacking A says so
        self._x, self._lower, self._upper = x, lo, hi
        self._iterations = 0
        self._previous, self._rejections = None, 0
        self._average, self._average_count = np.zeros(x.size), 0
        self._reset(x.size)

    def ask(self) -> FloatArray:
        """The current iterate (a copy), where the next gradient should be estimated."""
        return self._require_x().copy()

    def tell(self, gradient: FloatArray) -> None:
        """Step with the gradient at the asked point, then project onto the box."""
        x = self._require_x()
        g = np.asarray(gradient, dtype=float)
        if g.shape != x.shape:
            raise ValueError(f"gradient: expected shape {x.shape}, got {g.shape}")
        bad = np.flatnonzero(~np.isfinite(g))
        if bad.size:
            i = int(bad[0])
            raise ValueError(f"gradient[{i}] = {g[i]} is not finite; the step was not taken")
        lr = self.learning_rate
        if self._iterations >= self.recommendation.start_step(self._horizon):
            self._average_count += 1
            self._average = self._average + (x - self._average) / self._average_count
        self._iterations += 1
        self._previous = x
        self._x = np.clip(x - self._step(g, lr), self._lower, self._upper)

    def reject(self) -> None:
        """Take the last step back: the iterate returns to where it was before `tell`.

        The step count, the moments and the schedule keep going (the gradient seen there is
        still information, as in Spall's and qiskit's blocking); only one step can be undone.
        """
        self._require_x()
        if self._previous is None:
            raise RuntimeError(
                f"{type(self).__name__}.reject(): no step to take back (call it once, after tell)"
            )
        self._x, self._previous = self._previous, None
        self._rejections += 1

    @property
    def x(self) -> FloatArray:
        """The current iterate (a copy)."""
        return self.ask()

    @property
    def iterations(self) -> int:
        """Number of steps taken (tells), rejected ones included."""
        return self._iterations

    @property
    def rejections(self) -> int:
        """Number of steps taken back with `reject`."""
        return self._rejections

    def project(self, x: FloatArray) -> FloatArray:
        """The closest point of the box."""
        self._require_x()
        projected: FloatArray = np.clip(np.asarray(x, dtype=float), self._lower, self._upper)
        return projected

    # -- learning rate ---------------------------------------------------------------------------

    @property
    def base_learning_rate(self) -> float:
        """The rate the schedule scales (settings.lr until `set_learning_rate`)."""
        return self._lr

    @property
    def learning_rate(self) -> float:
        """The rate the next step will use: the schedule at the current step count."""
        return self.schedule.learning_rate(self._lr, self._iterations, self._horizon)

    def set_learning_rate(self, lr: float) -> None:
        """Replace the base rate (what calibration does); the schedule scales it from now on."""
        if not (math.isfinite(lr) and lr > 0):
            raise ValueError(f"learning rate must be finite and > 0, got {lr}")
        self._lr = float(lr)

    @property
    def horizon(self) -> int | None:
        """The planned number of steps, for schedules and the average's start (None: unknown)."""
        return self._horizon

    @horizon.setter
    def horizon(self, steps: int | None) -> None:
        if steps is not None and steps < 1:
            raise ValueError(f"horizon must be >= 1 steps, got {steps}")
        self._horizon = steps

    def first_step_rate(self, target_step: float, gradient_scale: float) -> float:
        """The base rate whose first step moves a coordinate with |gradient| = gradient_scale
        by target_step (plain gradient descent: target / scale)."""
        return target_step / gradient_scale

    # -- recommendation --------------------------------------------------------------------------

    def set_recommendation(self, recommendation: Recommendation) -> None:
        """Choose the policy of `recommend` (set it before the averaging starts)."""
        self.recommendation = recommendation

    def recommend(self) -> FloatArray:
        """The point to report: the last iterate, or the running mean of the iterates."""
        x = self.ask()
        if self.recommendation.policy == "last" or self._average_count == 0:
            return x
        n = self._average_count
        mean: FloatArray = self._average + (x - self._average) / (n + 1)
        return self.project(mean)  # rounding only: the mean of points in a box is in the box

    # -- checkpoint ----------------------------------------------------------------------------

    def state_dict(self) -> JSONDict:
        """Iterate, box, step count, rate, averages and moments (JSON, exact round trip)."""
        if self._x is None:
            return {"started": False, "lr": self._lr, "horizon": self._horizon}
        return {
            "started": True,
            "x": self._x.tolist(),
            "lower": _bounds_to_json(self._lower),
            "upper": _bounds_to_json(self._upper),
            "iterations": self._iterations,
            "lr": self._lr,
            "horizon": self._horizon,
            "previous": None if self._previous is None else self._previous.tolist(),
            "rejections": self._rejections,
            "average": self._average.tolist(),
            "average_count": self._average_count,
            **self._moments_state(),
        }

    def load_state_dict(self, state: JSONDict) -> None:
        """Restore a `state_dict`; states from before schedules (no 'lr', 'average', ...) load
        with the configured rate, no step to reject and an empty average."""
        self._lr = float(state.get("lr", self._lr))
        self._horizon = state.get("horizon", self._horizon)
        if not state.get("started", False):
            self._x, self._iterations = None, 0
            return
        x = np.array(state["x"], dtype=float)
        lower = _bounds_from_json(state["lower"], -math.inf)
        upper = _bounds_from_json(state["upper"], math.inf)
        if lower.shape != x.shape or upper.shape != x.shape:
            raise ValueError("optimizer state: x, lower and upper differ in length")
        if not (np.all(lower <= x) and np.all(x <= upper)):
            raise ValueError("optimizer state: x lies outside [lower, upper]")
        self._x, self._lower, self._upper = x, lower, upper
        self._iterations = int(state["iterations"])
        previous = state.get("previous")
        self._previous = None if previous is None else _vector(state, "previous", x.size)
        self._rejections = int(state.get("rejections", 0))
        if "average" in state:
            self._average = _vector(state, "average", x.size)
            self._average_count = int(state.get("average_count", 0))
        else:
            self._average, self._average_count = np.zeros(x.size), 0
        self._load_moments(state, x.size)

    # -- for subclasses ------------------------------------------------------------------------

    def _reset(self, n: int) -> None:
        raise NotImplementedError

    def _step(self, gradient: FloatArray, lr: float) -> FloatArray:
        raise NotImplementedError

    def _moments_state(self) -> JSONDict:
        raise NotImplementedError

    def _load_moments(self, state: JSONDict, n: int) -> None:
        raise NotImplementedError

    def _require_x(self) -> FloatArray:
        if self._x is None:
            raise RuntimeError(f"{type(self).__name__}: call start(x0, lower, upper) first")
        return self._x


def _vector(state: JSONDict, key: str, n: int) -> FloatArray:
    v = np.array(state[key], dtype=float)
    if v.shape != (n,):
        raise ValueError(f"optimizer state: {key!r} has shape {v.shape}, expected ({n},)")
    return v


class SGD(BoxOptimizer):
    """Projected gradient descent with optional heavy-ball or Nesterov momentum.

    v ← μ·v + g; the step is lr·v, or lr·(g + μ·v) with Nesterov.
    """

    class Settings(BaseModel):
        """Learning rate and momentum."""

        model_config = ConfigDict(extra="forbid")

        lr: float = Field(default=0.01, gt=0, description="learning rate, V per unit gradient")
        schedule: Schedule = Field(
            default_factory=ConstantSchedule, description="how the rate changes over the steps"
        )
        momentum: float = Field(default=0.0, ge=0, lt=1)
        nesterov: bool = False

        @model_validator(mode="after")
        def _nesterov_needs_momentum(self) -> SGD.Settings:
            if self.nesterov and self.momentum == 0:
                raise ValueError("nesterov: true needs a momentum above 0")
            return self

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings if settings is not None else self.Settings()
        super().__init__(self.settings.lr, self.settings.schedule)
        self._velocity: FloatArray = np.zeros(0)

    def _reset(self, n: int) -> None:
        self._velocity = np.zeros(n)

    def first_step_rate(self, target_step: float, gradient_scale: float) -> float:
        """The first step is lr·g, or lr·(1 + μ)·g with Nesterov."""
        s = self.settings
        boost = 1.0 + s.momentum if s.nesterov else 1.0
        return target_step / (boost * gradient_scale)

    def _step(self, gradient: FloatArray, lr: float) -> FloatArray:
        s = self.settings
        self._velocity = s.momentum * self._velocity + gradient
        direction = gradient + s.momentum * self._velocity if s.nesterov else self._velocity
        step: FloatArray = lr * direction
        return step

    def _moments_state(self) -> JSONDict:
        return {"velocity": self._velocity.tolist()}

    def _load_moments(self, state: JSONDict, n: int) -> None:
        self._velocity = _vector(state, "velocity", n)


class Adam(BoxOptimizer):
    """Projected Adam (Kingma & Ba) with bias-corrected first and second moments."""

    class Settings(BaseModel):
        """Learning rate, moment decay rates, and the denominator's floor."""

        model_config = ConfigDict(extra="forbid")

        lr: float = Field(default=0.01, gt=0, description="learning rate, V per step (roughly)")
        schedule: Schedule = Field(
            default_factory=ConstantSchedule, description="how the rate changes over the steps"
        )
        beta1: float = Field(default=0.9, ge=0, lt=1)
        beta2: float = Field(default=0.999, ge=0, lt=1)
        eps: float = Field(default=1e-8, gt=0)

    normalizes_gradient: ClassVar[bool] = True

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings if settings is not None else self.Settings()
        super().__init__(self.settings.lr, self.settings.schedule)
        self._m: FloatArray = np.zeros(0)
        self._v: FloatArray = np.zeros(0)

    def _reset(self, n: int) -> None:
        self._m = np.zeros(n)
        self._v = np.zeros(n)

    def first_step_rate(self, target_step: float, gradient_scale: float) -> float:
        """Adam's bias-corrected first step is lr·sign(g): lr = target, whatever the scale."""
        return target_step

    def _step(self, gradient: FloatArray, lr: float) -> FloatArray:
        s = self.settings
        t = self.iterations  # already counts this step
        self._m = s.beta1 * self._m + (1 - s.beta1) * gradient
        self._v = s.beta2 * self._v + (1 - s.beta2) * gradient**2
        m_hat = self._m / (1 - s.beta1**t)
        v_hat = self._v / (1 - s.beta2**t)
        step: FloatArray = lr * m_hat / (np.sqrt(v_hat) + s.eps)
        return step

    def _moments_state(self) -> JSONDict:
        return {"m": self._m.tolist(), "v": self._v.tolist()}

    def _load_moments(self, state: JSONDict, n: int) -> None:
        self._m = _vector(state, "m", n)
        self._v = _vector(state, "v", n)
