"""Benchmark the quick start: wall time, loss reduction, and the run engine's overhead.

The overhead is a ratio measured in the same process: the full `start_run` (journal, atomic
checkpoint per step, summary) against the same procedure stepped bare, without any recording.
Prints a table and writes bench/results/quickstart.json.

    .venv/bin/python -m bench.quickstart [--repeats N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from hil.build import build_run
from hil.config import load_experiment
from hil.provenance import environment
from hil.runner import RunStatus, start_run

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"
RESULTS = ROOT / "bench" / "results" / "quickstart.json"


def bare_seconds() -> float:
    """The quick start's procedure stepped with no journal, checkpoint or summary."""
    resolved = load_experiment(QUICKSTART)
    assert resolved.config.seed is not None
    built = build_run(resolved, resolved.config.seed)
    t0 = time.perf_counter()
    while not built.procedure.done:
        built.procedure.step()
    built.procedure.finish()
    elapsed = time.perf_counter() - t0
    built.guard.safe_state()
    return elapsed


def engine_run() -> tuple[float, dict[str, float]]:
    """One full quick-start run; returns wall seconds and its figures."""
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        outcome = start_run(QUICKSTART, Path(out))
        elapsed = time.perf_counter() - t0
        assert outcome.status is RunStatus.COMPLETED, outcome.reason
        first = json.loads((outcome.path / "events.jsonl").read_text().splitlines()[1])
    summary = outcome.summary
    return elapsed, {
        "first_loss": float(first["loss"]),
        "final_loss": float(summary["final_loss"]),
        "steps": float(summary["steps_done"]),
        "device_seconds": float(summary["device_time"]),
        "evaluations": float(summary["evaluations"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    engine, bare = [], []
    figures: dict[str, float] = {}
    for _ in range(args.repeats):
        seconds, figures = engine_run()
        engine.append(seconds)
        bare.append(bare_seconds())
    engine_s, bare_s = statistics.median(engine), statistics.median(bare)
    result = {
        "benchmark": "quickstart",
        "config": str(QUICKSTART.relative_to(ROOT)),
        "repeats": args.repeats,
        "wall_seconds_median": engine_s,
        "wall_seconds_all": engine,
        "target_wall_seconds": 30.0,
        "bare_procedure_seconds_median": bare_s,
        "engine_overhead_ratio": engine_s / bare_s,
        "loss_reduction_factor": figures["first_loss"] / figures["final_loss"],
        "target_loss_reduction_factor": 10.0,
        **figures,
        "environment": environment(),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    table = Table("figure", "value", "target", title="quick start")
    table.add_row("wall time (median)", f"{engine_s:.2f} s", "< 30 s")
    table.add_row("bare procedure (median)", f"{bare_s:.2f} s", "")
    table.add_row("engine overhead ratio", f"{engine_s / bare_s:.2f}×", "")
    table.add_row("loss reduction", f"{result['loss_reduction_factor']:.0f}×", "≥ 10×")
    table.add_row("device time (virtual)", f"{figures['device_seconds']:.1f} s", "")
    table.add_row("device evaluations", f"{figures['evaluations']:.0f}", "")
    Console().print(table)
    Console().print(f"written to {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
