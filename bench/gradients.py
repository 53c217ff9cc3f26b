"""Benchmark gradient extraction against the physical noise limit.

Noise limit (issue "gradient extraction"): the analytic device with white output noise only,
7 controls dithered in parallel; the RMS error per coordinate of the homodyne ∂y/∂θ over 200
repeats, divided by √(S/T)/A with S = 2σ²/fs the one-sided noise density, T the window and A the
tone amplitude. Target ≤ 1.2.

The fair equal-device-time comparison of every estimator (each with its own tuned settings, per
regime) is `bench/equal_time.py` (bench/results/equal_time.json); convergence against pycma,
nevergrad and noisyopt is `bench/convergence.py` (`--convergence` runs it from here too).

Prints tables and writes bench/results/gradients.json.

    .venv/bin/python -m bench.gradients [--repeats N] [--convergence]
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from hil.provenance import environment
from protocols.base import Objective
from protocols.homodyne import Homodyne
from protocols.tasks import RegressionTask
from simulators.analytic import AnalyticDevice

RESULTS = Path(__file__).resolve().parent / "results" / "gradients.json"
SIGMA, FS, WINDOW, AMPLITUDE, N_CONTROLS = 0.01, 1000.0, 1.0, 0.02, 7


def noise_limit(repeats: int) -> tuple[dict[str, float], list[float]]:
    settings = {
        "n_controls": N_CONTROLS,
        "noise": {"white": SIGMA},
        "timing": {"sample_rate": FS},
    }
    device = AnalyticDevice(AnalyticDevice.Settings.model_validate(settings), seed=2026)
    x = np.array([[0.2, -0.3]])
    task = RegressionTask(RegressionTask.Settings(inputs=x.tolist(), targets=[0.0]))
    objective = Objective(device, task)
    estimator = Homodyne(
        Homodyne.Settings(window=WINDOW, amplitudes=AMPLITUDE, bandwidth=200.0, measure_loss=False)
    )
    theta = np.linspace(-0.3, 0.3, N_CONTROLS)
    truth = device.true_gradient(theta, x)[0]
    errors, stderrs = [], []
    for _ in range(repeats):
        result = estimator.device_gradient(objective, theta)
        errors.append(result.gradient[0, 0] - truth)
        stderrs.append(result.stderr[0, 0])
    err = np.array(errors)
    limit = math.sqrt(2 * SIGMA**2 / FS / WINDOW) / AMPLITUDE
    per_coordinate = np.sqrt(np.mean(err**2, axis=0)) / limit
    figures = {
        "noise_limit": limit,
        "rms_error_over_limit": float(np.sqrt(np.mean(err**2)) / limit),
        "rms_error_over_limit_worst_coordinate": float(per_coordinate.max()),
        "reported_stderr_over_limit": float(np.mean(stderrs) / limit),
        "max_abs_mean_error_over_limit": float(np.max(np.abs(err.mean(axis=0))) / limit),
        "repeats": float(repeats),
    }
    return figures, [float(f) for f in estimator.tones(objective)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument(
        "--convergence", action="store_true", help="also run bench.convergence (minutes)"
    )
    args = parser.parse_args()
    figures, tones = noise_limit(args.repeats)
    result = {
        "benchmark": "gradients",
        "setup": {
            "sigma": SIGMA,
            "sample_rate": FS,
            "window": WINDOW,
            "amplitude": AMPLITUDE,
            "controls": N_CONTROLS,
        },
        "figures": figures,
        "tones_hz": tones,
        "targets": {"rms_error_over_limit": 1.2},
        "environment": environment(),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    table = Table("figure", "value", "target", title="homodyne vs the noise limit")
    table.add_row("RMS error / √(S/T)/A", f"{figures['rms_error_over_limit']:.3f}", "≤ 1.2")
    table.add_row("worst coordinate", f"{figures['rms_error_over_limit_worst_coordinate']:.3f}", "")
    table.add_row("reported SE / limit", f"{figures['reported_stderr_over_limit']:.3f}", "≈ 1")
    table.add_row(
        "|mean error| / limit (max)", f"{figures['max_abs_mean_error_over_limit']:.3f}", ""
    )
    table.add_row("tones", ", ".join(f"{f:g}" for f in tones), "Hz")
    Console().print(table)
    if args.convergence:
        subprocess.run([sys.executable, "-m", "bench.convergence"], check=True)
    Console().print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
