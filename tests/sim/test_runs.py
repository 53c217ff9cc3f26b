"""The run engine end to end on the analytic simulator: complete, pause, abort, kill, resume."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hil.core import ConfigError, RunError
from hil.report import write_report
from hil.rundir import RunDirectory, seal
from hil.runner import RunStatus, resume_run, start_run

from experiments import (
    QUICKSTART,
    ROOT,
    hil_process,
    journal_steps,
    small_experiment,
    wait_for_steps,
)
from faulty import FlakyAnalytic


def _no_retries(config: Path) -> Path:
    """The experiment with `faults: {retries: 0}`: an instrument fault pauses the run at once."""
    config.write_text(config.read_text() + "faults: {retries: 0}\n")
    return config


def _only_run(out: Path) -> Path:
    runs = list(out.iterdir())
    assert len(runs) == 1, runs
    return runs[0]


@pytest.fixture
def reference(tmp_path: Path) -> dict[str, object]:
    """The summary of the small experiment run without interruption."""
    outcome = start_run(small_experiment(tmp_path / "ref_cfg"), tmp_path / "ref")
    assert outcome.status is RunStatus.COMPLETED
    return outcome.summary


@pytest.fixture(autouse=True)
def _no_injected_fault() -> Iterator[None]:
    FlakyAnalytic.fail_at = None
    yield
    FlakyAnalytic.fail_at = None


def test_quickstart_trains_and_leaves_a_complete_run(tmp_path: Path) -> None:
    outcome = start_run(QUICKSTART, tmp_path / "runs")
    assert outcome.status is RunStatus.COMPLETED, outcome.reason
    run = outcome.path
    for name in ("run.json", "events.jsonl", "checkpoint.json", "summary.json", "run.log"):
        assert (run / name).is_file(), name
    info = json.loads((run / "run.json").read_text())
    assert info["seed_entropy"] == 20261127
    assert info["environment"]["packages"]["numpy"]
    assert info["config"]["station"]["device"]["type"] == "analytic"
    steps = journal_steps(run)
    assert [s["step"] for s in steps] == list(range(1, 201))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed"
    first_loss = float(steps[0]["loss"])
    assert summary["final_loss"] < first_loss / 10
    checkpoint = json.loads((run / "checkpoint.json").read_text())
    assert checkpoint["steps_done"] == 200
    report = write_report(run)
    assert (report / "training.png").stat().st_size > 10_000
    assert "completed" in (report / "summary.md").read_text()


def test_same_seed_same_run(tmp_path: Path, reference: dict[str, object]) -> None:
    again = start_run(small_experiment(tmp_path / "cfg"), tmp_path / "again")
    assert again.summary["final_controls"] == reference["final_controls"]
    assert again.summary["final_loss"] == reference["final_loss"]


def test_device_error_mid_run_fails_cleanly_and_resumes_exactly(
    tmp_path: Path, reference: dict[str, object]
) -> None:
    FlakyAnalytic.fail_at = 100  # 3 plateaus per evaluation, 3 evaluations per step: step 12
    config = _no_retries(small_experiment(tmp_path / "cfg", device_type="faulty:FlakyAnalytic"))
    outcome = start_run(config, tmp_path / "runs")
    assert outcome.status is RunStatus.PAUSED
    assert "InstrumentTimeout" in outcome.reason
    assert "injected fault" in outcome.reason
    summary = json.loads((outcome.path / "summary.json").read_text())
    assert summary["status"] == "paused"
    assert summary["steps_done"] == 11
    assert len(journal_steps(outcome.path)) == 11
    assert "safe state" in (outcome.path / "run.log").read_text()

    FlakyAnalytic.fail_at = None
    resumed = resume_run(outcome.path)
    assert resumed.status is RunStatus.COMPLETED
    assert resumed.summary["final_controls"] == reference["final_controls"]
    assert [s["step"] for s in journal_steps(outcome.path)] == list(range(1, 41))


def test_resume_refuses_completed_and_missing_runs(
    tmp_path: Path, reference: dict[str, object]
) -> None:
    run = _only_run(tmp_path / "ref")
    with pytest.raises(RunError, match="already completed"):
        resume_run(run)
    with pytest.raises(RunError, match="no such run directory"):
        resume_run(tmp_path / "nowhere")


@pytest.mark.parametrize(
    ("sig", "status", "code"),
    [
        (signal.SIGKILL, None, -signal.SIGKILL),
        (signal.SIGINT, "paused", 3),
        (signal.SIGTERM, "aborted", 4),
    ],
)
def test_interrupted_run_resumes_to_the_uninterrupted_result(
    tmp_path: Path,
    reference: dict[str, object],
    sig: signal.Signals,
    status: str | None,
    code: int,
) -> None:
    config = small_experiment(tmp_path / "cfg", real_time=True)
    out = tmp_path / "runs"
    proc = hil_process("run", str(config), "--out", str(out), "--quiet")
    run = wait_for_steps(out, 8, proc)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code, stderr
    steps_done = len(journal_steps(run))
    assert 8 <= steps_done < 40
    summary = RunDirectory(run).summary()
    if status is None:  # killed: no chance to write a summary
        assert summary is None
    else:
        assert summary is not None
        assert summary["status"] == status
        assert summary["steps_done"] == steps_done
        assert "hil resume" in stderr
        assert "safe state" in (run / "run.log").read_text()
    checkpoint = RunDirectory(run).checkpoint()
    assert checkpoint is not None
    assert checkpoint["steps_done"] in (steps_done, steps_done + 1)  # saved before journalled

    resumed = resume_run(run)
    assert resumed.status is RunStatus.COMPLETED
    assert resumed.summary["final_controls"] == reference["final_controls"]
    assert resumed.summary["final_loss"] == reference["final_loss"]
    assert [s["step"] for s in journal_steps(run)] == list(range(1, 41))


def test_a_run_in_use_cannot_be_resumed_twice(tmp_path: Path) -> None:
    FlakyAnalytic.fail_at = 30
    config = _no_retries(small_experiment(tmp_path / "cfg", device_type="faulty:FlakyAnalytic"))
    outcome = start_run(config, tmp_path / "runs")
    assert outcome.status is RunStatus.PAUSED
    FlakyAnalytic.fail_at = None
    with RunDirectory(outcome.path).lock(), pytest.raises(RunError, match="in use by pid"):
        resume_run(outcome.path)
    assert resume_run(outcome.path).status is RunStatus.COMPLETED


def test_relative_data_path_survives_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg_dir = tmp_path / "cfg"
    config = _no_retries(small_experiment(cfg_dir, steps=6, device_type="faulty:FlakyAnalytic"))
    np.savez(cfg_dir / "data.npz", inputs=[[-0.5, 0.5], [0.5, -0.5]], targets=[0.3, 0.8])
    text = config.read_text()
    start, end = text.index("  inputs:"), text.index("estimator:")
    config.write_text(text[:start] + "  data: data.npz\n" + text[end:])
    monkeypatch.chdir(tmp_path)  # the config is named relative to the working directory
    FlakyAnalytic.fail_at = 20  # 2 cases, 3 evaluations per step: fails in step 4
    outcome = start_run(Path("cfg") / "small.yaml", Path("runs"))
    assert outcome.status is RunStatus.PAUSED
    run = outcome.path.resolve()
    FlakyAnalytic.fail_at = None
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    resumed = resume_run(run)
    assert resumed.status is RunStatus.COMPLETED, resumed.reason


@pytest.mark.parametrize("station", ["sim-dnpu", "sim-analog"])
def test_quickstart_runs_on_other_stations(tmp_path: Path, station: str) -> None:
    text = QUICKSTART.read_text()
    station_path = ROOT / "configs" / "stations" / f"{station}.yaml"
    text = text.replace("stations/sim-analytic.yaml", str(station_path)).replace(
        "steps: 200", "steps: 30"
    )
    config = tmp_path / "quickstart.yaml"
    config.write_text(text)
    outcome = start_run(config, tmp_path / "runs")
    assert outcome.status is RunStatus.COMPLETED, outcome.reason
    steps = journal_steps(outcome.path)
    assert float(outcome.summary["best_loss"]) < float(steps[0]["loss"])


def test_quickstart_on_a_crossbar_says_why_it_cannot_train(tmp_path: Path) -> None:
    station_path = ROOT / "configs" / "stations" / "sim-crossbar.yaml"
    config = tmp_path / "quickstart.yaml"
    config.write_text(
        QUICKSTART.read_text().replace("stations/sim-analytic.yaml", str(station_path))
    )
    with pytest.raises(ConfigError, match="no control channels to train"):
        start_run(config, tmp_path / "runs")
    assert not (tmp_path / "runs").exists()


def test_quickstart_trains_with_homodyne_gradients_through_the_guard(tmp_path: Path) -> None:
    text = QUICKSTART.read_text()
    start, end = text.index("estimator:"), text.index("optimizer:")
    homodyne = "estimator:\n  type: homodyne\n  window: 0.2\n  amplitudes: 0.05\n"
    text = (text[:start] + homodyne + text[end:]).replace("steps: 200", "steps: 15")
    text = text.replace(
        "stations/sim-analytic.yaml", str(ROOT / "configs" / "stations" / "sim-analytic.yaml")
    )
    config = tmp_path / "quickstart.yaml"
    config.write_text(text)
    outcome = start_run(config, tmp_path / "runs")
    assert outcome.status is RunStatus.COMPLETED, outcome.reason
    first = float(journal_steps(outcome.path)[0]["loss"])
    assert float(outcome.summary["final_loss"]) < first / 3


# -- calibration, blocking and recommendation in the training procedure ------------------------

CALIBRATED_PROCEDURE = """\
  steps: 40
  calibration:
    noise_repeats: 10
    target_step: 0.05
    gain_samples: 4
    perturbation: true
    perturbation_pairs: 4
    perturbation_trials: 4
  blocking: {sigma_multiple: 2.0}
  recommend: {policy: average, average_from: 0.5}
"""
SPALL_SGD = "optimizer:\n  type: sgd\n  lr: 0.03\n  schedule: {type: spall}\n"


def calibrated_experiment(tmp_path: Path, **options: Any) -> Path:
    """The small experiment with calibration, blocking, averaging and SGD on Spall gains."""
    path = small_experiment(tmp_path, **options)
    text = path.read_text()
    assert "  steps: 40\n" in text
    assert "optimizer:\n  type: adam\n  lr: 0.03\n" in text
    text = text.replace("  steps: 40\n", CALIBRATED_PROCEDURE)
    text = text.replace("optimizer:\n  type: adam\n  lr: 0.03\n", SPALL_SGD)
    path.write_text(text)
    return path


@pytest.fixture
def calibrated_reference(tmp_path: Path) -> dict[str, Any]:
    outcome = start_run(calibrated_experiment(tmp_path / "cal_ref_cfg"), tmp_path / "cal_ref")
    assert outcome.status is RunStatus.COMPLETED, outcome.reason
    return {"summary": outcome.summary, "steps": journal_steps(outcome.path), "path": outcome.path}


def test_calibration_and_blocking_are_logged_and_read_back(
    calibrated_reference: dict[str, Any],
) -> None:
    steps, summary = calibrated_reference["steps"], calibrated_reference["summary"]
    first = steps[0]
    calibration = first["calibration"]
    assert calibration == summary["calibration"]
    assert calibration["setting"] == "c"
    assert calibration["c"] > 0
    assert calibration["sigma"] > 0
    assert calibration["learning_rate"] > 0
    assert first["learning_rate"] == calibration["learning_rate"]  # Spall: step 1 uses lr itself
    assert first["allowed_increase"] == pytest.approx(2 * calibration["sigma"])
    assert first["evaluations"] == calibration["evaluations"] + 4  # loss, ± pair, blocking
    assert all("calibration" not in s for s in steps[1:])
    rates = [s["learning_rate"] for s in steps]
    assert rates == sorted(rates, reverse=True)
    assert rates[-1] < rates[0]
    assert all(isinstance(s["rejected"], bool) and s["proposed_loss"] is not None for s in steps)
    assert summary["rejected_steps"] == sum(bool(s["rejected"]) for s in steps)
    assert summary["evaluations"] == sum(int(s["evaluations"]) for s in steps) + 1
    assert summary["recommend"] == "average"
    assert summary["final_controls"] != summary["controls"]  # the average, not the last iterate
    assert float(summary["final_loss"]) < float(steps[0]["loss"])
    report = (write_report(calibrated_reference["path"]) / "summary.md").read_text()
    assert (
        f"- calibration: loss noise σ {calibration['sigma']:.4g}, c = {calibration['c']:.4g}"
        in (report)
    )
    assert f"- blocking: {summary['rejected_steps']} steps rejected" in report
    assert "- final controls: the average of the iterates" in report


@pytest.mark.parametrize(
    ("fail_in_step", "evaluations_in"),
    [(1, 40), (11, 2)],  # step 1 costs 54 evaluations with its calibration, later steps 4
)
def test_calibrated_run_resumes_exactly_after_a_device_error(
    tmp_path: Path, calibrated_reference: dict[str, Any], fail_in_step: int, evaluations_in: int
) -> None:
    steps = calibrated_reference["steps"]
    assert int(steps[0]["evaluations"]) > 40
    assert int(steps[10]["evaluations"]) > 2
    evaluations_before = sum(int(s["evaluations"]) for s in steps[: fail_in_step - 1])
    FlakyAnalytic.fail_at = 3 * (evaluations_before + evaluations_in)  # 3 plateaus / evaluation
    config = calibrated_experiment(tmp_path / "cfg", device_type="faulty:FlakyAnalytic")
    outcome = start_run(_no_retries(config), tmp_path / "runs")
    assert outcome.status is RunStatus.PAUSED
    assert len(journal_steps(outcome.path)) == fail_in_step - 1
    FlakyAnalytic.fail_at = None
    resumed = resume_run(outcome.path)
    assert resumed.status is RunStatus.COMPLETED, resumed.reason
    reference = calibrated_reference["summary"]
    for key in ("final_controls", "final_loss", "calibration", "evaluations", "rejected_steps"):
        assert resumed.summary[key] == reference[key], key
    assert [s.get("calibration") for s in journal_steps(outcome.path)] == [
        s.get("calibration") for s in steps
    ]


def test_calibrated_run_killed_mid_training_resumes_exactly(
    tmp_path: Path, calibrated_reference: dict[str, Any]
) -> None:
    config = calibrated_experiment(tmp_path / "cfg", real_time=True)
    out = tmp_path / "runs"
    proc = hil_process("run", str(config), "--out", str(out), "--quiet")
    run = wait_for_steps(out, 8, proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert 8 <= len(journal_steps(run)) < 40
    checkpoint = RunDirectory(run).checkpoint()
    assert checkpoint is not None
    assert checkpoint["procedure"]["calibration"] is not None
    resumed = resume_run(run)
    assert resumed.status is RunStatus.COMPLETED, resumed.reason
    reference = calibrated_reference["summary"]
    for key in ("final_controls", "final_loss", "calibration", "evaluations", "rejected_steps"):
        assert resumed.summary[key] == reference[key], key
    steps = journal_steps(run)
    assert [s["step"] for s in steps] == list(range(1, 41))
    assert sum("calibration" in s for s in steps) == 1  # calibrated once, not again on resume


def test_checkpoints_from_before_calibration_still_resume(
    tmp_path: Path, reference: dict[str, object]
) -> None:
    FlakyAnalytic.fail_at = 100
    config = _no_retries(small_experiment(tmp_path / "cfg", device_type="faulty:FlakyAnalytic"))
    outcome = start_run(config, tmp_path / "runs")
    assert outcome.status is RunStatus.PAUSED
    FlakyAnalytic.fail_at = None
    path = outcome.path / "checkpoint.json"
    checkpoint = json.loads(path.read_text())
    procedure = checkpoint["procedure"]
    for key in ("prepared", "calibration", "allowed_increase", "sigma", "rejected_steps", "rng"):
        del procedure[key]
    for key in ("lr", "horizon", "previous", "rejections", "average", "average_count"):
        del procedure["optimizer"][key]
    path.write_text(json.dumps(seal(checkpoint)))  # as the older procedure would have saved it
    resumed = resume_run(outcome.path)
    assert resumed.status is RunStatus.COMPLETED, resumed.reason
    assert resumed.summary["final_controls"] == reference["final_controls"]


def test_calibrating_a_perturbation_the_estimator_does_not_have_is_refused(
    tmp_path: Path,
) -> None:
    config = small_experiment(tmp_path / "cfg")
    text = config.read_text().replace(
        "  steps: 40\n", "  steps: 40\n  calibration:\n    perturbation: true\n"
    )
    start, end = text.index("estimator:"), text.index("optimizer:")
    config.write_text(text[:start] + "estimator:\n  type: homodyne\n" + text[end:])
    with pytest.raises(ConfigError, match=r"calibration\.perturbation.*no `c` or `h` setting"):
        start_run(config, tmp_path / "runs")
