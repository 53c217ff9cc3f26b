"""Faults and signals: a full disk, read-only directories, unwritable files, errors anywhere in a
procedure, and every sequence of Ctrl-C / SIGTERM give one clear line, the documented exit code
and a consistent run directory (summary.json wherever anything can be written, no temporary
files), and the run resumes to exactly the uninterrupted result once the cause is gone.

A full disk needs a small tmpfs, a read-only directory a read-only bind mount (as root, chmod does
not stop writes); without permission to mount, those tests are skipped and say why.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from broken import BrokenTraining
from typer.testing import CliRunner

from hil.cli import app
from hil.rundir import RunDirectory
from hil.runner import RunStatus, resume_run, start_run

from experiments import experiment_text, hil_process, small_experiment

runner = CliRunner()


@pytest.fixture(autouse=True)
def _no_injected_fault() -> Iterator[None]:
    BrokenTraining.fail_in, BrokenTraining.before_step = set(), {}
    yield
    BrokenTraining.fail_in, BrokenTraining.before_step = set(), {}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Any]:
    """Uninterrupted summaries of the small experiment with 40 and with 120 steps."""
    base = tmp_path_factory.mktemp("reference")
    out = {}
    for steps in (40, 120):
        outcome = start_run(small_experiment(base / f"cfg{steps}", steps=steps), base / "runs")
        assert outcome.status is RunStatus.COMPLETED
        out[steps] = outcome.summary
    return out


def _only_run(out: Path) -> Path:
    (run,) = [p for p in out.iterdir() if p.is_dir()]
    return run


def _steps(run: Path) -> list[int]:
    return [int(r["step"]) for r in RunDirectory(run).events() if r["event"] == "step"]


def _temporaries(run: Path) -> list[str]:
    return sorted(p.name for p in run.iterdir() if p.name.endswith(".tmp") or p.name == ".reserve")


def _same_result(summary: dict[str, Any], reference: dict[str, Any]) -> None:
    for key in ("final_controls", "final_loss", "metrics", "evaluations", "device_time"):
        assert summary.get(key) == reference.get(key), key


def _one_error_line(stderr: str) -> None:
    assert "Traceback" not in stderr
    assert len([line for line in stderr.splitlines() if "error" in line.lower()]) == 1, stderr


# -- a full disk -----------------------------------------------------------------------------


@pytest.fixture
def mounts(tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """mount(*options, source=None): a folder with a file system mounted on it (unmounted after)."""
    mounted: list[Path] = []

    def mount(*options: str, source: Path | None = None) -> Path:
        target = tmp_path / f"mnt{len(mounted)}"
        target.mkdir()
        args = ["--bind", str(source)] if source else ["-t", "tmpfs", "tmpfs"]
        command = ["mount", *(["-o", ",".join(options)] if options else []), *args, str(target)]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=10)
        except OSError as exc:
            pytest.skip(f"no mount command ({exc.strerror}): cannot make a small or read-only fs")
        if done.returncode != 0:
            pytest.skip(
                f"cannot mount here ({done.stderr.strip() or 'mount failed'}); these tests need "
                "root in a namespace that allows mounts"
            )
        mounted.append(target)
        return target

    yield mount
    for target in reversed(mounted):
        subprocess.run(["umount", "-l", str(target)], capture_output=True, timeout=10)


def _remount(target: Path, *options: str) -> None:
    subprocess.run(["mount", "-o", ",".join(("remount", *options)), str(target)], check=True)


@pytest.mark.parametrize("record", ["none", "all"])
def test_disk_full_mid_run_fails_cleanly_and_resumes_exactly_after_space_is_freed(
    tmp_path: Path,
    mounts: Callable[..., Path],
    reference: dict[int, Any],
    capsys: pytest.CaptureFixture[str],
    record: str,
) -> None:
    """Without traces the journal and checkpoint fill the disk mid-run; with them, the HDF5 file
    (tens of KiB at once) fills it within the first steps: either way one clean line, and the
    resume after space is freed ends identical."""
    disk = mounts("size=96k")
    config = small_experiment(tmp_path / "cfg", steps=120)
    config.write_text(config.read_text() + f"record: {{mode: {record}}}\n")
    result = runner.invoke(app, ["run", str(config), "--out", str(disk), "-q"])
    assert result.exit_code == 1, result.output
    assert "No space left on device" in result.stderr
    assert "the disk is full; free space first" in result.stderr
    assert "continue with: hil resume" in result.stderr
    _one_error_line(result.stderr.replace("failed:", "error:"))
    run = _only_run(disk)
    assert _temporaries(run) == []
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "failed"
    assert "No space left on device" in summary["reason"]
    steps = _steps(run)
    assert (10 if record == "none" else 0) <= len(steps) < 120
    assert steps == list(range(1, len(steps) + 1))
    RunDirectory(run).verify()  # checkpoint and journal agree

    refused = runner.invoke(app, ["resume", str(run), "-q"])  # still full
    assert refused.exit_code == 1
    assert "Traceback" not in refused.output
    assert _temporaries(run) == []

    _remount(disk, "size=4m")
    resumed = runner.invoke(app, ["resume", str(run), "-q"])
    assert resumed.exit_code == 0, resumed.output
    assert _steps(run) == list(range(1, 121))
    _same_result(json.loads((run / "summary.json").read_text()), reference[120])
    with capsys.disabled():
        print(f"\ndisk full: failed cleanly after {len(steps)} of 120 steps, resumed identically")


def test_disk_full_before_the_first_step_gives_one_line(
    tmp_path: Path, mounts: Callable[..., Path]
) -> None:
    disk = mounts("size=8k")
    config = small_experiment(tmp_path / "cfg", steps=5)
    result = runner.invoke(app, ["run", str(config), "--out", str(disk), "-q"])
    assert result.exit_code == 1, result.output
    assert "No space left on device" in result.stderr
    assert "Traceback" not in result.output
    assert "hil resume" not in result.stderr  # nothing to resume without run.json
    assert _temporaries(_only_run(disk)) == []


# -- read-only directories ---------------------------------------------------------------------


@pytest.fixture
def read_only(mounts: Callable[..., Path], tmp_path: Path) -> Iterator[Callable[[Path], Path]]:
    """A read-only view of a folder: chmod for ordinary users, a read-only bind mount as root."""
    changed: list[Path] = []

    def view(source: Path) -> Path:
        if os.geteuid() != 0:
            for path in [source, *source.rglob("*")]:
                path.chmod(path.stat().st_mode & ~0o222)
                changed.append(path)
            return source
        target = mounts(source=source)
        _remount(target, "bind", "ro")
        return target

    yield view
    for path in changed:
        path.chmod(path.stat().st_mode | 0o200)


def _fingerprint(run: Path) -> dict[str, str]:
    return {
        str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(run.rglob("*"))
        if p.is_file()
    }


def test_resume_and_report_of_a_read_only_run_give_one_line(
    tmp_path: Path, read_only: Callable[[Path], Path]
) -> None:
    BrokenTraining.fail_in = {"step"}
    config = small_experiment(tmp_path / "cfg", steps=6)
    config.write_text(config.read_text().replace("type: train", "type: broken:BrokenTraining"))
    outcome = start_run(config, tmp_path / "runs")
    assert outcome.status is RunStatus.FAILED
    BrokenTraining.fail_in = set()
    run = read_only(outcome.path)
    before = _fingerprint(run)
    for command in ("resume", "report"):
        result = runner.invoke(app, [command, str(run)])
        assert result.exit_code == 1, result.output
        _one_error_line(result.stderr)
        assert "read-only" in result.stderr.lower() or "permission" in result.stderr.lower()
    assert _fingerprint(run) == before


def test_run_into_a_read_only_folder_gives_one_line(
    tmp_path: Path, read_only: Callable[[Path], Path]
) -> None:
    parent = tmp_path / "runs"
    parent.mkdir()
    out = read_only(parent)
    result = runner.invoke(app, ["run", str(small_experiment(tmp_path / "cfg")), "--out", str(out)])
    assert result.exit_code == 1, result.output
    assert "cannot create the run directory" in result.stderr
    _one_error_line(result.stderr)
    assert list(out.iterdir()) == []


# -- unwritable files mid-run ------------------------------------------------------------------


def _broken_experiment(tmp_path: Path, steps: int = 40) -> Path:
    config = small_experiment(tmp_path / "cfg", steps=steps)
    config.write_text(config.read_text().replace("type: train", "type: broken:BrokenTraining"))
    return config


def test_unwritable_journal_keeps_the_step_in_the_checkpoint_and_resume_journals_it(
    tmp_path: Path, reference: dict[int, Any]
) -> None:
    out = tmp_path / "runs"

    def block() -> None:
        run = _only_run(out)
        (run / "events.jsonl").rename(run / "events.keep")
        (run / "events.jsonl").mkdir()

    BrokenTraining.before_step = {6: block}
    outcome = start_run(_broken_experiment(tmp_path), out)
    assert outcome.status is RunStatus.FAILED
    assert "events.jsonl: cannot append to the journal (Is a directory)" in outcome.reason
    assert any("stop event was not journalled" in p for p in outcome.problems)
    run = outcome.path
    assert json.loads((run / "summary.json").read_text())["status"] == "failed"
    assert _temporaries(run) == []
    (run / "events.jsonl").rmdir()
    (run / "events.keep").rename(run / "events.jsonl")
    assert _steps(run) == [1, 2, 3, 4, 5]
    assert json.loads((run / "checkpoint.json").read_text())["steps_done"] == 6
    BrokenTraining.before_step = {}
    resumed = resume_run(run)
    assert resumed.status is RunStatus.COMPLETED
    assert _steps(run) == list(range(1, 41))
    _same_result(resumed.summary, reference[40])


def test_unwritable_checkpoint_leaves_no_temporary_file_and_resumes_exactly(
    tmp_path: Path, reference: dict[int, Any]
) -> None:
    out = tmp_path / "runs"

    def block() -> None:
        run = _only_run(out)
        (run / "checkpoint.json").rename(run / "checkpoint.keep")
        (run / "checkpoint.json").mkdir()
        (run / "checkpoint.json" / "in-the-way").touch()

    BrokenTraining.before_step = {6: block}
    result = runner.invoke(app, ["run", str(_broken_experiment(tmp_path)), "--out", str(out)])
    assert result.exit_code == 1, result.output
    assert "checkpoint.json: cannot write" in result.stderr
    assert "Traceback" not in result.output
    run = _only_run(out)
    assert _temporaries(run) == []
    assert json.loads((run / "summary.json").read_text())["status"] == "failed"
    assert _steps(run) == [1, 2, 3, 4, 5]
    shutil.rmtree(run / "checkpoint.json")
    (run / "checkpoint.keep").rename(run / "checkpoint.json")
    BrokenTraining.before_step = {}
    resumed = resume_run(run)
    assert resumed.status is RunStatus.COMPLETED
    _same_result(resumed.summary, reference[40])


# -- errors anywhere in the procedure ----------------------------------------------------------


@pytest.mark.parametrize(
    ("fail_in", "said"),
    [
        ({"step"}, "ValueError: broken step 3 (injected)"),
        ({"step", "progress"}, "ValueError: broken step 3 (injected)"),
        ({"state_dict"}, "TypeError: broken state_dict (injected)"),
        ({"finish"}, "RuntimeError: broken finish (injected)"),
        ({"finish", "progress"}, "RuntimeError: broken finish (injected)"),
    ],
)
def test_an_unexpected_error_anywhere_is_recorded_and_the_run_resumes(
    tmp_path: Path, reference: dict[int, Any], fail_in: set[str], said: str
) -> None:
    BrokenTraining.fail_in = fail_in
    out = tmp_path / "runs"
    result = runner.invoke(app, ["run", str(_broken_experiment(tmp_path)), "--out", str(out)])
    assert result.exit_code == 1, result.output
    assert f"failed: {said}" in result.stderr
    assert "Traceback" not in result.output
    run = _only_run(out)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "failed"
    assert said in summary["reason"]
    if "progress" in fail_in:
        assert "ZeroDivisionError" in summary["progress_error"]
    events = RunDirectory(run).events()
    assert events[-1]["event"] == "stop"
    assert "Traceback" in (run / "run.log").read_text()  # the details are kept, in the log
    BrokenTraining.fail_in = set()
    resumed = resume_run(run)
    assert resumed.status is RunStatus.COMPLETED, resumed.reason
    assert _steps(run) == list(range(1, 41))
    _same_result(resumed.summary, reference[40])


# -- signals -----------------------------------------------------------------------------------


def _slow_experiment(
    tmp_path: Path, *, steps: int = 40, settle: float = 0.001, **slow: float
) -> tuple[Path, Path]:
    """The small experiment in real time on SlowAnalytic; returns the config and marker file."""
    marker = tmp_path / "marker"
    text = experiment_text(steps=steps, device_type="broken:SlowAnalytic", real_time=True)
    extra = "".join(f"    {key}: {value}\n" for key, value in slow.items())
    text = text.replace(
        "    type: broken:SlowAnalytic\n", f"    type: broken:SlowAnalytic\n{extra}"
    )
    text = text.replace("    noise:", f"    marker: {marker}\n    noise:")
    text = text.replace("settle_time: 0.001", f"settle_time: {settle}")
    (tmp_path / "cfg").mkdir(exist_ok=True)
    config = tmp_path / "cfg" / "slow.yaml"
    config.write_text(text)
    return config, marker


def _wait_until(condition: Callable[[], bool], proc: subprocess.Popen[str], what: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if condition():
            return
        if proc.poll() is not None:
            raise AssertionError(f"ended before {what}: {proc.communicate()}")
        time.sleep(0.01)
    proc.kill()
    raise AssertionError(f"no {what} within 60 s")


def _marked(marker: Path, what: str, count: int = 1) -> Callable[[], bool]:
    return lambda: marker.exists() and marker.read_text().split().count(what) >= count


def _has_steps(out: Path, n: int) -> Callable[[], bool]:
    def ready() -> bool:
        runs = list(out.iterdir()) if out.exists() else []
        return bool(runs) and len(_steps(runs[0])) >= n

    return ready


def _finished(proc: subprocess.Popen[str]) -> tuple[int, str]:
    _, stderr = proc.communicate(timeout=60)
    assert "Traceback" not in stderr, stderr
    return proc.returncode, stderr


@pytest.mark.parametrize(
    ("signals", "outcomes"),
    [
        ((signal.SIGTERM, signal.SIGTERM), {4: "aborted"}),
        # A second signal within the step aborts; if the pause finished first it is ignored.
        ((signal.SIGINT, signal.SIGINT), {4: "aborted", 3: "paused"}),
        ((signal.SIGINT, signal.SIGTERM), {4: "aborted", 3: "paused"}),
    ],
)
def test_repeated_signals_give_the_documented_exit_code(
    tmp_path: Path, signals: tuple[int, ...], outcomes: dict[int, str]
) -> None:
    config, _ = _slow_experiment(tmp_path, settle=0.05)  # ~0.5 s per step
    out = tmp_path / "runs"
    proc = hil_process("run", str(config), "--out", str(out), "-q")
    _wait_until(_has_steps(out, 2), proc, "2 steps")
    for sig in signals:
        proc.send_signal(sig)
        time.sleep(0.05)
    rc, stderr = _finished(proc)
    assert rc in outcomes, stderr
    run = _only_run(out)
    assert json.loads((run / "summary.json").read_text())["status"] == outcomes[rc]
    assert RunDirectory(run).events()[-1]["event"] == "stop"


def test_signals_during_cleanup_are_ignored(tmp_path: Path) -> None:
    config, marker = _slow_experiment(tmp_path, safe_state_delay=1.0)
    out = tmp_path / "runs"
    proc = hil_process("run", str(config), "--out", str(out), "-q")
    _wait_until(_has_steps(out, 3), proc, "3 steps")
    proc.send_signal(signal.SIGTERM)
    _wait_until(_marked(marker, "safe"), proc, "the safe state")
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    rc, stderr = _finished(proc)
    assert rc == 4, stderr
    run = _only_run(out)
    assert json.loads((run / "summary.json").read_text())["reason"] == "aborted by SIGTERM"
    assert "already stopping" in (run / "run.log").read_text()


@pytest.mark.parametrize(("sig", "name"), [(signal.SIGTERM, "SIGTERM"), (signal.SIGINT, "Ctrl-C")])
def test_a_signal_before_the_run_starts_writes_nothing(tmp_path: Path, sig: int, name: str) -> None:
    config, marker = _slow_experiment(tmp_path, build_delay=0.5)
    out = tmp_path / "runs"
    proc = hil_process("run", str(config), "--out", str(out), "-q")
    _wait_until(_marked(marker, "built"), proc, "the device build")
    proc.send_signal(sig)
    rc, stderr = _finished(proc)
    assert rc == 4, stderr
    assert f"aborted by {name} before the run started; nothing was written" in stderr
    assert not out.exists() or list(out.iterdir()) == []


@pytest.mark.parametrize("delay", [0.4, 0.8])
def test_sigterm_while_the_program_starts_exits_4(tmp_path: Path, delay: float) -> None:
    """During imports (after the first fraction of a second), loading and building."""
    out = tmp_path / "runs"
    proc = hil_process("run", str(small_experiment(tmp_path / "cfg", steps=200)), "--out", str(out))
    time.sleep(delay)
    proc.send_signal(signal.SIGTERM)
    rc, stderr = _finished(proc)
    assert rc == 4, stderr
    assert "aborted by SIGTERM" in stderr


def test_sigterm_while_resume_sets_up_changes_nothing(tmp_path: Path) -> None:
    config, marker = _slow_experiment(tmp_path, steps=6, build_delay=0.3)
    out = tmp_path / "runs"
    proc = hil_process("run", str(config), "--out", str(out), "-q")
    _wait_until(_has_steps(out, 2), proc, "2 steps")
    proc.send_signal(signal.SIGINT)
    assert _finished(proc)[0] == 3
    run = _only_run(out)
    before = {k: v for k, v in _fingerprint(run).items() if k != ".lock"}
    proc = hil_process("resume", str(run), "-q")
    _wait_until(_marked(marker, "built", 2), proc, "the device build")
    proc.send_signal(signal.SIGTERM)
    rc, stderr = _finished(proc)
    assert rc == 4, stderr
    assert "nothing was changed" in stderr
    assert {k: v for k, v in _fingerprint(run).items() if k != ".lock"} == before


def test_sigterm_while_the_report_is_written_keeps_the_completed_exit_code(
    tmp_path: Path,
) -> None:
    config, _ = _slow_experiment(tmp_path, steps=3)
    out = tmp_path / "runs"
    proc = hil_process("run", str(config), "--out", str(out), "-q")
    assert proc.stderr is not None
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if line.startswith("completed:"):
            proc.send_signal(signal.SIGTERM)
            break
    rest = proc.communicate(timeout=60)[1]
    stderr = "".join(lines) + rest
    assert "Traceback" not in stderr
    assert proc.returncode == 0, stderr
    assert json.loads((_only_run(out) / "summary.json").read_text())["status"] == "completed"
