"""Runs keep their raw data in traces.h5: it matches the journal, survives a kill -9, resumes
without duplicate steps, respects its size cap, changes no result, and exports."""

from __future__ import annotations

import csv
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from scipy.io import netcdf_file
from typer.testing import CliRunner

from hil.cli import app
from hil.data import Traces, open_traces
from hil.runner import RunOutcome, RunStatus, resume_run, start_run
from hil.traces import Rows, write_rows

from experiments import hil_process, journal_steps, small_experiment, wait_for_steps
from faulty import FlakyAnalytic

STEPS = 40
PLATEAUS_PER_STEP = 9  # spsa: 3 evaluations of the 3 cases


def _run(tmp: Path, extra: str = "", **options: Any) -> RunOutcome:
    config = small_experiment(tmp / "cfg", **options)
    config.write_text(config.read_text() + extra)
    return start_run(config, tmp / "runs")


def _without_times(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in summary.items() if k != "ended_at"}


@pytest.fixture(autouse=True)
def _no_injected_fault() -> Iterator[None]:
    FlakyAnalytic.fail_at = None
    yield
    FlakyAnalytic.fail_at = None


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> RunOutcome:
    """The small experiment, recorded, without interruption."""
    outcome = _run(tmp_path_factory.mktemp("reference"))
    assert outcome.status is RunStatus.COMPLETED, outcome.reason
    return outcome


def _assert_same_plateaus(traces: Traces, reference: Traces) -> None:
    for name in ("inputs", "outputs", "controls"):
        np.testing.assert_array_equal(
            traces.plateaus.columns[name], reference.plateaus.columns[name], err_msg=name
        )
    np.testing.assert_array_equal(traces.plateaus.step, reference.plateaus.step)
    np.testing.assert_array_equal(traces.plateaus.time, reference.plateaus.time)


def test_a_run_writes_traces_that_match_its_journal(reference: RunOutcome) -> None:
    traces = open_traces(reference.path)
    journal = journal_steps(reference.path)
    assert [r["step"] for r in journal] == list(range(1, STEPS + 1))
    p = traces.plateaus
    assert traces.steps.tolist() == [-1, *range(1, STEPS + 1)]
    assert traces.channels["inputs"] == ("in0", "in1")
    assert traces.config["name"] == "small"
    assert traces.recording_stopped is None
    np.testing.assert_array_equal(p.step[p.step > 0], np.repeat(np.arange(1, STEPS + 1), 9))
    previous = 0.0
    for record in journal:  # each step's plateaus lie within its device time
        times = p.at(record["step"]).time
        assert previous < times.min() <= times.max() <= record["device_time"] + 1e-12
        previous = record["device_time"]
    controls = traces.tables["controls"]  # the set_controls of every step and the final one
    assert set(controls.step.tolist()) == {-1, *range(1, STEPS + 1)}


def test_recording_changes_no_result(reference: RunOutcome, tmp_path: Path) -> None:
    off = _run(tmp_path, "record: {mode: none}\n")
    assert _without_times(off.summary) == _without_times(reference.summary)
    strip = ("time", "sha256")
    assert [{k: v for k, v in r.items() if k not in strip} for r in journal_steps(off.path)] == [
        {k: v for k, v in r.items() if k not in strip} for r in journal_steps(reference.path)
    ]
    traces = open_traces(off.path)
    assert all(len(t) == 0 for t in traces.tables.values())
    assert traces.recording_stopped == "record mode none"


def test_resume_drops_a_step_written_after_the_checkpoint_and_appends(
    reference: RunOutcome, tmp_path: Path
) -> None:
    FlakyAnalytic.fail_at = 100  # 3 plateaus per evaluation, 3 evaluations per step: step 12
    paused = _run(tmp_path, "faults: {retries: 0}\n", device_type="faulty:FlakyAnalytic")
    assert paused.status is RunStatus.PAUSED
    assert open_traces(paused.path).steps.tolist() == list(range(1, 12))
    # As if killed between writing step 12's traces and its checkpoint: a torn step 12.
    torn = Rows("plateaus", {"step": np.array([12]), "time": np.array([99.0])})
    with h5py.File(paused.path / "traces.h5", "a") as f:
        write_rows(f, torn)
    FlakyAnalytic.fail_at = None
    resumed = resume_run(paused.path)
    assert resumed.status is RunStatus.COMPLETED, resumed.reason
    _assert_same_plateaus(open_traces(paused.path), open_traces(reference.path))


def test_sigkill_mid_run_leaves_every_completed_step_readable(tmp_path: Path) -> None:
    config = small_experiment(tmp_path / "cfg", real_time=True)
    out = tmp_path / "runs"
    proc = hil_process("run", str(config), "--out", str(out), "--quiet")
    try:
        run = wait_for_steps(out, 5, proc)
        time.sleep(0.05)  # somewhere inside a later step
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        proc.kill()
        proc.communicate(timeout=30)
    journalled = len(journal_steps(run))
    traces = open_traces(run)  # opens: no corruption
    steps = traces.plateaus.step
    written = int(steps.max())
    assert journalled <= written <= journalled + 1  # at most the step before its checkpoint
    np.testing.assert_array_equal(steps, np.repeat(np.arange(1, written + 1), PLATEAUS_PER_STEP))
    for name in ("inputs", "outputs", "controls"):
        assert np.isfinite(traces.plateaus.columns[name]).all()
    resumed = resume_run(run)
    assert resumed.status is RunStatus.COMPLETED, resumed.reason
    after = open_traces(run).plateaus.step
    np.testing.assert_array_equal(
        after[after > 0], np.repeat(np.arange(1, STEPS + 1), PLATEAUS_PER_STEP)
    )


def test_the_size_cap_stops_recording_not_the_run(reference: RunOutcome, tmp_path: Path) -> None:
    capped = _run(tmp_path, "record: {mode: all, max_mb: 0.1}\n")
    assert capped.status is RunStatus.COMPLETED
    assert _without_times(capped.summary) == _without_times(reference.summary)
    traces = open_traces(capped.path)
    assert traces.recording_stopped is not None
    assert "record.max_mb 0.1 MB" in traces.recording_stopped
    assert 1 <= traces.plateaus.step.max() < STEPS
    assert (capped.path / "traces.h5").stat().st_size <= 100_000
    assert "recording stopped" in (capped.path / "run.log").read_text()


def test_export_to_netcdf_and_csv_round_trips(reference: RunOutcome, tmp_path: Path) -> None:
    runner = CliRunner()
    nc_path = tmp_path / "traces.nc"
    result = runner.invoke(
        app, ["export", str(reference.path), "--to", "netcdf", "--out", str(nc_path)]
    )
    assert result.exit_code == 0, result.output
    traces = open_traces(reference.path)
    with netcdf_file(nc_path, "r", mmap=False) as nc:
        p = traces.plateaus
        for name, values in {**p.columns, "time": p.time, "step": p.step}.items():
            np.testing.assert_array_equal(nc.variables[f"plateaus_{name}"][...], values)
        np.testing.assert_array_equal(nc.variables["plateaus_step"][...], traces.plateaus.step)
        assert nc.variables["plateaus_inputs"].channels == b"in0,in1"
        assert int(nc.schema_version) == 1
    result = runner.invoke(
        app, ["export", str(reference.path), "--to", "csv", "--out", str(tmp_path / "csv")]
    )
    assert result.exit_code == 0, result.output
    with (tmp_path / "csv" / "plateaus_outputs.csv").open() as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["out"]
    np.testing.assert_array_equal(
        np.array(rows[1:], dtype=float), traces.plateaus.columns["outputs"]
    )
    missing = runner.invoke(app, ["export", str(tmp_path), "--to", "csv"])
    assert missing.exit_code == 1
    assert "no traces.h5" in missing.output
