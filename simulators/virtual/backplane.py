"""A simulator wired to several virtual instruments at once.

On a bench, each instrument terminal is wired to one electrode of the substrate: a source holds a
level on an input or control electrode, a meter reads an output node. The `Backplane` is that
wiring for a simulator: instruments set levels on the device's driven channels as they change,
and a reading measures one plateau of the device at the levels held. Controls reach the
simulator (`set_controls`) only when a reading needs them and they changed since the last one, so
several sources moving one after another cost the simulator one update, as one `set_controls` of
a rig does. Instruments are served on separate threads: one lock serialises the device.
"""

from __future__ import annotations

import threading

import numpy as np

from hil.core import Device, FloatArray, Role


class Backplane:
    """The device's driven levels as instruments hold them, and readings of its outputs."""

    def __init__(self, device: Device) -> None:
        spec = device.spec
        self.device = device
        self._inputs = [c.name for c in spec.inputs]
        self._controls = [c.name for c in spec.controls]
        self._outputs = [c.name for c in spec.outputs]
        self._levels = dict.fromkeys((*self._inputs, *self._controls), 0.0)
        self._applied: FloatArray | None = None
        self.lock = threading.RLock()

    def role(self, channel: str) -> Role:
        """The role of one of the device's channels (KeyError naming it if there is none)."""
        return self.device.spec.channel(channel).role

    def set_level(self, channel: str, value: float) -> None:
        """Hold `value` on a driven channel (an input or control of the device)."""
        with self.lock:
            if channel not in self._levels:
                raise KeyError(f"{channel!r} is not a driven channel of {self.device.spec.name!r}")
            self._levels[channel] = float(value)

    def levels(self) -> dict[str, float]:
        """Every driven channel's level."""
        with self.lock:
            return dict(self._levels)

    def measure(self) -> dict[str, float]:
        """One plateau of the device at the levels held: every output by name."""
        with self.lock:
            controls = np.array([self._levels[name] for name in self._controls])
            if self._applied is None or not np.array_equal(controls, self._applied):
                self.device.set_controls(controls)
                self._applied = controls
            inputs = np.array([[self._levels[name] for name in self._inputs]])
            row = self.device.measure(inputs)[0]
        return dict(zip(self._outputs, (float(v) for v in row), strict=True))
