"""Equal device time on the DNPU simulator: gradient cosine against device seconds, per method.

A realistic rig: all 7 electrodes are controls, 1 kHz sampling, every DC change ramps for 10 ms
and settles for 5 ms (15 ms per configuration, as in the published DNPU experiments), output noise
as measured on DNPUs (white 0.5 nA per sample, 1 % proportional, 1/f 1e-5 nA²/Hz at 1 kHz, drift
0.5 nA). The loss is the device output itself, so the reference is the simulator's exact ∂I/∂θ.
Every method perturbs each control by the same amplitude (tone amplitude A = step h = SPSA c = ES
σ) and climbs its own budget ladder (window, samples per plateau, repeats, resamples, pairs). Per
seed the operating point θ and the device's noise are the same for every method. The figure is
the smallest device time per estimate at which the median cosine over the seeds reaches 0.99.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from hil.core import ConfigError, FloatArray
from protocols.base import GradientEstimate, GradientEstimator, Objective
from protocols.diagnostics import oracle_gradient
from protocols.estimators import SPSA, CentralDifference
from protocols.evolution import AntitheticES
from protocols.homodyne import Homodyne
from protocols.tasks import MinimizeOutputTask
from simulators.dnpu import DNPUDevice

TARGET_COSINE = 0.99
RAMP, SETTLE, FS = 0.01, 0.005, 1000.0
F_MIN = (
    40.0  # Hz: tones above the 1/f corner (≈ 20 Hz for this noise), as a lab user would place them
)
NOISE = {"white": 0.5, "relative": 0.01, "flicker_psd": 1e-5, "drift_std": 0.5}


@dataclass(frozen=True)
class Rung:
    """One budget setting of one method."""

    method: str
    knob: str
    samples_per_plateau: int
    make: Callable[[float, int], GradientEstimator]  # (amplitude, seed) → estimator
    repeats: int = 1


def _device(seed: int, samples: int) -> DNPUDevice:
    settings = DNPUDevice.Settings.model_validate(
        {
            "input_electrodes": [],
            "timing": {
                "sample_rate": FS,
                "ramp_time": RAMP,
                "settle_time": SETTLE,
                "samples_per_plateau": samples,
            },
            "noise": NOISE,
        }
    )
    return DNPUDevice(settings, seed=seed)


def _point(seed: int, device: DNPUDevice) -> FloatArray:
    """A random operating point in the inner half of every control's range."""
    lo, hi = (np.array(b) for b in zip(*device.settings.electrode_ranges, strict=True))
    centre, half = (lo + hi) / 2, (hi - lo) / 4
    theta: FloatArray = centre + half * np.random.default_rng(1000 + seed).uniform(-1, 1, lo.size)
    return theta


def _homodyne(window: float) -> Callable[[float, int], GradientEstimator]:
    def make(amplitude: float, seed: int) -> GradientEstimator:
        return Homodyne(
            Homodyne.Settings(
                window=window,
                amplitudes=amplitude,
                bandwidth=FS / 4,
                f_min=F_MIN,
                settle_time=SETTLE,
                ramp_time=RAMP,
                measure_loss=False,
            )
        )

    return make


def ladder() -> list[Rung]:
    def fd(amplitude: float, seed: int) -> GradientEstimator:
        return CentralDifference(CentralDifference.Settings(h=amplitude, measure_loss=False))

    def spsa(resamples: int) -> Callable[[float, int], GradientEstimator]:
        return lambda a, s: SPSA(
            SPSA.Settings(c=a, resamples=resamples, measure_loss=False), seed=s
        )

    def es(pairs: int) -> Callable[[float, int], GradientEstimator]:
        return lambda a, s: AntitheticES(
            AntitheticES.Settings(sigma=a, pairs=pairs, measure_loss=False), seed=s
        )

    rungs = [
        Rung("homodyne", f"window {w:g} s", 10, _homodyne(w))
        for w in (0.2, 0.5, 0.75, 1.0, 1.5, 2.0)
    ]
    rungs += [Rung("central FD", f"{n} samples/plateau", n, fd) for n in (1, 3, 10, 30, 100, 300)]
    rungs += [Rung("central FD", f"10 samples × {r} repeats", 10, fd, r) for r in (2, 4, 8, 16, 32)]
    rungs += [Rung("SPSA", f"{r} resamples", 10, spsa(r)) for r in (4, 16, 64, 256)]
    rungs += [Rung("antithetic ES", f"{n} pairs", 10, es(n)) for n in (4, 16, 64, 256)]
    return rungs


def _estimate(rung: Rung, amplitude: float, seed: int) -> tuple[float, float]:
    """(cosine to the exact gradient, device seconds) of one estimate at this seed's point."""
    device = _device(seed, rung.samples_per_plateau)
    objective = Objective(device, MinimizeOutputTask())
    theta = _point(seed, device)
    truth = oracle_gradient(objective, theta, device).gradient
    estimator = rung.make(amplitude, seed)
    if isinstance(estimator, Homodyne):
        # the output chain's phase per tone: a one-time calibration at a strong amplitude,
        # not charged to the estimate (it is done once per session, not per gradient)
        calibration = Homodyne(estimator.settings.model_copy(update={"amplitudes": 0.05}))
        calibration.calibrate_phase(objective, theta)
        estimator.load_state_dict(calibration.state_dict())
    t0 = device.clock.now()
    runs: list[GradientEstimate] = [
        estimator.estimate(objective, theta) for _ in range(rung.repeats)
    ]
    seconds = device.clock.now() - t0
    g = np.mean([r.gradient for r in runs], axis=0)
    cosine = float(g @ truth / (np.linalg.norm(g) * np.linalg.norm(truth)))
    return cosine, seconds


@dataclass(frozen=True)
class LadderRow:
    """One rung's figures over the seeds (or why it could not run)."""

    method: str
    budget: str
    device_seconds: float = math.nan
    cosine_median: float = math.nan
    cosine_q25: float = math.nan
    infeasible: str | None = None


@dataclass(frozen=True)
class AmplitudeResult:
    """The whole ladder at one amplitude and what it shows."""

    rows: list[LadderRow]
    seconds_to_target: dict[str, float | None]
    longest_budget: dict[str, float]
    fd_over_homodyne: float | None
    fd_over_homodyne_kind: str

    def as_dict(self) -> dict[str, object]:
        return {
            "rows": [
                {k: v for k, v in asdict(r).items() if v is not None and v == v} for r in self.rows
            ],
            "seconds_to_target": self.seconds_to_target,
            "longest_budget": self.longest_budget,
            "fd_over_homodyne": self.fd_over_homodyne,
            "fd_over_homodyne_kind": self.fd_over_homodyne_kind,
        }


def equal_device_time(amplitudes: tuple[float, ...], seeds: int) -> dict[str, AmplitudeResult]:
    """Per amplitude: the ladder's median cosine and device time, and time to reach 0.99."""
    out: dict[str, AmplitudeResult] = {}
    for amplitude in amplitudes:
        rows: list[LadderRow] = []
        for rung in ladder():
            try:
                results = [_estimate(rung, amplitude, s) for s in range(seeds)]
            except ConfigError as exc:  # e.g. no tone plan fits this window
                rows.append(LadderRow(rung.method, rung.knob, infeasible=str(exc)))
                continue
            cosines = [c for c, _ in results]
            rows.append(
                LadderRow(
                    rung.method,
                    rung.knob,
                    device_seconds=float(np.mean([t for _, t in results])),
                    cosine_median=float(np.median(cosines)),
                    cosine_q25=float(np.quantile(cosines, 0.25)),
                )
            )
        reached: dict[str, float | None] = {}
        longest: dict[str, float] = {}
        for row in rows:
            if row.infeasible is not None:
                continue
            longest[row.method] = max(longest.get(row.method, 0.0), row.device_seconds)
            reached.setdefault(row.method, None)
            if row.cosine_median >= TARGET_COSINE:
                best = reached[row.method]
                reached[row.method] = (
                    row.device_seconds if best is None else min(best, row.device_seconds)
                )
        homodyne, fd = reached["homodyne"], reached["central FD"]
        if homodyne is None:
            ratio, kind = None, "homodyne did not reach the target"
        elif fd is None:
            ratio, kind = longest["central FD"] / homodyne, "lower bound: FD never reached it"
        else:
            ratio, kind = fd / homodyne, "measured on the ladder"
        out[f"{amplitude:g}"] = AmplitudeResult(rows, reached, longest, ratio, kind)
    return out


def seconds_text(value: float | None) -> str:
    """A time to target for the table."""
    return "not reached" if value is None or not math.isfinite(value) else f"{value:.3g} s"
