"""The run engine's answer to an instrument fault during a step: retry, then pause resumably.

A timeout, garbled reply or dropped connection (an `InstrumentError`) in a step or the final
measurement puts the procedure back where the last completed step left it, makes the device
safe, waits (backoff × factor^k, interruptible), reconnects a device that can, brings back the
device state of that step (a simulator's levels, clock and noise streams; hardware stays at the
safe state and is ramped up by the step itself) and runs the step again: the retry repeats the
step exactly as a resume from the last checkpoint would. After `faults.retries` retries the run
pauses and `hil resume` continues it. `DeviceSaturated` is not retried: the same request would
saturate again.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from hil.config import FaultPolicy
from hil.core import DeviceSaturated, InstrumentError, JSONDict, Procedure, Reconnecting
from hil.interrupts import Signals
from hil.rundir import Journal, canonical
from hil.safety import SafetyGuard

log = logging.getLogger("hil.runner")

T = TypeVar("T")

MAX_WAIT = 600.0  # s: no wait before a retry is longer, whatever backoff × factor^k comes to
_POLL = 0.1  # s between looks at whether Ctrl-C asked to pause during a wait


class FaultPause(Exception):
    """Ends the run paused (resumable from the last checkpoint); the message is the reason."""


def retry_delay(policy: FaultPolicy, attempt: int) -> float:
    """Seconds to wait after failed attempt `attempt` (1-based): backoff × factor^(attempt-1),
    at most MAX_WAIT, so `retries` (at most 20) retries wait a bounded time in all."""
    return min(MAX_WAIT, policy.backoff * policy.factor ** (attempt - 1))


def _one_line(exc: BaseException) -> str:
    return "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())


@dataclass
class Retrier:
    """Runs a step (or the final measurement) and answers an instrument fault as `policy` says.

    `mark` records the state a failed attempt goes back to: the procedure's and the guard's
    (with the device's, when it has one), as the checkpoint of the last completed step holds them.
    """

    guard: SafetyGuard
    procedure: Procedure
    policy: FaultPolicy
    signals: Signals
    journal: Journal
    _point: JSONDict = field(init=False, repr=False)
    _safe: bool = field(default=True, init=False, repr=False)

    def __post_init__(self) -> None:
        self.mark(self.procedure.state_dict(), self.guard.state_dict())

    def mark(self, procedure: JSONDict, device: JSONDict) -> None:
        """Go back to these states after a fault; copied through JSON as a checkpoint is, so a
        retry starts from exactly what a resume would load."""
        self._point = json.loads(canonical({"procedure": procedure, "device": device}))

    def call(self, action: Callable[[], T], what: str) -> T:
        """`action()`, attempted up to `retries + 1` times while it fails with an
        InstrumentError; raises FaultPause when the attempts are used up or Ctrl-C asks to pause
        during a wait. Whatever else it raises passes unchanged."""
        attempts = self.policy.retries + 1
        attempt = 1
        while True:
            try:
                if attempt > 1:
                    self._reestablish()
                result = action()
            except DeviceSaturated:
                raise
            except InstrumentError as exc:
                self._after_fault(exc, what, attempt, attempts)
                attempt += 1
                continue
            if attempt > 1:
                log.info("%s succeeded on attempt %d of %d", what, attempt, attempts)
            return result

    def _after_fault(self, exc: InstrumentError, what: str, attempt: int, attempts: int) -> None:
        """Back to the marked procedure state, device safe, the fault journalled; then wait, or
        raise FaultPause after the last attempt."""
        self.procedure.load_state_dict(copy.deepcopy(self._point["procedure"]))
        self._make_safe()
        last = attempt == attempts
        if last and not self._safe:
            self._reconnect_to_make_safe()
        wait = None if last else retry_delay(self.policy, attempt)
        error = f"{type(exc).__name__}: {_one_line(exc)}"
        then = "no retries left" if wait is None else f"retrying in {wait:.3g} s"
        state = "device safe" if self._safe else "device NOT confirmed safe"
        log.warning(
            "%s failed (attempt %d of %d): %s; %s, %s", what, attempt, attempts, error, state, then
        )
        self.journal.append(
            {
                "event": "fault",
                "time": time.time(),
                "during": what,
                "attempt": attempt,
                "attempts": attempts,
                "error": type(exc).__name__,
                "message": str(exc),
                "device_safe": self._safe,
                "retry_in": wait,
            }
        )
        if wait is None:
            tries = "once" if attempts == 1 else f"on all {attempts} attempts"
            raise FaultPause(
                f"{error} ({what} failed {tries}, faults.retries {self.policy.retries}); check "
                "the instrument and its connection, then resume"
            )
        if not self._wait(wait):
            raise FaultPause(f"paused by Ctrl-C while waiting to retry {what} after {error}")

    def _make_safe(self) -> None:
        """The guard's safe state; if an instrument error stops it, it is tried again (after a
        reconnect, when the device can) before the next attempt."""
        try:
            self.guard.safe_state()
        except InstrumentError as exc:
            self._safe = False
            log.error("could not bring the device to its safe state after the fault: %s", exc)
        else:
            self._safe = True

    def _reconnect_to_make_safe(self) -> None:
        """Before pausing with the device not confirmed safe: a device that can reconnect does,
        which ends in the safe state, so a lost link does not leave a live output behind."""
        guard = self.guard
        if not isinstance(guard, Reconnecting):
            return
        try:
            guard.reconnect()
        except InstrumentError as exc:
            log.error("reconnecting to make the device safe before pausing failed: %s", exc)
        else:
            self._safe = True

    def _wait(self, seconds: float) -> bool:
        """Sleep `seconds` of wall time; False as soon as Ctrl-C asks to pause. SIGTERM and a
        second Ctrl-C raise out of the sleep, as everywhere in a run."""
        deadline = time.monotonic() + seconds
        while not self.signals.pause_requested:
            left = deadline - time.monotonic()
            if left <= 0:
                return True
            time.sleep(min(left, _POLL))
        return False

    def _reestablish(self) -> None:
        """Before a retry: reconnect (which ends in the safe state) or finish making safe, then
        the marked device state back (levels, clock and noise of a simulator)."""
        guard = self.guard
        if isinstance(guard, Reconnecting):
            log.info("reconnecting to device %r", guard.spec.name)
            guard.reconnect()
            self._safe = True
        elif not self._safe:
            guard.safe_state()
            self._safe = True
        guard.load_state_dict(copy.deepcopy(self._point["device"]))
