"""Loads for a virtual SMU: what the terminals of a sourcing channel see, from a simulator.

A virtual source-measure unit asks its load for the current at the voltage it sources. A
`Resistor` is the simplest, with seeded noise. A
`DeviceElectrode` puts one channel of any `hil.core.Device` simulator (a DNPU electrode, say)
behind the SMU: that channel follows the sourced voltage while every other channel holds its
level, and one output of the device, scaled to amperes, is the current read back. The simulator
keeps its own seeds, noise and virtual clock, so a run through the wire reproduces one in process.
"""

from __future__ import annotations

import numpy as np

from hil.core import Device, FloatArray, Role, SeedLike, seed_sequence


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


class DeviceElectrode:
    """One channel of a simulated device as an SMU load: `current(voltage) -> A`."""

    def __init__(
        self,
        device: Device,
        channel: str,
        *,
        output: str | None = None,
        inputs: FloatArray | None = None,
        controls: FloatArray | None = None,
        scale: float = 1e-9,
    ) -> None:
        spec = device.spec
        self.device = device
        self.scale = scale  # amperes per unit of the device output (1e-9 for nA)
        self._inputs = _levels(inputs, len(spec.inputs))
        self._controls = _levels(controls, len(spec.controls))
        self._role = spec.channel(channel).role
        if self._role not in (Role.INPUT, Role.CONTROL):
            raise ValueError(f"channel {channel!r} is an output; an SMU load must be driven")
        names = spec.inputs if self._role is Role.INPUT else spec.controls
        self._index = [c.name for c in names].index(channel)
        outputs = [c.name for c in spec.outputs]
        self._output = outputs.index(output) if output is not None else 0

    def __call__(self, voltage: float) -> float:
        inputs = self._inputs.copy()
        if self._role is Role.INPUT:
            inputs[self._index] = voltage
        else:
            controls = self._controls.copy()
            controls[self._index] = voltage
            self.device.set_controls(controls)
        reading = self.device.measure(inputs[np.newaxis, :])
        return float(reading[0, self._output]) * self.scale


def _levels(values: FloatArray | None, n: int) -> FloatArray:
    if values is None:
        return np.zeros(n)
    levels = np.array(values, dtype=float)
    if levels.shape != (n,):
        raise ValueError(f"expected {n} held levels, got shape {levels.shape}")
    return levels
