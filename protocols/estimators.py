"""Perturbative gradient estimators: central differences and SPSA.

Both work on any `Objective`: perturbed points are projected onto the control box, so no request
leaves the channel ranges, and the derivative is taken over the separation actually applied.
"""

from __future__ import annotations

import math

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from hil.core import FloatArray, JSONDict, SeedLike, seed_sequence
from hil.core.types import generator_state, restore_generator
from protocols.base import GradientEstimate, Objective


def _as_theta(objective: Objective, theta: FloatArray) -> FloatArray:
    t = np.asarray(theta, dtype=float)
    if t.shape != (objective.dim,):
        raise ValueError(f"theta: expected shape ({objective.dim},), got {t.shape}")
    return t


def _slopes(dy: float, separation: FloatArray) -> FloatArray:
    """dy / separation per coordinate, 0 where the two points coincide."""
    out = np.zeros_like(separation)
    np.divide(dy, separation, out=out, where=separation != 0)
    return out


class CentralDifference:
    """One coordinate at a time: (L(θ + h e_i) − L(θ − h e_i)) / separation; 2·d evaluations.

    At a bound the projected pair is one-sided and the separation shrinks accordingly; a
    coordinate whose two points coincide (a zero-width range) gets 0 without being measured.
    """

    class Settings(BaseModel):
        """Step size and whether to spend one evaluation on the unperturbed loss."""

        model_config = ConfigDict(extra="forbid")

        h: float = Field(default=0.05, gt=0, description="perturbation per coordinate, V")
        measure_loss: bool = Field(
            default=True,
            description="measure L(θ) once more for the reported loss; else mean of perturbed",
        )

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings if settings is not None else self.Settings()

    def estimate(self, objective: Objective, theta: FloatArray) -> GradientEstimate:
        """Gradient of the objective at θ from 2·d (+1) evaluations."""
        t = _as_theta(objective, theta)
        h = self.settings.h
        t0, e0 = objective.device_time(), objective.evaluations
        loss = objective(t) if self.settings.measure_loss else None
        gradient = np.zeros(objective.dim)
        perturbed: list[float] = []
        for i in range(objective.dim):
            step = np.zeros(objective.dim)
            step[i] = h
            x_plus, x_minus = objective.project(t + step), objective.project(t - step)
            separation = float(x_plus[i] - x_minus[i])
            if separation == 0:
                continue
            y_plus, y_minus = objective(x_plus), objective(x_minus)
            gradient[i] = (y_plus - y_minus) / separation
            perturbed += [y_plus, y_minus]
        if loss is None:
            loss = float(np.mean(perturbed)) if perturbed else objective(t)
        return GradientEstimate(
            gradient=gradient,
            loss=float(loss),
            evaluations=objective.evaluations - e0,
            device_seconds=objective.device_time() - t0,
        )

    def state_dict(self) -> JSONDict:
        """No state: the estimate depends only on the settings."""
        return {}

    def load_state_dict(self, state: JSONDict) -> None:
        if state:
            raise ValueError(f"CentralDifference has no state, got keys {sorted(state)}")


class SPSA:
    """Simultaneous perturbation (Spall): all coordinates at once along a random ±1 direction.

    Two evaluations per resample whatever the dimension: ĝ_i = (y⁺ − y⁻)/(x⁺_i − x⁻_i) with
    x± = project(θ ± c_k Δ), c_k = c/(k + 1)^γ and k the number of estimates done so far.
    """

    class Settings(BaseModel):
        """Perturbation size and schedule, resamples per estimate, reported loss."""

        model_config = ConfigDict(extra="forbid")

        c: float = Field(default=0.05, gt=0, description="initial perturbation size, V")
        gamma: float = Field(default=0.101, ge=0, description="decay exponent of c_k")
        resamples: int = Field(default=1, ge=1, description="directions averaged per estimate")
        measure_loss: bool = Field(
            default=True,
            description="measure L(θ) once more for the reported loss; else mean of perturbed",
        )

    def __init__(self, settings: Settings | None = None, *, seed: SeedLike = None) -> None:
        self.settings = settings if settings is not None else self.Settings()
        (direction_seed,) = seed_sequence(seed).spawn(1)
        self._rng = np.random.default_rng(direction_seed)
        self._k = 0

    @property
    def k(self) -> int:
        """Number of estimates done so far (drives the c_k schedule)."""
        return self._k

    def perturbation(self, k: int | None = None) -> float:
        """c_k for estimate number k (the next one by default)."""
        k = self._k if k is None else k
        return float(self.settings.c / (k + 1) ** self.settings.gamma)

    def estimate(self, objective: Objective, theta: FloatArray) -> GradientEstimate:
        """Gradient of the objective at θ from 2·resamples (+1) evaluations."""
        s = self.settings
        t = _as_theta(objective, theta)
        ck = self.perturbation()
        t0, e0 = objective.device_time(), objective.evaluations
        loss = objective(t) if s.measure_loss else None
        samples = np.empty((s.resamples, objective.dim))
        perturbed: list[float] = []
        for r in range(s.resamples):
            delta = self._rng.integers(0, 2, size=objective.dim) * 2.0 - 1.0
            x_plus = objective.project(t + ck * delta)
            x_minus = objective.project(t - ck * delta)
            y_plus, y_minus = objective(x_plus), objective(x_minus)
            samples[r] = _slopes(y_plus - y_minus, x_plus - x_minus)
            perturbed += [y_plus, y_minus]
        self._k += 1
        stderr = None
        if s.resamples > 1:
            stderr = samples.std(axis=0, ddof=1) / math.sqrt(s.resamples)
        return GradientEstimate(
            gradient=samples.mean(axis=0),
            loss=float(np.mean(perturbed)) if loss is None else float(loss),
            evaluations=objective.evaluations - e0,
            device_seconds=objective.device_time() - t0,
            stderr=stderr,
            extras={"c_k": ck},
        )

    def state_dict(self) -> JSONDict:
        """Estimate count and direction-generator state (JSON-serialisable)."""
        return {"k": self._k, "rng": generator_state(self._rng)}

    def load_state_dict(self, state: JSONDict) -> None:
        k = int(state["k"])
        if k < 0:
            raise ValueError(f"SPSA state: k must be >= 0, got {k}")
        restore_generator(self._rng, state["rng"])
        self._k = k
