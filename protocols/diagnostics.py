"""Gradient-quality diagnostics: any estimator against a reference gradient.

The reference is exact where the device knows its own noise-free response (simulators expose
`true_output` and `true_gradient`: the `GradientOracle` protocol) and otherwise a long average of
a reference estimator (central differences by default), with its standard error, as one would do
on hardware. Figures: cosine similarity, relative error, sign agreement, per-coordinate SNR, and
the device evaluations and seconds each estimate cost.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from hil.core import FloatArray, JSONDict
from protocols.base import GradientEstimate, GradientEstimator, Objective


@runtime_checkable
class GradientOracle(Protocol):
    """A device that knows its noise-free output and its gradient in the controls."""

    def true_output(self, theta: FloatArray, inputs: FloatArray) -> FloatArray:
        """Noise-free outputs, n_cases × n_outputs, at control values θ."""
        ...

    def true_gradient(self, theta: FloatArray, inputs: FloatArray) -> FloatArray:
        """∂y/∂θ of the (single) output, n_cases × n_controls."""
        ...


@dataclass(frozen=True)
class Reference:
    """The gradient estimates are compared with: exact, or a long average with its SE."""

    gradient: FloatArray
    stderr: FloatArray | None
    kind: str  # "oracle" or "average"
    evaluations: int = 0
    device_seconds: float = 0.0


@dataclass(frozen=True)
class GradientQuality:
    """How repeated estimates at one point compare with the reference."""

    reference: Reference
    estimates: FloatArray  # repeats × d
    cosine: FloatArray  # per repeat
    relative_error: FloatArray  # per repeat: ‖ĝ − g‖/‖g‖
    sign_agreement: FloatArray  # per repeat: fraction of coordinates with the reference's sign
    snr: FloatArray  # per coordinate: |mean ĝ_i| / std ĝ_i over the repeats
    evaluations: float  # mean per estimate
    device_seconds: float  # mean per estimate

    @property
    def mean(self) -> FloatArray:
        mean: FloatArray = self.estimates.mean(axis=0)
        return mean

    @property
    def spread(self) -> FloatArray:
        """Standard deviation of each coordinate over the repeats (NaN with one repeat)."""
        if self.estimates.shape[0] < 2:
            return np.full(self.estimates.shape[1], math.nan)
        spread: FloatArray = self.estimates.std(axis=0, ddof=1)
        return spread

    def summary(self) -> JSONDict:
        """Medians over the repeats and the cost per estimate (JSON)."""
        return {
            "reference": self.reference.kind,
            "repeats": int(self.estimates.shape[0]),
            "cosine_median": float(np.median(self.cosine)),
            "cosine_min": float(np.min(self.cosine)),
            "relative_error_median": float(np.median(self.relative_error)),
            "sign_agreement_median": float(np.median(self.sign_agreement)),
            "snr_median": _finite_median(self.snr),
            "evaluations_per_estimate": self.evaluations,
            "device_seconds_per_estimate": self.device_seconds,
            "reference_norm": float(np.linalg.norm(self.reference.gradient)),
        }


def oracle_of(objective: Objective) -> GradientOracle | None:
    """The device behind the objective (unwrapping a safety guard) if it is an oracle."""
    device: object = objective.device
    if isinstance(device, GradientOracle):
        return device
    hatch = getattr(device, "unguarded_device", None)  # the guard's logged escape hatch
    inner = hatch("reading the simulator's exact gradient; nothing is sent") if hatch else None
    return inner if isinstance(inner, GradientOracle) else None


def oracle_gradient(objective: Objective, theta: FloatArray, oracle: GradientOracle) -> Reference:
    """The exact ∂L/∂θ in the objective's parameters: Σ_c ∂L/∂y_c · ∂y_c/∂θ (no device time)."""
    if len(objective.output_columns) != 1:
        raise ValueError(
            "the oracle gives the gradient of a single output; this task scores "
            f"{len(objective.output_columns)} outputs: use the averaged reference"
        )
    controls = objective.physical(np.asarray(theta, dtype=float))
    inputs = objective.device_inputs
    column = objective.output_columns[0]
    outputs = np.asarray(oracle.true_output(controls, inputs), dtype=float)[:, [column]]
    dl_dy = np.asarray(objective.task.output_gradient(outputs), dtype=float)[:, 0]
    jacobian = np.asarray(oracle.true_gradient(controls, inputs), dtype=float)
    gradient: FloatArray = dl_dy @ jacobian * objective.parameter_scale()
    return Reference(gradient=gradient, stderr=None, kind="oracle")


def averaged_gradient(
    objective: Objective, theta: FloatArray, estimator: GradientEstimator, repeats: int
) -> Reference:
    """Mean of `repeats` estimates, with its standard error: the hardware reference."""
    if repeats < 2:
        raise ValueError(f"an averaged reference needs at least 2 repeats, got {repeats}")
    runs = [estimator.estimate(objective, theta) for _ in range(repeats)]
    samples = np.array([r.gradient for r in runs])
    return Reference(
        gradient=samples.mean(axis=0),
        stderr=samples.std(axis=0, ddof=1) / math.sqrt(repeats),
        kind="average",
        evaluations=sum(r.evaluations for r in runs),
        device_seconds=sum(r.device_seconds for r in runs),
    )


def assess(estimates: list[GradientEstimate], reference: Reference) -> GradientQuality:
    """Compare repeated estimates at one point with the reference."""
    if not estimates:
        raise ValueError("assess needs at least one estimate")
    g = np.asarray(reference.gradient, dtype=float)
    samples = np.array([e.gradient for e in estimates], dtype=float)
    if samples.shape[1:] != g.shape:
        raise ValueError(f"estimates have shape {samples.shape[1:]}, reference {g.shape}")
    g_norm = float(np.linalg.norm(g))
    norms = np.linalg.norm(samples, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cosine = np.where(norms * g_norm > 0, samples @ g / (norms * g_norm), 0.0)
        relative = np.linalg.norm(samples - g, axis=1) / g_norm if g_norm > 0 else norms * np.inf
    signs = np.mean(np.sign(samples) == np.sign(g), axis=1)
    if samples.shape[0] > 1:
        spread = samples.std(axis=0, ddof=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            snr = np.where(spread > 0, np.abs(samples.mean(axis=0)) / spread, np.inf)
    else:
        snr = np.full(g.shape, math.nan)
    return GradientQuality(
        reference=reference,
        estimates=samples,
        cosine=cosine,
        relative_error=relative,
        sign_agreement=signs,
        snr=snr,
        evaluations=float(np.mean([e.evaluations for e in estimates])),
        device_seconds=float(np.mean([e.device_seconds for e in estimates])),
    )


def _finite_median(values: FloatArray) -> float | None:
    finite = values[np.isfinite(values)]
    return float(np.median(finite)) if finite.size else None
