"""The device-time models `estimator: auto` chooses with (issue 11).

For a plateau estimator the squared error of one estimate, summed over the d coordinates, is
noise + bias² (+ cross-talk for partial Hadamard cycles); the cheapest settings are those whose
predicted error fits the budget ε² = 2(1 − target cosine)·‖g‖² in the fewest device seconds:

- central differences, step h, r sweeps, n samples per plateau: noise d·σ²(n)/(2h²r), bias
  K_F·h⁴ (K_F = Σ (F'''_i/6)²), 2dr evaluations;
- SPSA on Hadamard rows, size c, r rows: noise d·σ²(n)/(2c²r) (every row informs every
  coordinate), bias K_H·c⁴, cross-talk X(r) = mean over cycle offsets of ‖(M_r − I)g‖² with
  M_r = (1/r)·Σ Δ_k Δ_kᵀ over r consecutive rows (0 for whole cycles, diluted by them past one:
  X(km + s) = (s/(km + s))²·X(s)), 2r evaluations.

σ²(n) is the variance one evaluation shows in a difference of two plateaus, modelled as white
w/n plus a part c that averaging does not reduce (drift, 1/f between plateaus).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from hil.core import FloatArray, JSONDict

Candidate = Literal["central-difference", "hadamard-spsa", "homodyne"]
CANDIDATES: tuple[Candidate, ...] = ("central-difference", "hadamard-spsa", "homodyne")
STEP_GRID = np.geomspace(1e-3, 0.25, 25)  # h, c and A as fractions of a control's half range


@dataclass(frozen=True)
class Prediction:
    """The cheapest settings found for one candidate and the device seconds they should take."""

    candidate: Candidate
    seconds: float  # per estimate
    steps: list[float]  # h or c (one value), or the amplitude per control; parameter units
    window: float | None = None  # homodyne only
    repeats: int = 1  # sweeps (central differences) or Hadamard rows per estimate
    samples: int | None = None  # samples per plateau to set (None: leave the device's)
    error: float = 0.0  # predicted E‖ĝ − g‖²
    noise: float = 0.0  # predicted per-coordinate noise variance of ĝ
    settle: float = 0.0  # homodyne: s discarded before the window
    ramp: float = 0.0  # homodyne: s of ramp in and out

    def as_dict(self) -> JSONDict:
        return {
            "candidate": self.candidate,
            "seconds": self.seconds,
            "steps": self.steps,
            "window": self.window,
            "repeats": self.repeats,
            "samples": self.samples,
            "error": self.error,
            "noise": self.noise,
            "settle": self.settle,
            "ramp": self.ramp,
        }


@dataclass(frozen=True)
class PlateauCosts:
    """Noise and device seconds of one evaluation against the samples a plateau averages,
    fitted to probes at one or two counts."""

    counts: tuple[int, ...]  # what the device can be set to (one entry: it cannot be set)
    probes: tuple[int, ...]
    variances: tuple[float, ...]  # σ² seen by a difference, per probe
    probe_seconds: tuple[float, ...]  # per evaluation, per probe

    def variance(self, n: int) -> float:
        """σ²(n) = w/n + c through the probes (w, c ≥ 0)."""
        if len(self.probes) == 1:
            return self.variances[0]
        (n1, n2), (v1, v2) = self.probes, self.variances
        white = max(0.0, (v1 - v2) / (1.0 / n1 - 1.0 / n2))
        floor = max(0.0, v2 - white / n2)
        return white / n + floor

    def seconds(self, n: int) -> float:
        """Per evaluation, linear in n through the probes (never below the cheaper one)."""
        if len(self.probes) == 1:
            return self.probe_seconds[0]
        (n1, n2), (t1, t2) = self.probes, self.probe_seconds
        slope = max(0.0, (t2 - t1) / (n2 - n1))
        return max(min(t1, t2), t1 + slope * (n - n1))

    def as_dict(self) -> JSONDict:
        return {
            "counts": list(self.counts),
            "probes": list(self.probes),
            "variances": list(self.variances),
            "seconds_per_evaluation": list(self.probe_seconds),
        }


def upper_sum_of_squares(values: FloatArray, variances: FloatArray, sigmas: float = 2.0) -> float:
    """An upper bound (mean + `sigmas` SE) on Σ b_i² from noisy b̂_i with known noise variances:
    Σ b̂² − Σ v is unbiased, with variance Σ (4 b² v + 2 v²)."""
    b2 = np.asarray(values, dtype=float) ** 2
    v = np.asarray(variances, dtype=float)
    spread = math.sqrt(float(np.sum(4 * b2 * v + 2 * v**2)))
    return max(0.0, float(np.sum(b2 - v)) + sigmas * spread)


def ladder_curvature(
    steps: Sequence[float],
    sweeps: Sequence[FloatArray],
    noise: Sequence[float],
    weights: FloatArray | None = None,
) -> float:
    """K = Σ (F'''_i/6)² from central differences D(h) at increasing steps (`noise`: each sweep's
    variance per coordinate). Each adjacent pair gives F'''/6 ≈ (D(h_b) − D(h_a))/(h_b² − h_a²);
    the widest pair measures it most precisely (its noise falls as h⁻⁶), so its upper bound is
    used, unless a narrower pair shows significantly more curvature (a device nonlinear on a
    smaller scale than the widest step), whose estimate then wins. With `weights` w_i it bounds
    Σ (w_i F'''_i/6)² instead."""
    estimates = []
    for a in range(len(steps) - 1):
        span = steps[a + 1] ** 2 - steps[a] ** 2
        w = np.ones(np.size(sweeps[a])) if weights is None else np.asarray(weights, dtype=float)
        b = w * (np.asarray(sweeps[a + 1]) - np.asarray(sweeps[a])) / span
        v = w**2 * (noise[a] + noise[a + 1]) / span**2
        point = float(np.sum(b**2 - v))
        spread = math.sqrt(float(np.sum(4 * b**2 * v + 2 * v**2)))
        estimates.append((point, spread))
    point, spread = estimates[-1]
    widest = max(0.0, point + 2.0 * spread)
    narrower = [p for p, e in estimates[:-1] if p - 2.0 * e > widest]
    return max([widest, *narrower])


def cross_talk(rows: FloatArray, gradient: FloatArray, noise: float) -> FloatArray:
    """X(r) for r = 1 … m: the mean over the cycle's m offsets of ‖(M_r − I) g‖² (see the module
    docstring), with the part that the noise of ĝ (variance `noise` per coordinate) adds taken
    out; 0 at r = m, where the cycle is whole."""
    m, d = rows.shape
    g = np.asarray(gradient, dtype=float)
    weighted = rows * (rows @ g)[:, None]  # Δ_k (Δ_k·g), m × d
    gram = rows @ rows.T
    out = np.zeros(m)
    for r in range(1, m):
        total = 0.0
        for offset in range(m):
            idx = (offset + np.arange(r)) % m
            error = weighted[idx].sum(axis=0) / r - g
            frobenius = float(np.sum(gram[np.ix_(idx, idx)] ** 2)) / r**2 - d
            total += float(error @ error) - noise * frobenius
        out[r - 1] = max(0.0, total / m)
    return out


def cheapest(predictions: Iterable[Prediction]) -> Prediction | None:
    """The fastest prediction; of equally fast ones, the most accurate (None if none)."""
    return min(predictions, key=lambda p: (p.seconds, p.error), default=None)


def _plateau_grid(costs: PlateauCosts, scale: float) -> Iterator[tuple[int, float, float, float]]:
    """Every (samples per plateau, σ², seconds per evaluation, step) a plateau candidate tries;
    the step is a fraction of `STEP_GRID` times a control's half range `scale`."""
    for n in costs.counts:
        var, per = costs.variance(n), costs.seconds(n)
        for fraction in STEP_GRID:
            yield n, var, per, float(fraction * scale)


def predict_fd(
    costs: PlateauCosts,
    curvature: float,
    dim: int,
    budget: float,
    scale: float,
    extra_evaluations: int,
    max_repeats: int,
) -> Prediction | None:
    """The cheapest (n, h, r) of central differences inside the budget; of equally cheap, the
    most accurate. `curvature` is K_F, `scale` a control's half range (h = fraction × scale)."""
    found = []
    for n, var, per, h in _plateau_grid(costs, scale):
        bias2 = curvature * h**4
        room = budget - bias2
        if room <= 0:
            continue
        repeats = max(1, math.ceil(dim * var / (2 * h**2) / room))
        if repeats > max_repeats:
            continue
        noise = var / (2 * h**2 * repeats)
        seconds = (2 * dim * repeats + extra_evaluations) * per
        error = dim * noise + bias2
        found.append(Prediction("central-difference", seconds, [h], None, repeats, n, error, noise))
    return cheapest(found)


def predict_hadamard(
    costs: PlateauCosts,
    curvature: float,
    cross: FloatArray,
    dim: int,
    budget: float,
    scale: float,
    extra_evaluations: int,
    max_repeats: int,
) -> Prediction | None:
    """The cheapest (n, c, r) of SPSA on Hadamard rows inside the budget. `cross` is X(r) for
    r = 1 … m (`cross_talk`); past whole cycles the leftover rows' cross-talk is diluted by the
    cycles: X(km + s) = (s/(km + s))²·X(s)."""
    m = cross.size
    r = np.arange(1, max_repeats + 1)
    part = r % m  # rows past the last whole cycle: (M_r − I) = (part/r)·(M_part − I)
    talk = np.where(part > 0, (part / r) ** 2 * cross[np.maximum(part, 1) - 1], 0.0)
    found = []
    for n, var, per, c in _plateau_grid(costs, scale):
        bias2 = curvature * c**4
        if bias2 >= budget:
            continue
        error = dim * var / (2 * c**2 * r) + talk
        fit = np.flatnonzero(error + bias2 <= budget)
        if fit.size == 0:
            continue
        repeats = int(r[fit[0]])
        noise = var / (2 * c**2 * repeats)
        seconds = (2 * repeats + extra_evaluations) * per
        total = float(error[fit[0]]) + bias2
        found.append(Prediction("hadamard-spsa", seconds, [c], None, repeats, n, total, noise))
    return cheapest(found)


def sample_counts(largest: int, current: int, settable: bool) -> tuple[int, ...]:
    """The plateau sample counts to consider: powers of two up to `largest` when the device's
    averaging can be set, else only what it does now."""
    if not settable:
        return (current,)
    counts = [1 << k for k in range(max(largest, 1).bit_length()) if 1 << k <= largest]
    return tuple(counts)


def probe_counts(counts: Sequence[int]) -> tuple[int, ...]:
    """One or two counts to probe the noise at: the smallest and 16 (or the largest below)."""
    low = counts[0]
    high = max((n for n in counts if n <= 16), default=low)
    return (low,) if high == low else (low, high)
