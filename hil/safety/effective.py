"""Effective limits per channel: device spec ∩ station limits ∩ ceiling, fitted to the converter."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from hil.core.capabilities import Converting
from hil.core.channels import Channel, DeviceSpec, Role
from hil.core.errors import ConfigError
from hil.safety.limits import ChannelLimit, SafetyLimits

DRIVEN = (Role.INPUT, Role.CONTROL)
SPEC = "device spec"
CEILING = "limits.max_abs_voltage"


@dataclass(frozen=True)
class Effective:
    """One channel's effective limits and where each binding bound came from (for messages)."""

    channel: Channel
    lo_source: str
    hi_source: str
    slew_source: str
    converted_from: tuple[float, float] | None = None  # the range before the converter fit

    @property
    def name(self) -> str:
        return self.channel.name

    def describe_range(self) -> str:
        """The range for messages, with the converter's narrowing spelled out."""
        chan = self.channel
        if self.converted_from is None:
            return f"{fmt_range(chan.min, chan.max)} {chan.unit}"
        lo, hi = self.converted_from
        return (
            f"{fmt_range(lo, hi)} {chan.unit}, narrowed to [{chan.min!r}, {chan.max!r}] so "
            "that the converter's rounding stays inside"
        )


def fmt_range(lo: float, hi: float) -> str:
    return f"[{lo:g}, {hi:g}]"


def _tighter(
    current: float, source: str, candidate: float | None, cand_source: str, *, upper: bool
) -> tuple[float, str]:
    """The tighter of two bounds, with the source of the one that wins."""
    if candidate is None:
        return current, source
    if (candidate < current) if upper else (candidate > current):
        return candidate, cand_source
    return current, source


def effective_channels(spec: DeviceSpec, limits: SafetyLimits) -> tuple[Effective, ...]:
    """Intersect the device spec, the per-channel limits and the global ceiling, channel by channel.

    Raises ConfigError for a limit on an unknown channel, an empty range, or a driven channel
    whose range excludes 0 V (the safe state every exit ramps to).
    """
    names = [c.name for c in spec.channels]
    unknown = sorted(set(limits.channels) - set(names))
    if unknown:
        key = unknown[0]
        raise ConfigError(
            f"limits.channels.{key}: device {spec.name!r} has no channel {key!r}; "
            f"its channels are {names}"
        )
    result = []
    for chan in spec.channels:
        key = f"limits.channels.{chan.name}"
        limit = limits.channels.get(chan.name, ChannelLimit())
        lo, lo_src = _tighter(chan.min, SPEC, limit.min, key, upper=False)
        hi, hi_src = _tighter(chan.max, SPEC, limit.max, key, upper=True)
        slew, slew_src = _tighter(chan.max_slew, SPEC, limit.max_slew, key, upper=True)
        driven = chan.role in DRIVEN
        if driven and chan.unit == "V":  # the ceiling is on voltages; a current source has its own
            lo, lo_src = _tighter(lo, lo_src, -limits.max_abs_voltage, CEILING, upper=False)
            hi, hi_src = _tighter(hi, hi_src, limits.max_abs_voltage, CEILING, upper=True)
        if not lo < hi:
            ceiling = (
                f", {CEILING} ±{limits.max_abs_voltage:g}" if driven and chan.unit == "V" else ""
            )
            limit_lo = -math.inf if limit.min is None else limit.min
            limit_hi = math.inf if limit.max is None else limit.max
            raise ConfigError(
                f"{key}: the effective range of channel {chan.name!r} is empty: device range "
                f"{fmt_range(chan.min, chan.max)}, limit {fmt_range(limit_lo, limit_hi)}"
                f"{ceiling}"
            )
        if driven and not lo <= 0.0 <= hi:
            raise ConfigError(
                f"{key}: the effective range {fmt_range(lo, hi)} of {chan.role} channel "
                f"{chan.name!r} excludes 0 {chan.unit}, the safe state every exit ramps to"
            )
        effective = Channel.model_validate(
            {**chan.model_dump(), "min": lo, "max": hi, "max_slew": slew}
        )
        result.append(Effective(effective, lo_src, hi_src, slew_src))
    return tuple(result)


def fit_to_converter(eff: Effective, device: Converting, spec: DeviceSpec) -> Effective:
    """The effective range narrowed so that no request inside it converts outside it.

    A DAC rounds to its codes: a range end between two codes would let a request at the end
    (where the optimizer's projection and range-scaled data land) be refused after conversion.
    Each finite end moves inward to the outermost request whose conversion stays inside, found
    by bisection on the channel alone (others at 0; a row-coupled converter is judged
    conservatively); every request is still checked after conversion.
    """
    chan = eff.channel
    if chan.role not in DRIVEN:
        return eff
    names = tuple(c.name for c in spec.by_role(chan.role))
    col = names.index(chan.name)

    def applied(v: float) -> float:
        row = np.zeros((1, len(names)))
        row[0, col] = v
        return float(device.applied_levels(row, names)[0, col])

    def inside(v: float) -> bool:
        a = applied(v)
        return chan.min <= a <= chan.max

    lo, hi = chan.min, chan.max
    if math.isfinite(lo) and not inside(lo):
        lo = _bisect_inside(lo, 0.0, inside)
    if math.isfinite(hi) and not inside(hi):
        hi = _bisect_inside(hi, 0.0, inside)
    if (lo, hi) == (chan.min, chan.max):
        return eff
    fitted = chan.model_copy(update={"min": lo, "max": hi})
    return Effective(fitted, eff.lo_source, eff.hi_source, eff.slew_source, (chan.min, chan.max))


def _bisect_inside(outside: float, inside_point: float, inside: Callable[[float], bool]) -> float:
    """The point nearest `outside` on the way to `inside_point` (which converts inside) that
    still converts inside, for a monotone converter."""
    if not inside(inside_point):
        raise ConfigError(
            f"the device converts {inside_point:g} to a level outside the channel's range; "
            "the safe state could not be reached"
        )
    bad, good = outside, inside_point
    for _ in range(2_000):
        mid = (bad + good) / 2.0
        if mid in (bad, good):
            break
        if inside(mid):
            good = mid
        else:
            bad = mid
    return good
