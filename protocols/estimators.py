"""Perturbative gradient estimators: finite differences, SPSA and second-order SPSA.

All work on any `Objective`: perturbed points are projected onto the control box, so no request
leaves the channel ranges, and the derivative is taken over the separation actually applied.
Each estimate reports its cost (evaluations, device seconds) as the change of the objective's
counters over the call; all randomness comes from the estimator's own seeded generator, whose
state (with every other counter) goes into `state_dict` as plain JSON.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from hil.core import FloatArray, JSONDict, SeedLike, seed_sequence
from hil.core.types import generator_state, restore_generator
from protocols.base import (
    MAX_REPEATS,
    MAX_STEPS,
    MIN_PERTURBATION,
    GradientEstimate,
    Objective,
    Stateless,
)


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


class CentralDifference(Stateless):
    """One coordinate at a time: (L(θ + h e_i) − L(θ − h e_i)) / separation; 2·d evaluations.

    At a bound the projected pair is one-sided and the separation shrinks accordingly; a
    coordinate whose two points coincide (a zero-width range) gets 0 without being measured.
    """

    class Settings(BaseModel):
        """Step size and whether to spend one evaluation on the unperturbed loss."""

        model_config = ConfigDict(extra="forbid")

        h: float = Field(
            default=0.05, ge=MIN_PERTURBATION, description="perturbation per coordinate, V"
        )
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


class ForwardDifference(Stateless):
    """Kiefer–Wolfowitz forward differences: (L(θ + h e_i) − L(θ)) / h; d + 1 evaluations.

    L(θ) is measured once and shared by every coordinate (it is also the reported loss). Where
    the full forward step leaves the box the coordinate steps backwards instead, and where neither
    full step fits it takes the side with more room; the derivative is always taken over the
    separation actually applied (x_i − θ_i, negative when stepping backwards). A coordinate of
    zero width gets 0 without being measured. The bias is O(h): on f = ½ Σ λ_i z_i² the estimate
    is λ_i z_i + λ_i s_i / 2 for a step s_i.
    """

    class Settings(BaseModel):
        """Step size."""

        model_config = ConfigDict(extra="forbid")

        h: float = Field(
            default=0.05, ge=MIN_PERTURBATION, description="forward step per coordinate, V"
        )

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings if settings is not None else self.Settings()

    def estimate(self, objective: Objective, theta: FloatArray) -> GradientEstimate:
        """Gradient of the objective at θ from d + 1 evaluations (fewer for pinned coordinates)."""
        t = _as_theta(objective, theta)
        t0, e0 = objective.device_time(), objective.evaluations
        loss = objective(t)
        gradient = np.zeros(objective.dim)
        for i in range(objective.dim):
            point = t.copy()
            point[i] = t[i] + self._step(float(t[i]), objective, i)
            point = objective.project(point)
            separation = float(point[i] - t[i])
            if separation == 0:
                continue
            gradient[i] = (objective(point) - loss) / separation
        return GradientEstimate(
            gradient=gradient,
            loss=float(loss),
            evaluations=objective.evaluations - e0,
            device_seconds=objective.device_time() - t0,
        )

    def _step(self, t: float, objective: Objective, i: int) -> float:
        """+h if it fits, else −h if that fits, else towards the side with more room."""
        h = self.settings.h
        room_up, room_down = objective.upper[i] - t, t - objective.lower[i]
        if room_up >= h:
            return h
        if room_down >= h:
            return -h
        return h if room_up >= room_down else -h


def _sylvester_hadamard(m: int) -> FloatArray:
    """The m × m Sylvester Hadamard matrix (m a power of 2): H_{2n} = [[H, H], [H, −H]]."""
    h = np.ones((1, 1))
    while h.shape[0] < m:
        h = np.block([[h, h], [h, -h]])
    return h


def hadamard_directions(dim: int) -> FloatArray:
    """The Hadamard cycle for `dim` coordinates: m × dim, m the smallest power of 2 ≥ dim + 1.

    Columns 1..dim of the Sylvester matrix H_m (column 0, all ones, is left out), so over the m
    rows Σ Δ_i = 0 and Σ Δ_i Δ_j = m δ_ij: the cross-talk of the other gradient components
    cancels exactly over a full cycle (Bhatnagar, Fu, Marcus & Wang, ACM TOMACS 13(2), 2003).
    """
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")
    m = 1 << dim.bit_length()  # smallest power of 2 strictly above dim, i.e. >= dim + 1
    rows: FloatArray = _sylvester_hadamard(m)[:, 1 : dim + 1]
    return rows


def _rademacher(rng: np.random.Generator, dim: int) -> FloatArray:
    """dim iid ±1 values."""
    return (rng.integers(0, 2, size=dim) * 2.0 - 1.0).astype(np.float64)


def _schedule_value(schedule: int | dict[int, int], k: int) -> int:
    if isinstance(schedule, int):
        return schedule
    return schedule[max(key for key in schedule if key <= k)]


class SPSA:
    """Simultaneous perturbation (Spall): all coordinates at once along a ±1 direction.

    Two evaluations per resample whatever the dimension: ĝ_i = (y⁺ − y⁻)/(x⁺_i − x⁻_i) with
    x± = project(θ ± c_k Δ), c_k = c/(k + 1)^γ and k the number of estimates done so far
    (γ = 0.101 is Spall's practical value).

    Directions are either iid Rademacher (random ±1 from the seeded generator) or the rows of a
    Hadamard cycle (`hadamard_directions`), taken in order and wrapping around; consecutive
    resamples of one estimate take consecutive rows, and the position in the cycle is part of the
    state. Over a full cycle of m rows the cross-talk Σ_{j≠i} g_j Δ_j/Δ_i cancels exactly, so
    the mean of m single-row estimates of a quadratic is its gradient.

    `resamples` is a count, or a schedule {first estimate number: count from there on}, e.g.
    {0: 1, 100: 4}. With more than one resample `stderr` is the standard error of their mean;
    for Hadamard rows it includes the cross-talk that a full cycle cancels, so it is then an
    upper estimate.
    """

    class Settings(BaseModel):
        """Perturbation size and schedule, directions, resamples per estimate, reported loss."""

        model_config = ConfigDict(extra="forbid")

        c: float = Field(
            default=0.05, ge=MIN_PERTURBATION, description="initial perturbation size, V"
        )
        gamma: float = Field(default=0.101, ge=0, le=1, description="decay exponent of c_k")
        directions: Literal["rademacher", "hadamard"] = Field(
            default="rademacher",
            description="random ±1 directions, or a deterministic cycle over Hadamard rows",
        )
        resamples: int | dict[int, int] = Field(
            default=1,
            description="directions averaged per estimate, or {estimate number: count from "
            "there on}, which must contain 0",
        )
        measure_loss: bool = Field(
            default=True,
            description="measure L(θ) once more for the reported loss; else mean of perturbed",
        )

        @field_validator("resamples")
        @classmethod
        def _valid_schedule(cls, value: int | dict[int, int]) -> int | dict[int, int]:
            if isinstance(value, int):
                if value < 1:
                    raise ValueError(f"resamples must be >= 1, got {value}")
                if value > MAX_REPEATS:
                    raise ValueError(f"resamples must be <= {MAX_REPEATS}, got {value}")
                return value
            if 0 not in value:
                raise ValueError(
                    f"a resamples schedule must say what to do from estimate 0, got keys "
                    f"{sorted(value)}"
                )
            bad_keys = [k for k in value if k < 0]
            if bad_keys:
                raise ValueError(f"resamples schedule keys must be >= 0, got {bad_keys}")
            bad_counts = {k: v for k, v in value.items() if not 1 <= v <= MAX_REPEATS}
            if bad_counts:
                raise ValueError(
                    f"resamples counts must be >= 1 and <= {MAX_REPEATS}, got {bad_counts}"
                )
            return dict(sorted(value.items()))

    def __init__(self, settings: Settings | None = None, *, seed: SeedLike = None) -> None:
        self.settings = settings if settings is not None else self.Settings()
        (direction_seed,) = seed_sequence(seed).spawn(1)
        self._rng = np.random.default_rng(direction_seed)
        self._k = 0
        self._row = 0  # Hadamard rows used so far

    @property
    def k(self) -> int:
        """Number of estimates done so far (drives the c_k and resamples schedules)."""
        return self._k

    @property
    def row(self) -> int:
        """Number of Hadamard rows used so far; the next row is this modulo the cycle length."""
        return self._row

    def perturbation(self, k: int | None = None) -> float:
        """c_k for estimate number k (the next one by default)."""
        k = self._k if k is None else k
        return float(self.settings.c / (k + 1) ** self.settings.gamma)

    def resamples(self, k: int | None = None) -> int:
        """Resamples of estimate number k (the next one by default)."""
        return _schedule_value(self.settings.resamples, self._k if k is None else k)

    def _direction(self, dim: int) -> FloatArray:
        if self.settings.directions == "hadamard":
            rows = hadamard_directions(dim)
            delta: FloatArray = rows[self._row % rows.shape[0]].copy()
            self._row += 1
            return delta
        return _rademacher(self._rng, dim)

    def estimate(self, objective: Objective, theta: FloatArray) -> GradientEstimate:
        """Gradient of the objective at θ from 2·resamples (+1) evaluations."""
        s = self.settings
        t = _as_theta(objective, theta)
        ck = self.perturbation()
        n = self.resamples()
        t0, e0 = objective.device_time(), objective.evaluations
        loss = objective(t) if s.measure_loss else None
        samples = np.empty((n, objective.dim))
        perturbed: list[float] = []
        for r in range(n):
            delta = self._direction(objective.dim)
            x_plus = objective.project(t + ck * delta)
            x_minus = objective.project(t - ck * delta)
            y_plus, y_minus = objective(x_plus), objective(x_minus)
            samples[r] = _slopes(y_plus - y_minus, x_plus - x_minus)
            perturbed += [y_plus, y_minus]
        self._k += 1
        stderr = samples.std(axis=0, ddof=1) / math.sqrt(n) if n > 1 else None
        return GradientEstimate(
            gradient=samples.mean(axis=0),
            loss=float(np.mean(perturbed)) if loss is None else float(loss),
            evaluations=objective.evaluations - e0,
            device_seconds=objective.device_time() - t0,
            stderr=stderr,
            extras={"c_k": ck, "resamples": float(n)},
        )

    def state_dict(self) -> JSONDict:
        """Estimate count, Hadamard position and direction-generator state (JSON)."""
        return {"k": self._k, "rng": generator_state(self._rng), "row": self._row}

    def load_state_dict(self, state: JSONDict) -> None:
        """Restore a `state_dict`; states saved before the Hadamard option have no "row" (0)."""
        k, row = int(state["k"]), int(state.get("row", 0))
        if k < 0 or row < 0:
            raise ValueError(f"SPSA state: k and row must be >= 0, got k={k}, row={row}")
        restore_generator(self._rng, state["rng"])
        self._k, self._row = k, row


class SPSA2:
    """Second-order (adaptive) SPSA, Spall 2000 (IEEE TAC 45(10)): a running Hessian estimate.

    Each sample measures four points, θ ± c_kΔ₁, θ + c_k(Δ₁ + Δ₂) and θ + c_k(−Δ₁ + Δ₂), with
    Δ₁, Δ₂ independent Rademacher directions and c_k = c/(k + 1)^γ as in `SPSA`. The ± pair gives
    the SPSA gradient ĝ; the four give the Hessian sample

        Ĥ = {[L(θ+c(Δ₁+Δ₂)) − L(θ+cΔ₁)] − [L(θ+c(−Δ₁+Δ₂)) − L(θ−cΔ₁)]}/(2c²) · (Δ₁Δ₂ᵀ+Δ₂Δ₁ᵀ)/2,

    unbiased for a quadratic. H̄ is the running mean of all Hessian samples so far
    (H̄_n = n/(n+1)·H̄_{n−1} + Ĥ/(n+1)); the preconditioner is M = sqrtm(H̄²) + reg·I (the
    eigenvalues of H̄ made absolute, plus `regularization`).

    **The reported `gradient` is a Newton-like direction.** Once `hessian_delay` estimates have
    been done (and H̄ holds at least one sample), `gradient` is M⁻¹ĝ: a first-order optimizer fed
    with it takes quasi-Newton steps, so its learning rate is a fraction of a Newton step
    (dimensionless, ≲ 1), not V per unit gradient. Before that it is the raw ĝ. `extras` carries
    `raw_gradient_norm` (‖ĝ‖), `preconditioned` (1 or 0), `hessian_samples`,
    `hessian_condition` (of M), `c_k` and `resamples`. `stderr` is the standard error of the
    reported direction over the resamples.

    **Projection.** The gradient pair is projected and differenced over the separation actually
    applied, as in `SPSA`. The Hessian formula holds only for the four points as designed, so
    they are never clipped. If the stencil around θ fits in the box, the ± pair is shared (4
    evaluations per sample). Otherwise the four points are measured around θ', the point nearest
    θ at which the whole stencil fits (each coordinate moved inwards by at most 2c_k), at a cost
    of 4 more evaluations (6 per sample); `hessian_shift` reports the largest |θ' − θ|. If a
    coordinate's range is narrower than the stencil (3c_k), no Hessian sample is taken
    (2 evaluations; `hessian_samples` does not grow). Without the shift a Newton iterate that
    reaches a bound would freeze H̄ and could stay there. Coordinates of zero width (pinned) get
    Δ = 0 in both directions, so a pinned electrode does not stop the Hessian estimate; it is
    left out of M and its direction is exactly 0.
    """

    class Settings(BaseModel):
        """Perturbation size and schedule, samples per estimate, Hessian handling, loss."""

        model_config = ConfigDict(extra="forbid")

        c: float = Field(
            default=0.05, ge=MIN_PERTURBATION, description="initial perturbation size, V"
        )
        gamma: float = Field(default=0.101, ge=0, le=1, description="decay exponent of c_k")
        resamples: int = Field(
            default=1, ge=1, le=MAX_REPEATS, description="4-point samples per estimate"
        )
        regularization: float = Field(
            default=0.01, gt=0, description="added to |eigenvalues of H̄| before inverting"
        )
        hessian_delay: int = Field(
            default=10,
            ge=0,
            le=MAX_STEPS,
            description="estimates before the gradient is preconditioned (H̄ averages meanwhile)",
        )
        measure_loss: bool = Field(
            default=True,
            description="measure L(θ) once more for the reported loss; else mean of the ± pairs",
        )

    def __init__(self, settings: Settings | None = None, *, seed: SeedLike = None) -> None:
        self.settings = settings if settings is not None else self.Settings()
        (direction_seed,) = seed_sequence(seed).spawn(1)
        self._rng = np.random.default_rng(direction_seed)
        self._k = 0
        self._hessian: FloatArray | None = None
        self._hessian_samples = 0

    @property
    def k(self) -> int:
        """Number of estimates done so far."""
        return self._k

    @property
    def hessian(self) -> FloatArray | None:
        """The running mean H̄ of the Hessian samples (a copy), None before the first estimate."""
        return None if self._hessian is None else self._hessian.copy()

    @property
    def hessian_samples(self) -> int:
        """How many Hessian samples H̄ averages."""
        return self._hessian_samples

    def perturbation(self, k: int | None = None) -> float:
        """c_k for estimate number k (the next one by default)."""
        k = self._k if k is None else k
        return float(self.settings.c / (k + 1) ** self.settings.gamma)

    def preconditioner(self) -> FloatArray:
        """M = sqrtm(H̄²) + reg·I, symmetric positive definite."""
        if self._hessian is None:
            raise RuntimeError("SPSA2: no Hessian estimate yet; call estimate first")
        values, vectors = self._eigen(self._hessian)
        m: FloatArray = (vectors * values) @ vectors.T
        return m

    def _eigen(self, hessian: FloatArray) -> tuple[FloatArray, FloatArray]:
        """Eigenvalues of M (|λ(H̄)| + reg) and the eigenvectors of H̄."""
        values, vectors = np.linalg.eigh(hessian)
        return np.abs(values) + self.settings.regularization, vectors

    def _add_hessian_sample(self, sample: FloatArray) -> None:
        assert self._hessian is not None
        n = self._hessian_samples
        self._hessian = n / (n + 1) * self._hessian + sample / (n + 1)
        self._hessian_samples = n + 1

    def estimate(self, objective: Objective, theta: FloatArray) -> GradientEstimate:
        """Preconditioned gradient at θ from 4 evaluations per sample (+1 for the loss).

        Near a bound a sample costs 6 evaluations, in a box narrower than the stencil 2 (see the
        class notes on projection).
        """
        s = self.settings
        t = _as_theta(objective, theta)
        d = objective.dim
        if self._hessian is None:
            self._hessian = np.zeros((d, d))
        if self._hessian.shape != (d, d):
            raise ValueError(
                f"SPSA2 holds a {self._hessian.shape} Hessian estimate; theta has {d} values"
            )
        ck = self.perturbation()
        movable = objective.upper > objective.lower
        t0, e0 = objective.device_time(), objective.evaluations
        loss = objective(t) if s.measure_loss else None
        raw = np.empty((s.resamples, d))
        perturbed: list[float] = []
        shift = 0.0
        for r in range(s.resamples):
            delta1 = np.where(movable, _rademacher(self._rng, d), 0.0)
            delta2 = np.where(movable, _rademacher(self._rng, d), 0.0)
            x_plus = objective.project(t + ck * delta1)
            x_minus = objective.project(t - ck * delta1)
            y_plus, y_minus = objective(x_plus), objective(x_minus)
            raw[r] = _slopes(y_plus - y_minus, x_plus - x_minus)
            perturbed += [y_plus, y_minus]
            offsets = ck * np.array([delta1, -delta1, delta1 + delta2, -delta1 + delta2])
            low, high = objective.lower - offsets.min(axis=0), objective.upper - offsets.max(axis=0)
            if np.any(low > high):
                continue  # a range narrower than the stencil: no Hessian sample
            centre = np.clip(t, low, high)
            shift = max(shift, float(np.max(np.abs(centre - t))))
            # (projecting the fitted stencil changes it by rounding at most)
            if np.array_equal(centre, t):
                y = [y_plus, y_minus, *(objective(objective.project(t + o)) for o in offsets[2:])]
            else:
                y = [objective(objective.project(centre + o)) for o in offsets]
            curvature = ((y[2] - y[0]) - (y[3] - y[1])) / (2.0 * ck**2)
            outer = np.outer(delta1, delta2)
            self._add_hessian_sample(curvature * (outer + outer.T) / 2.0)
        self._k += 1
        preconditioned = self._k > s.hessian_delay and self._hessian_samples > 0
        directions = raw
        extras = {
            "c_k": ck,
            "resamples": float(s.resamples),
            "raw_gradient_norm": float(np.linalg.norm(raw.mean(axis=0))),
            "preconditioned": float(preconditioned),
            "hessian_samples": float(self._hessian_samples),
            "hessian_shift": shift,
        }
        free = np.flatnonzero(movable)
        if self._hessian_samples > 0 and free.size:
            # pinned coordinates stay out of M (their direction stays exactly 0)
            values, vectors = self._eigen(self._hessian[np.ix_(free, free)])
            extras["hessian_condition"] = float(values.max() / values.min())
            if preconditioned:
                directions = np.zeros_like(raw)
                directions[:, free] = ((raw[:, free] @ vectors) / values) @ vectors.T
        stderr = None
        if s.resamples > 1:
            stderr = directions.std(axis=0, ddof=1) / math.sqrt(s.resamples)
        return GradientEstimate(
            gradient=directions.mean(axis=0),
            loss=float(np.mean(perturbed)) if loss is None else float(loss),
            evaluations=objective.evaluations - e0,
            device_seconds=objective.device_time() - t0,
            stderr=stderr,
            extras=extras,
        )

    def state_dict(self) -> JSONDict:
        """Estimate count, H̄ and its sample count, direction-generator state (JSON)."""
        return {
            "k": self._k,
            "rng": generator_state(self._rng),
            "hessian": None if self._hessian is None else self._hessian.tolist(),
            "hessian_samples": self._hessian_samples,
        }

    def load_state_dict(self, state: JSONDict) -> None:
        k, n = int(state["k"]), int(state["hessian_samples"])
        if k < 0 or n < 0:
            raise ValueError(f"SPSA2 state: k and hessian_samples must be >= 0, got {k}, {n}")
        hessian = None
        if state["hessian"] is not None:
            hessian = np.array(state["hessian"], dtype=float)
            if hessian.ndim != 2 or hessian.shape[0] != hessian.shape[1]:
                raise ValueError(f"SPSA2 state: hessian must be square, got {hessian.shape}")
            if not np.array_equal(hessian, hessian.T) or not np.all(np.isfinite(hessian)):
                raise ValueError("SPSA2 state: hessian must be finite and symmetric")
        restore_generator(self._rng, state["rng"])
        self._k, self._hessian, self._hessian_samples = k, hessian, n
