"""A virtual Keysight 33522B waveform generator (two channels), and a linear test signal path.

Facts from the 33500 Series user's guide (SCPI reference) and PyMeasure's `Agilent33500`:
`[SOURce[1|2]:]FUNCtion`, `FREQuency`, `VOLTage`, `VOLTage:OFFSet`, `VOLTage:UNIT`,
`OUTPut[1|2][:STATe]`, `OUTPut[1|2]:LOAD`, `OUTPut:SYNC[:STATe]`, `OUTPut:SYNC:SOURce CH1|CH2`,
each with its query; short and long forms, optional nodes and the channel suffix (no suffix:
channel 1), `SYST:ERR?` and the common commands. Sine from 1 µHz to 30 MHz. Amplitude and offset
are the values displayed for the load setting: 1 mVpp … 10 Vpp and |offset| + Vpp/2 ≤ 5 V into
50 Ω, twice that into high impedance (`INFinity`, answered as 9.9E+37); changing the load keeps
the physical output and rescales the displayed values. A value out of range, or an amplitude and
offset that together exceed the limit, is refused (-222 / -221) and nothing changes. Only the
VPP amplitude unit is emulated. `*RST`: sine, 1 kHz, 100 mVpp, 0 V offset, 50 Ω, outputs off,
Sync on from channel 1.

Every change of a channel is reported to an `AwgListener` with the open-circuit values (what a
high-impedance input sees). `SineSource` is a listener that is also a `LockinSignal`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from simulators.virtual.scpi import (
    Command,
    ScpiDevice,
    ScpiError,
    boolean,
    mnemonic,
    no_args,
    number,
    one_arg,
    special,
)

HIGH_Z = 9.9e37
"""The answer for an INFinity load."""
MAX_LOAD = 10e3
FUNCTIONS = ["SINusoid", "SQUare", "TRIangle", "RAMP", "PULSe", "PRBS", "NOISe", "ARB", "DC"]
_SUFFIXED = re.compile(r"(SOUR|SOURCE|OUTP|OUTPUT)([0-9]+)(\??)", re.IGNORECASE)


class AwgListener(Protocol):
    """Told every change of an AWG channel's output."""

    def output_changed(
        self,
        channel: int,
        on: bool,
        function: str,
        frequency: float,
        amplitude_vpp: float,
        offset: float,
    ) -> None: ...


def nr3_15(value: float) -> str:
    """A number as the 33500 answers it: `+1.000000000000000E-01`."""
    return "+9.900000000000000E+37" if value >= HIGH_Z else f"{value:+.15E}"


@dataclass
class _Channel:
    function: str = "SIN"
    frequency: float = 1000.0
    amplitude: float = 0.1
    offset: float = 0.0
    load: float = 50.0
    on: bool = False

    @property
    def scale(self) -> float:
        """Open-circuit volts per displayed volt: (load + 50 Ω) / load."""
        return 1.0 if self.load >= HIGH_Z else (self.load + 50.0) / self.load

    @property
    def limit(self) -> float:
        """The largest |offset| + Vpp/2 displayed (10 V open circuit)."""
        return 10.0 / self.scale

    @property
    def amplitude_range(self) -> tuple[float, float]:
        """Displayed Vpp: 2 mVpp … 20 Vpp open circuit."""
        return 2e-3 / self.scale, 20.0 / self.scale


class Keysight33500(ScpiDevice):
    """A two-channel 33522B whose outputs a listener observes."""

    idn = "Agilent Technologies,33522B,MY52400000,4.00-1.19-2.00-58-00"
    max_frequency = 30e6

    def __init__(self, listener: AwgListener) -> None:
        self.listener = listener
        self.outputs = {1: _Channel(), 2: _Channel()}
        self.sync_on = True
        self.sync_source = 1
        self.channel = 1
        super().__init__()

    def reset(self) -> None:
        self.outputs = {1: _Channel(), 2: _Channel()}
        self.sync_on, self.sync_source = True, 1
        for n in self.outputs:
            self._notify(n)

    def _notify(self, n: int) -> None:
        c = self.outputs[n]
        self.listener.output_changed(
            n, c.on, c.function, c.frequency, c.amplitude * c.scale, c.offset * c.scale
        )

    def _unit(self, text: str, path: list[str]) -> str | bytes | None:
        """Take the channel suffix off `SOURce<n>` / `OUTPut<n>` (1 or 2; -114 otherwise) and run
        the unit on that channel; a relative unit continues the previous unit's channel."""
        header, space, params = text.replace("\t", " ").partition(" ")
        channel: int | None = None
        tokens = []
        for token in header.split(":"):
            match = _SUFFIXED.fullmatch(token)
            if match is not None:
                channel = int(match.group(2))
                if channel not in (1, 2):
                    raise ScpiError(-114, message="Header suffix out of range")
                token = match.group(1) + match.group(3)
            tokens.append(token)
        if channel is None:
            continuing = bool(path) and not header.startswith(":")
            channel = self.channel if continuing else 1
        self.channel = channel
        return super()._unit(":".join(tokens) + space + params, path)

    def commands(self) -> list[Command]:
        return [
            Command("[:SOURce]:FUNCtion", self._set_function, self._get(lambda c: c.function)),
            Command("[:SOURce]:FREQuency", self._set_frequency, self._get_frequency),
            Command("[:SOURce]:VOLTage", self._set_amplitude, self._get_amplitude),
            Command("[:SOURce]:VOLTage:OFFSet", self._set_offset, self._get_offset),
            Command("[:SOURce]:VOLTage:UNIT", self._set_unit, self._get(lambda c: "VPP")),
            Command(":OUTPut[:STATe]", self._set_output, self._get(lambda c: str(int(c.on)))),
            Command(":OUTPut:LOAD", self._set_load, self._get_load),
            Command(":OUTPut:SYNC[:STATe]", self._set_sync, self._get_sync),
            Command(":OUTPut:SYNC:SOURce", self._set_sync_source, self._get_sync_source),
        ]

    @property
    def _c(self) -> _Channel:
        return self.outputs[self.channel]

    def _get(self, value: Callable[[_Channel], str]) -> Callable[[Sequence[str]], str]:
        def query(args: Sequence[str]) -> str:
            no_args(args)
            return value(self._c)

        return query

    def _changed(self) -> None:
        self._notify(self.channel)

    # Waveform.

    def _set_function(self, args: Sequence[str]) -> None:
        self._c.function = mnemonic(one_arg(args), FUNCTIONS)
        self._changed()

    def _set_frequency(self, args: Sequence[str]) -> None:
        top = self.max_frequency
        self._c.frequency = number(one_arg(args), 1e-6, top, {"MIN": 1e-6, "MAX": top, "DEF": 1e3})
        self._changed()

    def _get_frequency(self, args: Sequence[str]) -> str:
        return self._numeric_query(args, self._c.frequency, (1e-6, self.max_frequency, 1e3))

    def _set_amplitude(self, args: Sequence[str]) -> None:
        c = self._c
        low, high = c.amplitude_range
        value = number(one_arg(args), low, high, {"MIN": low, "MAX": high, "DEF": 0.1})
        self._check_peak(value, c.offset)
        c.amplitude = value
        self._changed()

    def _get_amplitude(self, args: Sequence[str]) -> str:
        low, high = self._c.amplitude_range
        return self._numeric_query(args, self._c.amplitude, (low, high, 0.1))

    def _set_offset(self, args: Sequence[str]) -> None:
        c = self._c
        top = c.limit - c.amplitude / 2
        value = number(one_arg(args), -c.limit, c.limit, {"MIN": -top, "MAX": top, "DEF": 0.0})
        self._check_peak(c.amplitude, value)
        c.offset = value
        self._changed()

    def _get_offset(self, args: Sequence[str]) -> str:
        top = self._c.limit - self._c.amplitude / 2
        return self._numeric_query(args, self._c.offset, (-top, top, 0.0))

    def _check_peak(self, amplitude: float, offset: float) -> None:
        limit = self._c.limit
        if abs(offset) + amplitude / 2 > limit * (1 + 1e-12):
            raise ScpiError(
                -221, f"|offset| + amplitude/2 = {abs(offset) + amplitude / 2:g} V > {limit:g} V"
            )

    def _set_unit(self, args: Sequence[str]) -> None:
        if mnemonic(one_arg(args), ["VPP", "VRMS", "DBM"]) != "VPP":
            raise ScpiError(-221, "only the VPP amplitude unit is emulated")

    def _numeric_query(
        self, args: Sequence[str], value: float, bounds: tuple[float, float, float]
    ) -> str:
        if not args:
            return nr3_15(value)
        name = special(one_arg(args))
        if name is None:
            raise ScpiError(-224, f"{args[0]!r} is not MIN, MAX or DEF")
        return nr3_15(dict(zip(("MIN", "MAX", "DEF"), bounds, strict=True))[name])

    # Output.

    def _set_output(self, args: Sequence[str]) -> None:
        self._c.on = boolean(one_arg(args))
        self._changed()

    def _set_load(self, args: Sequence[str]) -> None:
        arg = one_arg(args)
        if arg.upper() in ("INF", "INFINITY"):
            load = HIGH_Z
        else:
            load = number(arg, 1.0, MAX_LOAD, {"MIN": 1.0, "MAX": MAX_LOAD, "DEF": 50.0})
        c = self._c
        old = c.scale
        c.load = load
        c.amplitude *= old / c.scale
        c.offset *= old / c.scale
        self._changed()

    def _get_load(self, args: Sequence[str]) -> str:
        return self._numeric_query(args, self._c.load, (1.0, MAX_LOAD, 50.0))

    def _set_sync(self, args: Sequence[str]) -> None:
        self.sync_on = boolean(one_arg(args))

    def _get_sync(self, args: Sequence[str]) -> str:
        no_args(args)
        return str(int(self.sync_on))

    def _set_sync_source(self, args: Sequence[str]) -> None:
        arg = one_arg(args).upper()
        if arg not in ("CH1", "CH2"):
            raise ScpiError(-224, f"{arg!r} is not CH1 or CH2")
        self.sync_source = int(arg[2])

    def _get_sync_source(self, args: Sequence[str]) -> str:
        no_args(args)
        return f"CH{self.sync_source}"


class SineSource:
    """A linear device from an AWG channel to a lock-in input, for tests.

    The lock-in sees `gain` × the AWG's sine (open-circuit Vpp → V rms), shifted by `phase`
    degrees, plus Gaussian noise of `noise` V rms per component at a 1 s time constant (scaled by
    1/√τ), from `np.random.default_rng(seed)`. The reference is the AWG's frequency while its
    output is on, 0 otherwise.
    """

    def __init__(
        self,
        gain: float = 1.0,
        phase: float = 0.0,
        noise: float = 0.0,
        channel: int = 1,
        seed: int = 0,
    ) -> None:
        self.gain, self.phase, self.noise, self.channel = gain, phase, noise, channel
        self.rng = np.random.default_rng(seed)
        self.on, self.function = False, "SIN"
        self.frequency = self.amplitude_vpp = self.offset = 0.0

    def output_changed(
        self,
        channel: int,
        on: bool,
        function: str,
        frequency: float,
        amplitude_vpp: float,
        offset: float,
    ) -> None:
        if channel == self.channel:
            self.on, self.function, self.frequency = on, function, frequency
            self.amplitude_vpp, self.offset = amplitude_vpp, offset

    def reference_frequency(self) -> float:
        return self.frequency if self.on else 0.0

    def expected_xy(self) -> tuple[float, float]:
        """The noiseless X, Y at the fundamental, V rms (the test oracle)."""
        rms = self.gain * self.amplitude_vpp / (2 * math.sqrt(2)) if self.on else 0.0
        angle = math.radians(self.phase)
        return rms * math.cos(angle), rms * math.sin(angle)

    def xy(self, frequency: float, harmonic: int, time_constant: float) -> tuple[float, float]:
        locked = (
            self.function == "SIN"
            and frequency > 0
            and math.isclose(harmonic * frequency, self.frequency, rel_tol=1e-6)
        )
        x, y = self.expected_xy() if locked else (0.0, 0.0)
        sd = self.noise / math.sqrt(time_constant)
        dx, dy = self.rng.normal(0.0, sd, 2) if sd > 0 else (0.0, 0.0)
        return x + float(dx), y + float(dy)
