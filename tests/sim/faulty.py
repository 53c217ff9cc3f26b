"""Fake faults for tests: the analytic simulator with instrument errors at chosen plateaus.

Real instruments time out, garble replies and drop connections; these inject those failures
deterministically so the run engine's failure, retry and resume paths can be tested. Configs name
them `faulty:FlakyAnalytic` (fails from a plateau on, for good), `faulty:TransientAnalytic` (fails
a chosen call a chosen number of times) and `faulty:ReconnectingAnalytic` (also reconnects).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import ClassVar, NoReturn

from hil.core import (
    DeviceSaturated,
    FloatArray,
    InstrumentDisconnected,
    InstrumentProtocolError,
    InstrumentTimeout,
    SeedLike,
)
from simulators.analytic import AnalyticDevice
from simulators.dnpu import DNPUDevice


class FlakyAnalytic(AnalyticDevice):
    """Raises InstrumentTimeout when the plateau counter reaches `fail_at` (None: never)."""

    fail_at: ClassVar[int | None] = None

    def measure(self, inputs: FloatArray) -> FloatArray:
        if self.fail_at is not None and self.plateaus + len(inputs) > self.fail_at:
            raise InstrumentTimeout(f"{self.spec.name}: no answer within 2 s (injected fault)")
        return super().measure(inputs)


PLAN_ENV = "FAULTY_PLAN"


@dataclass
class FaultPlan:
    """Which measure call fails, how often and how; shared by every device built while it is set.

    The measure call that plays plateau number `at_plateau` (counted from 1 over the device's
    life) raises `error` the first `times` times it is made. The counter is part of the device
    state a retry restores, so the same call fails again until `times` is used up. The first
    `refused_reconnects` reconnects fail. `log` lists what the devices were asked.
    """

    at_plateau: int
    times: int
    error: str = "timeout"  # timeout | garbled | disconnect | saturated
    refused_reconnects: int = 0
    injected: int = 0
    log: list[str] = field(default_factory=list)

    @classmethod
    def from_env(cls) -> FaultPlan | None:
        """The plan in $FAULTY_PLAN (JSON), for `hil` child processes; None if unset."""
        text = os.environ.get(PLAN_ENV)
        return cls(**json.loads(text)) if text else None


_REPLIES = {
    "timeout": (InstrumentTimeout, "no reply (VisaIOError: VI_ERROR_TMO)"),
    "garbled": (InstrumentProtocolError, "reply '+1.0E-0#\\x15' (ValueError: not a number)"),
    "disconnect": (InstrumentDisconnected, "no reply (ConnectionResetError: peer closed)"),
    "saturated": (DeviceSaturated, "reply '+9.9E+37' (the overflow value: output at its range)"),
}


class TransientAnalytic(AnalyticDevice):
    """The analytic simulator with the faults of `plan`, worded as a driver words them.

    A failed call changes nothing on the device (no noise drawn, no time passed). Configs name it
    `faulty:TransientAnalytic`; the plan comes from `TransientAnalytic.plan` in-process or from
    $FAULTY_PLAN in a child process.
    """

    plan: ClassVar[FaultPlan | None] = None

    def _note(self, what: str) -> None:
        if self.plan is not None:
            self.plan.log.append(what)

    def set_controls(self, values: FloatArray) -> None:
        self._note("set_controls " + " ".join(f"{v:.6g}" for v in values))
        super().set_controls(values)

    def measure(self, inputs: FloatArray) -> FloatArray:
        plan = self.plan
        self._note(f"measure {len(inputs)} at {self.plateaus}")
        if plan is not None and self._due(plan, len(inputs)):
            plan.injected += 1
            self._fail(plan)
        return super().measure(inputs)

    def _due(self, plan: FaultPlan, n_cases: int) -> bool:
        """Whether this call, over plateaus plateaus+1 .. plateaus+n_cases, is to fail."""
        crosses = self.plateaus < plan.at_plateau <= self.plateaus + n_cases
        return crosses and plan.injected < plan.times

    def _fail(self, plan: FaultPlan) -> NoReturn:
        kind, got = _REPLIES[plan.error]
        raise kind(
            f"smu1 ({self.spec.name}): measure failed: sent ':READ?', {got} "
            f"(injected fault {plan.injected} of {plan.times})"
        )

    def safe_state(self) -> None:
        self._note("safe_state")
        super().safe_state()


TransientAnalytic.plan = FaultPlan.from_env()


class ReconnectingAnalytic(TransientAnalytic):
    """`TransientAnalytic` that can reconnect: after an injected disconnect every call but
    `close` raises InstrumentDisconnected (the outputs hold their levels) until `reconnect()`.
    Configs name it `faulty:ReconnectingAnalytic`."""

    def __init__(
        self, settings: AnalyticDevice.Settings | None = None, *, seed: SeedLike = None
    ) -> None:
        super().__init__(settings, seed=seed)
        self.link_up = True

    def _fail(self, plan: FaultPlan) -> NoReturn:
        if plan.error == "disconnect":
            self.link_up = False
        super()._fail(plan)

    def _check_link(self, what: str) -> None:
        if not self.link_up:
            self._note(f"{what} refused: link down")
            raise InstrumentDisconnected(
                f"smu1 ({self.spec.name}): {what} failed: sent nothing, no reply (link down)"
            )

    def set_controls(self, values: FloatArray) -> None:
        self._check_link("set_controls")
        super().set_controls(values)

    def measure(self, inputs: FloatArray) -> FloatArray:
        self._check_link("measure")
        return super().measure(inputs)

    def safe_state(self) -> None:
        self._check_link("safe_state")
        super().safe_state()

    def reconnect(self) -> None:
        """The link back, the outputs untouched (as a reopened VISA session leaves them)."""
        plan = self.plan
        if plan is not None and plan.refused_reconnects > 0:
            plan.refused_reconnects -= 1
            self._note("reconnect refused")
            raise InstrumentDisconnected(
                f"smu1 ({self.spec.name}): connect failed: sent nothing, no reply "
                "(VisaIOError: VI_ERROR_RSRC_NFOUND)"
            )
        self._note("reconnect")
        self.link_up = True


class FlakyDNPU(DNPUDevice):
    """The simulated DNPU, raising InstrumentTimeout when the plateau counter reaches `fail_at`."""

    fail_at: ClassVar[int | None] = None

    def measure(self, inputs: FloatArray) -> FloatArray:
        if self.fail_at is not None and self.plateaus + len(inputs) > self.fail_at:
            raise InstrumentTimeout(f"{self.spec.name}: no answer within 2 s (injected fault)")
        return super().measure(inputs)
