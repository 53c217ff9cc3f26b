"""Loads for a virtual SMU: what the terminals of a sourcing channel see, from a simulator.

A virtual source-measure unit asks its load for the current at the voltage it sources. A
`Resistor` is the simplest, with seeded noise. An `Electrode` wires the SMU to one channel of a
simulator through a `Backplane`: on a driven channel the sourced level is held there, on an
output the device's output, scaled to amperes, is the current read back. The simulator keeps its
own seeds, noise and virtual clock, so a run through the wire reproduces one in process.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from hil.core import Role, SeedLike, seed_sequence
from simulators.virtual.backplane import Backplane


class Resistor:
    """A resistor with seeded white current noise: a reproducible load for tests and demos."""

    def __init__(self, resistance: float, noise: float = 0.0, *, seed: SeedLike = None) -> None:
        if resistance <= 0:
            raise ValueError(f"resistance {resistance!r} Ω must be positive")
        self.resistance = resistance
        self.noise = noise
        self._rng = np.random.default_rng(seed_sequence(seed))

    def __call__(self, voltage: float) -> float:
        current = voltage / self.resistance
        if self.noise > 0:
            current += float(self._rng.normal(0.0, self.noise))
        return current


@runtime_checkable
class Terminal(Protocol):
    """A load that must know the sourced voltage as soon as it changes, not only at a reading."""

    def __call__(self, voltage: float) -> float: ...

    def source(self, voltage: float) -> None:
        """The terminals now carry `voltage` (0 V with the output off)."""
        ...


class Electrode:
    """One channel of a `Backplane`'s device as an SMU load.

    On an input or control, the sourced voltage is held on that channel as soon as it changes;
    the current drawn is not modelled (0 A). On an output, the SMU is the virtual ground the
    current flows into: a reading measures one plateau of the device and returns that output
    times `scale` (A per unit of the device's output; 1e-9 for nA). The voltage sourced on an
    output node is not fed back into the simulator.
    """

    def __init__(self, backplane: Backplane, channel: str, *, scale: float = 1e-9) -> None:
        self.backplane = backplane
        self.channel = channel
        self.scale = scale
        self.driven = backplane.role(channel) is not Role.OUTPUT

    def source(self, voltage: float) -> None:
        if self.driven:
            self.backplane.set_level(self.channel, voltage)

    def __call__(self, voltage: float) -> float:
        if self.driven:
            self.source(voltage)
            return 0.0
        return self.backplane.measure()[self.channel] * self.scale
