"""First-order ask/tell optimizers on a box: SGD (with momentum / Nesterov) and Adam.

Each step is followed by a projection onto [lower, upper], so every iterate is a valid set of
control voltages. The state (iterate, box, moments, count) goes into checkpoints as plain JSON.
"""

from __future__ import annotations

import math

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from hil.core import FloatArray, JSONDict


def _bounds_to_json(values: FloatArray) -> list[float | None]:
    """Infinite bounds become null so the state stays strict JSON."""
    return [float(v) if math.isfinite(v) else None for v in values]


def _bounds_from_json(values: list[float | None], missing: float) -> FloatArray:
    return np.array([missing if v is None else float(v) for v in values], dtype=float)


class BoxOptimizer:
    """Shared bookkeeping: the box, the iterate, the step count, projection and checkpoints.

    Subclasses implement `_reset` (fresh moments for dimension n), `_step` (the unconstrained
    update direction times the learning rate) and `_moments_state` / `_load_moments`.
    """

    def __init__(self) -> None:
        self._x: FloatArray | None = None
        self._lower: FloatArray = np.zeros(0)
        self._upper: FloatArray = np.zeros(0)
        self._iterations = 0

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
        self._x, self._lower, self._upper = x, lo, hi
        self._iterations = 0
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
        self._iterations += 1
        self._x = np.clip(x - self._step(g), self._lower, self._upper)

    @property
    def x(self) -> FloatArray:
        """The current iterate (a copy)."""
        return self.ask()

    @property
    def iterations(self) -> int:
        """Number of steps taken (tells)."""
        return self._iterations

    def project(self, x: FloatArray) -> FloatArray:
        """The closest point of the box."""
        self._require_x()
        projected: FloatArray = np.clip(np.asarray(x, dtype=float), self._lower, self._upper)
        return projected

    # -- checkpoint ----------------------------------------------------------------------------

    def state_dict(self) -> JSONDict:
        """Iterate, box, step count and moments (JSON-serialisable, exact round trip)."""
        if self._x is None:
            return {"started": False}
        return {
            "started": True,
            "x": self._x.tolist(),
            "lower": _bounds_to_json(self._lower),
            "upper": _bounds_to_json(self._upper),
            "iterations": self._iterations,
            **self._moments_state(),
        }

    def load_state_dict(self, state: JSONDict) -> None:
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
        self._load_moments(state, x.size)

    # -- for subclasses ------------------------------------------------------------------------

    def _reset(self, n: int) -> None:
        raise NotImplementedError

    def _step(self, gradient: FloatArray) -> FloatArray:
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
        momentum: float = Field(default=0.0, ge=0, lt=1)
        nesterov: bool = False

        @model_validator(mode="after")
        def _nesterov_needs_momentum(self) -> SGD.Settings:
            if self.nesterov and self.momentum == 0:
                raise ValueError("nesterov: true needs a momentum above 0")
            return self

    def __init__(self, settings: Settings | None = None) -> None:
        super().__init__()
        self.settings = settings if settings is not None else self.Settings()
        self._velocity: FloatArray = np.zeros(0)

    def _reset(self, n: int) -> None:
        self._velocity = np.zeros(n)

    def _step(self, gradient: FloatArray) -> FloatArray:
        s = self.settings
        self._velocity = s.momentum * self._velocity + gradient
        direction = gradient + s.momentum * self._velocity if s.nesterov else self._velocity
        step: FloatArray = s.lr * direction
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
        beta1: float = Field(default=0.9, ge=0, lt=1)
        beta2: float = Field(default=0.999, ge=0, lt=1)
        eps: float = Field(default=1e-8, gt=0)

    def __init__(self, settings: Settings | None = None) -> None:
        super().__init__()
        self.settings = settings if settings is not None else self.Settings()
        self._m: FloatArray = np.zeros(0)
        self._v: FloatArray = np.zeros(0)

    def _reset(self, n: int) -> None:
        self._m = np.zeros(n)
        self._v = np.zeros(n)

    def _step(self, gradient: FloatArray) -> FloatArray:
        s = self.settings
        t = self.iterations  # already counts this step
        self._m = s.beta1 * self._m + (1 - s.beta1) * gradient
        self._v = s.beta2 * self._v + (1 - s.beta2) * gradient**2
        m_hat = self._m / (1 - s.beta1**t)
        v_hat = self._v / (1 - s.beta2**t)
        step: FloatArray = s.lr * m_hat / (np.sqrt(v_hat) + s.eps)
        return step

    def _moments_state(self) -> JSONDict:
        return {"m": self._m.tolist(), "v": self._v.tolist()}

    def _load_moments(self, state: JSONDict, n: int) -> None:
        self._m = _vector(state, "m", n)
        self._v = _vector(state, "v", n)
