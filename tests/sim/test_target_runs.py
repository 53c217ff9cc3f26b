"""Runs on tasks with a target (gates, classification) end to end on the simulated DNPU: the
measured stopping rule, the `missed` status, restarts, and resuming a judged run exactly."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hil.core import ConfigError, RunError
from hil.report import write_report
from hil.runner import RunStatus, resume_run, start_run

from experiments import ROOT, dnpu_station, journal_steps
from faulty import FlakyDNPU


def _experiment(
    tmp_path: Path,
    *,
    task: str = "{type: gate, gate: XOR}",
    target: str = "{}",
    steps: int = 60,
    device: str = "dnpu",
) -> Path:
    """A gate (or other judged task) trained with SPSA + Adam on the simulated DNPU."""
    station = dnpu_station(tmp_path, device)
    config = tmp_path / "experiment.yaml"
    config.write_text(
        f"""name: judged
station: {station}
seed: 7
procedure: {{type: train, steps: {steps}, parameters: normalized, target: {target}}}
task: {task}
estimator: {{type: spsa, c: 0.05, resamples: 2}}
optimizer: {{type: adam, lr: 0.05}}
faults: {{retries: 0}}
"""
    )
    return config


@pytest.fixture(autouse=True)
def _no_injected_fault() -> Iterator[None]:
    FlakyDNPU.fail_at = None
    yield
    FlakyDNPU.fail_at = None


def _checks(run: Path) -> list[dict[str, Any]]:
    return [s["target"] for s in journal_steps(run) if "target" in s]


def _realised(target: dict[str, Any], margin: float = 3.0) -> bool:
    """The gate criterion recomputed from the reported per-case outputs and noise."""
    outputs = np.array(target["case_outputs"])
    labels = np.array(target["case_labels"])
    separation = outputs[labels == 1].min() - outputs[labels == 0].max()
    return bool(separation >= margin * target["noise"])


def test_a_gate_run_stops_when_a_measured_check_realises_it(tmp_path: Path) -> None:
    outcome = start_run(_experiment(tmp_path / "cfg"), tmp_path / "runs")
    assert outcome.status is RunStatus.COMPLETED, outcome.reason
    assert "target reached" in outcome.reason
    assert "XOR realised" in outcome.reason
    summary = outcome.summary
    assert summary["steps_done"] < summary["total_steps"]  # stopped early
    target = summary["target"]
    assert target["reached"]
    assert _realised(target)
    assert target["case_labels"] == [0, 1, 1, 0]
    checks = _checks(outcome.path)
    assert checks[-1]["reached"]
    assert _realised(checks[-1])
    steps = journal_steps(outcome.path)
    confirmations = {
        s["step"]: s["target_confirmation"] for s in steps if "target_confirmation" in s
    }
    assert confirmations[steps[-1]["step"]]["reached"]  # a fresh measurement agreed, so it stopped
    for c in checks[:-1]:  # earlier: not reached, or not confirmed
        assert not c["reached"] or not confirmations[c["step"]]["reached"]
    assert all(_realised(c) == c["reached"] for c in checks)
    # checks are spaced to take at most a tenth of the device time (plus the one that is due)
    spent = sum(c["device_seconds"] for c in checks)
    total = sum(s["device_seconds"] for s in steps)
    assert spent <= 0.1 * (total - spent) + max(c["device_seconds"] for c in checks)
    page = (write_report(outcome.path) / "report.html").read_text()
    assert "Outputs per case at the final point" in page  # the gate plot
    assert "Score of each measured check" in page
    start = steps[0]["target_start"]
    assert start["step"] == 0
    assert start["noise"] > 0


def test_an_unreachable_target_ends_missed_and_cannot_resume(
    tmp_path: Path,
) -> None:
    config = _experiment(
        tmp_path / "cfg",
        task="{type: gate, gate: AND, margin: 1.0e9}",
        target="{restart: {flat: 1.0e12, max_restarts: 3}}",  # every start looks flat
        steps=30,
    )
    outcome = start_run(config, tmp_path / "runs")
    assert outcome.status is RunStatus.MISSED, outcome.reason
    assert "target NOT reached" in outcome.reason
    assert "AND not realised" in outcome.reason
    summary = json.loads((outcome.path / "summary.json").read_text())
    assert summary["status"] == "missed"
    assert summary["steps_done"] == 30
    assert summary["target"]["reached"] is False
    restarts = [s["restart"] for s in journal_steps(outcome.path) if "restart" in s]
    assert [r["number"] for r in restarts] == [1, 2, 3]  # then max_restarts stops them
    assert all(r["reason"].startswith("outputs flat") for r in restarts)
    assert summary["target"]["restarts"] == 3
    starts = {tuple(r["controls"]) for r in restarts}
    assert len(starts) == 3  # new random points
    with pytest.raises(RunError, match="without reaching its target"):
        resume_run(outcome.path)


def test_a_target_on_a_task_without_one_is_refused(tmp_path: Path) -> None:
    config = _experiment(
        tmp_path / "cfg",
        task="{type: regression, inputs: [[0, 0], [0.5, 0.5]], targets: [1, 2]}",
        target="{repeats: 3}",
    )
    with pytest.raises(ConfigError, match=r"procedure\.target: task RegressionTask has no target"):
        start_run(config, tmp_path / "runs")


def test_a_judged_run_resumes_exactly_after_a_device_error(tmp_path: Path) -> None:
    task = "{type: gate, gate: XNOR, margin: 1.0e9}"  # never reached: every step is judged
    kwargs: dict[str, Any] = {"task": task, "target": "{restart: {patience: 3}}", "steps": 16}
    reference = start_run(_experiment(tmp_path / "ref", **kwargs), tmp_path / "ref_runs")
    assert reference.status is RunStatus.MISSED
    FlakyDNPU.fail_at = 300
    config = _experiment(tmp_path / "cfg", device="faulty:FlakyDNPU", **kwargs)
    paused = start_run(config, tmp_path / "runs")
    assert paused.status is RunStatus.PAUSED, paused.reason
    assert 0 < paused.summary["steps_done"] < 16
    FlakyDNPU.fail_at = None
    resumed = resume_run(paused.path)
    assert resumed.status is RunStatus.MISSED
    assert resumed.summary["target"] == reference.summary["target"]
    assert resumed.summary["final_controls"] == reference.summary["final_controls"]
    assert _checks(paused.path) == _checks(reference.path)


def test_classification_is_judged_on_held_out_cases(tmp_path: Path) -> None:
    task = (
        "{type: classification, generate: {shape: ring, n: 40, gap: 0.4, seed: 3}, "
        "validation: 0.25, accuracy: 0.6}"
    )
    outcome = start_run(_experiment(tmp_path / "cfg", task=task, steps=40), tmp_path / "runs")
    target = outcome.summary["target"]
    assert len(target["case_outputs"]) == 30  # the training cases; 10 are held out
    validation = target["validation"]
    assert validation is not None
    assert target["reached"] == validation["reached"]
    assert (validation["score"] >= 0.6) == validation["reached"]
    expected = RunStatus.COMPLETED if validation["reached"] else RunStatus.MISSED
    assert outcome.status is expected, outcome.reason


@pytest.mark.parametrize(
    "config", ["dnpu-gate.yaml", "dnpu-ring.yaml", "analog-mlp-classification.yaml"]
)
def test_shipped_configs_reach_their_targets(tmp_path: Path, config: str) -> None:
    outcome = start_run(ROOT / "configs" / config, tmp_path / "runs")
    assert outcome.status is RunStatus.COMPLETED, outcome.reason
    assert outcome.summary["target"]["reached"]
    assert outcome.summary["steps_done"] < outcome.summary["total_steps"]
