"""The crossbar trains end to end with pulses: `hil run` on configs/crossbar-pulses.yaml."""

from __future__ import annotations

from pathlib import Path

from hil.report import write_report
from hil.rundir import RunDirectory
from hil.runner import RunStatus, start_run

from experiments import ROOT

CONFIG = ROOT / "configs" / "crossbar-pulses.yaml"


def test_crossbar_pulse_training_runs_and_learns(tmp_path: Path) -> None:
    config = tmp_path / "crossbar.yaml"
    text = CONFIG.read_text().replace("steps: 120", "steps: 40")
    text = text.replace(
        "stations/sim-crossbar.yaml", str(ROOT / "configs/stations/sim-crossbar.yaml")
    )
    text = text.replace("data/crossbar-linear.npz", str(ROOT / "configs/data/crossbar-linear.npz"))
    config.write_text(text)
    outcome = start_run(config, tmp_path / "runs")
    assert outcome.status is RunStatus.COMPLETED, outcome.reason
    steps = [r for r in RunDirectory(outcome.path).events() if r["event"] == "step"]
    assert len(steps) == 40
    assert outcome.summary["final_loss"] < 0.6 * steps[0]["loss"]
    assert all(s["pulses"] >= 0 for s in steps)
    assert outcome.summary["pulses"] == sum(s["pulses"] for s in steps)
    report = write_report(outcome.path)
    assert (report / "training.png").stat().st_size > 10_000
