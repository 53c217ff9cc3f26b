"""Device clocks: device seconds, virtual for simulators, wall time for hardware."""

from __future__ import annotations

import time
from typing import Protocol, runtime_checkable


@runtime_checkable
class Clock(Protocol):
    """Counts device seconds: what measurements cost on the device."""

    def now(self) -> float:
        """Device seconds since the clock was made."""
        ...

    def advance(self, seconds: float) -> None:
        """Let `seconds` of device time pass (a virtual clock adds, a wall clock sleeps)."""
        ...


class VirtualClock:
    """Simulated time: advances by what an operation would take, never sleeps unless real_time."""

    def __init__(self, start: float = 0.0, *, real_time: bool = False) -> None:
        self._t = float(start)
        self.real_time = real_time

    def now(self) -> float:
        return self._t

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"cannot advance a clock by a negative time ({seconds} s)")
        self._t += seconds
        if self.real_time:
            time.sleep(seconds)

    def set(self, t: float) -> None:
        """Restore the clock (from a checkpoint)."""
        self._t = float(t)


class WallClock:
    """Monotonic wall time for real instruments."""

    def __init__(self) -> None:
        self._t0 = time.monotonic()

    def now(self) -> float:
        return time.monotonic() - self._t0

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"cannot wait a negative time ({seconds} s)")
        time.sleep(seconds)
