"""Steps done, last and best loss of a stepwise procedure, with its checkpoint state."""

from __future__ import annotations

import math

from hil.core import JSONDict


class StepProgress:
    """Counts steps and keeps the last and the best measured loss (non-finite saved as null)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.steps_done = 0
        self.best_loss = math.inf
        self.best_step = -1
        self.last_loss = math.nan

    @property
    def done(self) -> bool:
        return self.steps_done >= self.total

    def record(self, loss: float) -> bool:
        """Count a step with its loss; True when it is the best so far."""
        self.steps_done += 1
        self.last_loss = loss
        if loss < self.best_loss:
            self.best_loss, self.best_step = loss, self.steps_done
            return True
        return False

    def summary(self) -> JSONDict:
        return {
            "steps_done": self.steps_done,
            "last_loss": self.last_loss,
            "best_loss": self.best_loss,
            "best_step": self.best_step,
        }

    def state_dict(self) -> JSONDict:
        return {
            "steps_done": self.steps_done,
            "best_loss": self.best_loss if math.isfinite(self.best_loss) else None,
            "best_step": self.best_step,
            "last_loss": self.last_loss if math.isfinite(self.last_loss) else None,
        }

    def load_state_dict(self, state: JSONDict) -> None:
        self.steps_done = int(state["steps_done"])
        self.best_loss = math.inf if state["best_loss"] is None else float(state["best_loss"])
        self.best_step = int(state["best_step"])
        self.last_loss = math.nan if state["last_loss"] is None else float(state["last_loss"])


class Stepped:
    """The `Procedure` step properties of a procedure that keeps a `StepProgress`."""

    _progress: StepProgress

    @property
    def steps_done(self) -> int:
        return self._progress.steps_done

    @property
    def total_steps(self) -> int:
        return self._progress.total

    @property
    def done(self) -> bool:
        return self._progress.done
