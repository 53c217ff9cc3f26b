"""Instrument faults in a run: a timeout, garbled reply or dropped connection in a step is retried
as the experiment's `faults:` says — device made safe, the step's state restored, a reconnect
where the device can — so a run with a transient fault ends exactly as one without; a fault that
outlasts the retries pauses the run, the device safe, and `hil resume` completes it identically.

The small experiment on the analytic simulator plays 9 plateaus a step (3 evaluations of 3
cases), so plateau 40 lies in step 5; the final measurement plays plateaus 361 to 363.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from hil.cli import app
from hil.config import FaultPolicy
from hil.core import CapabilityError, InstrumentError, Reconnecting
from hil.retry import MAX_WAIT, retry_delay
from hil.rundir import RunDirectory
from hil.runner import RunStatus, resume_run, start_run
from hil.safety import SafetyGuard, SafetyLimits
from simulators.analytic import AnalyticDevice

from experiments import experiment_text, hil_process
from faulty import PLAN_ENV, FaultPlan, ReconnectingAnalytic, TransientAnalytic

runner = CliRunner()

FAILING = "measure 3 at 39"  # the call that plays plateau 40, in step 5
STEP_5 = "measure 3 at 33"  # the last call of step 4
SLEW_STEP = 200.0 * 1e-3  # ctrl0's max_slew × the default ramp_interval: V per ramp step
KEYS = ("final_controls", "final_loss", "metrics", "evaluations", "device_time", "best_loss")


@pytest.fixture(autouse=True)
def _no_plan() -> Iterator[None]:
    TransientAnalytic.plan = None
    yield
    TransientAnalytic.plan = None


def _config(
    folder: Path, device: str = "TransientAnalytic", retries: int = 2, backoff: float = 0.01
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "small.yaml"
    text = experiment_text(device_type=f"faulty:{device}")
    path.write_text(text + f"faults: {{retries: {retries}, backoff: {backoff}, factor: 2.0}}\n")
    return path


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The uninterrupted run: its summary and every command the device was given."""
    base = tmp_path_factory.mktemp("reference")
    TransientAnalytic.plan = FaultPlan(at_plateau=0, times=0)
    outcome = start_run(_config(base / "cfg"), base / "runs")
    assert outcome.status is RunStatus.COMPLETED
    log = TransientAnalytic.plan.log
    TransientAnalytic.plan = None
    return {"summary": outcome.summary, "log": log}


def _same_result(summary: dict[str, Any], reference: dict[str, Any]) -> None:
    for key in KEYS:
        assert summary.get(key) == reference["summary"].get(key), key


def _events(run: Path, kind: str) -> list[dict[str, Any]]:
    return [r for r in RunDirectory(run).events() if r["event"] == kind]


def _controls(command: str) -> np.ndarray:
    return np.array([float(v) for v in command.split()[1:]])


def _check_ramp_down(commands: list[str], start: np.ndarray) -> None:
    """`commands` ramp the controls from `start` to 0 within ctrl0's slew, then the safe state."""
    assert commands[-1] == "safe_state"
    assert commands[:-1]
    assert all(c.startswith("set_controls ") for c in commands[:-1])
    levels = [start, *(_controls(c) for c in commands[:-1])]
    assert np.all(levels[-1] == 0.0)
    assert np.all(np.abs(np.diff([v[0] for v in levels])) <= SLEW_STEP * (1 + 1e-9))


def _step5_attempt(log: list[str]) -> tuple[list[str], np.ndarray]:
    """The commands of step 5 up to the failing call, and the controls they leave set."""
    attempt = log[log.index(STEP_5) + 1 : log.index(FAILING) + 1]
    held = _controls([c for c in attempt if c.startswith("set_controls")][-1])
    return attempt, held


# -- transient faults --------------------------------------------------------------------------


@pytest.mark.parametrize("error", ["timeout", "garbled"])
def test_a_fault_within_the_retries_is_retried_and_the_run_ends_identically(
    tmp_path: Path, reference: dict[str, Any], error: str
) -> None:
    plan = TransientAnalytic.plan = FaultPlan(at_plateau=40, times=2, error=error)
    outcome = start_run(_config(tmp_path), tmp_path / "runs")
    assert outcome.status is RunStatus.COMPLETED, outcome.reason
    _same_result(outcome.summary, reference)
    assert [r["step"] for r in _events(outcome.path, "step")] == list(range(1, 41))
    faults = _events(outcome.path, "fault")
    assert [(f["during"], f["attempt"], f["attempts"]) for f in faults] == [
        ("step 5", 1, 3),
        ("step 5", 2, 3),
    ]
    assert [f["retry_in"] for f in faults] == [0.01, 0.02]
    kind = {"timeout": "InstrumentTimeout", "garbled": "InstrumentProtocolError"}[error]
    assert {f["error"] for f in faults} == {kind}
    assert all("smu1" in f["message"] and ":READ?" in f["message"] for f in faults)
    assert all(f["device_safe"] for f in faults)
    log = (outcome.path / "run.log").read_text()
    assert f"step 5 failed (attempt 1 of 3): {kind}: smu1 (analytic)" in log
    assert "step 5 succeeded on attempt 3 of 3" in log

    # Every command: the reference's, with each failed attempt and its ramp to 0 inserted.
    ref = reference["log"]
    attempt, held = _step5_attempt(ref)
    ramp = plan.log[plan.log.index(FAILING) + 1 : plan.log.index("safe_state") + 1]
    _check_ramp_down(ramp, held)
    start = ref.index(STEP_5) + 1
    assert plan.log == ref[:start] + 2 * (attempt + ramp) + ref[start:]


def test_a_fault_in_the_first_step_goes_back_to_the_state_before_it(
    tmp_path: Path, reference: dict[str, Any]
) -> None:
    TransientAnalytic.plan = FaultPlan(at_plateau=5, times=1)  # no checkpoint yet
    outcome = start_run(_config(tmp_path), tmp_path / "runs")
    assert outcome.status is RunStatus.COMPLETED, outcome.reason
    _same_result(outcome.summary, reference)
    (fault,) = _events(outcome.path, "fault")
    assert fault["during"] == "step 1"


def test_a_fault_in_the_final_measurement_is_retried(
    tmp_path: Path, reference: dict[str, Any]
) -> None:
    TransientAnalytic.plan = FaultPlan(at_plateau=361, times=1)
    outcome = start_run(_config(tmp_path), tmp_path / "runs")
    assert outcome.status is RunStatus.COMPLETED, outcome.reason
    _same_result(outcome.summary, reference)
    (fault,) = _events(outcome.path, "fault")
    assert fault["during"] == "the final measurement"


def test_a_saturated_output_is_not_retried(tmp_path: Path) -> None:
    TransientAnalytic.plan = FaultPlan(at_plateau=40, times=1, error="saturated")
    outcome = start_run(_config(tmp_path), tmp_path / "runs")
    assert outcome.status is RunStatus.FAILED
    assert outcome.reason.startswith("DeviceSaturated: smu1 (analytic)")
    assert _events(outcome.path, "fault") == []


# -- retries exhausted: paused, resumable --------------------------------------------------------


def test_a_fault_beyond_the_retries_pauses_with_the_device_safe_and_resumes_identically(
    tmp_path: Path, reference: dict[str, Any]
) -> None:
    plan = TransientAnalytic.plan = FaultPlan(at_plateau=40, times=4)
    out = tmp_path / "runs"
    result = runner.invoke(app, ["run", str(_config(tmp_path / "cfg")), "--out", str(out), "-q"])
    assert result.exit_code == 3, result.output
    (run,) = out.iterdir()
    assert (
        "paused: InstrumentTimeout: smu1 (analytic): measure failed: sent ':READ?', no reply"
    ) in result.stderr
    assert "step 5 failed on all 3 attempts, faults.retries 2" in result.stderr
    assert f"continue with: hil resume {run}" in result.stderr
    assert "Traceback" not in result.output

    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "paused"
    assert summary["steps_done"] == 4
    assert "InstrumentTimeout" in summary["reason"]
    stop = RunDirectory(run).events()[-1]
    assert (stop["event"], stop["status"]) == ("stop", "paused")
    assert [f["retry_in"] for f in _events(run, "fault")] == [0.01, 0.02, None]
    assert RunDirectory(run).verify().steps_done == 4  # the checkpoint of step 4, intact
    assert plan.log[-1] == "safe_state"  # left safe: controls ramped to 0, then the safe state
    assert _controls([c for c in plan.log if c.startswith("set_controls")][-1]).tolist() == [0] * 5

    resumed = resume_run(run)  # one injected fault left: retried
    assert resumed.status is RunStatus.COMPLETED, resumed.reason
    assert [r["step"] for r in _events(run, "step")] == list(range(1, 41))
    _same_result(json.loads((run / "summary.json").read_text()), reference)


def test_no_retries_pauses_at_the_first_fault(tmp_path: Path) -> None:
    TransientAnalytic.plan = FaultPlan(at_plateau=40, times=1)
    outcome = start_run(_config(tmp_path, retries=0), tmp_path / "runs")
    assert outcome.status is RunStatus.PAUSED
    assert "step 5 failed once, faults.retries 0" in outcome.reason
    assert [f["attempt"] for f in _events(outcome.path, "fault")] == [1]


# -- a dropped connection: reconnect, then the levels re-established safely ------------------------


def test_a_disconnect_reconnects_ramps_down_from_the_held_levels_and_retries(
    tmp_path: Path, reference: dict[str, Any]
) -> None:
    plan = TransientAnalytic.plan = FaultPlan(at_plateau=40, times=1, error="disconnect")
    outcome = start_run(_config(tmp_path, device="ReconnectingAnalytic"), tmp_path / "runs")
    assert outcome.status is RunStatus.COMPLETED, outcome.reason
    _same_result(outcome.summary, reference)
    (fault,) = _events(outcome.path, "fault")
    assert fault["error"] == "InstrumentDisconnected"
    assert fault["device_safe"] is False  # the link was down: the safe state could not be sent

    attempt, held = _step5_attempt(reference["log"])
    after = plan.log[plan.log.index(FAILING) + 1 :]
    # The guard's safe state fails on the dead link (each ramp step sent 6 times), then after the
    # wait: reconnect, a ramp from the levels the outputs still hold to 0, the safe state.
    refused = 6 * ["set_controls refused: link down"] + ["safe_state refused: link down"]
    assert after[:8] == [*refused, "reconnect"]
    ramp = after[8 : after.index("safe_state") + 1]
    _check_ramp_down(ramp, held)
    start = reference["log"].index(STEP_5) + 1
    assert plan.log == (
        reference["log"][:start]
        + attempt
        + refused
        + ["reconnect"]
        + ramp
        + reference["log"][start:]
    )


def test_a_reconnect_that_fails_counts_as_a_failed_attempt(tmp_path: Path) -> None:
    TransientAnalytic.plan = FaultPlan(
        at_plateau=40, times=1, error="disconnect", refused_reconnects=5
    )
    outcome = start_run(_config(tmp_path, device="ReconnectingAnalytic"), tmp_path / "runs")
    assert outcome.status is RunStatus.PAUSED
    assert outcome.reason.startswith("InstrumentDisconnected: smu1 (analytic): connect failed")
    assert "SAFE STATE FAILED" in outcome.reason  # the link never came back: said, not hidden
    assert [f["device_safe"] for f in _events(outcome.path, "fault")] == [False] * 3


def _guard(device: AnalyticDevice) -> SafetyGuard:
    limits = SafetyLimits.model_validate(
        {"max_abs_voltage": 1.0, "channels": {"ctrl0": {"min": -0.8, "max": 0.8, "max_slew": 200}}}
    )
    return SafetyGuard(device, limits)


def test_the_guard_passes_reconnect_through_and_makes_safe_from_the_last_levels() -> None:
    plan = TransientAnalytic.plan = FaultPlan(at_plateau=1, times=1, error="disconnect")
    guard = _guard(ReconnectingAnalytic(seed=1))
    assert isinstance(guard, Reconnecting)
    guard.set_controls(np.array([0.5, 0.0, 0.0, 0.0, 0.0]))
    with pytest.raises(InstrumentError, match="ConnectionResetError"):
        guard.measure(np.zeros((1, 2)))
    with pytest.raises(InstrumentError, match="levels on device 'analytic' are unknown"):
        guard.set_controls(np.zeros(5))  # refused by the guard: nothing reaches the device
    plan.log.clear()
    guard.reconnect()
    assert plan.log == [
        "reconnect",
        "set_controls 0.333333 0 0 0 0",  # 0.5 V down in 3 equal steps within 0.2 V per step
        "set_controls 0.166667 0 0 0 0",
        "set_controls 0 0 0 0 0",
        "safe_state",
    ]
    guard.set_controls(np.array([0.1, 0.0, 0.0, 0.0, 0.0]))  # known again: driving allowed


def test_a_failed_reconnect_leaves_the_levels_unknown() -> None:
    TransientAnalytic.plan = FaultPlan(at_plateau=0, times=0, refused_reconnects=1)
    guard = _guard(ReconnectingAnalytic(seed=1))
    assert isinstance(guard, Reconnecting)
    guard.set_controls(np.array([0.2, 0.0, 0.0, 0.0, 0.0]))
    with pytest.raises(InstrumentError, match="connect failed"):
        guard.reconnect()
    with pytest.raises(InstrumentError, match="unknown since reconnect failed"):
        guard.set_controls(np.zeros(5))
    guard.reconnect()
    guard.set_controls(np.zeros(5))


def test_a_device_that_cannot_reconnect_has_no_reconnect_behind_the_guard() -> None:
    guard = _guard(AnalyticDevice(seed=1))
    assert not isinstance(guard, Reconnecting)
    with pytest.raises(CapabilityError, match="it is not Reconnecting"):
        guard.reconnect()  # type: ignore[attr-defined]


# -- bounded waits; signals and kill -9 during a wait ------------------------------------------


def test_the_waits_grow_by_the_factor_and_are_bounded() -> None:
    def delays(policy: FaultPolicy) -> list[float]:
        return [retry_delay(policy, k) for k in range(1, policy.retries + 1)]

    assert delays(FaultPolicy(retries=3, backoff=0.5, factor=3)) == [0.5, 1.5, 4.5]
    worst = delays(FaultPolicy(retries=20, backoff=600, factor=10))
    assert max(worst) == MAX_WAIT
    assert sum(worst) == 20 * MAX_WAIT


def _after_the_first_fault(run_dir: Path, action: Any) -> threading.Thread:
    """A thread that calls `action()` once the run under `run_dir` journalled a fault."""

    def watch() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            runs = list(run_dir.iterdir()) if run_dir.exists() else []
            if runs and _events(runs[0], "fault"):
                action()
                return
            time.sleep(0.01)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize(
    ("sig", "status", "reason"),
    [
        (signal.SIGINT, RunStatus.PAUSED, "paused by Ctrl-C while waiting to retry step 5 after "),
        (signal.SIGTERM, RunStatus.ABORTED, "aborted by SIGTERM"),
    ],
)
def test_a_signal_during_the_wait_stops_it_as_anywhere_in_a_run(
    tmp_path: Path, reference: dict[str, Any], sig: int, status: RunStatus, reason: str
) -> None:
    TransientAnalytic.plan = FaultPlan(at_plateau=40, times=1)
    out = tmp_path / "runs"
    thread = _after_the_first_fault(out, lambda: os.kill(os.getpid(), sig))
    began = time.monotonic()
    outcome = start_run(_config(tmp_path / "cfg", backoff=60.0), out)
    thread.join()
    assert time.monotonic() - began < 30  # not the 60 s wait
    assert outcome.status is status
    assert outcome.reason.startswith(reason)
    assert json.loads((outcome.path / "summary.json").read_text())["steps_done"] == 4
    resumed = resume_run(outcome.path)
    assert resumed.status is RunStatus.COMPLETED, resumed.reason
    _same_result(resumed.summary, reference)


def test_kill_9_during_the_wait_then_resume_completes_identically(
    tmp_path: Path, reference: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "runs"
    config = _config(tmp_path / "cfg", backoff=60.0)
    monkeypatch.setenv(PLAN_ENV, json.dumps({"at_plateau": 40, "times": 1}))
    proc = hil_process("run", str(config), "--out", str(out), "-q")
    monkeypatch.delenv(PLAN_ENV)
    try:
        _after_the_first_fault(out, proc.kill).join()
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        proc.kill()
        proc.communicate()
    (run,) = out.iterdir()
    assert not (run / "summary.json").exists()  # killed: nothing after the fault event
    resumed = resume_run(run)
    assert resumed.status is RunStatus.COMPLETED, resumed.reason
    _same_result(resumed.summary, reference)
    assert [r["step"] for r in _events(run, "step")] == list(range(1, 41))
    assert [r["event"] for r in RunDirectory(run).events()][5:7] == ["fault", "resume"]
