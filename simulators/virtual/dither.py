"""An AWG dither and a lock-in on a `Backplane`: homodyne in hardware, served from a simulator.

On the bench an AWG's sine is summed onto a control electrode (a summing amplifier or bias tee
after the SMU that holds its DC level), its Sync output drives the lock-in's REF IN, and the
lock-in reads the output current. Here a `DitherInput` (an `AwgListener`) holds what a virtual
Keysight 33500 puts out as a `Tone` on its control, and a `LockinInput` (a `LockinSignal`) asks
the backplane to stream the simulator with the levels and tones and demodulate an output. The
reference is the tones' common frequency (none while no tone or several frequencies run).
`virtual_awg` / `virtual_sr830` / `virtual_sr860` build the instruments for a rig's wiring;
`InProcessLockin` is the same dither and lock-in without instruments, for estimator tests.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

import numpy as np

from hil.core import (
    Clock,
    ConfigError,
    Device,
    DeviceBase,
    DeviceSpec,
    FloatArray,
    Role,
    Streaming,
)
from simulators.virtual.awg import Keysight33500
from simulators.virtual.backplane import Backplane, Tone
from simulators.virtual.lockin import SR830, SR860
from simulators.virtual.scpi import ScpiDevice


class WireLike(Protocol):
    """One instrument terminal wired to one channel (what a rig's `Settings.wiring()` lists)."""

    @property
    def instrument(self) -> str: ...

    @property
    def channel(self) -> str: ...

    @property
    def scale(self) -> float: ...


class DitherInput:
    """An AWG's outputs summed onto one driven channel: a sine that is on becomes a `Tone` (peak =
    open-circuit Vpp / 2, its offset added too); an output off, or not a sine, holds none."""

    def __init__(self, backplane: Backplane, channel: str, source: str) -> None:
        self.backplane, self.channel, self.source = backplane, channel, source

    def output_changed(
        self,
        channel: int,
        on: bool,
        function: str,
        frequency: float,
        amplitude_vpp: float,
        offset: float,
    ) -> None:
        tone = Tone(frequency, amplitude_vpp / 2, offset) if on and function == "SIN" else None
        self.backplane.set_dither(self.channel, f"{self.source}:{channel}", tone)


class LockinInput:
    """A lock-in's signal input on one output of the backplane's device, × `scale` (A or V per
    unit of the output, e.g. 1e-9 for nA into a current input); its REF IN on the tones."""

    def __init__(self, backplane: Backplane, output: str, scale: float) -> None:
        self.backplane, self.output, self.scale = backplane, output, scale

    def xy(self, frequency: float, harmonic: int, time_constant: float) -> tuple[float, float]:
        x, y = self.backplane.lockin_xy(self.output, frequency, harmonic, time_constant)
        return x * self.scale, y * self.scale

    def reference_frequency(self) -> float:
        return self.backplane.reference_frequency()


def _single(backplane: Backplane, wires: Sequence[WireLike], role: Role, kind: str) -> WireLike:
    if len(wires) != 1:
        raise ConfigError(f"a virtual {kind} is wired to one channel, got {len(wires)}")
    (wire,) = wires
    if backplane.role(wire.channel) is not role:
        raise ConfigError(
            f"{wire.instrument}: a virtual {kind} needs a {role.value} channel, but "
            f"{wire.channel!r} is {backplane.role(wire.channel).value}"
        )
    return wire


def virtual_awg(backplane: Backplane, wires: Sequence[WireLike]) -> Keysight33500:
    """A virtual 33500 whose outputs are summed onto the wired control."""
    wire = _single(backplane, wires, Role.CONTROL, "AWG")
    return Keysight33500(DitherInput(backplane, wire.channel, wire.instrument))


def _lockin(model: Callable[[LockinInput], ScpiDevice]) -> Callable[..., ScpiDevice]:
    def build(backplane: Backplane, wires: Sequence[WireLike]) -> ScpiDevice:
        wire = _single(backplane, wires, Role.OUTPUT, "lock-in")
        if not isinstance(backplane.device, Streaming):
            raise ConfigError(
                f"{wire.instrument}: a virtual lock-in streams the simulator, but "
                f"{backplane.device.spec.name!r} cannot stream"
            )
        return model(LockinInput(backplane, wire.channel, wire.scale))

    return build


virtual_sr830 = _lockin(SR830)
"""A virtual SR830 reading the wired output (signal in the wire's scale)."""
virtual_sr860 = _lockin(SR860)
"""A virtual SR860 reading the wired output."""


SETTLE_24DB = 10.05
"""Time constants a 24 dB/oct lock-in filter takes to settle within 1 %."""


class InProcessLockin(DeviceBase):
    """A Streaming simulator with a dither on every control and a lock-in on one output, in
    process (`hil.core.Demodulating`): what the lock-in rig measures, without instruments.

    Each reading waits the filter's settling (SETTLE_24DB × `time_constant`, by `idle` on the
    simulator when it has one) and streams the window `Backplane.lockin_xy` demodulates.
    """

    def __init__(
        self, device: Device, *, time_constant: float = 0.01, output: str | None = None
    ) -> None:
        if not isinstance(device, Streaming):
            raise TypeError(f"{device.spec.name!r} cannot stream, so no lock-in can read it")
        self.device = device
        self.time_constant = time_constant
        self.backplane = Backplane(device)
        self._output = output if output is not None else device.spec.outputs[0].name

    @property
    def spec(self) -> DeviceSpec:
        return self.device.spec

    @property
    def clock(self) -> Clock:
        return self.device.clock

    def set_controls(self, values: FloatArray) -> None:
        self.device.set_controls(values)
        for channel, value in zip(self.spec.controls, np.asarray(values, float), strict=True):
            self.backplane.set_level(channel.name, float(value))

    def measure(self, inputs: FloatArray) -> FloatArray:
        return self.device.measure(inputs)

    def safe_state(self) -> None:
        for channel in self.spec.controls:
            self.backplane.set_dither(channel.name, "lockin", None)
            self.backplane.set_level(channel.name, 0.0)
        self.device.safe_state()

    def close(self) -> None:
        self.device.close()

    def dither_channels(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.spec.controls)

    def max_dithers(self) -> int:
        return 1

    def demodulated_output(self) -> str:
        return self._output

    def demodulate(
        self, inputs: FloatArray, dithers: Mapping[str, tuple[float, float]], reads: int = 1
    ) -> FloatArray:
        for channel, value in zip(self.spec.inputs, np.asarray(inputs, float), strict=True):
            self.backplane.set_level(channel.name, float(value))
        settle = SETTLE_24DB * self.time_constant
        idle = getattr(self.device, "idle", None)
        out = np.empty((len(dithers), reads, 2))
        for k, (control, (frequency, amplitude)) in enumerate(dithers.items()):
            if not (math.isfinite(frequency * amplitude) and frequency > 0 and amplitude > 0):
                raise ValueError(f"dither on {control}: ({frequency}, {amplitude}) is no sine")
            self.backplane.set_dither(control, "lockin", Tone(frequency, amplitude))
            try:
                for r in range(reads):
                    if callable(idle):
                        idle(settle)
                    out[k, r] = self.backplane.lockin_xy(
                        self._output, frequency, 1, self.time_constant
                    )
            finally:
                self.backplane.set_dither(control, "lockin", None)
        return out
