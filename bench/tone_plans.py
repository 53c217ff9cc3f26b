"""Benchmark parallel tone plans for d = 5…50: every product avoided against only significant ones.

The rig is the DNPU's (fs 10 kHz, tones below 125 Hz, mains 50 Hz). Per d and product rule:
the shortest window whose plan fits the band (`tones.shortest_window`), the plan's highest bin
(frequency × window), the host time to find the window and to plan at it from cold caches, and
the time of a repeated (cached) plan. Ratios are to the all-products planner in the same run.

Rules: `all` (today's default: free of every harmonic and intermodulation product to 3rd order),
`order 2` (today's option, for reference) and `significant @ A` for A = 20, 5, 1 mV: only products
whose predicted amplitude exceeds 0.1 × the noise in a bin (`tone_windows.ProductSizes`) must keep
off the tones. Its inputs are the simulated DNPU's: derivative bounds are the medians, over random
operating points (seed 0), of the largest |∂²I/∂θ_i∂θ_j| and |∂³I/∂θ_i³| over the five controls
(central differences of the noise-free core, step 20 mV); the noise density is the lowest in the
band: the white floor 2·(0.1 nA)²/fs plus the 1/f noise at 125 Hz (1e-5 nA²/Hz at 1 kHz). The same
bounds stand for every d (a device with d controls and this curvature). Nothing is tuned: the
fraction 0.1 (bias ≤ 0.1 standard error) is fixed in advance. Each significant plan is checked: no
product above the bar lies within 1/T of a tone; the products it leaves on tones are counted with
their largest predicted amplitude relative to the noise in a bin.

Caveats: host times are medians of `--rounds` cold runs on a shared machine (its load is
recorded); the plans are the planner's greedy ones (its search may find a plan in a shorter window
by backtracking); median rather than largest curvatures make the 20 and 5 mV rules typical, not
worst-case (the JSON has the maxima: |∂²I| 3.4× and |∂³I| 4.4× the medians).

    .venv/bin/python -m bench.tone_plans [--dims 5 10 20 50] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from protocols import tones
from protocols.tone_windows import ProductSizes, product_vectors
from protocols.tones import check_plan, shortest_window, tone_plan
from simulators.dnpu import DNPUDevice

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "tone_plans.json"
FS, BAND, MAINS = 10_000.0, 125.0, 50.0  # Hz: the DNPU rig
FRACTION = 0.1
STEP = 0.02  # V, finite-difference step for the derivative bounds
POINTS = 10  # random operating points for the derivative bounds


def dnpu_sizes() -> dict[str, float]:
    """Median largest |∂²I| and |∂³I| over the controls at random points; the lowest noise."""
    device = DNPUDevice()
    s = device.settings
    lo = np.array([r[0] for r in s.electrode_ranges])
    hi = np.array([r[1] for r in s.electrode_ranges])
    controls = [i for i in range(lo.size) if i not in s.input_electrodes]
    rng = np.random.default_rng(0)

    def current(v: np.ndarray) -> float:
        return float(device.core(v[np.newaxis, :])[0])

    second, third = [], []
    for _ in range(POINTS):
        v = lo + (hi - lo) * rng.uniform(0.1, 0.9, lo.size)
        steps = {i: np.eye(lo.size)[i] * STEP for i in controls}
        hessian = [
            (
                current(v + steps[i] + steps[j])
                - current(v + steps[i] - steps[j])
                - current(v - steps[i] + steps[j])
                + current(v - steps[i] - steps[j])
            )
            / (4 * STEP**2)
            for i in controls
            for j in controls
        ]
        cubic = [
            (current(v + 2 * e) - 2 * current(v + e) + 2 * current(v - e) - current(v - 2 * e))
            / (2 * STEP**3)
            for e in steps.values()
        ]
        second.append(max(abs(x) for x in hessian))
        third.append(max(abs(x) for x in cubic))
    noise = s.noise
    white = 2 * noise.white**2 / FS
    flicker = noise.flicker_psd * 1000.0 / BAND  # 1/f density at 125 Hz
    return {
        "second": float(np.median(second)),
        "third": float(np.median(third)),
        "second_max": float(np.max(second)),
        "third_max": float(np.max(third)),
        "noise_density": white + flicker,
    }


def rules(sizes: dict[str, float]) -> dict[str, dict[str, Any]]:
    """Planner keyword arguments per rule name."""
    out: dict[str, dict[str, Any]] = {"all": {}, "order 2": {"order": 2}}
    for mv in (20, 5, 1):
        out[f"significant @ {mv} mV"] = {
            "products": ProductSizes(
                amplitudes=mv / 1000,
                noise_density=sizes["noise_density"],
                second=sizes["second"],
                third=sizes["third"],
                fraction=FRACTION,
            )
        }
    return out


def left_on_tones(plan: tuple[float, ...], window: float, products: ProductSizes) -> dict[str, Any]:
    """Products to 3rd order within 1/T of a tone: count, largest amplitude / bin noise."""
    vectors = product_vectors(len(plan), 3)
    f = np.asarray(plan)
    values = np.abs(vectors.astype(float) @ f)
    on = (np.abs(vectors).sum(axis=1) >= 2) & np.any(
        np.abs(values[:, None] - f[None, :]) < 1 / window * (1 - 1e-9), axis=1
    )
    noise = math.sqrt(products.noise_density / window)
    sizes = products.amplitude(vectors[on]) / noise if on.any() else np.zeros(0)
    return {
        "products_on_tones": int(on.sum()),
        "largest_over_noise": float(sizes.max(initial=0.0)),
        "bar_over_noise": FRACTION,
    }


def run_cell(d: int, kwargs: dict[str, Any], rounds: int) -> dict[str, Any]:
    """Cold window search and cold plan at that window (medians of `rounds`, caches cleared
    before each), then the cached plan; checks the plan."""
    searches, colds = [], []
    for _ in range(rounds):
        tones.clear_caches()
        t0 = time.perf_counter()
        window = shortest_window(d, sample_rate=FS, bandwidth=BAND, mains=MAINS, **kwargs)
        searches.append(time.perf_counter() - t0)
        tones.clear_caches()
        t0 = time.perf_counter()
        plan = tone_plan(d, window=window, sample_rate=FS, bandwidth=BAND, mains=MAINS, **kwargs)
        colds.append(time.perf_counter() - t0)
    search, cold = float(np.median(searches)), float(np.median(colds))
    repeats = 2000
    t0 = time.perf_counter()
    for _ in range(repeats):
        again = tone_plan(d, window=window, sample_rate=FS, bandwidth=BAND, mains=MAINS, **kwargs)
    cached = (time.perf_counter() - t0) / repeats
    assert again is plan, "the cache must return the same plan"
    assert (
        check_plan(plan, window=window, sample_rate=FS, bandwidth=BAND, mains=MAINS, **kwargs) == []
    )
    cell = {
        "window_s": window,
        "highest_bin": round(max(plan) * window),
        "tones_hz": list(plan),
        "search_host_s": search,
        "plan_cold_host_s": cold,
        "plan_cached_host_us": cached * 1e6,
    }
    if "products" in kwargs:
        cell |= left_on_tones(plan, window, kwargs["products"])
    return cell


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[5, 10, 20, 50])
    parser.add_argument("--rounds", type=int, default=3, help="cold timings per cell (median)")
    args = parser.parse_args()
    started = time.perf_counter()
    sizes = dnpu_sizes()
    table = rules(sizes)
    cells: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in table}
    for d in args.dims:
        for name, kwargs in table.items():
            cells[name][str(d)] = run_cell(d, kwargs, args.rounds)
    for name in table:
        for d in args.dims:
            cell, base = cells[name][str(d)], cells["all"][str(d)]
            cell["ratio_to_all"] = {
                "window": cell["window_s"] / base["window_s"],
                "highest_bin": cell["highest_bin"] / base["highest_bin"],
                "search_host": cell["search_host_s"] / base["search_host_s"],
                "plan_cold_host": cell["plan_cold_host_s"] / base["plan_cold_host_s"],
            }
    head = (
        f"{'rule':<22}{'d':>4}{'top bin':>9}{'window s':>10}{'×all':>7}"
        f"{'search s':>10}{'plan s':>9}{'cached µs':>11}{'left':>6}{'max/σ':>7}"
    )
    print(
        f"DNPU rig: fs {FS:g} Hz, band {BAND:g} Hz; "
        f"|∂²I| {sizes['second']:.0f} nA/V², |∂³I| {sizes['third']:.0f} nA/V³ (medians), "
        f"S {sizes['noise_density']:.2g} nA²/Hz, bar {FRACTION}·√(S/T)"
    )
    print(head)
    for name in table:
        for d in args.dims:
            c = cells[name][str(d)]
            left = c.get("products_on_tones", "")
            worst = f"{c['largest_over_noise']:.3f}" if "largest_over_noise" in c else ""
            print(
                f"{name:<22}{d:>4}{c['highest_bin']:>9}{c['window_s']:>10.3f}"
                f"{c['ratio_to_all']['window']:>7.3f}{c['search_host_s']:>10.2f}"
                f"{c['plan_cold_host_s']:>9.3f}{c['plan_cached_host_us']:>11.1f}{left:>6}{worst:>7}"
            )
    result = {
        "benchmark": "tone_plans",
        "settings": {
            "sample_rate": FS,
            "bandwidth": BAND,
            "mains": MAINS,
            "fraction": FRACTION,
            "dims": args.dims,
            "rounds": args.rounds,
            "fd_step_v": STEP,
        },
        "dnpu_sizes": sizes,
        "rules": {
            name: {k: (repr(v) if k == "products" else v) for k, v in kw.items()}
            for name, kw in table.items()
        },
        "cells": cells,
        "wall_seconds": time.perf_counter() - started,
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "load": os.getloadavg()[0],
        },
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
