"""Random-direction estimators: Gaussian smoothing, antithetic ES and parallel weight perturbation.

All three move every control at once along one random direction per sample and difference the
measured losses, so a sample costs one or two evaluations whatever the dimension (its variance
grows ∝ d instead; average several directions to bring it down).

* `GaussianSmoothing` — Nesterov & Spokoiny's random gradient-free oracle (RDSA), u ~ N(0, I):
  forward ĝ = mean_k [L(θ+μu_k) − L(θ)]/μ · u_k,
  central ĝ = mean_k [L(θ+μu_k) − L(θ−μu_k)]/(2μ) · u_k.
* `AntitheticES` — Salimans et al. (2017) mirrored sampling, ε ~ N(0, I), optionally with
  centred-rank fitness shaping: ĝ = 1/(2nσ) Σ_k [F(θ+σε_k) − F(θ−σε_k)] ε_k.
* `WeightPerturbation` — parallel weight perturbation (Cauwenberghs' stochastic error descent;
  Jabri & Flower's rule done for all weights at once), π_i = ±σ with random signs:
  measured ĝ = [L(θ+π) − L(θ)] π/σ²,  antithetic ĝ = [L(θ+π) − L(θ−π)] π/(2σ²).

What they estimate. With a symmetric direction distribution the one-sided and two-sided forms have
the *same* expectation (the pair θ ± step is as likely as θ ∓ step, and L(θ) times a zero-mean
direction averages out): the gradient of the smoothed loss f_μ(θ) = E f(θ + μu) for the Gaussian
forms, and the analogous ±σ average for weight perturbation. For a quadratic both equal ∇f
exactly; otherwise they differ from ∇f by O(μ²) (third derivatives). The one-sided form's
second-order term ½(stepᵀ H step)·step/μ² is O(μ) in every single estimate but has mean zero: it
is extra variance, not bias (the O(μ) *bias* of textbook weight perturbation belongs to the
sequential rule with a fixed +σ step). The two-sided forms cancel it in every sample.

Bounds. Every point sent to the device is first projected onto the control box
(`objective.project`), and the estimate is formed with the perturbation actually applied,
δ = project(θ + step) − θ, in place of the drawn step (two-sided: the separation of the pair,
halved). Away from the bounds this is the textbook estimate. Near a bound the clipped coordinates
of δ are shorter than drawn (0 for a coordinate sitting on its bound and pushed outward, or for a
zero-width range, which therefore gets a 0 gradient). To first order E ĝ ≈ M ∇f with
M = E[δδᵀ]/scale² positive semi-definite, so ĝ is still a descent direction, but no longer an
unbiased estimate of ∇f_μ: it is shrunk along clipped coordinates (for a coordinate sitting
exactly on a bound, ×1/2 in the one-sided forms and ×1/4 in the two-sided ones) and clipped
coordinates get coupled. Reflecting steps off the wall would keep the one-sided forms' scale but
makes a two-sided pair collapse onto itself at a bound, so projection is used throughout, as in
`protocols.estimators`. `extras["clipped"]` is the fraction of perturbed coordinates that were
clipped in the estimate.

Every estimate reports the evaluations and device seconds it spent (differences of the
objective's counters over the call, loss measurement included). Directions come only from the
estimator's seeded generator, whose state is checkpointed as JSON.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from hil.core import FloatArray, JSONDict, SeedLike, seed_sequence
from hil.core.types import generator_state, restore_generator
from protocols.base import MAX_REPEATS, MIN_PERTURBATION, GradientEstimate, Objective

# For a noise-free, locally linear loss and many pairs, mean_k (r⁺_k − r⁻_k) ε_k tends to
# E[(2Φ(z) − 1) z]·∇f/‖∇f‖ = ∇f/(√π ‖∇f‖) (Stein's lemma: E[Φ(z) z] = E[φ(z)] = 1/(2√π)),
# so multiplying by √π makes the rank-shaped estimate a unit-length direction on average.
RANK_NORMALISER = math.sqrt(math.pi)


def centred_ranks(values: FloatArray) -> FloatArray:
    """Ranks of the values mapped linearly onto [−0.5, 0.5] (smallest −0.5, largest +0.5).

    Tied values share their mean rank, so the result depends only on the order of the values
    and is unchanged by any strictly increasing transform of them.
    """
    v = np.asarray(values, dtype=float).ravel()
    n = v.size
    if n < 2:
        return np.zeros(n)
    order = np.argsort(v, kind="stable")
    ordinal = np.empty(n)
    ordinal[order] = np.arange(n, dtype=float)
    _, group = np.unique(v, return_inverse=True)
    mean_rank = np.bincount(group, weights=ordinal) / np.bincount(group)
    ranks: FloatArray = mean_rank[group] / (n - 1) - 0.5
    return ranks


def _as_theta(objective: Objective, theta: FloatArray) -> FloatArray:
    t = np.asarray(theta, dtype=float)
    if t.shape != (objective.dim,):
        raise ValueError(f"theta: expected shape ({objective.dim},), got {t.shape}")
    return t


def _stderr(samples: FloatArray) -> FloatArray | None:
    """Standard error of the mean over rows (None for a single row).

    Rows sharing one measured L(θ) stay uncorrelated: the shared noise multiplies independent
    zero-mean directions, so the sample spread is still the right one.
    """
    n = samples.shape[0]
    if n < 2:
        return None
    err: FloatArray = samples.std(axis=0, ddof=1) / math.sqrt(n)
    return err


class _OneSided:
    """y₀ = L(θ) once, then L(project(θ + step_k)) for every drawn step."""

    def __init__(self, objective: Objective, theta: FloatArray, steps: FloatArray) -> None:
        self.reference = objective(theta)
        points = [objective.project(theta + step) for step in steps]
        self.values = np.array([objective(x) for x in points])
        self.applied = np.array(points) - theta
        self.clipped = int(np.count_nonzero(np.array(points) != theta + steps))

    def samples(self, scale: float) -> FloatArray:
        """[L(θ + δ_k) − L(θ)] δ_k / scale² per row."""
        rows: FloatArray = (self.values - self.reference)[:, np.newaxis] * self.applied / scale**2
        return rows


class _TwoSided:
    """L(project(θ + step_k)) and L(project(θ − step_k)) for every drawn step."""

    def __init__(self, objective: Objective, theta: FloatArray, steps: FloatArray) -> None:
        plus, minus = [], []
        values_plus, values_minus = [], []
        for step in steps:
            x_plus, x_minus = objective.project(theta + step), objective.project(theta - step)
            values_plus.append(objective(x_plus))
            values_minus.append(objective(x_minus))
            plus.append(x_plus)
            minus.append(x_minus)
        self.plus, self.minus = np.array(values_plus), np.array(values_minus)
        # half the separation actually applied: the drawn step wherever nothing was clipped
        self.half_separation = (np.array(plus) - np.array(minus)) / 2.0
        self.clipped = int(
            np.count_nonzero(np.array(plus) != theta + steps)
            + np.count_nonzero(np.array(minus) != theta - steps)
        )

    def samples(self, scale: float) -> FloatArray:
        """[L(θ + δ⁺_k) − L(θ + δ⁻_k)] (δ⁺_k − δ⁻_k) / (4 scale²) per row."""
        dy = (self.plus - self.minus)[:, np.newaxis]
        rows: FloatArray = dy * self.half_separation / (2.0 * scale**2)
        return rows

    def mean_value(self) -> float:
        return float(np.mean(np.concatenate([self.plus, self.minus])))


class _SeededDirections:
    """The direction generator and its checkpoint, shared by the estimators below."""

    def __init__(self, seed: SeedLike) -> None:
        (direction_seed,) = seed_sequence(seed).spawn(1)
        self._rng = np.random.default_rng(direction_seed)

    def state_dict(self) -> JSONDict:
        """The direction-generator state (JSON-serialisable; restores the exact next draws)."""
        return {"rng": generator_state(self._rng)}

    def load_state_dict(self, state: JSONDict) -> None:
        unknown = sorted(set(state) - {"rng"})
        if unknown:
            raise ValueError(f"{type(self).__name__} state: unknown keys {unknown}")
        restore_generator(self._rng, state["rng"])


class GaussianSmoothing(_SeededDirections):
    """Nesterov–Spokoiny random gradient-free estimate (RDSA) along Gaussian directions.

    Draws u_1 … u_n ~ N(0, I) and returns the mean of
    forward: [L(θ + μu_k) − L(θ)]/μ · u_k (L(θ) measured once, shared, and reported as the loss;
    n + 1 evaluations) or central: [L(θ + μu_k) − L(θ − μu_k)]/(2μ) · u_k (2n evaluations).
    Both estimate ∇f_μ, f_μ(θ) = E f(θ + μu), which is ∇f for a quadratic and ∇f + O(μ²)
    otherwise; per direction E‖ĝ − ∇f_μ‖² ≈ (d + 1)‖∇f‖² + noise terms ∝ d σ²/μ².
    Near the bounds see the module docstring (projected points, applied perturbation).
    """

    class Settings(BaseModel):
        """Smoothing radius, directions per estimate, difference form, reported loss."""

        model_config = ConfigDict(extra="forbid")

        mu: float = Field(
            default=0.05,
            ge=MIN_PERTURBATION,
            description="smoothing radius μ: steps are μ·u, u ~ N(0, I); V",
        )
        directions: int = Field(
            default=1, ge=1, le=MAX_REPEATS, description="directions averaged per estimate"
        )
        form: Literal["forward", "central"] = Field(
            default="forward",
            description="'forward': L(θ+μu) − L(θ), L(θ) shared (n+1 evaluations); "
            "'central': L(θ+μu) − L(θ−μu) (2n evaluations, no O(μ) term per sample)",
        )
        measure_loss: bool = Field(
            default=False,
            description="central form: spend one more evaluation on L(θ) for the reported loss; "
            "else the mean of the perturbed values (biased up by ≈ μ²·tr H/2). The forward "
            "form measures L(θ) anyway and reports it",
        )

    def __init__(self, settings: Settings | None = None, *, seed: SeedLike = None) -> None:
        super().__init__(seed)
        self.settings = settings if settings is not None else self.Settings()

    def estimate(self, objective: Objective, theta: FloatArray) -> GradientEstimate:
        """ĝ of ∇f_μ at θ from n + 1 (forward) or 2n (+1) (central) evaluations."""
        s = self.settings
        t = _as_theta(objective, theta)
        t0, e0 = objective.device_time(), objective.evaluations
        steps = s.mu * self._rng.standard_normal((s.directions, objective.dim))
        if s.form == "forward":
            one = _OneSided(objective, t, steps)
            samples, loss, clipped, points = one.samples(s.mu), one.reference, one.clipped, 1
        else:
            measured = objective(t) if s.measure_loss else None
            two = _TwoSided(objective, t, steps)
            samples, clipped, points = two.samples(s.mu), two.clipped, 2
            loss = two.mean_value() if measured is None else measured
        return GradientEstimate(
            gradient=samples.mean(axis=0),
            loss=float(loss),
            evaluations=objective.evaluations - e0,
            device_seconds=objective.device_time() - t0,
            stderr=_stderr(samples),
            extras={"mu": s.mu, "clipped": clipped / (points * steps.size)},
        )


class AntitheticES(_SeededDirections):
    """Evolution-strategies gradient with mirrored sampling (Salimans et al. 2017).

    n pairs θ ± σε_k, ε_k ~ N(0, I), 2n evaluations (+1 with `measure_loss`).

    shaping "none": ĝ = 1/(2nσ) Σ_k [F(θ+σε_k) − F(θ−σε_k)] ε_k, an unbiased estimate of ∇f_σ
    (the Gaussian-smoothed loss; = ∇f for a quadratic). This is `GaussianSmoothing`'s central
    form with μ = σ; the stderr over pairs is reported when n > 1.

    shaping "ranks": the 2n values are replaced by their centred ranks r ∈ [−0.5, 0.5] and
    ĝ = rank_scale · (√π/n) Σ_k (r⁺_k − r⁻_k) ε_k. This is NOT a gradient estimate: it depends on
    the losses only through their order, so it is unchanged by any increasing transform of the
    loss (and robust to outliers), and its size does not follow ‖∇f‖. It is normalised so that for
    a noise-free, locally linear loss and many pairs E ĝ → rank_scale·∇f/‖∇f‖; noise, curvature
    and few pairs make it shorter. With SGD the learning rate therefore sets a step length of about
    lr·rank_scale V per step (not a multiple of the gradient), which does not shrink near the
    minimum: decay lr, or use a small one, to settle. No stderr is reported for ranks (the
    samples are coupled through the ranking).
    """

    class Settings(BaseModel):
        """Perturbation size, pairs per estimate, fitness shaping, reported loss."""

        model_config = ConfigDict(extra="forbid")

        sigma: float = Field(
            default=0.05,
            ge=MIN_PERTURBATION,
            description="perturbation σ: pairs θ ± σε, ε ~ N(0, I); V",
        )
        pairs: int = Field(
            default=4, ge=1, le=MAX_REPEATS, description="mirrored pairs per estimate (2n evals)"
        )
        shaping: Literal["none", "ranks"] = Field(
            default="none",
            description="'none': the raw losses (unbiased for ∇f_σ); 'ranks': centred ranks of "
            "the 2n losses (a scale-free descent direction, see rank_scale)",
        )
        rank_scale: float = Field(
            default=1.0,
            gt=0,
            description="ranks only: the estimate's expected length for a noise-free, locally "
            "linear loss (SGD then steps ≈ lr·rank_scale V)",
        )
        measure_loss: bool = Field(
            default=False,
            description="spend one more evaluation on L(θ) for the reported loss; else the mean "
            "of the 2n perturbed values",
        )

    def __init__(self, settings: Settings | None = None, *, seed: SeedLike = None) -> None:
        super().__init__(seed)
        self.settings = settings if settings is not None else self.Settings()

    def estimate(self, objective: Objective, theta: FloatArray) -> GradientEstimate:
        """ĝ at θ from 2n (+1) evaluations."""
        s = self.settings
        t = _as_theta(objective, theta)
        t0, e0 = objective.device_time(), objective.evaluations
        measured = objective(t) if s.measure_loss else None
        steps = s.sigma * self._rng.standard_normal((s.pairs, objective.dim))
        two = _TwoSided(objective, t, steps)
        stderr = None
        if s.shaping == "none":
            samples = two.samples(s.sigma)
            gradient: FloatArray = samples.mean(axis=0)
            stderr = _stderr(samples)
        else:
            ranks = centred_ranks(np.concatenate([two.plus, two.minus]))
            weight = ranks[: s.pairs] - ranks[s.pairs :]
            directions = two.half_separation / s.sigma  # ε_k wherever nothing was clipped
            gradient = s.rank_scale * RANK_NORMALISER * (weight @ directions) / s.pairs
        return GradientEstimate(
            gradient=gradient,
            loss=two.mean_value() if measured is None else float(measured),
            evaluations=objective.evaluations - e0,
            device_seconds=objective.device_time() - t0,
            stderr=stderr,
            extras={"sigma": s.sigma, "clipped": two.clipped / (2 * steps.size)},
        )


class WeightPerturbation(_SeededDirections):
    """Parallel weight perturbation: every parameter moved at once by π_i = ±σ (random signs).

    reference "measured" (weight perturbation): ĝ = [L(θ + π) − L(θ)] π/σ², L(θ) measured once
    per estimate, shared by the m perturbations and reported as the loss (m + 1 evaluations).
    reference "antithetic" (Cauwenberghs' stochastic error descent, ε̂ = ½[E(p+π) − E(p−π)]):
    ĝ = [L(θ + π) − L(θ − π)] π/(2σ²) (2m evaluations, +1 with `measure_loss`).

    Both have the same expectation — ∇f for a quadratic, ∇f + O(σ²) otherwise (third
    derivatives). The measured form adds a zero-mean O(σ) term ½(πᵀHπ)π/σ² to every estimate
    (more variance, no bias in expectation; the O(σ) bias of classic weight perturbation is that
    of the sequential rule with a fixed +σ step), which the antithetic form cancels sample by
    sample. m > 1 perturbations are averaged and their standard error reported.
    """

    class Settings(BaseModel):
        """Perturbation size, perturbations per estimate, reference, reported loss."""

        model_config = ConfigDict(extra="forbid")

        sigma: float = Field(
            default=0.05, ge=MIN_PERTURBATION, description="perturbation ±σ per parameter, V"
        )
        perturbations: int = Field(
            default=1,
            ge=1,
            le=MAX_REPEATS,
            description="random-sign perturbations averaged per estimate",
        )
        reference: Literal["measured", "antithetic"] = Field(
            default="measured",
            description="'measured': L(θ+π) − L(θ), L(θ) shared (m+1 evaluations); "
            "'antithetic': L(θ+π) − L(θ−π) (2m evaluations)",
        )
        measure_loss: bool = Field(
            default=False,
            description="antithetic reference: spend one more evaluation on L(θ) for the "
            "reported loss; else the mean of the perturbed values. 'measured' reports L(θ)",
        )

    def __init__(self, settings: Settings | None = None, *, seed: SeedLike = None) -> None:
        super().__init__(seed)
        self.settings = settings if settings is not None else self.Settings()

    def estimate(self, objective: Objective, theta: FloatArray) -> GradientEstimate:
        """ĝ at θ from m + 1 (measured) or 2m (+1) (antithetic) evaluations."""
        s = self.settings
        t = _as_theta(objective, theta)
        t0, e0 = objective.device_time(), objective.evaluations
        bits = self._rng.integers(0, 2, size=(s.perturbations, objective.dim))
        steps = s.sigma * (2.0 * bits - 1.0).astype(float)
        if s.reference == "measured":
            one = _OneSided(objective, t, steps)
            samples, loss, clipped, points = one.samples(s.sigma), one.reference, one.clipped, 1
        else:
            measured = objective(t) if s.measure_loss else None
            two = _TwoSided(objective, t, steps)
            samples, clipped, points = two.samples(s.sigma), two.clipped, 2
            loss = two.mean_value() if measured is None else measured
        return GradientEstimate(
            gradient=samples.mean(axis=0),
            loss=float(loss),
            evaluations=objective.evaluations - e0,
            device_seconds=objective.device_time() - t0,
            stderr=_stderr(samples),
            extras={"sigma": s.sigma, "clipped": clipped / (points * steps.size)},
        )
