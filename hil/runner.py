"""The run engine: executes a procedure step by step and owns pause, abort, safety and recording.

Per step it saves the checkpoint (which carries the step's own record) atomically and then
appends that record to the journal, so after a kill at any moment the journal lacks at most the
step the checkpoint already holds, and `resume` appends it: every step is recorded exactly once.
Resume first checks that run.json, journal and checkpoint agree and refuses, changing nothing,
when they do not. The first Ctrl-C pauses at the next step boundary; a second aborts; SIGTERM
aborts. Once the run directory exists, every exit (any exception, any signal but SIGKILL) leaves
the device in its safe state and records the outcome in summary.json, the journal and run.log.
An instrument fault in a step is retried as the experiment's `faults:` says (`hil.retry`), then
the run pauses, resumable from the last completed step.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from hil import calibrations
from hil.build import Adjust, BuiltRun, build_run, fresh_entropy
from hil.config import (
    FaultPolicy,
    ResolvedExperiment,
    load_experiment,
    load_station,
    resolve_experiment,
)
from hil.core import HilError, JSONDict, RunError, SafetyViolation, Targeted
from hil.interrupts import Phase, Signals, signal_handling, signal_name
from hil.interrupts import RunStatus as RunStatus  # re-exported: callers read outcomes here
from hil.provenance import environment
from hil.retry import FaultPause, Retrier
from hil.rundir import (
    CHECKPOINT_FILE,
    LOG_FILE,
    RUN_FILE,
    SCHEMA_VERSION,
    Journal,
    RunDirectory,
    RunFileError,
    VerifiedRun,
    digest,
)
from hil.safety import SafetyGuard, SafetyLimits, Terminated, stricter_limits
from hil.traces import FINAL_STEP, TRACES_FILE, TraceWriter
from hil.yamlfile import YamlDocument

log = logging.getLogger(__name__)

# Log records with this `extra` go to run.log only: the CLI prints the outcome itself.
RUN_LOG_ONLY = {"console": False}


@dataclass
class RunOutcome:
    """How a run (or a resumed run) ended; `problems` lists records that could not be written."""

    path: Path
    status: RunStatus
    reason: str
    summary: JSONDict = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


# -- logging to run.log ------------------------------------------------------------------------


class _RunLogHandler(logging.FileHandler):
    """run.log; a log that cannot be written (disk full, read-only) must not stop the run."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            super().emit(record)
        except Exception:
            self.handleError(record)

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (logging's name)
        pass  # the outcome still reaches summary.json and the console


@contextmanager
def _log_to(path: Path) -> Iterator[None]:
    handler = _RunLogHandler(path, encoding="utf-8", delay=True)
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
        TextColumn("{task.fields[loss]}"),
        TextColumn("{task.fields[best]}"),
        TextColumn("device {task.fields[device_time]}"),
        TimeElapsedColumn(),
        console=console,
    )


def _shown(record: JSONDict) -> tuple[str, str]:
    """The progress bar's two text fields for a step: loss and best, or, for a calibration,
    the measurement just made."""
    if "measurement" in record and "loss" not in record:
        where = f" {record['channel']}" if record.get("channel") else ""
        return f"measured {record['measurement']}{where}", ""
    return f"loss {_fmt(record.get('loss'))}", f"best {_fmt(record.get('best_loss'))}"


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, int | float) else "—"


# -- executing ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Identity:
    """What ties checkpoint and journal to their run.json."""

    run_id: str
    config_digest: str


@dataclass
class _Result:
    status: RunStatus = RunStatus.FAILED
    reason: str = "did not start"
    final: JSONDict = field(default_factory=dict)


def _start_event(ident: _Identity, total: int | None) -> JSONDict:
    """The journal's first record: which run, which schema, which config, how many steps."""
    return {
        "event": "start",
        "time": time.time(),
        "schema_version": SCHEMA_VERSION,
        "run_id": ident.run_id,
        "config_digest": ident.config_digest,
        "steps_done": 0,
        "total_steps": total,
    }


def _checkpoint(built: BuiltRun, ident: _Identity, last_step: JSONDict) -> JSONDict:
    return {
        "schema_version": SCHEMA_VERSION,
        "run_id": ident.run_id,
        "config_digest": ident.config_digest,
        "steps_done": built.procedure.steps_done,
        "saved_at": time.time(),
        "last_step": last_step,
        "procedure": built.procedure.state_dict(),
        "device": built.guard.state_dict(),
    }


def _loop(
    rundir: RunDirectory,
    built: BuiltRun,
    journal: Journal,
    ident: _Identity,
    signals: Signals,
    console: Console | None,
    faults: FaultPolicy,
    traces: TraceWriter,
    result: _Result,
) -> None:
    procedure = built.procedure
    retrier = Retrier(built.guard, procedure, faults, signals, journal)
    with _progress_bar(console) as bar:
        task = None
        if isinstance(bar, Progress):
            task = bar.add_task(
                "train",
                total=procedure.total_steps,
                completed=procedure.steps_done,
                loss="loss —",
                best="best —",
                device_time="—",
            )
        while not procedure.done:
            if signals.abort_signal is not None:
                name = signal_name(signals.abort_signal)
                result.status, result.reason = RunStatus.ABORTED, f"aborted by {name}"
                return
            if signals.pause_requested:
                result.status, result.reason = RunStatus.PAUSED, "paused by Ctrl-C"
                return
            number = procedure.steps_done + 1
            record = retrier.call(traces.recording(number, procedure.step), f"step {number}")
            traces.write_step()  # before the checkpoint: a resume drops it if that is missing
            entry = {"event": "step", "time": time.time(), **record}
            state = _checkpoint(built, ident, entry)
            rundir.write_checkpoint(state)  # first: it holds `entry`
            retrier.mark(state["procedure"], state["device"])
            journal.append(entry)
            if isinstance(bar, Progress) and task is not None:
                fields = _shown(record)
                bar.update(
                    task,
                    completed=procedure.steps_done,
                    loss=fields[0],
                    best=fields[1],
                    device_time=f"{_fmt(record.get('device_time'))} s",
                )
        result.final = retrier.call(
            traces.recording(FINAL_STEP, procedure.finish), "the final measurement"
        )
        traces.write_step()
        result.status, result.reason = RunStatus.COMPLETED, f"all {procedure.steps_done} steps done"
        judged = procedure.outcome() if isinstance(procedure, Targeted) else None
        if judged is not None:
            reached, line = judged
            result.status, result.reason = (
                (RunStatus.COMPLETED if reached else RunStatus.MISSED),
                line,
            )


def _steps_done(built: BuiltRun) -> int | None:
    try:
        return built.procedure.steps_done
    except Exception:
        return None


def _classify(exc: BaseException, built: BuiltRun, result: _Result) -> None:
    """Status and reason for the exception that ended the run; never raises."""
    step = (_steps_done(built) or 0) + 1
    if isinstance(exc, KeyboardInterrupt):
        result.status, result.reason = RunStatus.ABORTED, "aborted by a second Ctrl-C"
    elif isinstance(exc, Terminated):
        result.status, result.reason = RunStatus.ABORTED, "aborted by SIGTERM"
    elif isinstance(exc, FaultPause):
        result.status, result.reason = RunStatus.PAUSED, str(exc)
    elif isinstance(exc, RunFileError):
        result.status, result.reason = RunStatus.FAILED, str(exc)
        log.error("run stopped at step %d: %s", step, exc, extra=RUN_LOG_ONLY)
    elif isinstance(exc, HilError):
        result.status, result.reason = RunStatus.FAILED, f"{type(exc).__name__}: {exc}"
        log.error("run failed at step %d: %s", step, result.reason, extra=RUN_LOG_ONLY)
    else:
        result.status, result.reason = RunStatus.FAILED, f"{type(exc).__name__}: {exc}"
        log.error(
            "run failed at step %d with an unexpected error",
            step,
            exc_info=exc,
            extra=RUN_LOG_ONLY,
        )


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
        except BaseException as exc:
            log.error("closing the device failed: %s", exc)
    return ""


def _progress(built: BuiltRun) -> JSONDict:
    try:
        return built.procedure.progress()
    except BaseException as exc:
        log.error("the procedure could not report its progress", exc_info=exc, extra=RUN_LOG_ONLY)
        return {"progress_error": f"{type(exc).__name__}: {exc}"}


def _record_outcome(
    rundir: RunDirectory, built: BuiltRun, journal: Journal, result: _Result
) -> RunOutcome:
    """Safe state, summary.json, the stop event and the log line; never raises."""
    reason = result.reason
    safe_error = _make_safe(built)
    if safe_error:
        reason += f"; {safe_error}"
    rundir.release_space()
    try:
        total = built.procedure.total_steps
    except BaseException:
        total = None
    summary = {
        "status": result.status.value,
        "reason": reason,
        "steps_done": _steps_done(built),
        "total_steps": total,
        "ended_at": time.time(),
        **(result.final or _progress(built)),
    }
    problems = []
    try:
        rundir.write_summary(summary)
    except BaseException as exc:
        problems.append(f"summary.json was not written: {exc}")
        log.error("summary.json was not written: %s", exc, extra=RUN_LOG_ONLY)
    try:
        journal.append(
            {"event": "stop", "time": time.time(), "status": result.status.value, "reason": reason}
        )
    except BaseException as exc:
        problems.append(f"the stop event was not journalled: {exc}")
        log.error("the stop event was not journalled: %s", exc, extra=RUN_LOG_ONLY)
    log.info("run %s ended: %s (%s)", rundir.path, result.status.value, reason)
    return RunOutcome(
        path=rundir.path,
        status=result.status,
        reason=reason,
        summary=summary,
        problems=problems,
    )


def _execute(
    rundir: RunDirectory,
    built: BuiltRun,
    journal: Journal,
    ident: _Identity,
    signals: Signals,
    console: Console | None,
    faults: FaultPolicy,
    traces: TraceWriter,
    prepare: Callable[[], None],
) -> RunOutcome:
    """Prepare the files, run the steps, and record the outcome whatever happens."""
    result = _Result()
    with _log_to(rundir.file(LOG_FILE)):
        try:
            try:
                signals.phase = Phase.RUNNING
                if console is not None:
                    console.print(f"run directory: {rundir.path}", highlight=False, soft_wrap=True)
                rundir.reserve_space()
                prepare()
                traces.attach(built.guard)
                _loop(rundir, built, journal, ident, signals, console, faults, traces, result)
            finally:
                signals.phase = Phase.STOPPING
        except BaseException as exc:  # whatever stopped it, the outcome is recorded below
            _classify(exc, built, result)
        return _record_outcome(rundir, built, journal, result)


# -- start ---------------------------------------------------------------------------------


def _station_file(resolved: ResolvedExperiment) -> str | None:
    """The station file the experiment names, if it names one (not inline)."""
    station = resolved.config.station
    return str((resolved.doc.path.parent / station).resolve()) if isinstance(station, str) else None


def _calibrated(loaded: calibrations.Loaded | None) -> Adjust | None:
    """The experiment with the calibration's settings applied, once the device exists."""
    if loaded is None:
        return None

    def adjust(resolved: ResolvedExperiment, guard: SafetyGuard) -> ResolvedExperiment:
        return calibrations.apply(resolved, loaded, guard.spec)

    return adjust


def _announce(loaded: calibrations.Loaded | None, console: Console | None) -> None:
    """The calibration in use, its age and what it set, in the run log and on the console;
    its warnings as warnings."""
    if loaded is None:
        return
    applied = f"; estimator settings from it: {', '.join(loaded.applied)}" if loaded.applied else ""
    log.info("%s%s", loaded.line(), applied)
    if console is not None:
        console.print(loaded.line() + applied, highlight=False, soft_wrap=True, markup=False)
    for warning in loaded.warnings:
        log.warning("%s", warning)


def start_run(
    config_path: Path,
    out: Path = Path("runs"),
    *,
    console: Console | None = None,
    document: YamlDocument | None = None,
) -> RunOutcome:
    """Validate and build everything, then create the run directory and execute. The
    experiment is `config_path`'s, or `document` (composed by a command, e.g. hil calibrate;
    `config_path` is then the file it was made from)."""
    with signal_handling() as signals, ExitStack() as stack:
        signals.phase = Phase.SETUP
        resolved = (
            load_experiment(config_path) if document is None else resolve_experiment(document)
        )
        entropy = resolved.config.seed if resolved.config.seed is not None else fresh_entropy()
        calibration = calibrations.load(resolved, _station_file(resolved))
        built = build_run(resolved, entropy, _calibrated(calibration))
        resolved = built.resolved
        try:
            signals.stop_if_requested(
                pause_status=RunStatus.ABORTED, what="before the run started; nothing was written"
            )
            rundir = RunDirectory.create(out, resolved.config.name)
            config = resolved.as_dict()
            ident = _Identity(run_id=rundir.path.name, config_digest=digest(config))
            info: JSONDict = {
                "run_id": ident.run_id,
                "name": resolved.config.name,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "config_file": str(config_path.resolve()),
                "station_file": _station_file(resolved),
                "config": config,
                "config_digest": ident.config_digest,
                "seed_entropy": entropy,
                "station_snapshot": built.guard.spec.model_dump(mode="json"),
                "environment": environment(),
                "calibration": None if calibration is None else calibration.record(),
            }
            stack.enter_context(rundir.lock())
        except BaseException:
            built.guard.close()
            raise
        journal = rundir.journal()
        traces = TraceWriter(rundir.file(TRACES_FILE), resolved.config.record, built.guard.spec)

        def prepare() -> None:
            rundir.write_run_info(info)
            traces.create(ident.run_id, config)
            journal.append(_start_event(ident, built.procedure.total_steps))
            log.info(
                "run %s started from %s; config digest %s, seed entropy %d",
                rundir.path,
                config_path,
                ident.config_digest,
                entropy,
            )
            _announce(calibration, console)

        faults = resolved.config.faults
        return _execute(rundir, built, journal, ident, signals, console, faults, traces, prepare)


# -- resume --------------------------------------------------------------------------------


def resolved_from_run(
    rundir: RunDirectory, info: JSONDict | None = None
) -> tuple[ResolvedExperiment, int]:
    """The experiment exactly as the run recorded it, and its root seed."""
    info = rundir.run_info() if info is None else info
    doc = YamlDocument(path=rundir.file(RUN_FILE), data=info["config"])
    return resolve_experiment(doc), int(info["seed_entropy"])


def _with_limits(resolved: ResolvedExperiment, limits: SafetyLimits) -> ResolvedExperiment:
    station = resolved.station
    config = station.config.model_copy(update={"limits": limits})
    return dataclasses.replace(resolved, station=dataclasses.replace(station, config=config))


def _limits_at_resume(
    resolved: ResolvedExperiment, info: JSONDict
) -> tuple[ResolvedExperiment, list[str]]:
    """The stricter of the recorded limits and the station file's current ones, and notes on
    what differs (or why the station file could not be read)."""
    name = info.get("station_file")
    if not name:
        return resolved, []
    path = Path(name)
    if not path.is_file():
        return resolved, [f"station file {path} is missing; the limits recorded in run.json apply"]
    try:
        station = load_station(path)
    except (HilError, OSError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return resolved, [
            f"station file {path} is not valid ({first}); the limits recorded in run.json apply"
        ]
    merged, changes = stricter_limits(resolved.station.config.limits, station.config.limits)
    notes = [f"station file {path}: {line}" for line in changes]
    if station.device.as_dict() != resolved.station.device.as_dict():
        notes.append(
            f"station file {path}: its device settings differ from those recorded; the run "
            "continues with the recorded ones (only stricter limits are taken over)"
        )
    return (_with_limits(resolved, merged) if changes else resolved), notes


def _one_line(exc: BaseException) -> str:
    return "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())


def _mark_run_log_only(record: logging.LogRecord) -> bool:
    record.console = False
    return True


@contextmanager
def _run_log_only(logger: str) -> Iterator[None]:
    """Records of `logger` go to run.log only while inside (the caller reports on the console)."""
    target = logging.getLogger(logger)
    target.addFilter(_mark_run_log_only)
    try:
        yield
    finally:
        target.removeFilter(_mark_run_log_only)


def _restore(built: BuiltRun, verified: VerifiedRun, path: Path) -> None:
    state = verified.checkpoint
    if state is None:
        return
    try:
        with _run_log_only("hil.safety"):  # a refusal is reported once, in the error below
            built.procedure.load_state_dict(state["procedure"])
            built.guard.load_state_dict(state["device"])
    except SafetyViolation as exc:
        raise RunError(
            f"{path}: the saved device state is outside the limits now in force "
            f"({_one_line(exc)}); nothing was changed — check the station file's limits"
        ) from None
    except (HilError, KeyError, TypeError, ValueError, IndexError) as exc:
        raise RunError(
            f"{path}: cannot restore ({type(exc).__name__}: {_one_line(exc)}); nothing was "
            "changed — restore checkpoint.json from a backup, or start a new run with `hil run`"
        ) from None
    if built.procedure.steps_done != verified.steps_done:
        raise RunError(
            f"{path}: steps_done is {verified.steps_done} but the procedure state is at step "
            f"{built.procedure.steps_done}; restore checkpoint.json from a backup"
        )


def resume_run(run_path: Path, *, console: Console | None = None) -> RunOutcome:
    """Continue a paused, aborted, failed or killed run from its last checkpoint.

    Refuses, changing nothing, when run.json, journal and checkpoint do not agree.
    """
    with signal_handling() as signals:
        signals.phase = Phase.SETUP
        rundir = RunDirectory.open(run_path)
        with rundir.lock():
            return _resume_locked(rundir, signals, console)


def _resume_locked(rundir: RunDirectory, signals: Signals, console: Console | None) -> RunOutcome:
    verified = rundir.verify()
    summary = rundir.summary()
    if summary is not None and summary.get("status") == RunStatus.COMPLETED:
        raise RunError(f"{rundir.path}: the run already completed; start a new one with `hil run`")
    if summary is not None and summary.get("status") == RunStatus.MISSED:
        raise RunError(
            f"{rundir.path}: the run ended without reaching its target; start a new one with "
            "`hil run` (more steps, another start, another estimator)"
        )
    resolved, entropy = resolved_from_run(rundir, verified.info)
    resolved, notes = _limits_at_resume(resolved, verified.info)
    built = build_run(resolved, entropy)
    try:
        _restore(built, verified, rundir.file(CHECKPOINT_FILE))
        signals.stop_if_requested(
            pause_status=RunStatus.PAUSED, what="before the resume started; nothing was changed"
        )
    except BaseException:
        built.guard.close()
        raise
    info = verified.info
    ident = _Identity(run_id=str(info["run_id"]), config_digest=str(info["config_digest"]))
    journal = rundir.journal(next_seq=len(verified.journal.records))
    traces = TraceWriter(rundir.file(TRACES_FILE), resolved.config.record, built.guard.spec)

    def prepare() -> None:
        repairs = []
        removed = rundir.remove_temporaries()
        if removed:
            repairs.append(f"removed temporary files left by a killed process: {removed}")
        torn = verified.journal.torn
        if torn:
            rundir.drop_torn_line(verified.journal)
            shown = torn[:60].decode("utf-8", errors="replace")
            repairs.append(
                f"dropped a torn last line of events.jsonl ({len(torn)} bytes: {shown!r})"
            )
        if not verified.journal.records:
            journal.append(_start_event(ident, built.procedure.total_steps))
        if verified.missing_step is not None:
            journal.append(verified.missing_step)
            repairs.append(
                f"journalled step {verified.steps_done} from the checkpoint (the process stopped "
                "between saving the checkpoint and writing the journal)"
            )
        traces.reopen(verified.steps_done, ident.run_id, info["config"])
        for line in repairs:
            log.warning("%s: %s", rundir.path, line)
        if notes:
            for line in notes:
                log.warning("limits at resume: %s", line)
            journal.append(
                {
                    "event": "limits",
                    "time": time.time(),
                    "station_file": info.get("station_file"),
                    "notes": notes,
                    "limits": built.guard.limits.model_dump(mode="json"),
                }
            )
        journal.append(
            {
                "event": "resume",
                "time": time.time(),
                "steps_done": verified.steps_done,
                "config_digest": ident.config_digest,
                "repairs": repairs,
            }
        )
        log.info(
            "run %s resumed at step %d; config digest %s",
            rundir.path,
            verified.steps_done,
            ident.config_digest,
        )

    faults = resolved.config.faults
    return _execute(rundir, built, journal, ident, signals, console, faults, traces, prepare)
