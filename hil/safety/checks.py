"""The guard's checks of whole requests: ranges (as requested and as converted) and slew.

A base of `SafetyGuard`: it reads the guard's effective channels and tracked levels and refuses,
never clamps.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import NoReturn

import numpy as np

from hil.core.capabilities import Converting, Device
from hil.core.channels import DeviceSpec
from hil.core.errors import ConfigError, InstrumentError, SafetyViolation
from hil.core.types import FloatArray
from hil.safety.effective import CEILING, SPEC, Effective, fmt_range
from hil.safety.limits import SafetyLimits

log = logging.getLogger("hil.safety")


class GuardChecks:
    """Whole-request checks against the effective limits, from the levels the guard tracks."""

    _device: Device
    _limits: SafetyLimits
    _spec: DeviceSpec
    _channels: tuple[Effective, ...]
    _controls: tuple[Effective, ...]
    _inputs: tuple[Effective, ...]
    _last_controls: FloatArray
    _last_inputs: FloatArray

    def _applied(self, arr: FloatArray, channels: Sequence[Effective]) -> FloatArray:
        """What the device's converters make of `arr` (itself when the device converts nothing)."""
        device = self._device
        if not isinstance(device, Converting):
            return arr
        applied = np.asarray(
            device.applied_levels(arr.copy(), tuple(e.name for e in channels)), dtype=np.float64
        )
        if applied.shape != arr.shape:
            raise InstrumentError(
                f"device {self._spec.name!r}: applied_levels returned shape {applied.shape} for "
                f"a request of shape {arr.shape}; fix the driver"
            )
        return applied

    def _describe(self) -> str:
        return ", ".join(
            f"{e.name} {fmt_range(e.channel.min, e.channel.max)} slew {e.channel.max_slew:g}"
            for e in self._channels
        )

    def _refuse(self, violation: SafetyViolation) -> NoReturn:
        log.warning("refused: %s", violation)
        raise violation

    def _check_values(
        self,
        arr: FloatArray,
        channels: Sequence[Effective],
        what: str,
        *,
        row_word: str | None,
    ) -> None:
        """Every value finite and inside its channel's effective range (arr: rows × channels)."""
        if arr.size == 0:
            return
        lo = np.array([e.channel.min for e in channels])
        hi = np.array([e.channel.max for e in channels])

        def where(row: int) -> str:
            return f"{what} {row_word} {row}" if row_word else what

        bad = ~np.isfinite(arr)
        if bad.any():
            row, col = (int(i) for i in np.argwhere(bad)[0])
            self._refuse(
                SafetyViolation(
                    channels[col].name,
                    float(arr[row, col]),
                    f"finite values (in {where(row)})",
                    "a NaN or inf usually means the optimizer or the objective diverged; "
                    "nothing was sent",
                )
            )
        bad = (arr < lo) | (arr > hi)
        if bad.any():
            row, col = (int(i) for i in np.argwhere(bad)[0])
            eff = channels[col]
            value = float(arr[row, col])
            source = eff.hi_source if value > eff.channel.max else eff.lo_source
            if source == SPEC:
                hint = "the device cannot take this value; keep the request inside the range"
            elif source == CEILING:
                hint = f"raise {CEILING} in the station file or keep the request inside the range"
            else:
                hint = f"widen {source} in the station file or keep the optimizer inside the range"
            self._refuse(
                SafetyViolation(
                    eff.name,
                    value,
                    f"range {eff.describe_range()} (from {source}, in {where(row)})",
                    hint + "; nothing was sent",
                )
            )
        applied = self._applied(arr, channels)
        bad = ~np.isfinite(applied) | (applied < lo) | (applied > hi)
        if bad.any():
            row, col = (int(i) for i in np.argwhere(bad)[0])
            eff = channels[col]
            self._refuse(
                SafetyViolation(
                    eff.name,
                    float(applied[row, col]),
                    f"range {eff.describe_range()} after the device's conversion (requested "
                    f"{arr[row, col]:g}, in {where(row)})",
                    "the converter rounds or rescales the request past the limit; keep it a "
                    "step inside the range; nothing was sent",
                )
            )

    def _slew_hint(self, eff: Effective, remedy: str) -> str:
        if eff.slew_source == SPEC:
            return f"{remedy} (the device's own max_slew); nothing was sent"
        return f"{remedy}, or raise {eff.slew_source}.max_slew; nothing was sent"

    def _check_plateau_slew(self, arr: FloatArray) -> None:
        """|Δ| / ramp_time between consecutive plateaus (from the last levels) within max_slew."""
        slew = np.array([e.channel.max_slew for e in self._inputs])
        limited = np.isfinite(slew)
        if not limited.any():
            return
        levels = np.vstack([self._last_inputs[np.newaxis, :], arr])
        jumps = np.abs(np.diff(levels, axis=0))
        ramp_time = self._spec.ramp_time
        # With ramp_time 0 the device jumps instantly: any nonzero jump is an infinite rate.
        rate = jumps / ramp_time if ramp_time > 0 else np.where(jumps == 0.0, 0.0, math.inf)
        bad = limited[np.newaxis, :] & (rate > slew[np.newaxis, :])
        if bad.any():
            row, col = (int(i) for i in np.argwhere(bad)[0])
            eff = self._inputs[col]
            unit = eff.channel.unit
            self._refuse(
                SafetyViolation(
                    eff.name,
                    float(rate[row, col]),
                    f"max_slew {eff.channel.max_slew:g} {unit}/s (plateau jump "
                    f"{levels[row, col]:g} -> {levels[row + 1, col]:g} {unit} within ramp_time "
                    f"{ramp_time:g} s, into measure row {row}; value is the rate in {unit}/s)",
                    self._slew_hint(eff, "use smaller steps between consecutive plateaus"),
                )
            )

    def _stream_rate(self) -> float:
        """The sample rate waveform slew is judged at (a streaming spec must give one)."""
        rate_hz = self._spec.sample_rate
        if rate_hz is None:
            raise ConfigError(
                f"device {self._spec.name!r} streams but its spec has no sample_rate, so the "
                "slew of a waveform cannot be checked; fix the driver's DeviceSpec"
            )
        return rate_hz

    def _check_stream_slew(self, arr: FloatArray, effs: Sequence[Effective]) -> None:
        """The path from the level each channel holds through every sample, within max_slew at
        the sample rate: the entry into the first sample and each step between samples.

        After a stream every channel holds its last sample, so the next request's transition
        starts from there (tracked by the guard).
        """
        slew = np.array([e.channel.max_slew for e in effs])
        limited = np.isfinite(slew)
        if not limited.any():
            return
        rate_hz = self._stream_rate()
        held = np.array([self._held_level(e) for e in effs])
        path = np.vstack([held[np.newaxis, :], arr])
        rate = np.abs(np.diff(path, axis=0)) * rate_hz
        bad = limited[np.newaxis, :] & (rate > slew[np.newaxis, :])
        if not bad.any():
            return
        row, col = (int(i) for i in np.argwhere(bad)[0])
        eff = effs[col]
        unit = eff.channel.unit
        if row == 0:
            where = (
                f"entry jump from the held level {held[col]:g} {unit} to the first sample "
                f"{arr[0, col]:g} {unit} in one sample"
            )
            remedy = (
                "bring the channel to the waveform's first sample first (set_controls ramps "
                "controls; safe_state ramps every channel to 0)"
            )
        else:
            where = (
                f"step {arr[row - 1, col]:g} -> {arr[row, col]:g} {unit} between samples "
                f"{row - 1} and {row}"
            )
            remedy = "smooth the waveform (more samples per transition)"
        self._refuse(
            SafetyViolation(
                eff.name,
                float(rate[row, col]),
                f"max_slew {eff.channel.max_slew:g} {unit}/s ({where} at {rate_hz:g} Hz; value "
                f"is the rate in {unit}/s)",
                self._slew_hint(eff, remedy),
            )
        )

    def _held_level(self, eff: Effective) -> float:
        """The level the guard last sent to a driven channel (0 before anything was sent)."""
        for group, levels in (
            (self._controls, self._last_controls),
            (self._inputs, self._last_inputs),
        ):
            for i, e in enumerate(group):
                if e.name == eff.name:
                    return float(levels[i])
        raise KeyError(eff.name)
