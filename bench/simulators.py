"""Benchmark the simulators against real time and against raw numpy, on one core.

Figures (targets from the simulators issue):
- DNPU streaming at 1 kHz, as a multiple of real time (target ≥ 1000×);
- DNPU plateau evaluations per second in one batch of `measure` (target ≥ 1e5/s);
- 64×64 crossbar read at batch 256 against a raw numpy matmul of the same shape, measured in the
  same run (target ratio ≥ 0.5; also shown without output noise, whose 16k Gaussian draws alone
  cost about three matmuls);
- pulse updates of a 64×64 crossbar per second (target ≥ 1e4/s).

Prints a table and writes bench/results/simulators.json.

    .venv/bin/python -m bench.simulators
"""

from __future__ import annotations

import os
import sys

if not __package__:  # run as a file: this folder would shadow the `simulators` package
    sys.path[:] = [p for p in sys.path if os.path.abspath(p) != os.path.dirname(__file__)]

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # one core, before numpy loads BLAS
os.environ.setdefault("OMP_NUM_THREADS", "1")

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from hil.provenance import environment
from simulators.crossbar import CrossbarDevice
from simulators.dnpu import DNPUDevice

RESULTS = Path(__file__).resolve().parent / "results" / "simulators.json"


def best_seconds(run: Callable[[], object], min_time: float = 1.0, repeats: int = 5) -> float:
    """Best time per call over `repeats` rounds of at least `min_time` seconds each."""
    best = float("inf")
    for _ in range(repeats):
        calls, t0 = 0, time.perf_counter()
        while True:
            run()
            calls += 1
            elapsed = time.perf_counter() - t0
            if elapsed >= min_time / repeats:
                break
        best = min(best, elapsed / calls)
    return best


def dnpu_stream() -> dict[str, float]:
    """One second of a 1 kHz waveform on the two data inputs, default DNPU otherwise."""
    timing = {"sample_rate": 1000.0, "ramp_time": 0.0, "settle_time": 0.001}  # plateaus unused
    device = DNPUDevice(DNPUDevice.Settings.model_validate({"timing": timing}), seed=1)
    t = np.arange(1000) / 1000.0
    wave = np.column_stack([0.3 * np.sin(2 * np.pi * 3 * t), 0.2 * np.sin(2 * np.pi * 5 * t)])
    wave -= 0.2
    seconds = best_seconds(lambda: device.stream(wave, ["E1", "E2"]))
    return {
        "dnpu_stream_seconds_per_device_second": seconds,
        "dnpu_stream_x_real_time": 1 / seconds,
    }


def dnpu_plateaus(batch: int = 20_000) -> dict[str, float]:
    """Plateau evaluations per second: one `measure` of `batch` rows, default DNPU."""
    device = DNPUDevice(seed=2)
    rng = np.random.default_rng(0)
    x = rng.uniform([-1.2, -1.2], [0.6, 0.6], size=(batch, 2))
    seconds = best_seconds(lambda: device.measure(x), repeats=3)
    return {"dnpu_plateau_batch": float(batch), "dnpu_plateaus_per_second": batch / seconds}


def crossbar(batch: int = 256, size: int = 64) -> dict[str, float]:
    """Read throughput against raw numpy, and pulse updates per second."""
    device = CrossbarDevice(
        CrossbarDevice.Settings.model_validate({"rows": size, "cols": size}), seed=3
    )
    rng = np.random.default_rng(1)
    x = rng.uniform(-1.0, 1.0, size=(batch, size))
    weights = rng.uniform(-0.5, 0.5, size=(size, size))
    read = best_seconds(lambda: device.measure(x))
    raw = best_seconds(lambda: x @ weights)
    quiet = CrossbarDevice(
        CrossbarDevice.Settings.model_validate(
            {"rows": size, "cols": size, "io": {"out_noise": 0.0}}
        ),
        seed=3,
    )
    read_quiet = best_seconds(lambda: quiet.measure(x))
    pulses = rng.integers(-1, 2, size=(size, size))
    update = best_seconds(lambda: device.apply_pulses(pulses))
    return {
        "crossbar_read_seconds": read,
        "numpy_matmul_seconds": raw,
        "crossbar_read_vs_numpy": raw / read,
        "crossbar_read_vs_numpy_without_output_noise": raw / read_quiet,
        "crossbar_pulse_updates_per_second": 1 / update,
    }


TARGETS = {
    "dnpu_stream_x_real_time": (1000.0, "≥ 1000×"),
    "dnpu_plateaus_per_second": (1e5, "≥ 1e5 /s"),
    "crossbar_read_vs_numpy": (0.5, "≥ 0.5"),
    "crossbar_pulse_updates_per_second": (1e4, "≥ 1e4 /s"),
}


def main() -> None:
    figures = {**dnpu_stream(), **dnpu_plateaus(), **crossbar()}
    result = {
        "benchmark": "simulators",
        "figures": figures,
        "targets": {k: v[0] for k, v in TARGETS.items()},
        "met": {k: figures[k] >= v[0] for k, v in TARGETS.items()},
        "environment": environment(),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    table = Table("figure", "value", "target", "met", title="simulators (one core)")
    for key, (target, label) in TARGETS.items():
        table.add_row(key, f"{figures[key]:.4g}", label, "yes" if figures[key] >= target else "NO")
    key = "crossbar_read_vs_numpy_without_output_noise"
    table.add_row(key, f"{figures[key]:.4g}", "(for comparison)", "")
    Console().print(table)
    Console().print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
