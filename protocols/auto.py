"""`auto`: pick the estimator that reaches a target accuracy in the least device time, from
measurements of the device at hand (issue 11).

At the first estimate (and again every `recheck_every` estimates, or sooner when an estimate's
spread says the noise was underestimated) it measures, at θ, with the run's own objective:

- the noise one evaluation shows in a difference of two plateaus, and the device seconds of an
  evaluation, from successive evaluations at θ — at the smallest plateau averaging and at 16
  samples when the device's averaging can be set (`Averaging`), so σ²(n) = w/n + c is known;
- the gradient and the third derivatives, from central differences at steps h₁ < h₂ (their
  bias F'''h²/6 grows as h²), and the Hadamard design's own bias from one cycle at h₂;
- on a streaming device, one homodyne estimate at a pilot window T₀ and amplitudes A₀: its
  per-coordinate standard errors (honest under 1/f on the 2/T tone grid) and seconds per stream.

With ε² = 2(1 − target cosine)·‖g‖² the error budget, it predicts for each candidate the
cheapest settings (`protocols.auto_models`): central differences (h, sweeps, samples per
plateau), SPSA on Hadamard rows (c, rows, samples per plateau) and homodyne (amplitude, window:
variance SE₀²·(T₀/T)/a², bias F'''(aA₀)²/8); then delegates to the cheapest, sets the device's
averaging to what it chose, and logs the prediction beside what each estimate achieved (in
`extras`). The measurements are charged to the estimate that makes them. Antithetic ES and
Rademacher SPSA are not candidates: their cross-talk never cancels, and the equal-time
benchmark finds them slower than Hadamard rows in every regime.
"""

from __future__ import annotations

import logging
import math
from dataclasses import replace

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from hil.core import Averaging, ConfigError, FloatArray, JSONDict, Streaming
from protocols.auto_models import (
    CANDIDATES,
    STEP_GRID,
    Candidate,
    PlateauCosts,
    Prediction,
    cheapest,
    cross_talk,
    ladder_curvature,
    predict_fd,
    predict_hadamard,
    probe_counts,
    sample_counts,
    upper_sum_of_squares,
)
from protocols.base import GradientEstimate, Objective
from protocols.estimators import SPSA, CentralDifference, hadamard_directions
from protocols.homodyne import Homodyne

log = logging.getLogger(__name__)

WINDOW_GRID = np.geomspace(0.05, 20.0, 80)  # s, 8 % apart
MARGIN = 0.7  # chosen on the equal-time benchmark's tuning seeds (100…129), not its scored ones
LADDER = (0.0625, 0.125, 0.25, 0.5)  # curvature sweeps' steps, × a control's half range
SLEW_MARGIN = 1.5  # a stream's ramp takes this much longer than the slew limit allows
Delegate = CentralDifference | SPSA | Homodyne


class AutoEstimator:
    """Measures the device, predicts each candidate's device time to the target accuracy, and
    delegates to the cheapest (see the module docstring)."""

    class Settings(BaseModel):
        model_config = ConfigDict(extra="forbid")

        target_cosine: float = Field(default=0.99, gt=0, lt=1, description="per estimate")
        candidates: list[Candidate] = Field(default_factory=lambda: list(CANDIDATES), min_length=1)
        probe_repeats: int = Field(
            default=24, ge=4, le=1000, description="evaluations per noise probe"
        )
        pilot_window: float = Field(default=0.5, gt=0, le=60, description="s, homodyne pilot")
        recheck_every: int = Field(
            default=50, ge=1, le=1_000_000, description="estimates between re-measurements"
        )
        recheck_ratio: float | None = Field(
            default=4.0,
            gt=1,
            description="measure again at the next estimate when an estimate's variance is this "
            "many times the predicted (None: only every recheck_every)",
        )
        max_repeats: int = Field(default=1000, ge=1, le=100_000)
        margin: float = Field(
            default=MARGIN,
            gt=0,
            le=1,
            description="fraction of the error budget a prediction may use (room for its errors)",
        )
        max_plateau_samples: int = Field(
            default=256,
            ge=1,
            le=1_000_000,
            description="most samples per plateau to set where the device's averaging can be set",
        )
        homodyne_bandwidth: float | None = Field(
            default=None,
            gt=0,
            le=1e9,
            description="Hz, highest homodyne tone (default: the homodyne default); set it to "
            "the output chain's bandwidth (the station calibration's plan measures it)",
        )
        measure_loss: bool = Field(
            default=True,
            description="measure L(θ) once more per estimate for the reported loss; else the "
            "mean of the perturbed evaluations",
        )

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings if settings is not None else self.Settings()
        self._choice: Prediction | None = None
        self._delegate: Delegate | None = None
        self._since = 0
        self._recheck = False
        self._measured: JSONDict = {}

    # -- the GradientEstimator interface ---------------------------------------------------------
    def estimate(self, objective: Objective, theta: FloatArray) -> GradientEstimate:
        t0, e0 = objective.device_time(), objective.evaluations
        t = np.asarray(theta, dtype=float)
        s = self.settings
        if self._delegate is None or self._recheck or self._since >= s.recheck_every:
            self._choose(objective, t)
        choice, delegate = self._choice, self._delegate
        assert choice is not None
        assert delegate is not None
        _set_samples(objective, choice.samples)
        self._since += 1
        if isinstance(delegate, CentralDifference):
            gradient, loss, stderr = self._sweeps(objective, t, delegate, choice.repeats)
            extras: dict[str, float] = {}
        else:
            est = delegate.estimate(objective, t)
            gradient, loss, stderr, extras = est.gradient, est.loss, est.stderr, dict(est.extras)
        extras.update(
            {
                "auto_candidate": float(CANDIDATES.index(choice.candidate)),
                "auto_predicted_seconds": choice.seconds,
                "auto_repeats": float(choice.repeats),
                "auto_samples": float(choice.samples or 0),
            }
        )
        ratio = self._noise_ratio(choice, stderr)
        if ratio is not None:
            extras["auto_noise_ratio"] = ratio
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
        """What the last choice measured and predicted: the plateau noise and timing, gradient
        norm, bias coefficients, error budget and every candidate's prediction."""
        return dict(self._measured)

    def state_dict(self) -> JSONDict:
        delegate = self._delegate
        inner = delegate.state_dict() if isinstance(delegate, SPSA | Homodyne) else None
        return {
            "choice": None if self._choice is None else self._choice.as_dict(),
            "since": self._since,
            "delegate": inner,
        }

    def load_state_dict(self, state: JSONDict) -> None:
        choice = state.get("choice")
        self._since = int(state.get("since", 0))
        if choice is None:
            self._choice, self._delegate = None, None
            return
        self._choice = Prediction(**choice)
        self._delegate = self._build(self._choice)
        inner = state.get("delegate")
        if inner is not None and isinstance(self._delegate, SPSA | Homodyne):
            self._delegate.load_state_dict(inner)

    # -- running the choice ----------------------------------------------------------------------
    def _sweeps(
        self, objective: Objective, theta: FloatArray, delegate: CentralDifference, repeats: int
    ) -> tuple[FloatArray, float, FloatArray | None]:
        """`repeats` central-difference sweeps averaged, their standard error, and the loss."""
        loss = objective(theta) if self.settings.measure_loss else None
        runs = [delegate.estimate(objective, theta) for _ in range(repeats)]
        stack = np.array([r.gradient for r in runs])
        stderr = stack.std(axis=0, ddof=1) / math.sqrt(repeats) if repeats > 1 else None
        mean_loss = float(np.mean([r.loss for r in runs])) if loss is None else loss
        gradient: FloatArray = stack.mean(axis=0)
        return gradient, mean_loss, stderr

    def _noise_ratio(self, choice: Prediction, stderr: FloatArray | None) -> float | None:
        """Achieved over predicted noise variance per coordinate where the estimate measures its
        own spread (not SPSA: the spread of its rows is mostly the cross-talk a cycle cancels);
        far above the prediction, the device is measured again at the next estimate."""
        if stderr is None or choice.noise <= 0 or choice.candidate == "hadamard-spsa":
            return None
        ratio = float(np.mean(np.asarray(stderr) ** 2)) / choice.noise
        limit = self.settings.recheck_ratio
        if limit is not None and ratio > limit and not self._recheck:
            log.warning(
                "auto: the estimate's variance is %.3g× the predicted; measuring the device again",
                ratio,
            )
            self._recheck = True
        return ratio

    def _build(self, choice: Prediction) -> Delegate:
        s = self.settings
        if choice.candidate == "central-difference":
            return CentralDifference(
                CentralDifference.Settings(h=choice.steps[0], measure_loss=False)
            )
        if choice.candidate == "hadamard-spsa":
            return SPSA(
                SPSA.Settings(
                    c=choice.steps[0],
                    gamma=0.0,
                    directions="hadamard",
                    resamples=choice.repeats,
                    measure_loss=s.measure_loss,
                )
            )
        window = choice.window if choice.window is not None else s.pilot_window
        return Homodyne(
            Homodyne.Settings(
                window=window,
                amplitudes=choice.steps,
                settle_time=choice.settle,
                ramp_time=max(choice.ramp, 1e-6),
                measure_loss=s.measure_loss,
                mode="auto",
                **_band(s.homodyne_bandwidth),
            )
        )

    # -- measuring and choosing ------------------------------------------------------------------
    def _choose(self, objective: Objective, theta: FloatArray) -> None:
        s = self.settings
        device = objective.device
        settable = isinstance(device, Averaging)
        original = device.plateau_samples if isinstance(device, Averaging) else None
        counts = sample_counts(s.max_plateau_samples, original or 1, settable)
        probes = probe_counts(counts) if settable else counts
        variances, seconds = [], []
        for n in probes:
            _set_samples(objective, n if settable else None)
            start = objective.device_time()
            values = np.array([objective(theta) for _ in range(s.probe_repeats)])
            seconds.append((objective.device_time() - start) / s.probe_repeats)
            variances.append(float(np.mean(np.diff(values) ** 2)) / 2.0)
        dim = objective.dim
        half = (objective.upper - objective.lower) / 2.0
        scale = float(np.min(half))
        ladder = [f * scale for f in LADDER]
        sweeps = [_differences(objective, theta, h) for h in ladder]
        again = _differences(objective, theta, ladder[1])
        # what a difference really sees at the last probe, pooled with the repeated sweep
        pairs = ladder[1] ** 2 * float(np.mean((sweeps[1] - again) ** 2))
        k = s.probe_repeats - 1
        variances[-1] = (variances[-1] * k + pairs * dim) / (k + dim)
        sigma2 = variances[-1]
        # predictions take each variance one standard error up (χ² with its degrees of freedom):
        # a noise level read low would make every prediction miss the target
        dof = [k] * (len(variances) - 1) + [k + dim]
        upper = tuple(v * (1 + math.sqrt(2 / n)) for v, n in zip(variances, dof, strict=True))
        costs = PlateauCosts(counts, probes, upper, tuple(seconds))
        sweeps[1] = (sweeps[1] + again) / 2.0
        noise = [sigma2 / (2 * h**2) for h in ladder]
        noise[1] /= 2.0
        fd_bias = ladder_curvature(ladder, sweeps, noise)
        # the gradient, its h² bias extrapolated away (Richardson) from the 2nd and 3rd rungs
        gradient = (4.0 * sweeps[1] - sweeps[2]) / 3.0
        var_g = (16.0 * noise[1] + noise[2]) / 9.0
        norm2 = float(np.sum(gradient**2))
        norm2 = max(norm2 - dim * var_g, 0.25 * norm2)
        budget = s.margin * 2.0 * (1.0 - s.target_cosine) * norm2
        extra = 1 if s.measure_loss else 0
        self._measured = {
            "plateaus": costs.as_dict(),
            "gradient_norm": math.sqrt(norm2),
            "fd_bias_coefficient": fd_bias,
            "budget": budget,
        }
        predictions: list[Prediction] = []
        if "central-difference" in s.candidates:
            fd = predict_fd(costs, fd_bias, dim, budget, scale, extra, s.max_repeats)
            predictions += [fd] if fd is not None else []
        joint_bias = fd_bias
        if "hadamard-spsa" in s.candidates:
            rows = hadamard_directions(dim)
            m = rows.shape[0]
            # its own ladder: the mixed third derivatives every row excites are not the FD's
            cycles = [_cycle(objective, theta, h, m) for h in ladder[:-1]]
            spread = [sigma2 / (2 * h**2 * m) for h in ladder[:-1]]
            joint_bias = max(ladder_curvature(ladder[:-1], cycles, spread), fd_bias)
            self._measured["hadamard_bias_coefficient"] = joint_bias
            cross = cross_talk(rows, gradient, var_g)
            spsa = predict_hadamard(
                costs, joint_bias, cross, dim, budget, scale, extra, s.max_repeats
            )
            predictions += [spsa] if spsa is not None else []
        if "homodyne" in s.candidates and isinstance(device, Streaming):
            _set_samples(objective, original)
            # F'''_i A_i²/8 at A_i = a·half_i: a⁴·(36/64)·Σ (half_i² F'''_i/6)²
            pure = ladder_curvature(ladder, sweeps, noise, weights=half**2) * 36.0 / 64.0
            hge = self._predict_homodyne(objective, theta, half, pure, (gradient, var_g), budget)
            predictions += [hge] if hge is not None else []
        if not settable:
            predictions = [replace(p, samples=None) for p in predictions]
        if not predictions:  # nothing reaches the target: the most accurate we can do
            most = counts[-1] if settable else None
            total = (2 * dim * s.max_repeats + extra) * costs.seconds(counts[-1])
            predictions.append(
                Prediction("central-difference", total, [0.08 * scale], None, s.max_repeats, most)
            )
        choice = cheapest(predictions)
        assert choice is not None  # there is at least the fallback
        if choice.samples is None:
            _set_samples(objective, original)
        self._choice, self._delegate = choice, self._build(choice)
        self._since, self._recheck = 0, False
        self._measured["predictions"] = [p.as_dict() for p in predictions]
        log.info(
            "auto: %s predicted at %.4g device s per estimate (%s; ‖g‖ %.3g, budget %.3g)",
            choice.candidate,
            choice.seconds,
            ", ".join(f"{p.candidate} {p.seconds:.4g} s" for p in predictions),
            math.sqrt(norm2),
            budget,
        )

    def _predict_homodyne(
        self,
        objective: Objective,
        theta: FloatArray,
        half: FloatArray,
        pure: float,
        reference: tuple[FloatArray, float],
        budget: float,
    ) -> Prediction | None:
        """The cheapest (amplitude, window) of a homodyne estimate in mode 'auto' (the fewest
        streams whose tones fit the window), scaled from a pilot at amplitudes a₀·half. Its
        bias at amplitudes a·half is a²·B: B is measured as (pilot − reference gradient)/a₀²
        (a tone plan free of 3rd-order products leaves only the pure and mixed third
        derivatives, not a Hadamard cycle's aliased ones), and never taken below `pure` (Σ B²
        from the pure third derivatives the ladder saw). Its bound is one SE, not two: the
        pilot is noisier than the ladder, and `pure` holds the floor."""
        s = self.settings
        a0 = LADDER[2]
        settle, ramp = _stream_timing(objective, theta)
        groups = _stream_groups(objective, settle, ramp, s.homodyne_bandwidth)
        if not groups:
            return None
        pilot_window = next((w for w in groups if w >= s.pilot_window), max(groups))
        pilot = Homodyne(
            Homodyne.Settings(
                window=pilot_window,
                amplitudes=(a0 * half).tolist(),
                settle_time=settle,
                ramp_time=ramp,
                measure_loss=s.measure_loss,
                mode="auto",
                **_band(s.homodyne_bandwidth),
            )
        )
        start = objective.device_time()
        try:
            est = pilot.estimate(objective, theta)
        except ConfigError as exc:
            log.info("auto: homodyne is not a candidate here (%s)", exc)
            return None
        spent = objective.device_time() - start
        if est.stderr is None:
            return None
        streams = max(int(est.extras.get("streams", 1)), 1)
        cases = streams / groups[pilot_window]
        per_stream = 2 * ramp + settle  # around each window; the rest is once per estimate
        fixed = max(0.0, spent - streams * (pilot_window + per_stream))
        se2 = np.asarray(est.stderr, dtype=float) ** 2
        noise0 = float(np.sum(se2)) * pilot_window
        gradient, var_g = reference
        difference, spread = (est.gradient - gradient) / a0**2, (se2 + var_g) / a0**4
        bias = max(upper_sum_of_squares(difference, spread, sigmas=1.0), pure)
        found = []
        for a in STEP_GRID:
            bias2 = bias * a**4
            room = budget - bias2
            if room <= 0:
                continue
            needed = noise0 * (a0 / a) ** 2 / room
            costs = {
                w: fixed + cases * n * (w + per_stream) for w, n in groups.items() if w >= needed
            }
            if not costs:
                continue
            window = min(costs, key=lambda w: (costs[w], w))
            noise = noise0 / window * (a0 / a) ** 2
            found.append(
                Prediction(
                    "homodyne",
                    costs[window],
                    (a * half).tolist(),
                    window,
                    1,
                    None,
                    noise + bias2,
                    noise / objective.dim,
                    settle,
                    ramp,
                )
            )
        return cheapest(found)


def _set_samples(objective: Objective, samples: int | None) -> None:
    """Set the device's plateau averaging (None, or a device without `Averaging`: leave it)."""
    device = objective.device
    if isinstance(device, Averaging) and samples is not None and device.plateau_samples != samples:
        device.set_plateau_samples(samples)


def _differences(objective: Objective, theta: FloatArray, h: float) -> FloatArray:
    """One central-difference sweep at step h (inside the bounds)."""
    sweep = CentralDifference(CentralDifference.Settings(h=h, measure_loss=False))
    return sweep.estimate(objective, theta).gradient


def _cycle(objective: Objective, theta: FloatArray, c: float, rows: int) -> FloatArray:
    """The mean of one whole Hadamard cycle of SPSA at size c (its cross-talk cancelled)."""
    spsa = SPSA(
        SPSA.Settings(c=c, gamma=0.0, directions="hadamard", resamples=rows, measure_loss=False)
    )
    return spsa.estimate(objective, theta).gradient


def _band(bandwidth: float | None) -> dict[str, float]:
    """The homodyne `bandwidth` setting, if one is given (else the estimator's default)."""
    return {} if bandwidth is None else {"bandwidth": bandwidth}


def _stream_groups(
    objective: Objective, settle: float, ramp: float, bandwidth: float | None
) -> dict[float, int]:
    """Per window of the grid (whole samples) where a tone fits the 2/T grid (so the standard
    errors every prediction scales hold under 1/f noise): the streams per case that mode
    'auto' plays there."""
    rate = float(objective.device.spec.sample_rate or 1.0)
    out: dict[float, int] = {}
    for grid_window in WINDOW_GRID:
        window = math.ceil(float(grid_window) * rate - 1e-9) / rate
        trial = Homodyne(
            Homodyne.Settings(
                window=window, settle_time=settle, ramp_time=ramp, mode="auto", **_band(bandwidth)
            )
        )
        try:
            trial.plan(objective, 1, window / trial.settings.tone_grid)
            trial.tones(objective)
        except (ConfigError, ValueError):
            continue
        out[window] = len(trial.groups(objective))
    return out


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
