"""The run engine: executes a procedure step by step and owns pause, abort, safety and recording.

Per step it appends the step's record to the journal and then replaces the checkpoint atomically.
The first Ctrl-C pauses at the next step boundary; a second aborts. SIGTERM aborts. Every exit
path leaves the device in its safe state and writes summary.json; a run that did not complete can
be continued with `resume`, which on a simulator ends exactly where an uninterrupted run ends.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import FrameType
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from hil.build import BuiltRun, build_run, fresh_entropy
from hil.config import ResolvedExperiment, load_experiment, resolve_experiment
from hil.core import HilError, JSONDict, Procedure, RunError, Stateful
from hil.provenance import environment
from hil.rundir import LOG_FILE, RunDirectory
from hil.safety import Terminated
from hil.yamlfile import YamlDocument

log = logging.getLogger(__name__)


class RunStatus(StrEnum):
    COMPLETED = "completed"
    PAUSED = "paused"
    ABORTED = "aborted"
    FAILED = "failed"


@dataclass
class RunOutcome:
    """How a run (or a resumed run) ended."""

    path: Path
    status: RunStatus
    reason: str
    summary: JSONDict = field(default_factory=dict)


@dataclass
class _Interrupts:
    pause_requested: bool = False
    stopping: bool = False  # cleanup has begun: further signals must not interrupt it


@contextmanager
def _interrupt_handling() -> Iterator[_Interrupts]:
    """First Ctrl-C asks for a pause, the second raises KeyboardInterrupt; SIGTERM: Terminated."""
    state = _Interrupts()
    if threading.current_thread() is not threading.main_thread():
        yield state
        return

    def on_sigint(signum: int, frame: FrameType | None) -> None:
        if state.stopping:
            log.warning("Ctrl-C: already stopping; making the device safe and saving the run")
            return
        if state.pause_requested:
            state.stopping = True
            raise KeyboardInterrupt
        state.pause_requested = True
        log.warning("Ctrl-C: pausing at the next step boundary (press again to abort)")

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        if state.stopping:
            log.warning("SIGTERM: already stopping; making the device safe and saving the run")
            return
        state.stopping = True
        raise Terminated(signum)

    old_int = signal.signal(signal.SIGINT, on_sigint)
    old_term = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield state
    finally:
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)


@contextmanager
def _log_to(path: Path) -> Iterator[None]:
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    old_level = root.level
    root.setLevel(min(old_level, logging.INFO) if old_level else logging.INFO)
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        handler.close()


def _progress_bar(console: Console | None) -> Progress | nullcontext[None]:
    if console is None:
        return nullcontext()
    return Progress(
        TextColumn("[bold]step"),
        MofNCompleteColumn(),
        BarColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("best {task.fields[best]}"),
        TextColumn("device {task.fields[device_time]}"),
        TimeElapsedColumn(),
        console=console,
    )


def _fmt(value: Any) -> str:
    return "—" if value is None else f"{value:.4g}"


def _checkpoint(built: BuiltRun) -> JSONDict:
    guard = built.guard
    return {
        "steps_done": built.procedure.steps_done,
        "saved_at": time.time(),
        "procedure": built.procedure.state_dict(),
        "device": guard.state_dict() if isinstance(guard, Stateful) else None,
    }


def _restore(built: BuiltRun, state: JSONDict) -> None:
    built.procedure.load_state_dict(state["procedure"])
    if state.get("device") is not None:
        built.guard.load_state_dict(state["device"])


def _execute(rundir: RunDirectory, built: BuiltRun, console: Console | None) -> RunOutcome:
    procedure: Procedure = built.procedure
    status, reason = RunStatus.FAILED, "did not start"
    final: JSONDict = {}
    if console is not None:
        console.print(f"run directory: {rundir.path}", highlight=False, soft_wrap=True)
    with _log_to(rundir.file(LOG_FILE)), _interrupt_handling() as interrupts:
        try:
            with _progress_bar(console) as bar:
                task = None
                if isinstance(bar, Progress):
                    task = bar.add_task(
                        "train",
                        total=procedure.total_steps,
                        completed=procedure.steps_done,
                        loss="—",
                        best="—",
                        device_time="—",
                    )
                while not procedure.done:
                    if interrupts.pause_requested:
                        status, reason = RunStatus.PAUSED, "paused by Ctrl-C"
                        break
                    record = procedure.step()
                    rundir.append_event({"event": "step", "time": time.time(), **record})
                    rundir.write_checkpoint(_checkpoint(built))
                    if isinstance(bar, Progress) and task is not None:
                        bar.update(
                            task,
                            completed=procedure.steps_done,
                            loss=_fmt(record.get("loss")),
                            best=_fmt(record.get("best_loss")),
                            device_time=f"{record.get('device_time', 0.0):.3g} s",
                        )
                else:
                    final = procedure.finish()
                    status, reason = RunStatus.COMPLETED, f"all {procedure.steps_done} steps done"
        except KeyboardInterrupt:
            status, reason = RunStatus.ABORTED, "aborted by a second Ctrl-C"
        except Terminated:
            status, reason = RunStatus.ABORTED, "aborted by SIGTERM"
        except HilError as exc:
            status, reason = RunStatus.FAILED, f"{type(exc).__name__}: {exc}"
            log.error("run failed at step %d: %s", procedure.steps_done + 1, reason)
        except Exception as exc:
            status, reason = RunStatus.FAILED, f"{type(exc).__name__}: {exc}"
            log.exception(
                "run failed at step %d with an unexpected error", procedure.steps_done + 1
            )
        finally:
            interrupts.stopping = True
            safe_error = _make_safe(built)
            if safe_error:
                reason += f"; {safe_error}"
            summary = {
                "status": status.value,
                "reason": reason,
                "steps_done": procedure.steps_done,
                "total_steps": procedure.total_steps,
                "ended_at": time.time(),
                **(final or procedure.progress()),
            }
            rundir.write_summary(summary)
            rundir.append_event(
                {"event": "stop", "time": time.time(), "status": status.value, "reason": reason}
            )
    log.info("run %s: %s (%s)", rundir.path, status.value, reason)
    return RunOutcome(path=rundir.path, status=status, reason=reason, summary=summary)


def _make_safe(built: BuiltRun) -> str:
    """Safe state and close; a failure here is reported, never hidden."""
    try:
        built.guard.safe_state()
    except BaseException as exc:
        log.critical("could not bring the device to its safe state: %s", exc)
        return f"SAFE STATE FAILED: {exc}; check the device by hand"
    finally:
        try:
            built.guard.close()
        except Exception as exc:
            log.error("closing the device failed: %s", exc)
    return ""


def start_run(
    config_path: Path, out: Path = Path("runs"), *, console: Console | None = None
) -> RunOutcome:
    """Validate and build everything, then create the run directory and execute."""
    resolved = load_experiment(config_path)
    entropy = resolved.config.seed if resolved.config.seed is not None else fresh_entropy()
    built = build_run(resolved, entropy)
    try:
        rundir = RunDirectory.create(out, resolved.config.name)
    except OSError as exc:
        built.guard.close()
        raise RunError(f"{out}: cannot create the run directory ({exc.strerror})") from None
    rundir.write_run_info(
        {
            "name": resolved.config.name,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "config_file": str(config_path.resolve()),
            "config": resolved.as_dict(),
            "seed_entropy": entropy,
            "station_snapshot": built.guard.spec.model_dump(mode="json"),
            "environment": environment(),
        }
    )
    with rundir.lock():
        rundir.append_event({"event": "start", "time": time.time(), "steps_done": 0})
        return _execute(rundir, built, console)


def resolved_from_run(rundir: RunDirectory) -> tuple[ResolvedExperiment, int]:
    """The experiment exactly as the run recorded it, and its root seed."""
    info = rundir.run_info()
    doc = YamlDocument(path=rundir.file("run.json"), data=info["config"])
    return resolve_experiment(doc), int(info["seed_entropy"])


def resume_run(run_path: Path, *, console: Console | None = None) -> RunOutcome:
    """Continue a paused, aborted, failed or killed run from its last checkpoint."""
    rundir = RunDirectory.open(run_path)
    with rundir.lock():
        return _resume_locked(rundir, console)


def _resume_locked(rundir: RunDirectory, console: Console | None) -> RunOutcome:
    run_path = rundir.path
    summary = rundir.summary()
    if summary is not None and summary.get("status") == RunStatus.COMPLETED:
        raise RunError(f"{run_path}: the run already completed; start a new one with `hil run`")
    resolved, entropy = resolved_from_run(rundir)
    built = build_run(resolved, entropy)
    state = rundir.checkpoint()
    steps_done = 0
    if state is not None:
        try:
            _restore(built, state)
        except (KeyError, TypeError, ValueError) as exc:
            built.guard.close()
            raise RunError(f"{rundir.file('checkpoint.json')}: cannot restore ({exc})") from None
        steps_done = int(state["steps_done"])
    rundir.truncate_events(steps_done)
    rundir.append_event({"event": "resume", "time": time.time(), "steps_done": steps_done})
    log.info("resuming %s at step %d", run_path, steps_done)
    return _execute(rundir, built, console)
