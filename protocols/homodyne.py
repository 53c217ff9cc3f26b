"""Homodyne gradient extraction: every control carries its own sine, one stream gives all partials.

Per input case one waveform is streamed: the controls at θ plus A_i·sin(2π f_i t), the data inputs
on a plateau, ramped in from 0 V and out to 0 V. Over a window of whole periods the output is
demodulated, X_i = (2/N)Σ y·sin(2πf_i t), Y_i = (2/N)Σ y·cos(2πf_i t), and
∂y/∂θ_i = (X_i cos φ_i + Y_i sin φ_i)/A_i, φ_i being the phase of the output chain at f_i. The same
demodulation at free grid frequencies around the tones gives the noise spectrum S(f), fitted as a
power law (`fit_noise`), hence a standard error per tone, √(S(f_i)/T)/A_i (algorithms.md §1.5):
with 1/f noise a low tone is noisier than a high one. Planned tones sit on the grid k/T
(`tone_grid`, 2 by default): every tone and every product of tones is then a multiple of k/T,
so the bins between them are free and the noise is read beside each tone, not only above the
top one — the SE holds under 1/f noise (issue 11; reported/empirical 0.9–1.25 on the DNPU
against 0.1–0.66 on the 1/T grid). The loss gradient follows by the chain rule
with ∂L/∂y from the task; its standard error includes the noise of the outputs ∂L/∂y is evaluated
at (see `Homodyne.estimate`).

Modes: `parallel` dithers all controls in one stream per case (the default), `sequential` one
control per stream (the others held at DC), `grouped` `group_size` controls per stream, `auto`
the fewest streams whose tones fit the window (groups as even as the count allows). Tones are
planned per group, so fewer tones fit lower frequencies; the device time grows with the streams.

`Homodyne.calibrate_amplitudes` sweeps the tone amplitudes and picks them per control, by the
third-harmonic rule or by the bias–variance optimum A = (32 S/(T F'''²))^{1/6} (algorithms.md §1.5).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations_with_replacement, pairwise
from typing import Annotated, Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field
from scipy.optimize import minimize_scalar
from scipy.stats import chi2, norm

from hil.core import ConfigError, FloatArray, JSONDict, Parking, Streaming
from protocols.base import GradientEstimate, Objective, Task
from protocols.tone_windows import ProductSizes
from protocols.tones import check_plan, near_mains, plan_tones, shortest_window

log = logging.getLogger(__name__)

MAX_STREAM_SAMPLES = 2_000_000
"""Most samples in one stream (ramps, settling and window): the waveform and the measured
outputs are held in memory."""

_WHOLE = 1e-6  # how far a duration·fs may be from an integer and still count as whole samples
_NEAREST_BINS = 4  # noise bins nearest a tone that give the noise density S at that tone
_EXPONENT_BOUND = 4.0  # |b| at most, for the power law S ∝ f^b fitted to the noise bins
_RESOLVE_SLOPE = float(chi2.isf(1e-3, 1))  # likelihood-ratio statistic for b ≠ 0 (p = 0.001)

FULL_SEARCH_TONES = 8  # mode 'auto' runs the full plan search (slow to fail) up to this size
Mode = Literal["parallel", "sequential", "grouped", "auto"]
Method = Literal["harmonic", "optimal"]


@dataclass(frozen=True)
class Waveform:
    """One synthesised stream: samples (n × channels), channel names, and the window rows."""

    samples: FloatArray
    channels: tuple[str, ...]
    window: tuple[int, int]
    tone_start: int  # row where t = 0 for the tones (first row after the ramp up)


@dataclass(frozen=True)
class DeviceGradient:
    """Demodulated ∂y/∂θ (physical units) per case and output, with standard errors."""

    gradient: FloatArray  # n_cases × n_outputs × d
    stderr: FloatArray  # n_cases × n_outputs × d
    window_mean: FloatArray  # n_cases × n_outputs (mean over the case's streams)
    response: FloatArray  # n_cases × n_outputs × d × 2: X and Y per tone
    tones: tuple[float, ...]  # per control
    amplitudes: FloatArray  # physical, per control
    shifted: int  # controls whose DC level was moved inward so the tone fits the range
    # one-sided noise density S (output units²/Hz) per case and output averaged over the noise
    # bins (the white-noise floor; mean over the groups)
    noise_density: FloatArray | None = None
    groups: tuple[tuple[int, ...], ...] = ()  # the controls dithered together in one stream
    window: float = math.nan  # s demodulated per stream
    # S at each control's tone, n_cases × n_outputs × d, from `noise_fit` (what `stderr` uses)
    tone_density: FloatArray | None = None
    noise_fit: NoiseFit | None = None  # the power law fitted to the noise bins


@dataclass(frozen=True)
class AmplitudeCalibration:
    """What `Homodyne.calibrate_amplitudes` measured, chose, and what it cost.

    Physical units unless said otherwise; K sweep points, d controls.
    """

    method: Method
    amplitudes: FloatArray  # d, chosen, in parameter units (what the estimator now uses)
    physical: FloatArray  # d, chosen
    grid: FloatArray  # K × d, the swept amplitudes (ascending)
    harmonic_choice: FloatArray  # d, largest swept A with |H3|/|H1| below the threshold
    optimal_choice: FloatArray  # d, (32 S/(T F'''²))^{1/6} clipped to the swept range
    third_ratio: FloatArray  # K × d, |H3|/|H1| (noise power subtracted)
    second_ratio: FloatArray  # K × d, |H2|/|H1|; NaN where 2·f_i was not free
    slope: FloatArray  # K × n_cases × n_outputs × d, the apparent gradient X(A)/A
    third_derivative: FloatArray  # n_cases × n_outputs × d, F''' from the fit of X/A on A²
    third_derivative_se: FloatArray  # n_cases × n_outputs × d
    noise_density: FloatArray  # n_cases × n_outputs × d, S at each control's estimation tone
    resolved: NDArray[np.bool_]  # d, F''' resolved above noise (else the optimum is a bound)
    tones: tuple[float, ...]  # calibration tone per control (3·f_i kept free)
    window: float  # s per calibration stream
    evaluations: int  # streams played
    device_seconds: float


def _samples(seconds: float, rate: float, name: str) -> int:
    n = seconds * rate
    if abs(n - round(n)) > _WHOLE:
        raise ConfigError(
            f"homodyne {name} {seconds} s is {n:g} samples at {rate:g} Hz; "
            "make it a whole number of samples"
        )
    return round(n)


def synthesize(
    controls: FloatArray,
    amplitudes: FloatArray,
    tones: Sequence[float],
    inputs: FloatArray,
    *,
    control_names: Sequence[str],
    input_names: Sequence[str],
    sample_rate: float,
    window: float,
    settle_time: float,
    ramp_time: float,
) -> Waveform:
    """Ramp 0 → levels, settle, a window of whole tone periods, ramp back to 0 V.

    Controls carry θ_i + A_i·sin(2π f_i t) (t = 0 at the end of the ramp up) from the settle
    period on; data inputs hold `inputs`. A control with A_i = 0 holds θ_i (its tone is ignored).
    Channels: inputs first, then controls.
    """
    theta = np.asarray(controls, dtype=float)
    amps = np.broadcast_to(np.asarray(amplitudes, dtype=float), theta.shape)
    freqs = np.asarray(tones, dtype=float)
    x = np.asarray(inputs, dtype=float).reshape(-1)
    if freqs.shape != theta.shape or len(control_names) != theta.size:
        raise ValueError(
            f"synthesize: {theta.size} controls need as many tones and names, got "
            f"{freqs.size} tones and {len(control_names)} names"
        )
    if len(input_names) != x.size:
        raise ValueError(f"synthesize: {x.size} inputs but {len(input_names)} input names")
    n_ramp = _samples(ramp_time, sample_rate, "ramp_time")
    n_settle = _samples(settle_time, sample_rate, "settle_time")
    n_window = _samples(window, sample_rate, "window")
    if n_ramp < 1 or n_window < 1:
        raise ConfigError("homodyne ramp_time and window must each be at least one sample")
    active = amps != 0
    cycles = freqs[active] * window
    if np.any(np.abs(cycles - np.round(cycles)) > _WHOLE) or np.any(np.round(cycles) < 1):
        raise ConfigError(
            f"homodyne tones {freqs[active].tolist()} Hz must complete whole cycles in the "
            f"window {window} s (f·T = {cycles.tolist()})"
        )
    t = np.arange(n_settle + n_window) / sample_rate
    body = np.hstack(
        [
            np.broadcast_to(x, (t.size, x.size)),
            theta + amps * np.sin(2.0 * math.pi * np.outer(t, np.where(active, freqs, 0.0))),
        ]
    )
    start = np.concatenate([x, theta])
    up = np.outer(np.arange(n_ramp) / n_ramp, start)  # first row exactly 0
    down = np.outer(1.0 - np.arange(1, n_ramp + 1) / n_ramp, body[-1])  # last row exactly 0
    samples = np.vstack([up, body, down])
    first = n_ramp + n_settle
    return Waveform(
        samples=samples,
        channels=(*input_names, *control_names),
        window=(first, first + n_window),
        tone_start=n_ramp,
    )


def demodulate(
    y: FloatArray, frequencies: Sequence[float], sample_rate: float, t0: float = 0.0
) -> tuple[FloatArray, FloatArray]:
    """X and Y (len(frequencies) × n_outputs) of mean-removed samples y (N × n_outputs).

    The first sample is at time t0 of the references sin(2πft) and cos(2πft).
    """
    arr = np.asarray(y, dtype=float)
    if arr.ndim == 1:
        arr = arr[:, np.newaxis]
    n = arr.shape[0]
    centred = arr - arr.mean(axis=0)
    t = t0 + np.arange(n) / sample_rate
    phase = 2.0 * math.pi * np.outer(np.asarray(frequencies, dtype=float), t)
    x: FloatArray = (2.0 / n) * (np.sin(phase) @ centred)
    q: FloatArray = (2.0 / n) * (np.cos(phase) @ centred)
    return x, q


def noise_frequencies(
    tones: Sequence[float],
    window: float,
    sample_rate: float,
    count: int,
    *,
    order: int = 3,
    mains: float | None = 50.0,
    mains_harmonics: int = 20,
    mains_guard: float = 0.5,
) -> list[float]:
    """Up to `count` grid frequencies m/T clear of DC, the tones and their low-order products.

    Taken evenly from the free bins up to the top tone, plus the nearest free bin above it, so
    that the bins span the tones wherever free bins allow (the noise density at each tone is
    interpolated between them, see `NoiseFit`); more bins above the top tone (below Nyquist)
    only when too few are free below it. Bins near mains are avoided by the planner's rule
    (`tones.near_mains`, the same `mains_harmonics` and `mains_guard` defaults).
    """
    bins = [round(f * window) for f in tones]
    signed = [*bins, *(-b for b in bins)]
    taken = {0, *bins}
    for k in range(2, order + 1):
        taken.update(abs(sum(c)) for c in combinations_with_replacement(signed, k))
    n_half = math.floor(window * sample_rate / 2)
    grid = np.arange(n_half)
    hum = near_mains(
        grid / window, window=window, mains=mains, harmonics=mains_harmonics, guard=mains_guard
    )
    taken.update(grid[hum].tolist())
    top = max(bins, default=n_half)
    free = [m for m in range(1, top) if m not in taken]
    above = [m for m in range(top + 1, n_half) if m not in taken]
    extra: list[int] = []
    if len(free) < count:
        free += above[: count - len(free)]
    elif above and count > 1:
        extra = above[:1]  # the nearest free bin above the top tone: the bins span every tone
    if not free:
        return []
    n_pick = min(count - len(extra), len(free))
    pick = np.unique(np.round(np.linspace(0, len(free) - 1, n_pick)).astype(int))
    return [free[i] / window for i in pick] + [m / window for m in extra]


@dataclass(frozen=True)
class NoiseFit:
    """The off-tone noise of one `device_gradient` call as a power law per output.

    S(f) = level·(f/reference)^exponent (one-sided, output units²/Hz): exponent 0 is white noise,
    −1 flicker (1/f). The exponent is shared by all streams of the call (one device, one output
    chain); the level is per case, group and output. Outside a group's `span` (its lowest and
    highest noise bin) S is held at the edge value: the exponent is not known well enough from
    ~16 bins to extrapolate, so tones below every free bin get the noise of the lowest one (under
    1/f an underestimate; see `Homodyne.device_gradient`).
    """

    level: FloatArray  # n_cases × n_groups × n_out, S at `reference`
    exponent: FloatArray  # n_out
    exponent_se: FloatArray  # n_out, from the Fisher information of the fit
    reference: float  # Hz
    span: FloatArray  # n_groups × 2, Hz; NaN for a group without noise bins

    def density(self, frequency: float, group: int) -> FloatArray:
        """S at `frequency` for the streams of `group`, per case and output."""
        lo, hi = self.span[group]
        f = np.clip(frequency, lo, hi)
        density: FloatArray = self.level[:, group, :] * (f / self.reference) ** self.exponent
        return density

    def band_power(self, bandwidth: float) -> FloatArray:
        """∫₀^B S(f) df per case and output (the edge rule outside the span), mean over groups.

        With B the noise-equivalent bandwidth of a mean (fs/(2n) for n samples, 1/(2T) for a
        window T) this is the variance of that mean: S·B for white noise.
        """
        b = self.exponent  # n_out
        total = np.zeros(self.level.shape[::2])
        for g, (lo, hi) in enumerate(self.span):
            s_lo = self.level[:, g, :] * (lo / self.reference) ** b
            s_hi = self.level[:, g, :] * (hi / self.reference) ** b
            power = s_lo * min(bandwidth, lo)
            if bandwidth > lo:
                ell = math.log(min(bandwidth, hi) / lo)
                z = (b + 1.0) * ell
                with np.errstate(divide="ignore", invalid="ignore"):
                    phi = np.where(np.abs(z) < 1e-12, 1.0, np.expm1(z) / z)
                power = power + s_lo * lo * ell * phi  # ∫_lo^u f^b df in closed form
            if bandwidth > hi:
                power = power + s_hi * (bandwidth - hi)
            total += power / len(self.span)
        return total


def fit_noise(
    periodograms: Sequence[Sequence[FloatArray]], frequencies: Sequence[Sequence[float]]
) -> NoiseFit:
    """Fit S(f) = level·(f/f_ref)^b to off-tone periodograms by maximum likelihood.

    `periodograms[c][g]` holds S_k = T·(X_k² + Y_k²)/2 at the noise bins `frequencies[g]` of the
    stream of case c and group g (bins × outputs). Each S_k is its bin's density times an
    exponential variate (two degrees of freedom), so the Whittle likelihood is exact: for a given
    b the level of a stream is the mean of S_k·(f_k/f_ref)^(−b) (b = 0: the plain average of the
    white-noise floor), and b maximises the likelihood profiled over the levels (a convex problem
    in one variable, bounded to ±4). Why this and not the few bins nearest each tone: the fit
    uses every bin for the level, so with white noise the density at a tone inside the span is
    nearly as precise as the floor averaged over all bins (an average of 4 nearest bins has
    twice its scatter), and pooling b over the streams keeps the slope's scatter small. Why not
    a least-squares line through log S_k: the log of a χ²₂ variate is skewed and biased by Euler's
    γ; the likelihood needs no such correction. A stream without power (noise-free) gets level 0
    and does not enter b. f_ref is the geometric mean of the bins.
    """
    n_cases, n_groups = len(periodograms), len(frequencies)
    spans = np.full((n_groups, 2), np.nan)
    logs = [np.log(np.asarray(f, dtype=float)) for f in frequencies]
    for g, f in enumerate(frequencies):
        if len(f):
            spans[g] = min(f), max(f)
    every = np.concatenate(logs)
    reference = float(np.exp(every.mean())) if every.size else 1.0
    xs = [lf - math.log(reference) for lf in logs]
    n_out = next((np.asarray(p).shape[1] for row in periodograms for p in row if np.size(p)), 1)
    level = np.full((n_cases, n_groups, n_out), np.nan)
    exponent, exponent_se = np.zeros(n_out), np.full(n_out, np.inf)
    for o in range(n_out):
        streams = [
            (np.asarray(periodograms[c][g], dtype=float)[:, o], xs[g])
            for c in range(n_cases)
            for g in range(n_groups)
            if xs[g].size and float(np.mean(periodograms[c][g], axis=0)[o]) > 0
        ]
        leverage = sum(float(np.sum((x - x.mean()) ** 2)) for _, x in streams)
        if leverage > 0:
            x_sum = sum(float(x.sum()) for _, x in streams)
            best = minimize_scalar(
                _profile_nll,
                args=(streams, x_sum),
                bounds=(-_EXPONENT_BOUND, _EXPONENT_BOUND),
                method="bounded",
                options={"xatol": 1e-6},
            )
            exponent_se[o] = 1.0 / math.sqrt(leverage)
            # the slope only where the bins resolve it: white noise keeps the plain floor
            if 2.0 * (_profile_nll(0.0, streams, x_sum) - float(best.fun)) > _RESOLVE_SLOPE:
                exponent[o] = float(best.x)
        for c in range(n_cases):
            for g in range(n_groups):
                if xs[g].size:
                    p = np.asarray(periodograms[c][g], dtype=float)[:, o]
                    level[c, g, o] = float(np.mean(p * np.exp(-exponent[o] * xs[g])))
    return NoiseFit(level, exponent, exponent_se, reference, spans)


def _profile_nll(b: float, streams: list[tuple[FloatArray, FloatArray]], x_sum: float) -> float:
    """−log-likelihood of the exponent b, profiled over the levels (up to a constant)."""
    levels = sum(p.size * math.log(float(np.mean(p * np.exp(-b * x)))) for p, x in streams)
    return levels + b * x_sum


def _fold(phi: FloatArray) -> FloatArray:
    """Phases folded to (−π/2, π/2]: the sign of a derivative is not a phase."""
    p = np.where(phi > math.pi / 2, phi - math.pi, phi)
    folded: FloatArray = np.where(p <= -math.pi / 2, p + math.pi, p)
    return folded


def _output_jacobian(task: Task, outputs: FloatArray, step: FloatArray) -> FloatArray:
    """∂(∂L/∂y)/∂y by central differences, n_cases × n_out × n_cases × n_out (software only).

    Column (c', o') uses the step `step[c', o']` (the output's noise σ: the slope averaged over
    the noise scale; exact for losses quadratic in y); a zero step leaves the column 0.
    """
    y = np.asarray(outputs, dtype=float)
    jac = np.zeros((*y.shape, *y.shape))
    for c, o in zip(*np.nonzero(step > 0), strict=True):
        h = float(step[c, o])
        up, down = y.copy(), y.copy()
        up[c, o] += h
        down[c, o] -= h
        hi = np.asarray(task.output_gradient(up), dtype=float)
        lo = np.asarray(task.output_gradient(down), dtype=float)
        jac[:, :, c, o] = (hi - lo) / (2.0 * h)
    return jac


class CalibrationSettings(BaseModel):
    """How `calibrate_amplitudes` sweeps the tone amplitudes and picks one per control."""

    model_config = ConfigDict(extra="forbid")

    method: Method = Field(
        default="harmonic",
        description="'harmonic': the largest swept A whose third harmonic stays below "
        "`threshold` of the fundamental; 'optimal': A = (32 S/(T F'''²))^(1/6) from the "
        "measured noise density S and third derivative F'''",
    )
    auto: bool = Field(
        default=False,
        description="calibrate at the first estimate that has no calibrated amplitudes; "
        "its cost is counted in that estimate's evaluations and device seconds",
    )
    points: int = Field(
        default=6, ge=3, le=1000, description="amplitudes swept per control (geometric)"
    )
    ratio: float = Field(
        default=32.0, gt=1, le=1e6, description="largest over smallest swept amplitude"
    )
    max_amplitude: float | None = Field(
        default=None,
        gt=0,
        description="largest swept amplitude, parameter units; default a quarter of each "
        "control's range. The sweep's DC level moves inward where the tone would not fit",
    )
    threshold: float = Field(
        default=0.01,
        gt=0,
        description="harmonic method: largest |H3|/|H1| accepted (the relative bias of the "
        "gradient is about 3× this ratio)",
    )
    resolve: float = Field(
        default=3.0,
        gt=0,
        description="standard errors above noise for a measured effect to count. optimal "
        "method: F''' is resolved when Σ F'''² exceeds this many; else its upper bound is "
        "used (a smaller, conservative amplitude). harmonic method: a third harmonic counts "
        "against an amplitude only when its power is this far above the noise power",
    )
    window: float | None = Field(
        default=None,
        gt=0,
        le=3600,
        description="s per calibration stream; default: the estimator's",
    )
    noise_records: int = Field(
        default=2,
        ge=1,
        le=1000,
        description="streams per case with every tone off, for the noise density at each "
        "tone and harmonic",
    )


class ProductRule(BaseModel):
    """Plan against only the harmonic and intermodulation products predicted to stand out of
    the noise (`tone_windows.ProductSizes`): at small amplitudes most are far below it, and a
    plan that ignores them fits a window that grows ~d instead of ~d^2.5 (`bench/tone_plans.py`).
    """

    model_config = ConfigDict(extra="forbid")

    noise_density: float = Field(
        gt=0, le=1e30, description="output units²/Hz, the lowest one-sided noise density in band"
    )
    second: float = Field(
        ge=0, le=1e30, description="bound on |∂²y/∂θ_i∂θ_j|, output units per control unit²"
    )
    third: float = Field(
        ge=0, le=1e30, description="bound on |∂³y/∂θ_i∂θ_j∂θ_k|, output units per control unit³"
    )
    fraction: float = Field(
        default=0.1, gt=0, le=10, description="a product counts above this × the noise in a bin"
    )

    def sizes(self, amplitudes: Sequence[float], plan_window: float, window: float) -> ProductSizes:
        """The rule for tones of these physical amplitudes, planned on the grid of `plan_window`
        and demodulated over `window` (the bar is the noise of the demodulation window)."""
        return ProductSizes(
            amplitudes=tuple(float(a) for a in amplitudes),
            noise_density=self.noise_density * plan_window / window,
            second=self.second,
            third=self.third,
            fraction=self.fraction,
        )


class Homodyne:
    """Gradient from tone-modulated streams, one per input case and tone group (needs Streaming).

    Costs one evaluation per case and group (plus one for the loss); in parallel mode the variance
    per coordinate does not grow with the number of controls. `calibrate_phase` measures the
    output chain's phase per tone, `calibrate_amplitudes` picks the tone amplitudes.
    """

    class Settings(BaseModel):
        """Window, tone amplitudes and frequencies, grouping, timing, noise floor, loss."""

        model_config = ConfigDict(extra="forbid")

        window: float = Field(default=0.5, gt=0, le=3600, description="s demodulated per stream")
        amplitudes: float | list[float] = Field(
            default=0.02,
            description="tone amplitude per control (one value: all), in the objective's "
            "parameter units; calibrated amplitudes (`calibrate_amplitudes`) replace them",
        )
        tones: list[Annotated[float, Field(gt=0, le=1e9)]] | None = Field(
            default=None, description="Hz, one per control; default: planned (`plan_tones`)"
        )
        tone_grid: int = Field(
            default=2,
            ge=1,
            le=16,
            description="planned tones sit on the grid k/T: every bin between (odd multiples of "
            "1/T for k = 2) is free of tones and their products, so the noise is read beside "
            "each tone and its SE holds under 1/f noise; 1: the finest grid (shorter windows, "
            "noise bins only above the top tone)",
        )
        mode: Mode = Field(
            default="parallel",
            description="'parallel': all controls dithered in one stream per case; "
            "'sequential': one control per stream, the others at DC; 'grouped': "
            "`group_size` controls per stream; 'auto': the fewest streams whose tones fit the "
            "window. Tones are planned per group",
        )
        group_size: int = Field(
            default=2, ge=1, le=1000, description="controls per stream in 'grouped' mode"
        )
        bandwidth: float = Field(
            default=100.0, gt=0, le=1e9, description="Hz, highest planned tone"
        )
        f_min: float | None = Field(
            default=None,
            ge=0,
            le=1e9,
            description="Hz, lowest planned tone; default tone_grid/window",
        )
        mains: float | None = Field(
            default=50.0, ge=0, le=1e6, description="Hz, avoided; None: off"
        )
        products: ProductRule | None = Field(
            default=None,
            description="avoid only products predicted above the noise (None: every product to "
            "3rd order)",
        )
        settle_time: float = Field(
            default=0.1, ge=0, le=3600, description="s discarded before window"
        )
        ramp_time: float = Field(default=0.05, gt=0, le=60, description="s of ramp in and out")
        noise_bins: int = Field(
            default=16, ge=1, le=10_000, description="off-tone frequencies for SE"
        )
        measure_loss: bool = Field(
            default=True,
            description="measure the unperturbed outputs for the loss and ∂L/∂y; "
            "else use the window means",
        )
        calibration: CalibrationSettings = Field(
            default_factory=CalibrationSettings,
            description="amplitude calibration (`calibrate_amplitudes`)",
        )

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings if settings is not None else self.Settings()
        self._phase_tones: list[float] | None = None
        self._phases: list[float] | None = None
        self._amplitudes: list[float] | None = None  # calibrated, parameter units
        self._span_logged: set[int] = set()  # log levels of the noise-span message given
        self._grid_warned: set[tuple[float, int, int]] = set()  # plans that fell back to 1/T

    # -- configuration -------------------------------------------------------------------------

    @property
    def phases(self) -> FloatArray | None:
        """Calibrated output phase per tone (rad), or None (phase 0)."""
        return None if self._phases is None else np.array(self._phases)

    @property
    def calibrated_amplitudes(self) -> FloatArray | None:
        """Amplitudes from `calibrate_amplitudes` (parameter units), or None."""
        return None if self._amplitudes is None else np.array(self._amplitudes)

    def groups(self, objective: Objective) -> list[list[int]]:
        """The controls dithered together in one stream, by the mode ('auto': the fewest
        streams whose tones fit the window, split evenly)."""
        s, d = self.settings, objective.dim
        if s.mode != "auto":
            size = {"parallel": d, "sequential": 1, "grouped": s.group_size}[s.mode]
            return [list(range(i, min(i + size, d))) for i in range(0, d, size)]
        count = math.ceil(d / self._largest_group(objective))
        edges = np.cumsum([0] + [d // count + (i < d % count) for i in range(count)])
        return [list(range(int(a), int(b))) for a, b in pairwise(edges)]

    def _largest_group(self, objective: Objective) -> int:
        """Mode 'auto': the most controls whose tones fit one window, on the `tone_grid` grid
        if any do (honest SEs under 1/f), else on the 1/T grid; 1 if none fit (the plan then
        says why). Found by bisection over the size, as a group's plan needs a longer window the
        more tones it holds. A size counts when the plan search finds a plan; sizes beyond what
        a product-free set can span (n(n−1)/2 bins) are ruled out at once, and above
        FULL_SEARCH_TONES only when the fast greedy planner (`shortest_window`) also fits, as a
        failed full search then takes seconds.
        """
        s, d = self.settings, objective.dim
        rate = self._sample_rate(objective)
        largest = [float(np.max(self.amplitudes(objective)))]  # the same for every group
        for grid in dict.fromkeys((s.tone_grid, 1)):
            window = s.window / grid
            rule = None if s.products is None else s.products.sizes(largest, window, s.window)

            def fits(n: int, window: float = window, rule: ProductSizes | None = rule) -> bool:
                top = min(s.bandwidth, rate / 8) * window  # highest usable bin, nyquist_fraction
                if rule is None and n * (n - 1) / 2 > top:  # a Sidon set's differences differ
                    return False
                try:
                    greedy = shortest_window(
                        n,
                        sample_rate=rate,
                        bandwidth=s.bandwidth,
                        mains=s.mains,
                        f_min=s.f_min,
                        longest=window,
                        products=rule,
                    )
                except ValueError:
                    greedy = math.inf
                if greedy > window and n > FULL_SEARCH_TONES:
                    return False
                try:
                    self.plan(objective, n, window, products=rule)
                except ValueError:
                    return False
                return True

            if not fits(1):
                continue
            low, high = 1, d
            while low < high:
                middle = (low + high + 1) // 2
                low, high = (middle, high) if fits(middle) else (low, middle - 1)
            return low
        return 1

    def tones(self, objective: Objective) -> list[float]:
        """The tone per control: the explicit list, or a plan per group for this device."""
        s, d = self.settings, objective.dim
        rate = self._sample_rate(objective)
        if s.tones is not None:
            if len(s.tones) != d:
                raise ConfigError(f"homodyne tones: {len(s.tones)} given for {d} controls")
            problems = check_plan(
                s.tones,
                window=s.window,
                sample_rate=rate,
                bandwidth=rate / 2,
                mains=s.mains,
                nyquist_fraction=1.0,
            )
            fatal = [p for p in problems if "coherent" in p.product or "duplicate" in p.product]
            if fatal:
                raise ConfigError("homodyne tones: " + "; ".join(str(p) for p in fatal))
            for p in problems:
                log.warning("homodyne tone plan: %s", p)
            return list(s.tones)
        if s.tone_grid == 1:
            return self._planned(objective, s.window, ())
        try:
            return self._planned(objective, s.window / s.tone_grid, ())
        except ConfigError as exc:
            key = (s.window, s.tone_grid, objective.dim)
            if key not in self._grid_warned:
                self._grid_warned.add(key)
                log.warning(
                    "homodyne: the tones do not fit on the %g Hz grid (tone_grid %d) in a %g s "
                    "window (%s); planned on the 1/T grid instead, where every noise bin lies "
                    "above the top tone and the SEs of low tones are too small under 1/f "
                    "noise: a window of %g s keeps them honest (tone_grid: 1 silences this)",
                    s.tone_grid / s.window,
                    s.tone_grid,
                    s.window,
                    exc,
                    s.tone_grid * s.window,
                )
            return self._planned(objective, s.window, ())

    def plan(
        self,
        objective: Objective,
        n: int,
        window: float,
        *,
        harmonics: tuple[int, ...] = (),
        products: ProductSizes | None = None,
    ) -> list[float]:
        """`plan_tones` for n tones on the 1/`window` grid within this estimator's band, mains
        and lowest tone on this device (cached); ValueError, saying why, when none fits."""
        s = self.settings
        return plan_tones(
            n,
            window=window,
            sample_rate=self._sample_rate(objective),
            bandwidth=s.bandwidth,
            mains=s.mains,
            f_min=s.f_min,
            harmonics=harmonics,
            products=products,
        )

    def _planned(
        self, objective: Objective, window: float, harmonics: tuple[int, ...]
    ) -> list[float]:
        """A plan per group (one search per group size and product rule), as one tone per
        control."""
        s = self.settings
        plans: dict[tuple[int, ProductSizes | None], list[float]] = {}
        tones = [0.0] * objective.dim
        amplitudes = self.amplitudes(objective) if s.products is not None else None
        for group in self.groups(objective):
            n = len(group)
            rule = (
                None
                if s.products is None or amplitudes is None
                else s.products.sizes(amplitudes[group].tolist(), window, s.window)
            )
            if (n, rule) not in plans:
                try:
                    plans[n, rule] = self.plan(
                        objective, n, window, harmonics=harmonics, products=rule
                    )
                except ValueError as exc:
                    hint = "" if s.mode == "sequential" else " (or mode 'sequential'/'grouped')"
                    if harmonics:
                        hint = (
                            " — this is the calibration plan, which keeps 3·f_i free: set a "
                            "longer calibration.window" + hint
                        )
                    raise ConfigError(f"homodyne: {exc}{hint}") from None
            for i, f in zip(group, plans[n, rule], strict=True):
                tones[i] = f
        return tones

    def preflight(self, objective: Objective, theta: FloatArray) -> None:
        """What `estimate` (and an automatic calibration) will need, checked without measuring:
        a streaming device with a sample rate, streams of at most MAX_STREAM_SAMPLES samples, a
        valid tone plan, amplitudes that fit the control ranges, and tones and ramps within
        each channel's slew limit."""
        s, cs = self.settings, self.settings.calibration
        self._streamer(objective)
        rate = self._sample_rate(objective)
        windows = [("window", s.window)]
        if cs.auto:
            windows.append(("calibration.window", cs.window if cs.window is not None else s.window))
        timing = [*windows, ("settle_time", s.settle_time), ("ramp_time", s.ramp_time)]
        for name, seconds in timing:
            try:
                whole = _samples(seconds, rate, name)
            except ConfigError as exc:
                raise ConfigError(str(exc), key=("estimator", *name.split("."))) from None
            if whole < 1 and name != "settle_time":
                raise ConfigError(
                    f"homodyne {name} {seconds:g} s is less than one sample at {rate:g} Hz; "
                    "lengthen it",
                    key=("estimator", *name.split(".")),
                )
        for name, window in windows:
            samples = (window + s.settle_time + 2 * s.ramp_time) * rate
            if samples > MAX_STREAM_SAMPLES:
                raise ConfigError(
                    f"homodyne {name} {window:g} s (+ settle and ramps) at {rate:g} Hz is "
                    f"{samples:.3g} samples per stream, more than {MAX_STREAM_SAMPLES}; "
                    "shorten it",
                    key=("estimator", *name.split(".")),
                )
        # explicit tones are checked in full (with warnings) by self.tones() last, so that a
        # failing check gives its one error and no warnings before it
        tones = np.asarray(
            s.tones if s.tones is not None else self._planned(objective, s.window, ())
        )
        if tones.size != objective.dim:
            raise ConfigError(
                f"homodyne tones: {tones.size} given for {objective.dim} controls",
                key=("estimator", "tones"),
            )
        if np.any(tones >= rate / 2):
            raise ConfigError(
                f"homodyne tones {tones.tolist()} Hz: every tone must lie below half the sample "
                f"rate ({rate / 2:g} Hz); lower them",
                key=("estimator", "tones"),
            )
        cycles = tones * s.window
        if np.any(np.abs(cycles - np.round(cycles)) > _WHOLE) or np.any(np.round(cycles) < 1):
            raise ConfigError(
                f"homodyne tones {tones.tolist()} Hz must complete whole cycles in the window "
                f"{s.window} s (f·T = {cycles.tolist()})",
                key=("estimator", "tones"),
            )
        amps = self.amplitudes(objective)
        lo, hi = objective.control_lower, objective.control_upper
        if np.any(hi - lo < 2 * amps):
            raise ConfigError(
                f"homodyne amplitudes {amps.tolist()} do not fit the control ranges "
                f"{np.stack([lo, hi], axis=1).tolist()}: each tone swings ±A around its DC "
                "level; lower the amplitudes",
                key=("estimator", "amplitudes"),
            )
        if cs.auto:
            top = (
                cs.max_amplitude * objective.parameter_scale()
                if cs.max_amplitude is not None
                else (hi - lo) / 4.0
            )
            if np.any(2 * top > hi - lo):
                raise ConfigError(
                    f"homodyne calibration.max_amplitude {cs.max_amplitude} does not fit the "
                    "control ranges; lower it",
                    key=("estimator", "calibration", "max_amplitude"),
                )
            self._planned(objective, windows[-1][1], (3,))
        spec = objective.device.spec
        dc = np.abs(np.clip(objective.physical(theta), lo + amps, hi - amps))
        levels = np.max(np.abs(objective.device_inputs), axis=0)
        rates = [
            *zip(spec.inputs, levels / s.ramp_time, strict=True),
            *zip(spec.controls, dc / s.ramp_time + 2 * math.pi * tones * amps, strict=True),
        ]
        for channel, needed in rates:
            if needed > channel.max_slew:
                raise ConfigError(
                    f"homodyne streams change channel {channel.name!r} at up to {needed:.3g} "
                    f"{channel.unit}/s (ramps over ramp_time and tones 2π·f·A), above its slew "
                    f"limit {channel.max_slew:g} {channel.unit}/s; lengthen ramp_time or lower "
                    "the amplitudes or bandwidth",
                    key=("estimator",),
                )
        self.tones(objective)

    def amplitudes(self, objective: Objective) -> FloatArray:
        """Physical tone amplitude per control (the calibrated ones if calibrated)."""
        given: float | list[float] = (
            self._amplitudes if self._amplitudes is not None else self.settings.amplitudes
        )
        a = np.asarray(given, dtype=float)
        if a.ndim > 1 or a.size not in (1, objective.dim):
            raise ConfigError(
                f"homodyne amplitudes {given}: give one positive value or one per control "
                f"({objective.dim})"
            )
        a = np.broadcast_to(a, (objective.dim,))
        if np.any(a <= 0) or not np.all(np.isfinite(a)):
            raise ConfigError(f"homodyne amplitudes {given}: must be positive and finite")
        physical: FloatArray = a * objective.parameter_scale()
        return physical

    @staticmethod
    def _streamer(objective: Objective) -> Streaming:
        device = objective.device
        if not isinstance(device, Streaming):
            raise ConfigError(
                f"the homodyne estimator streams waveforms, but device "
                f"{type(device).__name__} ({device.spec.name!r}) does not stream; "
                "use a streaming device or a plateau estimator (spsa, central_difference)"
            )
        return device

    @staticmethod
    def _sample_rate(objective: Objective) -> float:
        rate = objective.device.spec.sample_rate
        if rate is None:
            raise ConfigError(
                f"device {objective.device.spec.name!r} has no sample_rate in its spec; "
                "the homodyne estimator needs it"
            )
        return float(rate)

    # -- measurement ---------------------------------------------------------------------------

    def _play(
        self,
        objective: Objective,
        dc: FloatArray,
        amplitudes: FloatArray,
        tones: Sequence[float],
        case: FloatArray,
        window: float,
    ) -> tuple[FloatArray, float]:
        """Stream one waveform (one evaluation): the window's selected outputs and its t0."""
        s, spec = self.settings, objective.device.spec
        rate = self._sample_rate(objective)
        wave = synthesize(
            dc,
            amplitudes,
            tones,
            case,
            control_names=[c.name for c in spec.controls],
            input_names=[c.name for c in spec.inputs],
            sample_rate=rate,
            window=window,
            settle_time=s.settle_time,
            ramp_time=s.ramp_time,
        )
        streamer = self._streamer(objective)
        if isinstance(streamer, Parking):
            # The waveform starts at 0 V: bring held DC levels there within the slew limits.
            streamer.park()
        out = streamer.stream(wave.samples, wave.channels)
        objective.evaluations += 1
        a, b = wave.window
        y: FloatArray = np.asarray(out, dtype=float)[a:b][:, objective.output_columns]
        return y, (a - wave.tone_start) / rate

    def device_gradient(self, objective: Objective, theta: FloatArray) -> DeviceGradient:
        """∂y/∂V per case and selected output, one stream per case and group (physical units).

        Each stream counts as one objective evaluation. Every stream holds the same DC levels
        (moved inward where a tone would not fit), so all groups see one operating point.

        Standard errors are per tone, √(S(f_i)/T)/A_i, with S(f_i) read from a power law
        S(f) = a·f^b fitted to the off-tone bins of the call (`fit_noise`: b shared by the
        streams, a per case, group and output; b = 0, the plain average of the bins as before,
        unless the bins resolve a slope at p = 0.001, so white noise keeps the floor). Limits:

        - S is interpolated inside the bins' span and held at the edge value outside it. In a
          parallel plan of several planned tones every bin below the top tone carries a product,
          so all bins lie above the tones and every tone gets the noise of the lowest free bin:
          with 1/f noise too small a standard error (logged once). Tones on a coarser grid than
          1/T (e.g. planned for T/5 and demodulated over T) leave free bins next to each tone.
        - One power law does not follow a bend inside the band (a 1/f corner): the bend is not
          resolvable from ~16 bins per stream, and it costs a few % of SE at the band edges.
        - Drift within the window (power below 1/T, large for 1/f noise) leaks into the
          sine quadrature of the lowest bins as 1/m (m = f·T); the fit averages the quadratures,
          so a tone at m ≲ 3 has its SE underestimated by up to ~10 % under strong 1/f noise.
        """
        s = self.settings
        self._streamer(objective)
        rate = self._sample_rate(objective)
        t = np.asarray(theta, dtype=float)
        if t.shape != (objective.dim,):
            raise ValueError(f"theta: expected shape ({objective.dim},), got {t.shape}")
        tones = self.tones(objective)
        amps = self.amplitudes(objective)
        phases = self._phases_for(tones)
        lo, hi = objective.control_lower, objective.control_upper
        if np.any(hi - lo < 2 * amps):
            raise ConfigError(
                f"homodyne amplitudes {amps.tolist()} V do not fit the control ranges "
                f"{np.stack([lo, hi], axis=1).tolist()}"
            )
        requested = objective.physical(t)
        dc = np.clip(requested, lo + amps, hi - amps)
        shifted = int(np.sum(dc != requested))
        groups = self.groups(objective)
        cases = objective.device_inputs
        n_cases, n_out, d = cases.shape[0], len(objective.output_columns), objective.dim
        gradient = np.zeros((n_cases, n_out, d))
        response = np.zeros((n_cases, n_out, d, 2))
        means = np.zeros((n_cases, n_out))
        density = np.zeros((n_cases, n_out))
        periodograms: list[list[FloatArray]] = [[] for _ in range(n_cases)]
        plans = []
        for group in groups:
            g_tones = [tones[i] for i in group]
            noise = noise_frequencies(g_tones, s.window, rate, s.noise_bins, mains=s.mains)
            active = np.zeros(d)
            active[group] = amps[group]
            plans.append((group, g_tones, noise, active))
        for c in range(n_cases):
            for group, g_tones, noise, active in plans:
                y, t0 = self._play(objective, dc, active, tones, cases[c], s.window)
                x, q = demodulate(y, [*g_tones, *noise], rate, t0)
                k = len(group)
                xt, qt = x[:k].T, q[:k].T  # n_out × k
                response[c, :, group, 0], response[c, :, group, 1] = xt.T, qt.T
                g = (xt * np.cos(phases[group]) + qt * np.sin(phases[group])) / amps[group]
                gradient[c, :, group] = g.T
                periodogram = s.window * (x[k:] ** 2 + q[k:] ** 2) / 2.0  # S = T·E[X²], bins × out
                periodograms[c].append(periodogram)
                if noise:
                    density[c] += periodogram.mean(axis=0) / len(groups)
                else:
                    density[c] = np.nan
                means[c] += y.mean(axis=0) / len(groups)
        fit = fit_noise(periodograms, [noise for _, _, noise, _ in plans])
        tone_density = np.full((n_cases, n_out, d), np.nan)
        for gi, (group, g_tones, _, _) in enumerate(plans):
            for i, f in zip(group, g_tones, strict=True):
                tone_density[:, :, i] = fit.density(f, gi)
        stderr = np.sqrt(tone_density / s.window) / amps  # √(S(f_i)/T)/A_i
        self._check_noise_span(fit, plans)
        return DeviceGradient(
            gradient,
            stderr,
            means,
            response,
            tuple(tones),
            amps,
            shifted,
            noise_density=density,
            groups=tuple(tuple(g) for g in groups),
            window=s.window,
            tone_density=tone_density,
            noise_fit=fit,
        )

    def _check_noise_span(
        self, fit: NoiseFit, plans: Sequence[tuple[list[int], list[float], list[float], FloatArray]]
    ) -> None:
        """Say once (per level) that tones lie below every noise bin; warn if the noise falls."""
        below = sorted(
            f
            for g, (_, g_tones, _, _) in enumerate(plans)
            for f in g_tones
            if f < fit.span[g, 0] / 1.5
        )
        if not below:
            return
        falling = bool(np.any(fit.exponent < 0))  # resolved: 0 unless the bins show a slope
        level = logging.WARNING if falling else logging.INFO
        if level in self._span_logged:
            return
        self._span_logged.add(level)
        log.log(
            level,
            "homodyne: the tones %s Hz lie below every free noise bin (lowest %g Hz; fitted "
            "S ∝ f^%s): their standard errors take the noise there, too small if it rises "
            "towards low frequencies (1/f). Tones on a grid coarser than 1/T (e.g. planned for "
            "T/k and demodulated over T) leave free bins next to each tone",
            below,
            float(np.nanmin(fit.span[:, 0])),
            ", ".join(f"{b:.2g}" for b in fit.exponent),
        )

    def calibrate_phase(self, objective: Objective, theta: FloatArray) -> FloatArray:
        """Measure and store the output chain's phase per tone (one stream per case at θ).

        Per tone the strongest response over cases and outputs gives φ = atan2(Y, X), folded to
        (−π/2, π/2] since the sign of the derivative is unknown. Returns the phases (rad).
        """
        saved = self._phases
        self._phases = None
        try:
            measured = self.device_gradient(objective, theta)
        finally:
            self._phases = saved
        r = measured.response  # n_cases × n_out × d × 2
        flat = r.reshape(-1, r.shape[2], 2)
        magnitude = np.hypot(flat[..., 0], flat[..., 1])
        best = np.argmax(magnitude, axis=0)
        idx = np.arange(r.shape[2])
        phi = _fold(np.arctan2(flat[best, idx, 1], flat[best, idx, 0]))
        snr = magnitude[best, idx] / (
            measured.stderr.reshape(-1, r.shape[2])[best, idx] * measured.amplitudes
        )
        weak = [i for i in idx.tolist() if not snr[i] > 5.0]
        if weak:
            log.warning("homodyne phase calibration: weak response (SNR < 5) on controls %s", weak)
        self._phase_tones = list(measured.tones)
        self._phases = phi.tolist()
        return np.array(self._phases)

    def _phases_for(self, tones: Sequence[float]) -> FloatArray:
        if self._phases is None or self._phase_tones is None:
            return np.zeros(len(tones))
        if not np.allclose(self._phase_tones, tones):
            raise ConfigError(
                f"homodyne phases were calibrated at {self._phase_tones} Hz but the tones are now "
                f"{list(tones)} Hz; run calibrate_phase again"
            )
        return np.array(self._phases)

    # -- amplitude calibration -----------------------------------------------------------------

    def calibrate_amplitudes(
        self, objective: Objective, theta: FloatArray, *, method: Method | None = None
    ) -> AmplitudeCalibration:
        """Sweep the tone amplitudes at θ, pick one per control, store it; return the record.

        First `calibration.noise_records` streams per case with every tone off give the noise
        density S(f) at every grid frequency (the off-tone floor, read at the bins nearest each
        tone or harmonic). Then each control's amplitude runs over a geometric grid
        (`calibration.points`, largest over smallest `calibration.ratio`) up to
        `calibration.max_amplitude` (default a quarter of the control's range), dithered as the
        estimates dither (parallel, sequential or grouped), one stream per grid point, group and
        case, at a DC level that fits the largest tone. The calibration plan keeps 3·f_i free of
        every tone and product up to third order (and reads 2·f_i where that is free too).
        Per control:

        - harmonic: the largest swept A with |H3|/|H1| < `threshold`, the powers summed over
          cases and outputs with the expected noise power at each frequency subtracted; a
          harmonic power not `resolve` standard errors above the noise does not count (noise
          alone never shrinks A). For a cubic response H3/H1 = A²F'''/(24 F') while the
          fundamental's relative bias is A²F'''/(8 F'): the bias is about 3 × the ratio. A
          low-pass output chain attenuates H3 more than H1, so there the rule errs towards
          larger amplitudes.
        - optimal: the apparent gradient X(A)/A = F' + A²F'''/8 is fitted against A² by
          weighted least squares per case and output, giving F''' and its SE; with S the noise
          density at the control's estimation tone and T the estimation window,
          A = (32 ΣS/(T ΣF'''²))^{1/6}, the sums over cases and outputs minimising the summed
          MSE (A²F'''/8)² + S/(T A²). ΣF'''² is debiased by the fit variances; when it is not
          above `resolve` standard errors the upper bound max(ΣF'''², 0) + resolve·SE is used
          instead (logged; a conservative, smaller A). Clipped to the swept range (logged when
          below it). In parallel mode the fitted slope includes the cross terms ∂³y/∂θ_i∂θ_j²
          at the swept amplitude ratios, i.e. the bias parallel estimates see; `sequential`
          gives the pure ∂³y/∂θ_i³.

        Every stream counts as an evaluation on the objective and as device time; the record
        says what the calibration cost.
        """
        s, cs = self.settings, self.settings.calibration
        chosen_method: Method = method if method is not None else cs.method
        self._streamer(objective)
        rate = self._sample_rate(objective)
        t = np.asarray(theta, dtype=float)
        if t.shape != (objective.dim,):
            raise ValueError(f"theta: expected shape ({objective.dim},), got {t.shape}")
        t_start, e_start = objective.device_time(), objective.evaluations
        window = cs.window if cs.window is not None else s.window
        d, scale = objective.dim, objective.parameter_scale()
        lo, hi = objective.control_lower, objective.control_upper
        top = (
            cs.max_amplitude * scale
            if cs.max_amplitude is not None
            else np.asarray((hi - lo) / 4.0, dtype=float)
        )
        if np.any(2 * top > hi - lo):
            raise ConfigError(
                f"homodyne calibration max_amplitude {cs.max_amplitude}: the largest tone "
                f"{top.tolist()} V does not fit the control ranges "
                f"{np.stack([lo, hi], axis=1).tolist()}"
            )
        k_pts = cs.points
        grid = top * cs.ratio ** (-(k_pts - 1 - np.arange(k_pts))[:, np.newaxis] / (k_pts - 1))
        dc = np.clip(objective.physical(t), lo + top, hi - top)
        cal_tones = self._planned(objective, window, (3,))
        groups = self.groups(objective)
        cases = objective.device_inputs
        n_cases, n_out = cases.shape[0], len(objective.output_columns)

        # Unperturbed records first (all tones off): every grid bin is free there, so the noise
        # density can be read right next to each tone and harmonic. (In a parallel plan the
        # products of the tones occupy nearly every bin below the top tone, and 1/f noise
        # differs a lot between a low tone and the few free bins far above it.)
        power = np.zeros((n_cases, math.floor(window * rate / 2), n_out))  # E[X²] per bin
        for _ in range(cs.noise_records):
            for c in range(n_cases):
                y, _t0 = self._play(objective, dc, np.zeros(d), cal_tones, cases[c], window)
                spectrum = np.fft.rfft(y - y.mean(axis=0), axis=0)[: power.shape[1]]
                power[c] += 2.0 * np.abs(spectrum) ** 2 / y.shape[0] ** 2 / cs.noise_records
        bins = np.arange(power.shape[1])
        usable = (bins > 0) & ~near_mains(bins / window, window=window, mains=s.mains)

        def local(frequencies: Sequence[float]) -> FloatArray:
            """E[X²] per case, output and control at its frequency: the nearest usable bins."""
            out = np.zeros((n_cases, n_out, d))
            candidates = bins[usable]
            for i, f in enumerate(frequencies):
                near = candidates[np.argsort(np.abs(candidates / window - f))[:_NEAREST_BINS]]
                out[:, :, i] = power[:, near, :].mean(axis=1)
            return out

        h1 = np.zeros((k_pts, n_cases, n_out, d), dtype=complex)
        h2 = np.full((k_pts, n_cases, n_out, d), np.nan, dtype=complex)
        h3 = np.zeros((k_pts, n_cases, n_out, d), dtype=complex)
        plans = []
        for group in groups:
            g_tones = [cal_tones[i] for i in group]
            problems = check_plan(
                g_tones,
                window=window,
                sample_rate=rate,
                bandwidth=rate / 2,
                mains=s.mains,
                nyquist_fraction=1.0,
                harmonics=(2,),
            )
            busy = {p.index for p in problems if p.product.startswith("2·f")}
            free2 = [j for j in range(len(group)) if j not in busy]
            freqs = [*g_tones, *(3 * f for f in g_tones), *(2 * g_tones[j] for j in free2)]
            plans.append((group, free2, freqs))
        for k in range(k_pts):
            for group, free2, freqs in plans:
                active = np.zeros(d)
                active[group] = grid[k, group]
                n_g = len(group)
                for c in range(n_cases):
                    y, t0 = self._play(objective, dc, active, cal_tones, cases[c], window)
                    x, q = demodulate(y, freqs, rate, t0)
                    z = x + 1j * q  # len(freqs) × n_out
                    h1[k, c, :, group] = z[:n_g]
                    h3[k, c, :, group] = z[n_g : 2 * n_g]
                    for m, j in enumerate(free2):
                        h2[k, c, :, group[j]] = z[2 * n_g + m]

        # the noise where each quantity is read: 1/f noise makes it differ from tone to tone
        noise2 = local(cal_tones)
        noise3 = local([3 * f for f in cal_tones])
        noise_2f = local([2 * f for f in cal_tones])
        # the phase of the chain at each calibration tone: the strongest top-amplitude response
        top_resp = h1[-1].reshape(-1, d)
        phi = _fold(np.angle(top_resp[np.argmax(np.abs(top_resp), axis=0), np.arange(d)]))
        slope = np.real(h1 * np.exp(-1j * phi)) / grid[:, np.newaxis, np.newaxis, :]
        third, third_se = self._fit_third(slope, grid, noise2)

        # harmonic ratios, noise power subtracted (E|noise|² = 2·E[X²] per output and case)
        p1 = np.sum(np.abs(h1) ** 2, axis=(1, 2)) - 2.0 * noise2.sum(axis=(0, 1))
        p3 = np.sum(np.abs(h3) ** 2, axis=(1, 2)) - 2.0 * noise3.sum(axis=(0, 1))
        p2 = np.sum(np.abs(h2) ** 2, axis=(1, 2)) - 2.0 * noise_2f.sum(axis=(0, 1))
        third_ratio = self._ratio(p3, p1)
        second_ratio = self._ratio(p2, p1)  # NaN where 2f was not free
        # a harmonic counts against an amplitude only when it is resolved above the noise: the
        # noise part of Σ|H3|² is a sum of scaled χ²₂ terms, taken as χ² with the effective
        # degrees of freedom ν = 2(Σn)²/Σn²; its upper quantile at the one-sided normal level of
        # `resolve` SDs is what H3 must beat
        n3 = 2.0 * noise3.sum(axis=(0, 1))  # expected noise power in Σ|H3|², per control
        with np.errstate(divide="ignore", invalid="ignore"):
            nu = 2.0 * n3**2 / np.sum((2.0 * noise3) ** 2, axis=(0, 1))
            quantile = n3 * chi2.ppf(norm.cdf(cs.resolve), nu) / nu
        excess = np.sum(np.abs(h3) ** 2, axis=(1, 2)) - np.nan_to_num(quantile)
        too_big = excess > cs.threshold**2 * np.maximum(p1, 0.0)  # K × d
        harmonic_choice = np.empty(d)
        for i in range(d):
            ok = np.flatnonzero(~too_big[:, i])
            if ok.size == 0:
                log.warning(
                    "homodyne amplitude calibration: control %d has |H3|/|H1| >= %g even at "
                    "the smallest swept amplitude %g; using that",
                    i,
                    cs.threshold,
                    grid[0, i],
                )
                harmonic_choice[i] = grid[0, i]
            else:
                harmonic_choice[i] = grid[ok[-1], i]

        # the bias–variance optimum at the estimation tones and window
        density = window * local(self.tones(objective))  # S = T·E[X²]
        q_sum = np.sum(third**2 - third_se**2, axis=(0, 1))
        q_sd = np.sqrt(np.sum(4 * third**2 * third_se**2 + 2 * third_se**4, axis=(0, 1)))
        resolved = q_sum > cs.resolve * q_sd
        bound = np.maximum(q_sum, 0.0) + cs.resolve * np.sqrt(np.sum(2 * third_se**4, axis=(0, 1)))
        f3_squared = np.where(resolved, q_sum, bound)
        with np.errstate(divide="ignore", invalid="ignore"):
            optimal = (32.0 * density.sum(axis=(0, 1)) / (s.window * f3_squared)) ** (1.0 / 6.0)
        # no F''' at all (0/0) leaves the variance term alone: the largest amplitude
        optimal = np.where(np.isfinite(optimal), optimal, top)
        optimal_choice = np.clip(optimal, grid[0], top)
        if chosen_method == "optimal":
            if not np.all(resolved):
                log.warning(
                    "homodyne amplitude calibration: F''' not resolved above noise on controls "
                    "%s; their optimal amplitude uses the upper bound of ΣF'''² (a conservative, "
                    "smaller amplitude, at most the top of the sweep)",
                    np.flatnonzero(~resolved).tolist(),
                )
            below = np.flatnonzero(optimal < grid[0])
            if below.size:
                log.warning(
                    "homodyne amplitude calibration: the optimal amplitude of controls %s lies "
                    "below the sweep (noise-free outputs?); using the smallest swept amplitude",
                    below.tolist(),
                )

        physical = harmonic_choice if chosen_method == "harmonic" else optimal_choice
        amplitudes = physical / scale
        self._amplitudes = amplitudes.tolist()
        result = AmplitudeCalibration(
            method=chosen_method,
            amplitudes=amplitudes,
            physical=physical,
            grid=grid,
            harmonic_choice=harmonic_choice,
            optimal_choice=optimal_choice,
            third_ratio=third_ratio,
            second_ratio=second_ratio,
            slope=slope,
            third_derivative=third,
            third_derivative_se=third_se,
            noise_density=density,
            resolved=resolved,
            tones=tuple(cal_tones),
            window=window,
            evaluations=objective.evaluations - e_start,
            device_seconds=objective.device_time() - t_start,
        )
        log.info(
            "homodyne amplitude calibration (%s): %s V in %d streams, %.3g device s",
            chosen_method,
            np.array2string(physical, precision=4),
            result.evaluations,
            result.device_seconds,
        )
        return result

    @staticmethod
    def _ratio(numerator: FloatArray, denominator: FloatArray) -> FloatArray:
        """√(num/den) with negative (noise-dominated) powers as 0; 0/0 = 0, x/0 = inf."""
        num, den = np.maximum(numerator, 0.0), np.maximum(denominator, 0.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            r = np.sqrt(num / den)
        ratio: FloatArray = np.where(num == 0, 0.0, np.where(den == 0, np.inf, r))
        return np.where(np.isnan(numerator), np.nan, ratio)

    @staticmethod
    def _fit_third(
        slope: FloatArray, grid: FloatArray, noise2: FloatArray
    ) -> tuple[FloatArray, FloatArray]:
        """F''' and its SE per case, output and control from X(A)/A = g + b·A², F''' = 8b.

        Weighted least squares with Var(X/A) = E[X²]/A² (the off-tone floor), so the largest
        amplitudes carry the fit. The fifth-order term A⁴F⁽⁵⁾/192 is not modelled: on wide sweeps
        it bends the line (on the analytic device by up to about 15 % of F''' at A = 0.5), while
        fitting it as well costs about ten times the standard error.
        """
        k_pts, n_cases, n_out, d = slope.shape
        third = np.zeros((n_cases, n_out, d))
        third_se = np.zeros((n_cases, n_out, d))
        for i in range(d):
            design = np.stack([np.ones(k_pts), grid[:, i] ** 2], axis=1)
            w = grid[:, i, np.newaxis]  # 1/SE up to the floor, which is common to the K points
            weighted = design * w
            columns = slope[:, :, :, i].reshape(k_pts, -1) * w
            coef = np.linalg.lstsq(weighted, columns, rcond=None)[0]
            cov = np.linalg.inv(weighted.T @ weighted)
            third[:, :, i] = 8.0 * coef[1].reshape(n_cases, n_out)
            third_se[:, :, i] = 8.0 * np.sqrt(cov[1, 1] * noise2[:, :, i])
        return third, third_se

    # -- the estimate ----------------------------------------------------------------------------

    def estimate(self, objective: Objective, theta: FloatArray) -> GradientEstimate:
        """∂L/∂θ = Σ_c ∂L/∂y_c · ∂y_c/∂θ, one stream per case and group (+1 loss measurement).

        The standard error combines, per coordinate, the demodulation noise, Σ (∂L/∂y)²·SE(∂y/∂θ)²,
        and the noise of the outputs ŷ that ∂L/∂y is evaluated at: with J = ∂(∂L/∂y)/∂y (central
        differences of `task.output_gradient`, software only) and v the variance of ŷ, to first
        order Σ_{c'} v_{c'} (Σ_c J_{c c'} ∂y_c/∂θ)², with the measured ∂y/∂θ plugged in (its own
        noise then adds, in expectation, the product term Σ_c (Σ_{c'} J_{c c'}² v_{c'}) SE²).
        The ŷ are assumed independent of the demodulated noise (separate plateaus, or the window
        mean, which white noise leaves uncorrelated with the tones). v is the variance of a mean
        with noise-equivalent bandwidth B under the fitted spectrum, v = ∫₀^B S(f) df
        (`NoiseFit.band_power`): B = fs/(2n) for a plateau mean of n samples (`measure_loss`,
        n = spec.plateau_samples or 1), B = 1/(2T) for a window mean, divided by the streams it
        averages. For white noise this is S·fs/(2n) and S/(2T·streams) as before; with 1/f noise
        the plateau term weights the spectrum over its own band (mostly high frequencies for a
        single sample) rather than at the tones. Noise below the lowest bin (1/f, drift) is
        taken as flat there, so for slow noise v is a lower bound.
        """
        s = self.settings
        self._streamer(objective)
        t = np.asarray(theta, dtype=float)
        t0, e0 = objective.device_time(), objective.evaluations
        extras: dict[str, float] = {}
        if s.calibration.auto and self._amplitudes is None:
            calibration = self.calibrate_amplitudes(objective, t)
            extras["calibration_evaluations"] = float(calibration.evaluations)
            extras["calibration_seconds"] = calibration.device_seconds
        outputs = objective.outputs(t) if s.measure_loss else None
        measured = self.device_gradient(objective, t)
        fit = measured.noise_fit
        spec = objective.device.spec
        if outputs is None:
            outputs = measured.window_mean
            bandwidth = 1.0 / (2.0 * s.window)
            streams = len(measured.groups)
        else:
            bandwidth = self._sample_rate(objective) / (2.0 * (spec.plateau_samples or 1))
            streams = 1
        out_var = (
            fit.band_power(bandwidth) / streams
            if fit is not None
            else np.full(measured.window_mean.shape, np.nan)
        )
        task = objective.task
        loss = task.loss(outputs)
        dl_dy = np.asarray(task.output_gradient(outputs), dtype=float)
        scale = objective.parameter_scale()
        gradient = np.einsum("co,cod->d", dl_dy, measured.gradient) * scale
        var_device = np.einsum("co,cod->d", dl_dy**2, measured.stderr**2)
        jac = _output_jacobian(task, outputs, np.sqrt(np.nan_to_num(out_var)))
        through = np.einsum("coab,cod->abd", jac, measured.gradient)  # ∂G/∂ŷ_ab
        var_outputs = np.einsum("ab,abd->d", out_var, through**2)
        variance = var_device + var_outputs
        total = float(np.sum(variance))
        extras.update(
            {
                "window": s.window,
                "f_min": min(measured.tones),
                "f_max": max(measured.tones),
                "shifted": float(measured.shifted),
                "groups": float(len(measured.groups)),
                "streams": float(len(measured.groups) * objective.device_inputs.shape[0]),
                "output_noise_share": float(np.sum(var_outputs)) / total if total > 0 else 0.0,
            }
        )
        return GradientEstimate(
            gradient=gradient,
            loss=float(loss),
            evaluations=objective.evaluations - e0,
            device_seconds=objective.device_time() - t0,
            stderr=np.sqrt(variance) * scale,
            extras=extras,
        )

    # -- checkpoint ----------------------------------------------------------------------------

    def state_dict(self) -> JSONDict:
        """Calibrated phases with their tones, and calibrated amplitudes (None: uncalibrated)."""
        return {"tones": self._phase_tones, "phases": self._phases, "amplitudes": self._amplitudes}

    def load_state_dict(self, state: JSONDict) -> None:
        tones, phases = state.get("tones"), state.get("phases")
        amplitudes = state.get("amplitudes")  # absent in checkpoints from before calibration
        extra = sorted(set(state) - {"tones", "phases", "amplitudes"})
        if extra:
            raise ValueError(f"Homodyne state: unknown keys {extra}")
        if amplitudes is not None:
            values = [float(a) for a in amplitudes]
            if not values or not all(math.isfinite(a) and a > 0 for a in values):
                raise ValueError("Homodyne state: amplitudes must be positive and finite")
            self._amplitudes = values
        else:
            self._amplitudes = None
        if tones is None and phases is None:
            self._phase_tones = self._phases = None
            return
        if tones is None or phases is None or len(tones) != len(phases):
            raise ValueError("Homodyne state: tones and phases must both be given, equally long")
        self._phase_tones = [float(f) for f in tones]
        self._phases = [float(p) for p in phases]
