"""Test helper: an objective that remembers every control vector it was asked to measure."""

from __future__ import annotations

import numpy as np

from hil.core import Device, FloatArray
from protocols.base import Objective, Task


class RecordingObjective(Objective):
    """An `Objective` that keeps each measured θ in `points` (to check boxes and counts)."""

    def __init__(self, device: Device, task: Task) -> None:
        super().__init__(device, task)
        self.points: list[FloatArray] = []

    def outputs(self, theta: FloatArray) -> FloatArray:
        self.points.append(np.array(theta, dtype=float))
        return super().outputs(theta)
