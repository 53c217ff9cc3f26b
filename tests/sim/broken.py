"""Faults on purpose, for the run engine's robustness tests.

`BrokenTraining` is the training procedure with an unexpected exception in chosen methods and a
hook before a chosen step (to break a run file mid-run). `SlowAnalytic` is the analytic simulator
that dawdles while it is built and while it goes to its safe state, and notes both in a marker
file, so a test can send a signal at exactly those moments. Configs name them
`broken:BrokenTraining` and `broken:SlowAnalytic`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

from pydantic import Field

from hil.core import JSONDict, SeedLike
from protocols.training import TrainingProcedure
from simulators.analytic import AnalyticDevice


class BrokenTraining(TrainingProcedure):
    """Raises an unexpected error in the methods named in `fail_in` (from step `fail_at` on)."""

    fail_in: ClassVar[set[str]] = set()
    fail_at: ClassVar[int] = 3
    before_step: ClassVar[dict[int, Callable[[], None]]] = {}

    def _fails(self, method: str) -> bool:
        return method in self.fail_in and self.steps_done + 1 >= self.fail_at

    def step(self) -> JSONDict:
        hook = self.before_step.get(self.steps_done + 1)
        if hook is not None:
            hook()
        if self._fails("step"):
            raise ValueError(f"broken step {self.steps_done + 1} (injected)")
        return super().step()

    def finish(self) -> JSONDict:
        if "finish" in self.fail_in:
            raise RuntimeError("broken finish (injected)")
        return super().finish()

    def progress(self) -> JSONDict:
        if "progress" in self.fail_in:
            raise ZeroDivisionError("broken progress (injected)")
        return super().progress()

    def state_dict(self) -> JSONDict:
        if self._fails("state_dict"):
            raise TypeError("broken state_dict (injected)")
        return super().state_dict()


class SlowAnalytic(AnalyticDevice):
    """The analytic device, slow to build and slow to make safe; writes `built` and `safe` lines
    to `marker` when it starts doing either."""

    class Settings(AnalyticDevice.Settings):
        build_delay: float = Field(default=0.0, ge=0)
        safe_state_delay: float = Field(default=0.0, ge=0)
        marker: str | None = None

    def __init__(self, settings: Settings | None = None, *, seed: SeedLike = None) -> None:
        super().__init__(settings, seed=seed)
        self._slow = settings if settings is not None else self.Settings()
        self._note("built")
        time.sleep(self._slow.build_delay)

    def _note(self, what: str) -> None:
        if self._slow.marker:
            with Path(self._slow.marker).open("a", encoding="utf-8") as fh:
                fh.write(what + "\n")

    def safe_state(self) -> None:
        self._note("safe")
        time.sleep(self._slow.safe_state_delay)
        super().safe_state()
