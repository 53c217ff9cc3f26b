"""`auto`: pick the estimator that reaches a target accuracy in the least device time, from
measurements of the device at hand (issue 11).

At the first estimate (and again every `recheck_every` estimates) it measures, at θ, with the
run's own objective and clock:

- the loss noise σ and the device seconds of one evaluation, from `probe_repeats` evaluations;
- the gradient g and the third derivative per coordinate, from central differences at two step
  sizes h₁ < h₂: D(h) = g + F'''h²/6, so F''' = 6(D(h₂) − D(h₁))/(h₂² − h₁²); the upper bound
  |F'''| + 2 SE is what is used (a bias must not be missed);
- on a streaming device, one homodyne estimate at a pilot window T₀ and amplitudes A₀: its
  per-coordinate standard errors (honest under 1/f on the 2/T tone grid) and the seconds per
  stream.

With ε² = 2(1 − target cosine)·‖g‖² the error budget (E‖ĝ − g‖² ≤ ε²‖g‖² gives about the target
cosine), it predicts for each candidate the cheapest settings on a grid:

- central differences, step h and r repeats: variance σ²/(2h²r) and bias F'''h²/6 per
  coordinate, 2d·r evaluations;
- homodyne at amplitudes a·A₀ and window T: variance SE₀²·(T₀/T)/a² and bias F'''(aA₀)²/8 per
  coordinate, the pilot's streams of T plus their fixed overhead;

then delegates every estimate to the cheapest, logging the prediction and what was measured
(in `extras` of each estimate). The measurements are charged to the estimate that makes them.
Hadamard SPSA and ES are not candidates yet (their cross-coordinate variance needs a model of
‖g‖ per direction); the equal-time benchmark shows where that matters.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from hil.core import ConfigError, FloatArray, JSONDict, Streaming
from protocols.base import GradientEstimate, Objective
from protocols.estimators import CentralDifference
from protocols.homodyne import Homodyne

log = logging.getLogger(__name__)

Candidate = Literal["central-difference", "homodyne"]
CANDIDATES: tuple[Candidate, ...] = ("central-difference", "homodyne")
STEP_GRID = np.geomspace(1e-3, 0.25, 25)  # h and A as fractions of each control's half range
WINDOW_GRID = np.geomspace(0.05, 20.0, 40)  # s
SLEW_MARGIN = 1.5  # a stream's ramp takes this much longer than the slew limit allows


@dataclass(frozen=True)
class Prediction:
    """The cheapest settings found for one candidate and the device seconds they should take."""

    candidate: Candidate
    seconds: float  # per estimate
    steps: list[float]  # h (one value) or the amplitude per control, parameter units
    window: float | None  # homodyne only
    repeats: int  # central differences only
    settle: float = 0.0  # homodyne: s discarded before the window
    ramp: float = 0.0  # homodyne: s of ramp in and out

    def as_dict(self) -> JSONDict:
        return {
            "candidate": self.candidate,
            "seconds": self.seconds,
            "steps": self.steps,
            "window": self.window,
            "repeats": self.repeats,
            "settle": self.settle,
            "ramp": self.ramp,
        }


class AutoEstimator:
    """Measures the device, predicts each candidate's device time to the target accuracy, and
    delegates to the cheapest (see the module docstring)."""

    class Settings(BaseModel):
        model_config = ConfigDict(extra="forbid")

        target_cosine: float = Field(default=0.99, gt=0, lt=1, description="per estimate")
        candidates: list[Candidate] = Field(default_factory=lambda: list(CANDIDATES), min_length=1)
        probe_repeats: int = Field(default=8, ge=3, le=1000, description="evaluations for σ")
        pilot_window: float = Field(default=0.5, gt=0, le=60, description="s, homodyne pilot")
        recheck_every: int = Field(
            default=50, ge=1, le=1_000_000, description="estimates between re-measurements"
        )
        max_repeats: int = Field(default=1000, ge=1, le=100_000)

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings if settings is not None else self.Settings()
        self._choice: Prediction | None = None
        self._delegate: CentralDifference | Homodyne | None = None
        self._since = 0
        self._measured: JSONDict = {}

    # -- the GradientEstimator interface ---------------------------------------------------------
    def estimate(self, objective: Objective, theta: FloatArray) -> GradientEstimate:
        t0, e0 = objective.device_time(), objective.evaluations
        if self._delegate is None or self._since >= self.settings.recheck_every:
            self._choose(objective, np.asarray(theta, dtype=float))
        assert self._choice is not None
        assert self._delegate is not None
        self._since += 1
        stderr: FloatArray | None = None
        if isinstance(self._delegate, CentralDifference):
            runs = [self._delegate.estimate(objective, theta) for _ in range(self._choice.repeats)]
            stack = np.array([r.gradient for r in runs])
            gradient = stack.mean(axis=0)
            if len(runs) > 1:
                stderr = stack.std(axis=0, ddof=1) / math.sqrt(len(runs))
            loss = float(np.mean([r.loss for r in runs]))
            extras: dict[str, float] = {}
        else:
            est = self._delegate.estimate(objective, theta)
            gradient, loss, stderr, extras = est.gradient, est.loss, est.stderr, dict(est.extras)
        extras.update(
            {
                "auto_homodyne": float(self._choice.candidate == "homodyne"),
                "auto_predicted_seconds": self._choice.seconds,
                "auto_repeats": float(self._choice.repeats),
            }
        )
        return GradientEstimate(
            gradient=np.asarray(gradient, dtype=float),
            loss=loss,
            evaluations=objective.evaluations - e0,
            device_seconds=objective.device_time() - t0,
            stderr=stderr,
            extras=extras,
        )

    @property
    def measured(self) -> JSONDict:
        """What the last choice measured and predicted: sigma, timing, gradient norm, third
        derivatives and every candidate's prediction."""
        return dict(self._measured)

    def state_dict(self) -> JSONDict:
        return {
            "choice": None if self._choice is None else self._choice.as_dict(),
            "since": self._since,
        }

    def load_state_dict(self, state: JSONDict) -> None:
        choice = state.get("choice")
        self._since = int(state.get("since", 0))
        if choice is None:
            self._choice, self._delegate = None, None
            return
        self._choice = Prediction(**choice)
        self._delegate = self._build(self._choice)

    # -- measuring and choosing ------------------------------------------------------------------
    def _choose(self, objective: Objective, theta: FloatArray) -> None:
        s = self.settings
        half = (objective.upper - objective.lower) / 2.0
        start = objective.device_time()
        values = [objective(theta) for _ in range(s.probe_repeats)]
        per_eval = (objective.device_time() - start) / s.probe_repeats
        sigma = float(np.std(values, ddof=1))
        h1, h2 = 0.05 * half, 0.25 * half
        d1a, d1b = _central(objective, theta, h1), _central(objective, theta, h1)
        d2 = _central(objective, theta, h2)
        # the noise a difference really sees (level changes included), from the two repeats:
        # var(D(h)) = sigma^2/(2 h^2) per coordinate, pooled over the coordinates
        slope_var = float(np.mean((d1a - d1b) ** 2 / 2.0 * 2.0 * h1**2))
        sigma = max(sigma, math.sqrt(slope_var))
        d1 = (d1a + d1b) / 2.0
        third = 6.0 * (d2 - d1) / (h2**2 - h1**2)
        # the differences' own noise sets how large the third derivative can look
        third_noise = 6.0 * sigma * np.sqrt(1 / (4 * h1**2) + 1 / (2 * h2**2)) / (h2**2 - h1**2)
        third = np.abs(third) + 2 * third_noise  # an upper bound: bias must not be missed
        gradient = d1
        budget = 2.0 * (1.0 - s.target_cosine) * float(np.sum(gradient**2))
        self._measured = {
            "sigma": sigma,
            "seconds_per_evaluation": per_eval,
            "gradient_norm": float(np.linalg.norm(gradient)),
            "third_derivative": third.tolist(),
        }
        predictions: list[Prediction] = []
        if "central-difference" in s.candidates:
            fd = _predict_fd(sigma, third, half, budget, per_eval, s.max_repeats)
            if fd is not None:
                predictions.append(fd)
        if "homodyne" in s.candidates and isinstance(objective.device, Streaming):
            hge = self._predict_homodyne(objective, theta, third, half, budget)
            if hge is not None:
                predictions.append(hge)
        if not predictions:  # nothing reaches the target: the most accurate we can do
            h = [float(0.08 * np.min(half))]
            seconds = (2 * objective.dim * s.max_repeats + 1) * per_eval
            predictions.append(Prediction("central-difference", seconds, h, None, s.max_repeats))
        self._choice = min(predictions, key=lambda p: p.seconds)
        self._delegate = self._build(self._choice)
        self._since = 0
        self._measured["predictions"] = [p.as_dict() for p in predictions]
        log.info(
            "auto: %s predicted at %.4g device s per estimate (measured σ %.3g, ‖g‖ %.3g)",
            self._choice.candidate,
            self._choice.seconds,
            sigma,
            float(np.linalg.norm(gradient)),
        )

    def _predict_homodyne(
        self,
        objective: Objective,
        theta: FloatArray,
        third: FloatArray,
        half: FloatArray,
        budget: float,
    ) -> Prediction | None:
        s = self.settings
        a0 = 0.05
        settle, ramp = _stream_timing(objective, theta)
        pilot = Homodyne(
            Homodyne.Settings(
                window=s.pilot_window,
                amplitudes=(a0 * half).tolist(),
                settle_time=settle,
                ramp_time=ramp,
            )
        )
        rate = float(objective.device.spec.sample_rate or 1.0)
        shortest = _shortest_window(objective, settle, ramp)
        if shortest is None:
            return None
        start = objective.device_time()
        try:
            est = pilot.estimate(objective, theta)
        except ConfigError as exc:
            log.info("auto: homodyne is not a candidate here (%s)", exc)
            return None
        spent = objective.device_time() - start
        if est.stderr is None:
            return None
        streams = int(est.extras.get("streams", 1))
        overhead = max(0.0, spent / max(streams, 1) - s.pilot_window)
        se0 = np.asarray(est.stderr, dtype=float)
        best: Prediction | None = None
        best_error = math.inf
        for a in STEP_GRID:
            bias = third * (a * half) ** 2 / 8.0
            room = budget - float(np.sum(bias**2))
            if room <= 0:
                continue
            needed = s.pilot_window * float(np.sum(se0**2)) * (a0 / a) ** 2 / room
            window = float(next((w for w in WINDOW_GRID if w >= max(needed, shortest)), math.inf))
            window = math.ceil(window * rate - 1e-9) / rate if math.isfinite(window) else window
            if not math.isfinite(window):
                continue
            seconds = streams * (window + overhead)
            error = float(np.sum(se0**2)) * s.pilot_window / window * (a0 / a) ** 2 + float(
                np.sum(bias**2)
            )
            if best is None or (seconds, error) < (best.seconds, best_error):
                steps = (a * half).tolist()
                best = Prediction("homodyne", seconds, steps, window, 1, settle, ramp)
                best_error = error
        return best

    @staticmethod
    def _build(choice: Prediction) -> CentralDifference | Homodyne:
        if choice.candidate == "central-difference":
            return CentralDifference(CentralDifference.Settings(h=choice.steps[0]))
        window = choice.window if choice.window is not None else 0.5
        return Homodyne(
            Homodyne.Settings(
                window=window,
                amplitudes=choice.steps,
                settle_time=choice.settle,
                ramp_time=max(choice.ramp, 1e-6),
            )
        )


def _shortest_window(objective: Objective, settle: float, ramp: float) -> float | None:
    """The shortest window of the grid whose tone plan fits this device (None: none does)."""
    rate = float(objective.device.spec.sample_rate or 1.0)
    for grid_window in WINDOW_GRID:
        window = math.ceil(float(grid_window) * rate - 1e-9) / rate
        trial = Homodyne(Homodyne.Settings(window=window, settle_time=settle, ramp_time=ramp))
        try:
            trial.tones(objective)
        except ConfigError:
            continue
        return window
    return None


def _stream_timing(objective: Objective, theta: FloatArray) -> tuple[float, float]:
    """Settle and ramp of a stream on this device: its own settle time (at least two samples),
    and a ramp from 0 V to θ within every control's slew limit (at least the device's ramp and
    one sample)."""
    spec = objective.device.spec
    dt = 1.0 / float(spec.sample_rate or 1.0)
    levels = np.abs(objective.physical(theta))
    slews = np.array([c.max_slew for c in spec.controls], dtype=float)
    ramp = float(np.max(levels / slews, initial=0.0)) * SLEW_MARGIN
    ramp = math.ceil(max(ramp, spec.ramp_time, dt) / dt) * dt
    settle = math.ceil(max(spec.settle_time, 2 * dt) / dt) * dt
    return settle, ramp


def _central(objective: Objective, theta: FloatArray, steps: FloatArray) -> FloatArray:
    """Central differences with a step per coordinate (inside the bounds)."""
    out = np.zeros(objective.dim)
    for i in range(objective.dim):
        e = np.zeros(objective.dim)
        e[i] = steps[i]
        plus, minus = objective.project(theta + e), objective.project(theta - e)
        width = float(plus[i] - minus[i])
        if width > 0:
            out[i] = (objective(plus) - objective(minus)) / width
    return out


def _predict_fd(
    sigma: float,
    third: FloatArray,
    half: FloatArray,
    budget: float,
    per_eval: float,
    max_repeats: int,
) -> Prediction | None:
    """The cheapest (h, repeats) of central differences inside the error budget; of equally
    cheap ones, the most accurate."""
    d = third.size
    best: Prediction | None = None
    best_error = math.inf
    scale = float(np.min(half))
    for step in STEP_GRID:
        h = step * scale
        bias = third * h**2 / 6.0
        room = budget - float(np.sum(bias**2))
        if room <= 0:
            continue
        repeats = max(1, math.ceil(d * sigma**2 / (2 * h**2) / room))
        if repeats > max_repeats:
            continue
        seconds = (2 * d * repeats + 1) * per_eval
        error = d * sigma**2 / (2 * h**2 * repeats) + float(np.sum(bias**2))
        if best is None or (seconds, error) < (best.seconds, best_error):
            best, best_error = Prediction("central-difference", seconds, [h], None, repeats), error
    return best
