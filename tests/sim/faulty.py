"""A fake fault for tests: the analytic simulator with an instrument error at a chosen plateau.

Real instruments time out and drop connections; this injects that failure deterministically so
the run engine's failure and resume paths can be tested. Configs name it
`faulty:FlakyAnalytic`.
"""

from __future__ import annotations

from typing import ClassVar

from hil.core import FloatArray, InstrumentTimeout
from simulators.analytic import AnalyticDevice


class FlakyAnalytic(AnalyticDevice):
    """Raises InstrumentTimeout when the plateau counter reaches `fail_at` (None: never)."""

    fail_at: ClassVar[int | None] = None

    def measure(self, inputs: FloatArray) -> FloatArray:
        if self.fail_at is not None and self.plateaus + len(inputs) > self.fail_at:
            raise InstrumentTimeout(f"{self.spec.name}: no answer within 2 s (injected fault)")
        return super().measure(inputs)
