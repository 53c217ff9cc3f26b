"""A simulator wired to several virtual instruments at once.

On a bench, each instrument terminal is wired to one electrode of the substrate: a source holds a
level on an input or control electrode, a meter reads an output node. The `Backplane` is that
wiring for a simulator: instruments set levels on the device's driven channels as they change,
and a reading measures one plateau of the device at the levels held. Controls reach the
simulator (`set_controls`) only when a reading needs them and they changed since the last one, so
several sources moving one after another cost the simulator one update, as one `set_controls` of
a rig does. Instruments are served on separate threads: one lock serialises the device.

Sine dithers (an AWG summed onto a control electrode) are held per channel and source; a lock-in
reading (`lockin_xy`) streams the simulator, which must be `hil.core.Streaming`, with the DC
levels plus every dither over a window of several filter time constants, and demodulates an
output at the reference: X = √2·mean(y·sin 2πft), Y = √2·mean(y·cos 2πft) (rms, the output's
units). The simulator's own seeded noise makes it reproducible.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import numpy as np

from hil.core import Device, FloatArray, Role, Streaming

ENBW_WINDOW = 6.4
"""Time constants of a boxcar window with the noise bandwidth of a 24 dB/oct filter, 5/(64τ)."""
MIN_PERIODS = 4
"""Fewest reference periods demodulated per reading."""
MAX_SAMPLES = 400_000
"""Most samples streamed for one reading (a long time constant is cut to this)."""
LEAD_IN = 0.1
"""Share of a reading's window streamed before it (the chain's transient), not demodulated."""


@dataclass(frozen=True)
class Tone:
    """A sine held on a driven channel on top of its level: offset + amplitude·sin(2πft)."""

    frequency: float
    amplitude: float  # peak
    offset: float = 0.0


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
        self._tones: dict[str, dict[str, Tone]] = {}
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

    def set_dither(self, channel: str, source: str, tone: Tone | None) -> None:
        """Hold `tone` from `source` (e.g. an AWG channel) on a driven channel; None: off."""
        with self.lock:
            if channel not in self._levels:
                raise KeyError(f"{channel!r} is not a driven channel of {self.device.spec.name!r}")
            held = self._tones.setdefault(channel, {})
            if tone is None:
                held.pop(source, None)
            else:
                held[source] = tone

    def dithers(self) -> dict[str, tuple[Tone, ...]]:
        """The tones on each channel that carries any."""
        with self.lock:
            return {name: tuple(t.values()) for name, t in self._tones.items() if t}

    def reference_frequency(self) -> float:
        """The frequency of the tones held, Hz, if they share one; 0 (no reference) otherwise."""
        frequencies = {t.frequency for tones in self.dithers().values() for t in tones}
        return frequencies.pop() if len(frequencies) == 1 else 0.0

    def lockin_xy(
        self, output: str, frequency: float, harmonic: int, time_constant: float
    ) -> tuple[float, float]:
        """X and Y (rms, the output's units) of `output` at harmonic × frequency: a stream of
        ENBW_WINDOW time constants (at least MIN_PERIODS periods), after a LEAD_IN share."""
        device = self.device
        if not isinstance(device, Streaming):
            raise TypeError(f"{device.spec.name!r} cannot stream, so no lock-in can read it")
        detect = harmonic * frequency
        rate = device.spec.sample_rate
        if detect <= 0 or rate is None:
            return 0.0, 0.0
        window = max(ENBW_WINDOW * time_constant, MIN_PERIODS / detect)
        n = min(math.ceil(window * detect) / detect * rate, MAX_SAMPLES / (1 + LEAD_IN))
        lead, count = math.ceil(LEAD_IN * n), max(1, round(n))
        t = np.arange(lead + count) / rate
        names = [*self._inputs, *self._controls]
        column = self._outputs.index(output)
        with self.lock:
            controls = self._hold_controls()
            levels = np.array([self._levels[name] for name in names])
            wave = np.tile(levels, (t.size, 1))
            for j, name in enumerate(names):
                for tone in self._tones.get(name, {}).values():
                    phase = 2 * np.pi * tone.frequency * t
                    wave[:, j] += tone.offset + tone.amplitude * np.sin(phase)
            try:
                y = device.stream(wave, names)[lead:, column]
            finally:
                device.set_controls(controls)  # back to DC: the stream left the last sample
        y = y - y.mean()
        phase = 2 * np.pi * detect * t[lead:]
        root2 = math.sqrt(2.0)
        return root2 * float(np.mean(y * np.sin(phase))), root2 * float(np.mean(y * np.cos(phase)))

    def _hold_controls(self) -> FloatArray:
        """Bring the simulator's controls to the levels held (once per change); returns them."""
        controls = np.array([self._levels[name] for name in self._controls])
        if self._applied is None or not np.array_equal(controls, self._applied):
            self.device.set_controls(controls)
            self._applied = controls
        return controls

    def measure(self) -> dict[str, float]:
        """One plateau of the device at the levels held: every output by name."""
        with self.lock:
            self._hold_controls()
            inputs = np.array([[self._levels[name] for name in self._inputs]])
            row = self.device.measure(inputs)[0]
        return dict(zip(self._outputs, (float(v) for v in row), strict=True))
