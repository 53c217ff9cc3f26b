"""`hil watch RUN` and `hil report --live RUN`: both follow a run's journal while it grows, read
only; the watcher ends with the run, the live page is rebuilt only when the journal changed."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from hil.cli import app
from hil.live import LiveServer
from hil.report import report_page
from hil.rundir import EVENTS_FILE, LOCK_FILE, RUN_FILE
from hil.runner import RunStatus, start_run
from hil.watch import RunProgress

from experiments import hil_process, journal_steps, small_experiment, wait_for_steps

runner = CliRunner()
STEPS = 6


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A completed real run of the small experiment: its journal is replayed step by step."""
    tmp = tmp_path_factory.mktemp("watch_source")
    outcome = start_run(small_experiment(tmp, steps=STEPS), tmp / "runs")
    assert outcome.status is RunStatus.COMPLETED, outcome.reason
    return outcome.path


def journal_lines(run: Path) -> list[str]:
    return (run / EVENTS_FILE).read_text(encoding="utf-8").splitlines(keepends=True)


def replay(source: Path, target: Path, steps: int | None, *, stop: bool = False) -> Path:
    """`target` as `source` was after its start event and `steps` steps (None: no journal yet),
    with the stop event when `stop`; the lock file names this (living) process."""
    target.mkdir(parents=True, exist_ok=True)
    (target / RUN_FILE).write_bytes((source / RUN_FILE).read_bytes())
    (target / LOCK_FILE).write_text(f"pid {os.getpid()}\n")
    if steps is not None:
        lines = journal_lines(source)
        kept = lines[: 1 + steps] + (lines[-1:] if stop else [])
        (target / EVENTS_FILE).write_text("".join(kept), encoding="utf-8")
    return target


def append(run: Path, text: str) -> None:
    with (run / EVENTS_FILE).open("a", encoding="utf-8") as fh:
        fh.write(text)


def files_state(run: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(run.iterdir())}


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return int(answer.status), answer.read().decode("utf-8")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8")


def read_line(proc: subprocess.Popen[str], timeout: float = 30) -> str:
    """The child's next stdout line, or a failure after `timeout` seconds (never hangs)."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        proc.kill()
        raise AssertionError(f"no output within {timeout} s: {proc.communicate()}")
    return proc.stdout.readline()


# -- hil watch -----------------------------------------------------------------------------------


def test_once_shows_step_loss_best_and_writes_nothing(finished: Path, tmp_path: Path) -> None:
    run = replay(finished, tmp_path / "run", 3)
    append(run, '{"event": "step", "step": 4, "lo')  # a record being written: not yet shown
    before = files_state(run)
    result = runner.invoke(app, ["watch", str(run), "--once"])
    assert result.exit_code == 0, result.output
    third = journal_steps(finished)[2]
    assert f"3/{STEPS}" in result.output
    assert f"{third['loss']:.4g}" in result.output
    assert f"best {third['best_loss']:.4g}" in result.output
    assert f"{third['device_time']:.4g} s" in result.output
    assert "running" in result.output
    assert files_state(run) == before


def test_once_before_the_journal_exists_says_it_waits(finished: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["watch", str(replay(finished, tmp_path / "run", None)), "--once"])
    assert result.exit_code == 0, result.output
    assert "waiting" in result.output
    assert "no journal record yet" in result.output


def test_a_directory_that_is_not_a_run_is_a_one_line_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["watch", str(tmp_path)])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"error: {tmp_path}: not a run directory (no run.json)"
    ]


def test_a_finished_run_ends_the_watch_with_its_outcome(finished: Path, tmp_path: Path) -> None:
    run = replay(finished, tmp_path / "run", STEPS, stop=True)
    result = runner.invoke(app, ["watch", str(run), "--interval", "0.05"])
    assert result.exit_code == 0, result.output
    assert f"step {STEPS}/{STEPS}" in result.output
    assert f"completed: all {STEPS} steps done" in result.output


def dead_pid() -> str:
    """The id of a process that has ended (and was reaped)."""
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    )
    return child.stdout.strip()


@pytest.mark.parametrize("paused_before", [False, True])
def test_a_killed_run_ends_the_watch_with_how_to_resume(
    finished: Path, tmp_path: Path, paused_before: bool
) -> None:
    """Killed (no stop event, its process gone); a summary.json of an earlier pause is stale."""
    run = replay(finished, tmp_path / "run", 2)
    if paused_before:
        step = journal_steps(finished)[0]
        stale = {"status": "paused", "reason": "paused by Ctrl-C", "ended_at": step["time"]}
        (run / "summary.json").write_text(json.dumps(stale))
        append(run, json.dumps({"event": "resume", "time": step["time"] + 1}) + "\n")
    (run / LOCK_FILE).write_text(f"pid {dead_pid()}\n")
    result = runner.invoke(app, ["watch", str(run), "--interval", "0.05"])
    assert result.exit_code == 1, result.output
    assert "killed?" in result.output
    assert f"hil resume {run}" in result.output.replace("\n", "")


def test_a_calibration_step_shows_its_measurement_and_channel(
    finished: Path, tmp_path: Path
) -> None:
    run = replay(finished, tmp_path / "run", 0)
    record = {
        "event": "step",
        "time": 1.0,
        "step": 1,
        "measurement": "iv",
        "channel": "ctrl2",
        "device_seconds": 0.5,
        "device_time": 0.5,
        "output_names": ["out"],
    }
    append(run, json.dumps(record) + "\n")
    result = runner.invoke(app, ["watch", str(run), "--once"])
    assert result.exit_code == 0, result.output
    assert "iv on ctrl2" in result.output
    assert "loss" not in result.output


def _event(event: str, when: float, **fields: Any) -> dict[str, Any]:
    return {"event": event, "time": when, **fields}


def test_eta_and_elapsed_come_from_the_current_segments_rate() -> None:
    progress = RunProgress(total=10)
    progress.add(_event("start", 100.0))
    for k in range(1, 5):  # one step per 2 s
        progress.add(_event("step", 100.0 + 2 * k, step=k, device_time=0.5 * k))
    assert progress.eta() == pytest.approx(12.0)  # 6 steps left at 2 s each
    assert progress.device_remaining() == pytest.approx(3.0)  # 6 steps at 0.5 device-s each
    assert progress.elapsed(now=110.0) == pytest.approx(10.0)
    progress.add(_event("stop", 109.0, status="paused", reason="paused by Ctrl-C"))
    progress.add(_event("resume", 200.0))  # the pause (109 → 200) is not running time
    progress.add(_event("step", 201.0, step=5, device_time=2.5))  # now one step per second
    assert progress.elapsed(now=202.0) == pytest.approx(9.0 + 2.0)
    assert progress.eta() == pytest.approx(5.0)


def test_watch_follows_a_real_run_to_its_end(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    steps = 20
    proc = hil_process(
        "run", str(small_experiment(tmp_path, steps=steps, real_time=True)), "--out", str(out), "-q"
    )
    watcher = None
    try:
        run = wait_for_steps(out, 1, proc)
        proc.send_signal(signal.SIGSTOP)  # held mid-run until the watcher has shown it running
        watcher = hil_process("watch", str(run), "--interval", "0.05")
        first = read_line(watcher)
        proc.send_signal(signal.SIGCONT)
        rest, errors = watcher.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
        if watcher is not None and watcher.poll() is None:
            watcher.kill()
        proc.communicate(timeout=60)
    assert watcher.returncode == 0, errors
    assert "status running" in first
    assert f"step {steps}/" not in first
    lines = rest.splitlines()
    assert f"step {steps}/{steps}" in lines[-1]
    assert f"completed: all {steps} steps done" in errors
    last = journal_steps(run)[-1]
    assert f"best {last['best_loss']:.4g}" in lines[-1]


def test_ctrl_c_ends_watching_and_leaves_the_run_alone(finished: Path, tmp_path: Path) -> None:
    run = replay(finished, tmp_path / "run", 2)
    before = files_state(run)
    watcher = hil_process("watch", str(run), "--interval", "0.05")
    assert "step 2/" in read_line(watcher)
    watcher.send_signal(signal.SIGINT)
    _, errors = watcher.communicate(timeout=30)
    assert watcher.returncode == 0, errors
    assert "stopped watching (Ctrl-C); the run goes on" in errors
    assert files_state(run) == before


# -- hil report --live ---------------------------------------------------------------------------


def test_live_server_serves_updates_and_shuts_down(finished: Path, tmp_path: Path) -> None:
    run = replay(finished, tmp_path / "run", None)
    lines = journal_lines(finished)
    with LiveServer(run, refresh=1) as server:
        url = server.url
        assert url.startswith("http://127.0.0.1:")
        status, page = get(url)
        assert status == 200
        assert "no step yet" in page
        assert '<meta http-equiv="refresh" content="1">' in page

        append(run, "".join(lines[:3]))  # start and two steps
        status, page = get(url)
        assert status == 200
        assert "live — updated" in page
        assert re.search(r"step 2\b", page)
        assert "<img" in page
        renders = server.page.renders
        assert re.search(r"step 2\b", get(url)[1])
        assert server.page.renders == renders, "nothing changed: no new render"

        append(run, lines[3])
        assert re.search(r"step 3\b", get(url)[1])
        assert server.page.renders == renders + 1
        assert get(url + "other")[0] == 404
        thread = server._thread
        port = int(url.rsplit(":", 1)[1].strip("/"))
    assert thread is not None
    assert not thread.is_alive()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5)
    assert not (run / "report").exists()


def test_the_offline_report_has_no_refresh(finished: Path) -> None:
    page = report_page(finished)
    assert "http-equiv" not in page
    assert "live —" not in page


def test_report_live_command_prints_the_url_and_stops_on_sigterm(
    finished: Path, tmp_path: Path
) -> None:
    run = replay(finished, tmp_path / "run", STEPS, stop=True)
    proc = hil_process("report", "--live", str(run), "--port", "0")
    try:
        first = read_line(proc)
        assert first.startswith("live report: http://127.0.0.1:"), first
        status, page = get(first.split(": ", 1)[1].strip())
        assert status == 200
        assert re.search(rf"step {STEPS}\b", page)
        assert "the run completed" in page
    finally:
        proc.send_signal(signal.SIGTERM)
        _, errors = proc.communicate(timeout=30)
    assert proc.returncode == 0, errors
    assert "stopped by SIGTERM" in errors
    assert not (run / "report").exists()
