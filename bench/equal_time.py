"""Equal device time, fairly: which gradient estimator is fastest, per device regime.

Question: how many device seconds does one gradient estimate need before its cosine to the exact
gradient (the simulator's oracle) reaches 0.9 and 0.99, when every method picks its own
perturbation size and averaging?

Methods and their grids (every method tunes its own; nothing is forced to a common amplitude):
homodyne (tone amplitude × window × lowest tone, parallel, plus grouped tones where d ≥ 10),
central differences (step h × samples per plateau), SPSA with Rademacher and with Hadamard
directions (c × samples per plateau, no c decay) and antithetic ES (σ × samples per plateau).
Averaging is the ladder: an estimate of rung r is the mean of r consecutive one-shot estimates
(r FD sweeps, r SPSA resamples — Hadamard rows continue their cycle —, r ES pairs, r homodyne
streams), so every rung of one ladder costs r times its first.

Timing model (what the rig really needs, on the virtual clock): 1 kHz sampling; a DC plateau pays
its settling and its samples, and no slew ramp (the channels have no slew limit, and a
perturbation step is small); a homodyne stream starts and ends at 0 V as the guard requires, so
it pays a 10 ms ramp in and out, the settling, and the window. One-time calibrations (homodyne
output phase) and the reference are not charged.

Protocol: tuning seeds (100, 101, …) choose, per method and target cosine, the setting whose
ladder reaches the median cosine soonest (a tie: the larger median cosine); the other seeds (0 …
n−1, 30 by default) score only that choice. The figure is the device time of the first rung
whose median cosine over the scored seeds reaches the target; the IQR is that of the per-seed
times (first rung from which a seed's cosine stays at or above the target, so a Hadamard ladder
whose middle rungs break a cycle can show an IQR above its median figure). A ladder stops at the
regime's cap of device time; in tuning also at 3× the fastest setting found so far (it cannot
win; and a screen on the first tuning seed drops settings 2× slower than their method's best),
in scoring at 10× the fastest tuned method. A method that does not reach the target shows ">
x×": its last rung, x times the winner's time, did not reach it (a lower bound).
Per seed, every method meets the same operating point and the same device. `auto` (issue 11
item 2) gets no tuning: asked for each target, it measures the device and picks its estimator
and settings; its column is the steady device time of its second estimate per seed (the first
also pays its measurements, reported apart), whether the median cosine made the target, and the
share of seeds whose own cosine did (a median at the target is a coin flip per seed).
It starts on the default rig (10 samples per plateau) and sets the samples per plateau itself
(`Averaging`, powers of two 1–256, where the tuned methods choose among 1, 10 and 100); like
the others it does not spend an evaluation on the unperturbed loss, and its homodyne gets the
grid's bandwidth (fs/4; the planner keeps tones below fs/8).

Regimes: the DNPU (7 controls, the default device, noise of `simulators.dnpu` unless stated) with
low and high white noise, 1/f-dominated noise, drift, slow settling (100 ms), strong
nonlinearity (curvature 8) and its default noise; and the analytic device with d = 5, 10, 20, 50
controls (white noise) for the scaling in d.

    .venv/bin/python -m bench.equal_time [--quick] [--seeds N] [--tune-seeds N] [--regimes a,b]

Prints the tables and writes bench/results/equal_time.json (--out: elsewhere). Wall time on 2
shared cores: ~20–30 min for all regimes with 30 scored seeds; --quick (2 tuning, 3 scored
seeds) is a smoke run, not a result.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from rich.console import Console
from rich.table import Table

from hil.core import ConfigError, FloatArray
from hil.provenance import environment
from protocols.auto import AutoEstimator
from protocols.base import GradientEstimator, Objective
from protocols.diagnostics import oracle_gradient
from protocols.estimators import SPSA, CentralDifference
from protocols.evolution import AntitheticES
from protocols.homodyne import Homodyne
from protocols.tasks import MinimizeOutputTask
from simulators.analytic import AnalyticDevice
from simulators.dnpu import DNPUDevice

RESULTS = Path(__file__).resolve().parent / "results" / "equal_time.json"
TARGETS = (0.9, 0.99)
FS = 1000.0
STREAM_RAMP = 0.01  # s, a stream's ramp from and back to 0 V
RUNGS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
DONE_COSINE = 0.9995  # a seed's ladder stops here: past every target, later rungs hold it
TUNING_CUTOFF = 3.0  # tuning stops a ladder at this multiple of the fastest setting so far
SCREEN = 2.0  # tuning: settings this much slower than the method's best on one seed are dropped
SCORING_CUTOFF = 10.0  # scoring stops a ladder at this multiple of the fastest tuned method
METHODS = ("homodyne", "central FD", "SPSA rademacher", "SPSA hadamard", "antithetic ES")
SHORT = dict(zip(METHODS, ("HGE", "FD", "SPSA-R", "SPSA-H", "ES"), strict=True))
AUTO_RIG = 10  # plateau samples of the rig `auto` starts from (it sets its own)
AUTO_PICKS = dict(enumerate(("central FD", "SPSA hadamard", "homodyne")))


@dataclass(frozen=True)
class Regime:
    """One device and noise situation."""

    name: str
    note: str
    noise: dict[str, float]
    dim: int = 7  # 7: the DNPU; otherwise the analytic device with this many controls
    settle: float = 0.005
    curvature: float = 1.0
    sizes: tuple[float, ...] = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2)  # V, every method's grid

    @property
    def cap(self) -> float:
        """Device seconds at most per ladder and seed."""
        return max(10.0, 0.5 * self.dim)

    def device(self, seed: int, samples: int) -> DNPUDevice | AnalyticDevice:
        """The regime's device with `samples` per plateau; `seed` draws its noise."""
        timing = {
            "sample_rate": FS,
            "ramp_time": 0.0,
            "settle_time": self.settle,
            "samples_per_plateau": samples,
        }
        if self.dim == 7:
            dnpu: dict[str, object] = {
                "input_electrodes": [],
                "timing": timing,
                "noise": self.noise,
            }
            if self.curvature != 1.0:
                dnpu["curvature"] = self.curvature
            return DNPUDevice(DNPUDevice.Settings.model_validate(dnpu), seed=seed)
        analytic = {"n_inputs": 0, "n_controls": self.dim, "timing": timing, "noise": self.noise}
        return AnalyticDevice(AnalyticDevice.Settings.model_validate(analytic), seed=seed)

    def point(self, seed: int, objective: Objective) -> FloatArray:
        """A random operating point in the inner half of every control's range."""
        lo, hi = objective.lower, objective.upper
        centre, half = (lo + hi) / 2, (hi - lo) / 4
        rng = np.random.default_rng(1000 + seed)
        theta: FloatArray = centre + half * rng.uniform(-1, 1, lo.size)
        return theta


DNPU_NOISE = {"white": 0.1, "relative": 0.01, "flicker_psd": 1e-5, "drift_std": 0.5}
ANALYTIC_NOISE = {"white": 0.05}
REGIMES = (
    Regime("dnpu default", "DNPU noise as shipped (0.1 nA white, 1 %, 1/f, drift)", DNPU_NOISE),
    Regime("low white", "0.05 nA white only", {"white": 0.05}),
    Regime("high white", "10 nA white only", {"white": 10.0}),
    Regime(
        "1/f",
        "1/f 1e-3 nA²/Hz at 1 kHz (corner above Nyquist) + 0.05 nA white",
        {"white": 0.05, "flicker_psd": 1e-3},
    ),
    Regime(
        "drift",
        "drift σ 5 nA with a 2 s correlation time + 0.1 nA white",
        {"white": 0.1, "drift_std": 5.0, "drift_tau": 2.0},
    ),
    Regime(
        "slow settling", "DNPU default noise, 100 ms settling per level", DNPU_NOISE, settle=0.1
    ),
    Regime(
        "curvature 8",
        "DNPU curvature 8 (≈ the measured surrogate at 30 mV), default noise",
        DNPU_NOISE,
        curvature=8.0,
        sizes=(0.001, 0.002, 0.005, 0.01, 0.02),
    ),
    *(
        Regime(f"d = {d}", f"analytic device, {d} controls, 0.05 V white", ANALYTIC_NOISE, dim=d)
        for d in (5, 10, 20, 50)
    ),
)


@dataclass(frozen=True)
class Setting:
    """One point of a method's grid: how to build the one-shot estimator, and its plateaus."""

    method: str
    label: str
    params: dict[str, float | int | str]
    make: Callable[[Regime, int], GradientEstimator]  # (regime, seed) → estimator
    samples: int = 10  # per plateau (plateau methods only)


def _homodyne(amplitude: float, window: float, f_min: float | None, group: int) -> Setting:
    def make(regime: Regime, seed: int) -> GradientEstimator:
        mode = "parallel" if group == 0 else "grouped"
        return Homodyne(
            Homodyne.Settings(
                window=window,
                amplitudes=amplitude,
                bandwidth=FS / 4,
                f_min=f_min,
                mode=mode,
                group_size=max(group, 1),
                settle_time=regime.settle,
                ramp_time=STREAM_RAMP,
                measure_loss=False,
            )
        )

    tag = "parallel" if group == 0 else f"groups of {group}"
    low = "lowest" if f_min is None else f"≥ {f_min:g} Hz"
    label = f"A {amplitude * 1e3:g} mV, T {window:g} s, tones {low}, {tag}"
    params: dict[str, float | int | str] = {
        "amplitude": amplitude,
        "window": window,
        "f_min": "lowest" if f_min is None else f_min,
        "mode": tag,
    }
    return Setting("homodyne", label, params, make)


Builder = Callable[[float, int], GradientEstimator]  # (perturbation size, seed) → estimator


def _at(build: Builder, size: float) -> Callable[[Regime, int], GradientEstimator]:
    return lambda regime, seed: build(size, seed)


def _spsa(directions: Literal["rademacher", "hadamard"]) -> Builder:
    def build(c: float, seed: int) -> GradientEstimator:
        settings = SPSA.Settings(c=c, gamma=0.0, directions=directions, measure_loss=False)
        return SPSA(settings, seed=seed)

    return build


def grid(regime: Regime) -> dict[str, list[Setting]]:
    """Every method's settings for this regime."""
    groups = [0] if regime.dim < 10 else [0, 5]
    out: dict[str, list[Setting]] = {
        "homodyne": [
            _homodyne(a, w, f, g)
            for a in regime.sizes
            for w in (0.28, 0.56, 1.12)
            for f in (None, 40.0)
            for g in groups
        ]
    }

    def plateau(method: str, name: str, build: Builder) -> None:
        out[method] = [
            Setting(
                method,
                f"{name} {size * 1e3:g} mV, {n} samples/plateau",
                {name: size, "samples_per_plateau": n},
                _at(build, size),
                samples=n,
            )
            for size in regime.sizes
            for n in (1, 10, 100)
        ]

    plateau(
        "central FD",
        "h",
        lambda h, seed: CentralDifference(CentralDifference.Settings(h=h, measure_loss=False)),
    )
    plateau("SPSA rademacher", "c", _spsa("rademacher"))
    plateau("SPSA hadamard", "c", _spsa("hadamard"))
    plateau(
        "antithetic ES",
        "sigma",
        lambda s, seed: AntitheticES(AntitheticES.Settings(sigma=s, pairs=1), seed=seed),
    )
    return out


@dataclass
class Ladder:
    """One setting on one seed: cosine and device seconds at each rung reached."""

    cosines: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    per_estimate: float = math.nan  # device seconds of one one-shot estimate (mean)


def run_ladder(regime: Regime, setting: Setting, seed: int, cap: float) -> Ladder:
    """Average one-shot estimates rung by rung until the target is passed or the cap is spent."""
    device = regime.device(seed, setting.samples)
    objective = Objective(device, MinimizeOutputTask())
    theta = regime.point(seed, objective)
    truth = oracle_gradient(objective, theta, device).gradient
    estimator = setting.make(regime, seed)
    if isinstance(estimator, Homodyne):
        # the output chain's phase per tone: once per session at a strong amplitude, uncharged
        calibration = Homodyne(estimator.settings.model_copy(update={"amplitudes": 0.05}))
        calibration.calibrate_phase(objective, theta)
        estimator.load_state_dict(calibration.state_dict())
    ladder, total, spent = Ladder(), np.zeros_like(truth), 0.0
    for r in range(1, RUNGS[-1] + 1):
        result = estimator.estimate(objective, theta)
        total += result.gradient
        spent += result.device_seconds
        if r in RUNGS:
            g = total / r
            norm = float(np.linalg.norm(g) * np.linalg.norm(truth))
            ladder.cosines.append(float(g @ truth) / norm if norm > 0 else 0.0)
            ladder.seconds.append(spent)
            if ladder.cosines[-1] >= DONE_COSINE:
                break
        if spent * (r + 1) / r > cap:
            break
    ladder.per_estimate = spent / r
    return ladder


@dataclass(frozen=True)
class Outcome:
    """A setting over several seeds: per target, device seconds to the median cosine."""

    setting: Setting
    seconds: dict[float, float | None]  # None: not reached within the recorded rungs
    cap_seconds: float  # device seconds of the last rung recorded on every seed
    seed_seconds: dict[float, list[float]]  # per seed (inf: never held the target)
    cosine_at: dict[float, tuple[float, float, float]]  # q25, median, q75 at the figure's rung

    def as_dict(self) -> dict[str, object]:
        return {
            "setting": self.setting.label,
            "params": self.setting.params,
            "seconds": {str(t): v for t, v in self.seconds.items()},
            "last_rung_seconds": self.cap_seconds,
            "seed_seconds": {
                str(t): [v if math.isfinite(v) else None for v in s]
                for t, s in self.seed_seconds.items()
            },
            "cosine_q25_median_q75": {str(t): v for t, v in self.cosine_at.items()},
        }


def score(
    ladders: Sequence[Ladder],
) -> tuple[
    dict[float, float | None],
    float,
    dict[float, list[float]],
    dict[float, tuple[float, float, float]],
]:
    """Per target: the first rung whose median cosine reaches it, per-seed times, cosine IQR."""
    n = max(len(lad.cosines) for lad in ladders)
    cos = np.full((len(ladders), n), np.nan)
    for i, lad in enumerate(ladders):
        cos[i, : len(lad.cosines)] = lad.cosines
        if lad.cosines and lad.cosines[-1] >= DONE_COSINE:
            cos[i, len(lad.cosines) :] = lad.cosines[-1]  # finished: later rungs hold it
    per = float(np.median([lad.per_estimate for lad in ladders]))
    rung_seconds = np.array(RUNGS[:n]) * per
    complete = ~np.isnan(cos).any(axis=0)
    last = int(np.flatnonzero(complete)[-1]) if complete.any() else -1
    seconds: dict[float, float | None] = {}
    seeds: dict[float, list[float]] = {}
    cosine_at: dict[float, tuple[float, float, float]] = {}
    for target in TARGETS:
        medians = np.median(cos[:, : last + 1], axis=0)
        hit = np.flatnonzero(medians >= target)
        seconds[target] = float(rung_seconds[hit[0]]) if hit.size else None
        at = hit[0] if hit.size else last
        column = cos[:, at] if at >= 0 else np.zeros(len(ladders))
        q25, q50, q75 = (float(v) for v in np.nanquantile(column, (0.25, 0.5, 0.75)))
        cosine_at[target] = (q25, q50, q75)
        seeds[target] = []
        for row in cos:
            below = np.flatnonzero(~(np.nan_to_num(row, nan=-1.0) >= target))
            first = 0 if below.size == 0 else int(below[-1]) + 1
            reached = first < n and not np.isnan(row[first])
            seeds[target].append(float(rung_seconds[first]) if reached else math.inf)
    cap = float(rung_seconds[last]) if last >= 0 else 0.0
    return seconds, cap, seeds, cosine_at


def evaluate(regime: Regime, setting: Setting, seeds: Sequence[int], cap: float) -> Outcome | str:
    """A setting's ladders over the seeds, scored; or why it cannot run here."""
    try:
        ladders = [run_ladder(regime, setting, s, cap) for s in seeds]
    except ConfigError as exc:  # e.g. no tone plan fits this window
        return str(exc).split(";")[0][:160]
    return Outcome(setting, *score(ladders))


def tune(
    regime: Regime, settings: Sequence[Setting], seeds: Sequence[int], best: dict[float, float]
) -> tuple[dict[float, Setting], dict[str, object]]:
    """Per target, the setting that reaches it soonest on the tuning seeds; the table tried.

    A screen on the first tuning seed keeps the settings within `SCREEN`× of the method's
    fastest there (for some target); only those run on every tuning seed.
    """
    chosen: dict[float, tuple[tuple[float, float], Setting]] = {}
    tried: dict[str, dict[str, object]] = {}
    screened: dict[str, dict[float, float | None]] = {}
    for setting in settings:
        cap = min(regime.cap, TUNING_CUTOFF * best.get(TARGETS[-1], math.inf))
        outcome = evaluate(regime, setting, seeds[:1], cap)
        if isinstance(outcome, str):
            tried[setting.label] = {"infeasible": outcome}
        else:
            screened[setting.label] = outcome.seconds
    fastest = {
        t: min((v[t] or math.inf for v in screened.values()), default=math.inf) for t in TARGETS
    }
    kept = [
        s
        for s in settings
        if s.label in screened
        and (
            not any(math.isfinite(v) for v in fastest.values())
            or any((screened[s.label][t] or math.inf) <= SCREEN * fastest[t] for t in TARGETS)
        )
    ]
    for setting in settings:
        if setting.label in screened and setting not in kept:
            tried[setting.label] = {
                "screened out": {str(t): screened[setting.label][t] for t in TARGETS}
            }
    for setting in kept:
        cap = min(regime.cap, TUNING_CUTOFF * best.get(TARGETS[-1], math.inf))
        outcome = evaluate(regime, setting, seeds, cap)
        if isinstance(outcome, str):
            tried[setting.label] = {"infeasible": outcome}
            continue
        tried[setting.label] = {str(t): v for t, v in outcome.seconds.items()}
        for target, seconds in outcome.seconds.items():
            if seconds is None:
                continue
            best[target] = min(best.get(target, math.inf), seconds)
            key = (seconds, -outcome.cosine_at[target][1])  # a tie goes to the larger margin
            if target not in chosen or key < chosen[target][0]:
                chosen[target] = (key, setting)
    # a method that reaches no target on the tuning seeds is scored with its fastest-to-0.9
    # or, failing that, its first feasible setting, so the table shows how far it gets
    fallback = next((s for s in settings if "infeasible" not in tried[s.label]), settings[0])
    first = chosen.get(TARGETS[0], ((0.0, 0.0), fallback))[1]
    picks = {t: chosen[t][1] if t in chosen else first for t in TARGETS}
    return picks, dict(tried)


def run_regime(
    regime: Regime, tune_seeds: Sequence[int], seeds: Sequence[int]
) -> dict[str, object]:
    """Tune every method on the tuning seeds, score its choices on the others, rank them."""
    started = time.perf_counter()
    settings = grid(regime)
    best: dict[float, float] = {}
    # central FD first: the usual front-runner, so the tuning cut-off bites early
    order = ["central FD", *[m for m in METHODS if m != "central FD"]]
    picks: dict[str, dict[float, Setting]] = {}
    tuning: dict[str, object] = {}
    for method in order:
        picks[method], tuning[method] = tune(regime, settings[method], tune_seeds, best)
    cap = min(regime.cap, SCORING_CUTOFF * best.get(TARGETS[-1], math.inf))
    scored: dict[str, dict[str, object]] = {}
    figures: dict[str, dict[float, tuple[float | None, float, list[float], str]]] = {}
    for method in METHODS:
        done: dict[str, Outcome | str] = {}
        figures[method] = {}
        scored[method] = {}
        for target in TARGETS:
            setting = picks[method][target]
            if setting.label not in done:
                done[setting.label] = evaluate(regime, setting, seeds, cap)
            outcome = done[setting.label]
            if isinstance(outcome, str):
                figures[method][target] = (None, 0.0, [], setting.label)
                scored[method][str(target)] = {"setting": setting.label, "infeasible": outcome}
                continue
            figures[method][target] = (
                outcome.seconds[target],
                outcome.cap_seconds,
                outcome.seed_seconds[target],
                setting.label,
            )
            scored[method][str(target)] = outcome.as_dict()
    ranking = {str(t): rank({m: figures[m][t] for m in METHODS}) for t in TARGETS}
    for target in TARGETS:
        entry = ranking[str(target)]
        winner, methods = entry["winner"], entry["methods"]
        assert isinstance(methods, dict)
        auto = run_auto(regime, seeds, target, AUTO_RIG)
        if isinstance(winner, str):
            best, seconds = methods[winner]["seconds"], auto["seconds"]
            assert isinstance(best, float)
            assert isinstance(seconds, float)
            auto["ratio"] = seconds / best
        entry["auto"] = auto
    return {
        "regime": regime.name,
        "note": regime.note,
        "dim": regime.dim,
        "settle_s": regime.settle,
        "curvature": regime.curvature,
        "noise": regime.noise,
        "cap_device_s": {"tuning": regime.cap, "scoring": cap},
        "tuning": tuning,
        "scored": scored,
        "ranking": ranking,
        "host_seconds": time.perf_counter() - started,
    }


def run_auto(
    regime: Regime, seeds: Sequence[int], target: float, samples: int
) -> dict[str, object]:
    """`auto` (issue 11 item 2), untuned: asked for the target, it measures and picks itself.

    Two estimates per seed: the first also pays its measurements (probe, pilot), the second is
    the steady cost per estimate that the figure reports (re-measured every `recheck_every`).
    """
    cosines, seconds, first, picks = [], [], [], []
    for seed in seeds:
        device = regime.device(seed, samples)
        objective = Objective(device, MinimizeOutputTask())
        theta = regime.point(seed, objective)
        truth = oracle_gradient(objective, theta, device).gradient
        settings = {"target_cosine": target, "measure_loss": False, "homodyne_bandwidth": FS / 4}
        estimator = AutoEstimator(AutoEstimator.Settings.model_validate(settings))
        measuring = estimator.estimate(objective, theta)
        steady = estimator.estimate(objective, theta)
        g = steady.gradient
        norm = float(np.linalg.norm(g) * np.linalg.norm(truth))
        cosines.append(float(g @ truth) / norm if norm > 0 else 0.0)
        seconds.append(steady.device_seconds)
        first.append(measuring.device_seconds)
        picks.append(AUTO_PICKS[int(steady.extras["auto_candidate"])])
    median = float(np.median(seconds))
    q25, q75 = (float(v) for v in np.quantile(seconds, (0.25, 0.75)))
    return {
        "seconds": median,
        "seed_iqr": [q25, q75],
        "cosine_median": float(np.median(cosines)),
        "reached": float(np.median(cosines)) >= target,
        "seeds_reaching": float(np.mean(np.asarray(cosines) >= target)),
        "first_estimate_seconds": float(np.median(first)),
        "picked": {m: picks.count(m) for m in sorted(set(picks))},
        "per_seed": {"cosine": cosines, "seconds": seconds, "first_seconds": first},
    }


def rank(
    figures: dict[str, tuple[float | None, float, list[float], str]],
) -> dict[str, object]:
    """The winner and every method's time and ratio to it (a lower bound if not reached)."""
    reached = {m: f[0] for m, f in figures.items() if f[0] is not None}
    if not reached:
        return {"winner": None, "methods": {}}
    winner = min(reached, key=lambda m: reached[m] or math.inf)
    best = reached[winner] or math.inf
    methods: dict[str, object] = {}
    for method, (seconds, cap, per_seed, label) in figures.items():
        finite = [v for v in per_seed if math.isfinite(v)]
        q = (
            np.quantile(per_seed, (0.25, 0.75))
            if len(finite) == len(per_seed) and per_seed
            else None
        )
        methods[method] = {
            "seconds": seconds,
            "lower_bound": seconds is None,
            "ratio": (seconds if seconds is not None else cap) / best,
            "seed_iqr": None if q is None else [float(q[0]), float(q[1])],
            "setting": label,
        }
    return {"winner": winner, "methods": methods}


def _cell(entry: dict[str, object]) -> str:
    seconds, ratio = entry["seconds"], entry["ratio"]
    assert isinstance(ratio, float)
    if seconds is None:
        return f"> {ratio:.2g}×"
    assert isinstance(seconds, float)
    iqr = entry["seed_iqr"]
    spread = f" [{iqr[0]:.2g}–{iqr[1]:.2g}]" if isinstance(iqr, list) else ""
    return f"{seconds:.3g} s{spread} {ratio:.2g}×"


def _auto_cell(entry: dict[str, object]) -> str:
    auto = entry.get("auto")
    if not isinstance(auto, dict):
        return "—"
    ratio = auto.get("ratio")
    text = f"{auto['seconds']:.3g} s" + (f" {ratio:.2g}×" if isinstance(ratio, float) else "")
    share = auto.get("seeds_reaching")
    text += f" ({share:.0%} of seeds)" if isinstance(share, float) else ""
    return text if auto["reached"] else f"{text}, missed (cos {auto['cosine_median']:.3f})"


def print_tables(results: list[dict[str, object]], console: Console) -> None:
    """Per target: a row per regime, a column per method (time [seed IQR] ratio to winner)."""
    for target in TARGETS:
        table = Table(
            "regime",
            *(SHORT[m] for m in METHODS),
            "winner",
            "auto",
            title=f"device s per estimate to median cosine {target}: median [seed IQR] "
            "ratio to the winner",
        )
        for result in results:
            ranking = result["ranking"]
            assert isinstance(ranking, dict)
            entry = ranking[str(target)]
            methods = entry["methods"]
            cells = [_cell(methods[m]) if m in methods else "—" for m in METHODS]
            winner = SHORT.get(str(entry["winner"]), "—")
            table.add_row(str(result["regime"]), *cells, winner, _auto_cell(entry))
        console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="3 scored + 2 tuning seeds, smoke")
    parser.add_argument("--seeds", type=int, default=30, help="scored seeds")
    parser.add_argument("--tune-seeds", type=int, default=5, help="tuning seeds (never scored)")
    parser.add_argument("--regimes", default="", help="comma-separated regime names (default all)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="the JSON file written")
    args = parser.parse_args()
    logging.getLogger("protocols.homodyne").setLevel(logging.ERROR)  # grid-fallback notices
    n_seeds, n_tune = (3, 2) if args.quick else (args.seeds, args.tune_seeds)
    wanted = {r.strip() for r in args.regimes.split(",") if r.strip()}
    regimes = [r for r in REGIMES if not wanted or r.name in wanted]
    console = Console(width=220)
    load_before = os.getloadavg()
    results: list[dict[str, object]] = []
    for regime in regimes:
        results.append(run_regime(regime, range(100, 100 + n_tune), range(n_seeds)))
        console.print(f"{regime.name}: {results[-1]['host_seconds']:.0f} s host")
        write(args.out, results, n_seeds, n_tune, load_before)  # partial file survives a kill
    print_tables(results, console)


def write(
    path: Path,
    results: list[dict[str, object]],
    n_seeds: int,
    n_tune: int,
    load_before: tuple[float, ...],
) -> None:
    """The JSON: settings, tuning choices, raw per-seed results, versions and machine load."""
    out = {
        "benchmark": "equal_time",
        "targets": list(TARGETS),
        "scored_seeds": n_seeds,
        "tuning_seeds": [100 + i for i in range(n_tune)],
        "timing_model": {
            "sample_rate_hz": FS,
            "plateau": "settle + samples, no slew ramp",
            "stream": f"ramp {STREAM_RAMP} s in and out + settle + window",
        },
        "rungs": list(RUNGS),
        "tuning_cutoff": TUNING_CUTOFF,
        "scoring_cutoff": SCORING_CUTOFF,
        "auto": "untuned, target_cosine = each target, measure_loss off; starts on the rig of "
        f"{AUTO_RIG} samples/plateau and sets its own (1–256)",
        "regimes": results,
        "machine_load": {"before": load_before, "after": os.getloadavg(), "cpus": os.cpu_count()},
        "environment": environment(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
