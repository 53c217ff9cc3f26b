"""Calibration before training: the noise level, the perturbation size and the learning rate.

Every measurement goes through the objective, so it is counted in `objective.evaluations` and
its device time shows on the device clock; each function returns a small result saying what it
found and what it spent (evaluations, device seconds), and `as_dict()` gives it as JSON for the
journal, so a calibrated value can always be read back.

- `measure_noise`: σ (and mean) of the loss from repeated unperturbed measurements at θ.
- `calibrate_perturbation`: the largest perturbation c (by halving or doubling) whose curvature
  bias the noise still hides (rule in its docstring).
- `calibrate_gain`: the learning rate whose first step moves each coordinate by about
  `target_step` (qiskit's SPSA calibration: lr = target / mean |ĝ_i| over a few estimates).
- `calibrate`: all three in that order, applied to the estimator and the optimizer, configured
  by `CalibrationSettings` (the training procedure's `calibration:` section).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator
from scipy import stats

from hil.core import FloatArray, JSONDict
from protocols.base import MAX_REPEATS, GradientEstimator, Objective
from protocols.optimizers import TunableOptimizer


@dataclass(frozen=True)
class NoiseEstimate:
    """Mean and standard deviation of `repeats` unperturbed loss measurements at one point."""

    mean: float
    sigma: float
    repeats: int
    evaluations: int
    device_seconds: float

    def sigma_interval(self, level: float = 0.95) -> tuple[float, float]:
        """Confidence interval of σ for Gaussian noise: (n−1)σ̂²/σ² ~ χ²(n−1)."""
        dof = self.repeats - 1
        alpha = 1.0 - level
        upper_q = float(stats.chi2.ppf(1.0 - alpha / 2.0, dof))
        lower_q = float(stats.chi2.ppf(alpha / 2.0, dof))
        return self.sigma * math.sqrt(dof / upper_q), self.sigma * math.sqrt(dof / lower_q)

    def as_dict(self) -> JSONDict:
        return asdict(self)


@dataclass(frozen=True)
class PerturbationCalibration:
    """The perturbation size chosen, with every size tried and its mean |ΔL|."""

    c: float
    mean_difference: float  # mean |L(θ + cΔ) − L(θ − cΔ)| at the chosen c
    threshold: float  # snr·√2·σ
    converged: bool  # False: the loss differences at c do not clear the noise floor
    note: str
    trials: list[tuple[float, float]]  # (c, mean |ΔL|) in the order tried
    evaluations: int
    device_seconds: float

    def as_dict(self) -> JSONDict:
        data = asdict(self)
        data["trials"] = [list(t) for t in self.trials]
        if not math.isfinite(self.mean_difference):
            data["mean_difference"] = None
        return data


@dataclass(frozen=True)
class GainCalibration:
    """The learning rate chosen for a target first step, and the gradient scale it rests on."""

    learning_rate: float
    gradient_scale: float  # mean |ĝ_i| over samples and coordinates (nan: not measured)
    target_step: float
    samples: int
    fallback: bool  # True: the gradient was too small to calibrate on; lr is the fallback
    note: str
    evaluations: int
    device_seconds: float

    def as_dict(self) -> JSONDict:
        data = asdict(self)
        if not math.isfinite(self.gradient_scale):
            data["gradient_scale"] = None
        return data


@dataclass
class _Spent:
    """Evaluations and device seconds since creation."""

    objective: Objective
    evaluations0: int = field(init=False)
    time0: float = field(init=False)

    def __post_init__(self) -> None:
        self.evaluations0 = self.objective.evaluations
        self.time0 = self.objective.device_time()

    @property
    def evaluations(self) -> int:
        return self.objective.evaluations - self.evaluations0

    @property
    def device_seconds(self) -> float:
        return self.objective.device_time() - self.time0


def measure_noise(objective: Objective, theta: FloatArray, repeats: int = 25) -> NoiseEstimate:
    """σ of the loss at θ from `repeats` ≥ 2 unperturbed measurements (sample std, ddof 1)."""
    if repeats < 2:
        raise ValueError(f"measure_noise needs repeats >= 2 to estimate a spread, got {repeats}")
    spent = _Spent(objective)
    t = np.asarray(theta, dtype=float)
    values = np.array([objective(t) for _ in range(repeats)])
    return NoiseEstimate(
        mean=float(values.mean()),
        sigma=float(values.std(ddof=1)),
        repeats=repeats,
        evaluations=spent.evaluations,
        device_seconds=spent.device_seconds,
    )


def narrowest_range(objective: Objective) -> float | None:
    """The narrowest finite, non-empty parameter range (None if there is none)."""
    widths = objective.upper - objective.lower
    finite = widths[np.isfinite(widths) & (widths > 0)]
    return float(finite.min()) if finite.size else None


def default_max_perturbation(objective: Objective) -> float | None:
    """A quarter of the narrowest finite parameter range (None if every range is infinite)."""
    narrowest = narrowest_range(objective)
    return None if narrowest is None else narrowest / 4.0


def calibrate_perturbation(
    objective: Objective,
    theta: FloatArray,
    sigma: float,
    *,
    c0: float,
    snr: float = 2.0,
    pairs: int = 8,
    directions: Literal["simultaneous", "coordinate"] = "simultaneous",
    c_max: float | None = None,
    max_trials: int = 8,
    bias_z: float = 3.0,
    rng: np.random.Generator | None = None,
) -> PerturbationCalibration:
    """The largest perturbation c whose own nonlinearity is not yet resolved above the noise.

    A larger c lowers the noise of a difference quotient (∝ σ/c) and raises its bias (the loss's
    curvature along the perturbation: ∝ c² times the third derivative for a symmetric
    difference), so the rule looks for the largest c whose bias the measurement cannot see. The
    same `pairs` directions Δ are used at every size; per pair the slope
    s(c) = [L(θ + cΔ) − L(θ − cΔ)] / (applied separation along Δ). Between sizes c and c/2 each
    pair's slopes differ by ¾ of its bias at c plus noise of known variance (from σ); the bias
    counts as resolved when the differences, in units of their noise, add up beyond the χ²
    quantile at the one-sided level of `bias_z` standard deviations (the bias may differ in sign
    from direction to direction, so squares are summed, not signed differences).

    From c0: while the bias at c is resolved, halve c; otherwise double c while the doubled
    size's bias stays unresolved and 2c ≤ c_max (default: a quarter of the narrowest finite
    range). At most `max_trials` sizes are measured, each costing 2·pairs evaluations. Finally
    the mean |ΔL| at c is compared with snr·√2·σ: below it the loss is flat or noise-dominated
    here and the result says so (`converged` False). Δ is a random ±1 vector ('simultaneous',
    SPSA's `c`) or ±1 on one random coordinate ('coordinate', finite differences' `h`);
    perturbed points are projected onto the box like the estimators' points. A noise-free
    objective (σ = 0) keeps c0.

    Spall's advice "c ≈ the noise σ" presumes parameters and loss scaled to order one; this rule
    asks the device instead, in the parameter units c is given in.
    """
    if not (math.isfinite(sigma) and sigma >= 0):
        raise ValueError(f"sigma must be finite and >= 0, got {sigma}")
    if not (c0 > 0 and snr > 0 and bias_z > 0 and pairs >= 2 and max_trials >= 2):
        raise ValueError(
            "calibrate_perturbation: c0, snr and bias_z must be > 0, pairs and max_trials >= 2"
        )
    spent = _Spent(objective)
    t = np.asarray(theta, dtype=float)
    threshold = snr * math.sqrt(2.0) * sigma
    limit = default_max_perturbation(objective) if c_max is None else c_max
    if limit is None:
        limit = c0 * 2.0**max_trials
    if sigma == 0:
        return PerturbationCalibration(
            c=c0,
            mean_difference=math.nan,
            threshold=0.0,
            converged=True,
            note="noise-free objective (σ = 0): c kept",
            trials=[],
            evaluations=0,
            device_seconds=0.0,
        )
    generator = rng if rng is not None else np.random.default_rng()
    movable = np.flatnonzero(objective.upper > objective.lower)
    if movable.size == 0:
        raise ValueError("calibrate_perturbation: every parameter range has zero width")
    deltas = np.zeros((pairs, t.size))
    for row in deltas:
        if directions == "simultaneous":
            row[movable] = generator.integers(0, 2, size=movable.size) * 2.0 - 1.0
        else:
            row[generator.choice(movable)] = 1.0
    trials: list[tuple[float, float]] = []
    measured: dict[float, tuple[FloatArray, FloatArray, float]] = {}  # slopes, separations, |ΔL|
    critical = float(stats.chi2.ppf(stats.norm.cdf(bias_z), pairs))

    def slopes(c: float) -> tuple[FloatArray, FloatArray]:
        if c not in measured:
            values, separations, differences = np.zeros(pairs), np.zeros(pairs), np.zeros(pairs)
            for k, delta in enumerate(deltas):
                plus, minus = objective.project(t + c * delta), objective.project(t - c * delta)
                difference = objective(plus) - objective(minus)
                separations[k] = float((plus - minus) @ delta) / float(delta @ delta)
                values[k] = difference / separations[k] if separations[k] > 0 else 0.0
                differences[k] = abs(difference)
            measured[c] = (values, separations, float(np.mean(differences)))
            trials.append((c, measured[c][2]))
        return measured[c][0], measured[c][1]

    def resolved(large: float) -> bool:
        """Do the slopes at `large` and `large`/2 differ by more than the noise explains?

        Per pair the difference has noise variance 2σ²/a² + 2σ²/a'² (a, a' the applied
        separations); without bias Σ d²/var ~ χ²(pairs), so the bias is resolved when the sum
        exceeds the χ² quantile at the one-sided level of `bias_z` standard deviations.
        """
        s_large, a_large = slopes(large)
        s_small, a_small = slopes(large / 2.0)
        usable = (a_large > 0) & (a_small > 0)
        if not usable.any():
            return False
        d = (s_large - s_small)[usable]
        var = 2.0 * sigma**2 * (1.0 / a_large[usable] ** 2 + 1.0 / a_small[usable] ** 2)
        dof = int(usable.sum())
        limit_stat = (
            critical if dof == pairs else float(stats.chi2.ppf(stats.norm.cdf(bias_z), dof))
        )
        return float(np.sum(d**2 / var)) > limit_stat

    c = min(c0, limit)
    if resolved(c):
        found = False
        while len(measured) < max_trials:
            c /= 2.0
            if not resolved(c):
                found = True
                break
        note = (
            "largest c whose curvature bias is not resolved (halving)"
            if found
            else f"bias still resolved at c = {c:g} after {len(measured)} sizes; using it"
        )
    else:
        while len(measured) < max_trials and 2.0 * c <= limit:
            if resolved(2.0 * c):
                break
            c *= 2.0
        note = "largest c whose curvature bias is not resolved (doubling, up to the limit)"
    slopes(c)
    value = measured[c][2]
    converged = value >= threshold
    if not converged:
        note += (
            f"; mean |ΔL| {value:.3g} < {snr:g}·√2·σ = {threshold:.3g}: the loss is flat or "
            "noise-dominated here"
        )
    return PerturbationCalibration(
        c=c,
        mean_difference=value,
        threshold=threshold,
        converged=converged,
        note=note,
        trials=trials,
        evaluations=spent.evaluations,
        device_seconds=spent.device_seconds,
    )


@contextmanager
def _gain_schedule_kept(estimator: GradientEstimator) -> Iterator[None]:
    """Calibration estimates do not advance an estimator's gain sequence.

    An estimator whose state has an estimate count `k` (SPSA: c_k = c/(k+1)^γ) gets its count
    back afterwards, so training starts at c_0; its random generator moves on, so training
    does not reuse the calibration's directions.
    """
    before = estimator.state_dict()
    yield
    if "k" in before:
        after = estimator.state_dict()
        after["k"] = before["k"]
        estimator.load_state_dict(after)


def calibrate_gain(
    objective: Objective,
    estimator: GradientEstimator,
    theta: FloatArray,
    target_step: float,
    samples: int = 10,
    *,
    optimizer: TunableOptimizer | None = None,
    fallback_lr: float | None = None,
    min_gradient: float = 1e-12,
) -> GainCalibration:
    """The learning rate whose first step moves each coordinate by about `target_step`.

    The gradient scale m is the mean of |ĝ_i| over `samples` estimates at θ and over the
    coordinates that can move; then lr = target / m (qiskit's SPSA calibration), or what the
    optimizer's `first_step_rate` says (Nesterov's first step is (1 + μ)·lr·g; Adam's first
    step is lr per coordinate whatever the gradient, so Adam gets lr = target without any
    measurement). If m is not finite or below `min_gradient` (a flat spot, a dead device), the
    rate cannot be calibrated: lr = fallback_lr with `fallback` set and the reason in `note`,
    or a ValueError when no fallback is given.
    """
    if not (math.isfinite(target_step) and target_step > 0):
        raise ValueError(f"target_step must be finite and > 0, got {target_step}")
    if samples < 1:
        raise ValueError(f"calibrate_gain needs samples >= 1, got {samples}")
    if optimizer is not None and getattr(optimizer, "normalizes_gradient", False):
        lr = optimizer.first_step_rate(target_step, math.nan)
        return GainCalibration(
            learning_rate=lr,
            gradient_scale=math.nan,
            target_step=target_step,
            samples=0,
            fallback=False,
            note=f"{type(optimizer).__name__} steps lr per coordinate at first: lr = target",
            evaluations=0,
            device_seconds=0.0,
        )
    spent = _Spent(objective)
    t = np.asarray(theta, dtype=float)
    movable = objective.upper > objective.lower
    with _gain_schedule_kept(estimator):
        magnitudes = [
            np.abs(estimator.estimate(objective, t).gradient[movable]) for _ in range(samples)
        ]
    scale = float(np.mean(magnitudes)) if movable.any() else math.nan
    if math.isfinite(scale) and scale > min_gradient:
        fallback, note = False, f"lr = target / mean |ĝ_i| over {samples} estimates"
        if optimizer is not None:
            lr = optimizer.first_step_rate(target_step, scale)
        else:
            lr = target_step / scale
    else:
        reason = f"mean |ĝ_i| = {scale:.3g} is not above min_gradient {min_gradient:g}"
        if fallback_lr is None:
            raise ValueError(f"cannot calibrate the learning rate: {reason}; give a fallback_lr")
        fallback, note, lr = True, f"{reason}: kept lr = {fallback_lr:g}", fallback_lr
    return GainCalibration(
        learning_rate=float(lr),
        gradient_scale=scale,
        target_step=target_step,
        samples=samples,
        fallback=fallback,
        note=note,
        evaluations=spent.evaluations,
        device_seconds=spent.device_seconds,
    )


def perturbation_setting(estimator: GradientEstimator) -> str | None:
    """The estimator's perturbation-size setting: 'c' (SPSA-like), 'h' (differences), None."""
    settings = getattr(estimator, "settings", None)
    if not isinstance(settings, BaseModel):
        return None
    fields = type(settings).model_fields
    return next((name for name in ("c", "h") if name in fields), None)


def set_perturbation(estimator: GradientEstimator, value: float) -> str:
    """Set the estimator's `c` (or `h`); returns which one was set."""
    name = perturbation_setting(estimator)
    if name is None:
        raise ValueError(
            f"{type(estimator).__name__} has no `c` or `h` setting to calibrate; turn "
            "calibration.perturbation off or set its perturbation by hand"
        )
    settings: BaseModel = estimator.settings  # type: ignore[attr-defined]
    estimator.settings = settings.model_copy(update={name: float(value)})  # type: ignore[attr-defined]
    return name


class CalibrationSettings(BaseModel):
    """What to calibrate before the first step (`calibration: true` takes every default)."""

    model_config = ConfigDict(extra="forbid")

    noise_repeats: int = Field(
        default=25, ge=2, le=MAX_REPEATS, description="unperturbed measurements at the start for σ"
    )
    target_step: float | None = Field(
        default=None,
        gt=0,
        description="calibrate the learning rate so the first step moves each coordinate by "
        "about this much (parameter units); omitted: keep the configured lr",
    )
    gain_samples: int = Field(
        default=10, ge=1, le=10_000, description="gradient estimates for the rate"
    )
    min_gradient: float = Field(
        default=1e-12, ge=0, description="below this mean |ĝ_i| the configured lr is kept"
    )
    perturbation: bool = Field(
        default=False, description="calibrate the estimator's c (or h) against the noise"
    )
    snr: float = Field(
        default=2.0, gt=0, description="noise-floor check: mean |ΔL| at c ≥ snr·√2·σ"
    )
    bias_z: float = Field(
        default=3.0, gt=0, description="perturbation rule: bias resolved beyond bias_z SE"
    )
    perturbation_pairs: int = Field(
        default=8, ge=2, le=10_000, description="± pairs per size tried"
    )
    perturbation_trials: int = Field(default=8, ge=2, le=60, description="sizes tried at most")
    max_perturbation: float | None = Field(
        default=None, gt=0, description="largest c tried; default ¼ of the narrowest range"
    )

    @model_validator(mode="before")
    @classmethod
    def _true_means_defaults(cls, data: Any) -> Any:
        return {} if data is True else data


@dataclass(frozen=True)
class CalibrationReport:
    """What `calibrate` measured and set, and what it cost in total."""

    noise: NoiseEstimate
    perturbation: PerturbationCalibration | None
    gain: GainCalibration | None
    setting: str | None  # 'c' or 'h' when the perturbation was set
    evaluations: int
    device_seconds: float

    @property
    def sigma(self) -> float:
        return self.noise.sigma

    @property
    def c(self) -> float | None:
        return None if self.perturbation is None else self.perturbation.c

    @property
    def learning_rate(self) -> float | None:
        return None if self.gain is None else self.gain.learning_rate

    def as_dict(self) -> JSONDict:
        """The headline values (sigma, c, learning_rate) and each part's details, as JSON."""
        return {
            "sigma": self.sigma,
            "loss_mean": self.noise.mean,
            "setting": self.setting,
            "c": self.c,
            "learning_rate": self.learning_rate,
            "evaluations": self.evaluations,
            "device_seconds": self.device_seconds,
            "noise": self.noise.as_dict(),
            "perturbation": None if self.perturbation is None else self.perturbation.as_dict(),
            "gain": None if self.gain is None else self.gain.as_dict(),
        }


def calibrate(
    objective: Objective,
    estimator: GradientEstimator,
    optimizer: TunableOptimizer | None,
    theta: FloatArray,
    settings: CalibrationSettings,
    *,
    rng: np.random.Generator | None = None,
) -> CalibrationReport:
    """Measure σ, then (optionally) set the estimator's c / h, then (optionally) the rate.

    The perturbation comes first because the gradient scale the rate is calibrated on depends on
    it (noise in ĝ grows as σ/c). A rate that cannot be calibrated keeps the optimizer's rate.
    The rate needs an optimizer (`target_step` without one is a ValueError).
    """
    spent = _Spent(objective)
    s = settings
    noise = measure_noise(objective, theta, s.noise_repeats)
    perturbation, setting = None, None
    if s.perturbation:
        name = perturbation_setting(estimator)
        if name is None:
            set_perturbation(estimator, 0.0)  # raises the explanation
        c0 = float(getattr(estimator.settings, str(name)))  # type: ignore[attr-defined]
        perturbation = calibrate_perturbation(
            objective,
            theta,
            noise.sigma,
            c0=c0,
            snr=s.snr,
            bias_z=s.bias_z,
            pairs=s.perturbation_pairs,
            directions="simultaneous" if name == "c" else "coordinate",
            c_max=s.max_perturbation,
            max_trials=s.perturbation_trials,
            rng=rng,
        )
        setting = set_perturbation(estimator, perturbation.c)
    gain = None
    if s.target_step is not None:
        if optimizer is None:
            raise ValueError("calibration.target_step: there is no optimizer learning rate to set")
        gain = calibrate_gain(
            objective,
            estimator,
            theta,
            s.target_step,
            s.gain_samples,
            optimizer=optimizer,
            fallback_lr=optimizer.base_learning_rate,
            min_gradient=s.min_gradient,
        )
        optimizer.set_learning_rate(gain.learning_rate)
    return CalibrationReport(
        noise=noise,
        perturbation=perturbation,
        gain=gain,
        setting=setting,
        evaluations=spent.evaluations,
        device_seconds=spent.device_seconds,
    )
