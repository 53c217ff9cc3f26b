"""Ctrl-C and SIGTERM for the `hil` program: what each asks for depends on what the process is
doing (idle, setting a run up, running, stopping, writing the report), so every signal sequence
ends with a documented exit code and never interrupts the safe state or the record of a run."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from types import FrameType

from hil.core import RunError
from hil.safety import Terminated

log = logging.getLogger("hil.runner")


class RunStatus(StrEnum):
    COMPLETED = "completed"
    MISSED = "missed"  # ran to its end without reaching the task's target
    PAUSED = "paused"
    ABORTED = "aborted"
    FAILED = "failed"


class RunInterrupted(RunError):
    """A signal stopped `run` or `resume` before the run directory was written or changed."""

    def __init__(self, status: RunStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


class Phase(StrEnum):
    IDLE = "idle"  # no run in hand: a signal interrupts whatever is going on
    SETUP = "setup"  # loading, building, checking; nothing written yet: signals are noted
    RUNNING = "running"  # the run directory is written: Ctrl-C pauses, SIGTERM aborts
    STOPPING = "stopping"  # safe state and the record of the outcome: signals are ignored
    REPORT = "report"  # writing the report: a signal stops it


def signal_name(signum: int) -> str:
    """How a signal is named to the operator."""
    return "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name


def _interruption(signum: int) -> BaseException:
    return KeyboardInterrupt() if signum == signal.SIGINT else Terminated(signum)


@dataclass
class Signals:
    """What Ctrl-C and SIGTERM have asked for, and what the process is doing when they come."""

    phase: Phase = Phase.IDLE
    pause_requested: bool = False
    abort_signal: int | None = None

    def handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal_name(signum)
        if self.phase is Phase.STOPPING:
            log.warning("%s: already stopping; making the device safe and saving the run", name)
            return
        if self.phase is Phase.IDLE:
            raise Terminated(signum)  # also for Ctrl-C: one way out, exit 4, no traceback
        if self.phase is Phase.REPORT:
            self.phase = Phase.STOPPING
            raise _interruption(signum)
        if signum == signal.SIGINT and not self.pause_requested and self.abort_signal is None:
            self.pause_requested = True
            if self.phase is Phase.SETUP:
                log.warning("Ctrl-C: stopping before the run starts (press again to abort)")
            else:
                log.warning("Ctrl-C: pausing at the next step boundary (press again to abort)")
            return
        if self.phase is Phase.SETUP and self.abort_signal is None:
            self.abort_signal = signum  # set-up is short: stop at its end, with nothing half done
            log.warning("%s: stopping before the run starts", name)
            return
        if self.abort_signal is None:
            self.abort_signal = signum
        self.phase = Phase.STOPPING
        raise _interruption(signum)

    def stop_if_requested(self, *, pause_status: RunStatus, what: str) -> None:
        """Raise RunInterrupted if a signal asked to stop during set-up."""
        if self.abort_signal is not None:
            name = signal_name(self.abort_signal)
            raise RunInterrupted(RunStatus.ABORTED, f"aborted by {name} {what}")
        if self.pause_requested:
            raise RunInterrupted(pause_status, f"{pause_status.value} by Ctrl-C {what}")


_active: Signals | None = None


@contextmanager
def signal_handling() -> Iterator[Signals]:
    """Ctrl-C and SIGTERM handled as `Signals` says while inside (nested use shares one state).

    Outside the main thread handlers cannot be installed; the state there stays empty.
    """
    global _active
    if _active is not None:
        yield _active
        return
    if threading.current_thread() is not threading.main_thread():
        yield Signals()
        return
    state = Signals()
    old_int = signal.signal(signal.SIGINT, state.handle)
    old_term = signal.signal(signal.SIGTERM, state.handle)
    _active = state
    try:
        yield state
    finally:
        _active = None
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)


def install_signal_handlers() -> Signals:
    """For the `hil` program: handle Ctrl-C and SIGTERM from now until the process exits."""
    global _active
    if _active is None:
        _active = Signals()
        signal.signal(signal.SIGINT, _active.handle)
        signal.signal(signal.SIGTERM, _active.handle)
    return _active
