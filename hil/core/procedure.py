"""The procedure interface the run engine executes step by step.

A procedure says what to do; the runner owns pausing, checkpointing, safety and recording.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from hil.core.types import JSONDict


@runtime_checkable
class Procedure(Protocol):
    """A calibration or training protocol with explicit, checkpointable state."""

    @property
    def steps_done(self) -> int:
        """Number of completed steps."""
        ...

    @property
    def total_steps(self) -> int | None:
        """Planned number of steps, if known."""
        ...

    @property
    def done(self) -> bool: ...

    def step(self) -> JSONDict:
        """Do one step and return its record (JSON-serialisable) for the journal."""
        ...

    def progress(self) -> JSONDict:
        """Where the procedure stands (best so far, current parameters), measuring nothing."""
        ...

    def finish(self) -> JSONDict:
        """Final metrics and parameters, measured once after the last step."""
        ...

    def state_dict(self) -> JSONDict:
        """Everything needed to continue exactly where the procedure is now."""
        ...

    def load_state_dict(self, state: JSONDict) -> None: ...


@runtime_checkable
class Targeted(Protocol):
    """A procedure with a target (a gate realised, an accuracy reached): it may end before its
    last step on reaching it, and after `finish` it says whether the run did."""

    def outcome(self) -> tuple[bool, str] | None:
        """(target reached, one line saying so) once judged; None when there is no target."""
        ...
