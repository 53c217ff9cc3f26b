"""Homodyne in hardware on an SMU rig: AWG dithers summed onto some controls and a lock-in on
one output (`hil.core.Demodulating`).

An AWG channel per dithered control (`keysight33500`) is summed onto the electrode after its SMU
(a summing amplifier or a bias tee: the SMU holds the DC level, the AWG adds the sine at offset
0), and one lock-in (`sr830` / `sr860`) reads the output node; the dithering AWG's Sync drives
REF IN. It dithers one control at a time, since a single-reference lock-in locks to one
frequency. Its safe state switches every AWG off at the minimum amplitude, then brings the SMUs
to 0 V. `SMURig(settings)` builds one when the settings name a lock-in (`with_lockin`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from drivers.awg import Keysight33500Channel, Keysight33500Settings
from drivers.lockin import LockInSettings, SR830LockIn, SR860LockIn
from drivers.rigs.base import each
from drivers.rigs.smu import LOCKIN_TYPES, SMURig
from hil.core import Clock, FloatArray, SafetyViolation


class DitheredSMURig(SMURig):
    """An SMU rig with AWG dithers on some controls and a lock-in on one output
    (`hil.core.Demodulating`). Built by `SMURig(settings)` when the settings have a lock-in."""

    settings: SMURig.Settings

    def __init__(
        self,
        settings: SMURig.Settings,
        *,
        clock: Clock | None = None,
        instruments: Mapping[str, Any] | None = None,
    ) -> None:
        """Connect the SMUs, then every AWG (each refuses a live output) and the lock-in."""
        self._awgs: dict[str, Keysight33500Channel] = {}
        self._lockin: SR830LockIn | SR860LockIn | None = None
        super().__init__(settings, clock=clock, instruments=instruments)
        adopted = dict(instruments or {})
        assert settings.lockin is not None
        try:
            for control, name in settings.dithers.items():
                awg_settings = settings.instrument_settings(name)
                assert isinstance(awg_settings, Keysight33500Settings)
                awg = Keysight33500Channel(awg_settings, clock=self._clock)
                awg.connect(adopted.get(name))
                self._awgs[control] = awg
            name = settings.lockin.instrument
            li_cls, _ = LOCKIN_TYPES[str(settings.instruments[name]["type"])]
            li_settings = settings.instrument_settings(name)
            assert isinstance(li_settings, LockInSettings)
            lockin = li_cls(li_settings, clock=self._clock)
            lockin.connect(adopted.get(name))
            self._lockin = lockin
        except BaseException:
            self.close()
            raise

    # -- hil.core.Demodulating -------------------------------------------------------------------
    def dither_channels(self) -> tuple[str, ...]:
        return tuple(self.settings.dithers)

    def max_dithers(self) -> int:
        """One: the lock-in locks to the Sync of the one AWG that runs."""
        return 1

    def demodulated_output(self) -> str:
        assert self.settings.lockin is not None
        return self.settings.lockin.output

    def demodulate(
        self, inputs: FloatArray, dithers: Mapping[str, tuple[float, float]], reads: int = 1
    ) -> FloatArray:
        """Plateau at `inputs`, then each dither in turn: the AWG's sine at offset 0 on,
        `reads` × (wait the lock-in's settle time, clear its status, read X, Y), AWG off.

        Device time: the plateau's ramp and settle, then per dither reads × settle_time of the
        lock-in filter (e.g. 10.05 τ at 24 dB/oct) plus the commands' own time.
        """
        row = self._checked(inputs, self._inputs, "demodulate")
        plan = self._checked_dithers(dithers)
        if isinstance(reads, bool) or not isinstance(reads, int) or reads < 1:
            raise ValueError(f"demodulate: reads must be a whole number >= 1, got {reads!r}")
        lockin = self._lockin
        assert lockin is not None
        self._outputs_on()
        self._ramp_inputs(row)
        self._wait(self.settings.settle_time)
        scale = self.settings.lockin_scale()
        out = np.empty((len(plan), reads, 2))
        for k, (control, (frequency, amplitude)) in enumerate(plan.items()):
            awg = self._awgs[control]
            awg.set_sine(frequency, 2.0 * amplitude, 0.0)
            awg.enable()
            try:
                for r in range(reads):
                    self._wait(lockin.settle_time())
                    lockin.clear_status()  # what latched while the filter and PLL settled
                    out[k, r] = np.array(lockin.read_xy()) / scale
            finally:
                awg.disable()
                awg.identify()  # answered once the output is off: no two sines meet REF IN
        return out

    def _checked_dithers(
        self, dithers: Mapping[str, tuple[float, float]]
    ) -> dict[str, tuple[float, float]]:
        """Known dithered controls, finite positive frequency and amplitude, the swing around the
        level held inside the rig's range, the slope 2πfA within max_slew, and the AWG's own
        range (refused before anything is sent)."""
        plan: dict[str, tuple[float, float]] = {}
        for control, (frequency, amplitude) in dithers.items():
            if control not in self._awgs:
                raise ValueError(
                    f"demodulate: {control!r} has no AWG (dithers: {list(self._awgs)})"
                )
            f, a = float(frequency), float(amplitude)
            for what, value in (("frequency", f), ("amplitude", a)):
                if not (math.isfinite(value) and value > 0):
                    raise SafetyViolation(control, value, f"a finite positive dither {what}")
            chan = self._spec.channel(control)
            level = float(self._smus[control].level)
            if level - a < chan.min - _ROUNDING or level + a > chan.max + _ROUNDING:
                raise SafetyViolation(
                    control,
                    level + a if level + a > chan.max else level - a,
                    f"the rig's range [{chan.min:g}, {chan.max:g}] V (dither ±{a:g} around "
                    f"{level:g} V)",
                )
            if 2 * math.pi * f * a > chan.max_slew:
                raise SafetyViolation(
                    control, 2 * math.pi * f * a, f"max_slew {chan.max_slew:g} V/s (2πfA)"
                )
            self._awgs[control].check_sine(f, 2.0 * a, 0.0)
            plan[control] = (f, a)
        return plan

    def safe_state(self) -> None:
        """Every AWG off at its minimum amplitude (each tried), then the SMUs to 0 V."""
        try:
            each("safe state", self._awgs, Keysight33500Channel.go_safe)
        finally:
            super().safe_state()

    def reconnect(self) -> None:
        """The SMUs as `SMURig.reconnect`, then every AWG and the lock-in re-attached and read
        back (nothing written; each tried, the first failure raised)."""
        try:
            super().reconnect()
        finally:
            try:
                each("reconnect", self._awgs, Keysight33500Channel.reattach)
            finally:
                if self._lockin is not None:
                    self._lockin.reattach()

    def close(self) -> None:
        """AWGs safe and released, the lock-in released, then the SMUs (each tried)."""
        try:
            each("close", self._awgs, Keysight33500Channel.close)
        finally:
            try:
                if self._lockin is not None:
                    self._lockin.close()
            finally:
                super().close()


_ROUNDING = 1e-12  # V: level ± amplitude may pass a bound by float rounding, nothing physical

_DITHERED: dict[type[SMURig], type[DitheredSMURig]] = {}


def with_lockin(cls: type[SMURig]) -> type[DitheredSMURig]:
    """`cls` with the lock-in: itself if it has one, `DitheredSMURig`, or a subclass of both
    (made once)."""
    if issubclass(cls, DitheredSMURig):
        return cls
    if cls is SMURig:
        return DitheredSMURig
    if cls not in _DITHERED:
        name = f"Dithered{cls.__name__}"
        _DITHERED[cls] = type(name, (DitheredSMURig, cls), {"__module__": cls.__module__})
    return _DITHERED[cls]
