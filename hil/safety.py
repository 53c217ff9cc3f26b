"""Experiment limits: a guard in front of every device that checks whole requests before sending.

The guard never clamps. A request that would put any value outside a configured limit raises
`SafetyViolation` and nothing at all reaches the device. DC control changes on slew-limited
channels are ramped in small steps; every exit of a `with` block ramps the controls to zero and
puts the device in its safe state. `sigterm_raises()` turns SIGTERM into an exception so that the
same cleanup runs when the process is asked to stop.
"""

from __future__ import annotations

import functools
import logging
import math
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from hil.core.capabilities import (
    Converting,
    Device,
    DeviceBase,
    NodePerturbable,
    ProgrammableState,
    RestoreChecked,
    Stateful,
    Streaming,
)
from hil.core.channels import Channel, DeviceSpec, Role
from hil.core.clock import Clock
from hil.core.errors import CapabilityError, ConfigError, InstrumentError, SafetyViolation
from hil.core.types import FloatArray, JSONDict

__all__ = [
    "ChannelLimit",
    "NodeSafetyGuard",
    "PulsingSafetyGuard",
    "SafetyGuard",
    "SafetyLimits",
    "StreamingSafetyGuard",
    "Terminated",
    "sigterm_raises",
    "stricter_limits",
]

log = logging.getLogger(__name__)

_DRIVEN = (Role.INPUT, Role.CONTROL)
_SAFE_RETRIES = 5  # the safe-state ramp sends a failed control step again up to this often
_SPEC = "device spec"
_CEILING = "limits.max_abs_voltage"


class ChannelLimit(BaseModel):
    """Experiment limits for one channel; None means "no limit beyond the device's own"."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min: float | None = Field(default=None, allow_inf_nan=False)
    max: float | None = Field(default=None, allow_inf_nan=False)
    max_slew: float | None = Field(
        default=None, gt=0, allow_inf_nan=False, description="maximum rate of change, unit/s"
    )
    may_drop: bool = Field(
        default=False,
        description="the safe state may set this slew-limited channel to 0 in one step when "
        "the device cannot ramp it (say so only where a jump cannot harm the device)",
    )

    @model_validator(mode="after")
    def _ordered(self) -> ChannelLimit:
        if self.min is not None and self.max is not None and not self.min < self.max:
            raise ValueError(f"min {self.min} must be below max {self.max}")
        return self


class SafetyLimits(BaseModel):
    """The `limits:` section of a station file: what this experiment may do to the device."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_abs_voltage: float = Field(
        gt=0,
        allow_inf_nan=False,
        description="global |V| ceiling on every input/control channel whose unit is V",
    )
    channels: dict[str, ChannelLimit] = Field(default_factory=dict)
    ramp_interval: float = Field(
        default=1e-3, gt=0, allow_inf_nan=False, description="s between DC ramp steps"
    )
    zero_tolerance: float = Field(
        default=0.0,
        ge=0,
        allow_inf_nan=False,
        description="largest |first/last sample| of a stream that still counts as zero",
    )
    max_pulses_per_device: int | None = Field(
        default=None,
        ge=0,
        description="largest |pulse count| one weight may get in one request (programmable "
        "devices); None: only the device's own limit",
    )
    max_pulses_per_request: int | None = Field(
        default=None,
        ge=0,
        description="largest total Σ|pulse count| of one request; None: no limit here",
    )
    max_node_offset: float | None = Field(
        default=None,
        gt=0,
        allow_inf_nan=False,
        description="largest |pre-activation offset| for node perturbation, device units",
    )
    max_ramp_time: float = Field(
        default=600.0,
        gt=0,
        le=86_400.0,
        allow_inf_nan=False,
        description="s; a DC change whose slew-limited ramp would take longer is refused",
    )


def _lower_is_stricter(a: float | None, b: float | None) -> float | None:
    """The smaller of two upper bounds; None is "no bound"."""
    if a is None or b is None:
        return b if a is None else a
    return min(a, b)


def _higher_is_stricter(a: float | None, b: float | None) -> float | None:
    """The larger of two lower bounds; None is "no bound"."""
    if a is None or b is None:
        return b if a is None else a
    return max(a, b)


def stricter_limits(
    recorded: SafetyLimits, current: SafetyLimits
) -> tuple[SafetyLimits, list[str]]:
    """The stricter of two sets of limits, field by field, and what `current` changes.

    Used at resume: `recorded` is what the run started with, `current` is the station file now.
    A stricter value in `current` tightens the run; a looser one is ignored. Each line of the
    list says which key differs, both values, and which one is in force.
    """
    merged_channels: dict[str, ChannelLimit] = {}
    for name in sorted(set(recorded.channels) | set(current.channels)):
        a = recorded.channels.get(name, ChannelLimit())
        b = current.channels.get(name, ChannelLimit())
        merged_channels[name] = ChannelLimit.model_construct(
            min=_higher_is_stricter(a.min, b.min),
            max=_lower_is_stricter(a.max, b.max),
            max_slew=_lower_is_stricter(a.max_slew, b.max_slew),
            may_drop=a.may_drop and b.may_drop,
        )
    try:
        merged = SafetyLimits.model_validate(
            {
                "max_abs_voltage": min(recorded.max_abs_voltage, current.max_abs_voltage),
                "channels": {k: v.model_dump() for k, v in merged_channels.items()},
                "ramp_interval": min(recorded.ramp_interval, current.ramp_interval),
                "zero_tolerance": min(recorded.zero_tolerance, current.zero_tolerance),
                "max_pulses_per_device": _lower_is_stricter(
                    recorded.max_pulses_per_device, current.max_pulses_per_device
                ),
                "max_pulses_per_request": _lower_is_stricter(
                    recorded.max_pulses_per_request, current.max_pulses_per_request
                ),
                "max_node_offset": _lower_is_stricter(
                    recorded.max_node_offset, current.max_node_offset
                ),
                "max_ramp_time": min(recorded.max_ramp_time, current.max_ramp_time),
            }
        )
    except ValidationError as exc:
        raise ConfigError(
            "the station file's limits and the run's recorded limits leave no common range "
            f"({exc.errors()[0]['msg']}); restore the station file or start a new run"
        ) from None
    return merged, _differences(recorded, current, merged)


def _flat(limits: SafetyLimits) -> dict[str, Any]:
    """Every limit as `limits.<key>` → value (channels expanded, unset ones omitted)."""
    out: dict[str, Any] = {}
    for key, value in limits.model_dump(exclude={"channels"}).items():
        out[f"limits.{key}"] = value
    for name, channel in limits.channels.items():
        for key, value in channel.model_dump(exclude_none=True, exclude_defaults=True).items():
            out[f"limits.channels.{name}.{key}"] = value
    return out


def _differences(recorded: SafetyLimits, current: SafetyLimits, merged: SafetyLimits) -> list[str]:
    rec, cur, res = _flat(recorded), _flat(current), _flat(merged)
    lines = []
    for key in sorted(set(rec) | set(cur)):
        r, c = rec.get(key), cur.get(key)
        if r == c:
            continue
        verdict = (
            "the station file's stricter value is in force"
            if res.get(key) == c
            else "the recorded (stricter) value stays in force"
        )
        lines.append(f"{key}: recorded {r!r}, station file now {c!r}; {verdict}")
    return lines


class Terminated(BaseException):
    """Raised in the main thread when SIGTERM arrives, so `with` blocks and `finally` run."""

    def __init__(self, signum: int = signal.SIGTERM) -> None:
        self.signum = signum
        super().__init__(f"terminated by signal {signal.Signals(signum).name}")


@contextmanager
def sigterm_raises() -> Iterator[None]:
    """While inside, SIGTERM raises `Terminated` in the main thread (once; later ones are logged).

    Outside the main thread signal handlers cannot be installed, so this does nothing there.
    The previous handler is restored on exit.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    raised = False

    def handler(signum: int, frame: FrameType | None) -> None:
        nonlocal raised
        if raised:
            # A second SIGTERM must not interrupt the cleanup the first one started.
            log.warning("SIGTERM received again while stopping; still making the device safe")
            return
        raised = True
        log.warning("SIGTERM received; stopping and making the device safe")
        raise Terminated(signum)

    previous: Callable[[int, FrameType | None], Any] | int | None = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


@dataclass(frozen=True)
class _Effective:
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
            return f"{_fmt_range(chan.min, chan.max)} {chan.unit}"
        lo, hi = self.converted_from
        return (
            f"{_fmt_range(lo, hi)} {chan.unit}, narrowed to [{chan.min!r}, {chan.max!r}] so "
            "that the converter's rounding stays inside"
        )


def _fmt_range(lo: float, hi: float) -> str:
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


def _effective_channels(spec: DeviceSpec, limits: SafetyLimits) -> tuple[_Effective, ...]:
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
        lo, lo_src = _tighter(chan.min, _SPEC, limit.min, key, upper=False)
        hi, hi_src = _tighter(chan.max, _SPEC, limit.max, key, upper=True)
        slew, slew_src = _tighter(chan.max_slew, _SPEC, limit.max_slew, key, upper=True)
        driven = chan.role in _DRIVEN
        if driven and chan.unit == "V":  # the ceiling is on voltages; a current source has its own
            lo, lo_src = _tighter(lo, lo_src, -limits.max_abs_voltage, _CEILING, upper=False)
            hi, hi_src = _tighter(hi, hi_src, limits.max_abs_voltage, _CEILING, upper=True)
        if not lo < hi:
            ceiling = (
                f", {_CEILING} ±{limits.max_abs_voltage:g}" if driven and chan.unit == "V" else ""
            )
            limit_lo = -math.inf if limit.min is None else limit.min
            limit_hi = math.inf if limit.max is None else limit.max
            raise ConfigError(
                f"{key}: the effective range of channel {chan.name!r} is empty: device range "
                f"{_fmt_range(chan.min, chan.max)}, limit {_fmt_range(limit_lo, limit_hi)}"
                f"{ceiling}"
            )
        if driven and not lo <= 0.0 <= hi:
            raise ConfigError(
                f"{key}: the effective range {_fmt_range(lo, hi)} of {chan.role} channel "
                f"{chan.name!r} excludes 0 {chan.unit}, the safe state every exit ramps to"
            )
        effective = Channel.model_validate(
            {**chan.model_dump(), "min": lo, "max": hi, "max_slew": slew}
        )
        result.append(_Effective(effective, lo_src, hi_src, slew_src))
    return tuple(result)


def _fit_to_converter(eff: _Effective, device: Converting, spec: DeviceSpec) -> _Effective:
    """The effective range narrowed so that no request inside it converts outside it.

    A DAC rounds to its codes: a range end between two codes would let a request at the end
    (where the optimizer's projection and range-scaled data land) be refused after conversion.
    Each finite end moves inward to the outermost request whose conversion stays inside, found
    by bisection on the channel alone (others at 0; a row-coupled converter is judged
    conservatively); every request is still checked after conversion.
    """
    chan = eff.channel
    if chan.role not in _DRIVEN:
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
    return _Effective(fitted, eff.lo_source, eff.hi_source, eff.slew_source, (chan.min, chan.max))


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


def _ramp_down(
    levels: FloatArray, slew: FloatArray, rate_of: Callable[[FloatArray], FloatArray]
) -> FloatArray:
    """Rows from `levels` (not included) to exactly 0 in the fewest equal steps whose rate,
    `rate_of(|step|)` computed as the checks compute it, stays within `slew` (inf: unlimited)."""
    n = max(1, math.ceil(float(np.max(rate_of(np.abs(levels)) / slew))))
    while True:  # the products can round a step over the limit: one more step then
        rows: FloatArray = levels[np.newaxis, :] * (1.0 - np.arange(1, n + 1) / n)[:, np.newaxis]
        steps = np.abs(np.diff(np.vstack([levels[np.newaxis, :], rows]), axis=0))
        if not np.any(rate_of(steps) > slew):
            return rows
        n += 1


def _as_array(values: Any, name: str) -> FloatArray:
    """A fresh float64 copy: what is checked is exactly what is sent, whatever the caller does."""
    try:
        return np.array(values, dtype=np.float64, copy=True)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: cannot convert to a float array ({exc})") from exc


class SafetyGuard(DeviceBase):
    """Wraps any Device and enforces `SafetyLimits` on every request, whole, before sending.

    `SafetyGuard(device, limits)` returns a `StreamingSafetyGuard` when the device streams, so
    `isinstance(guard, Streaming)` tells the truth about the hardware behind the guard.
    """

    def __new__(cls, device: Device, limits: SafetyLimits) -> SafetyGuard:
        if cls is SafetyGuard:
            flags = (
                isinstance(device, Streaming),
                isinstance(device, ProgrammableState),
                isinstance(device, NodePerturbable),
            )
            return super().__new__(_guard_class(*flags))
        return super().__new__(cls)

    def __init__(self, device: Device, limits: SafetyLimits) -> None:
        self._device = device
        # A private deep copy: nobody holding the caller's object can loosen what is enforced.
        self._limits = limits.model_copy(deep=True)
        self._channels = _effective_channels(device.spec, self._limits)
        if isinstance(device, Converting):
            self._channels = tuple(
                _fit_to_converter(e, device, device.spec) for e in self._channels
            )
        spec = device.spec
        self._spec = spec.model_copy(update={"channels": tuple(e.channel for e in self._channels)})
        self._by_name = {e.name: e for e in self._channels}
        self._controls = tuple(e for e in self._channels if e.channel.role is Role.CONTROL)
        self._inputs = tuple(e for e in self._channels if e.channel.role is Role.INPUT)
        self._last_controls: FloatArray = np.zeros(len(self._controls))
        self._last_inputs: FloatArray = np.zeros(len(self._inputs))
        self._last_control_time: float | None = None
        self._unknown: str | None = None  # what failed part-way, leaving the levels unknown
        self._pending_controls: FloatArray | None = None  # a DC step that may not have landed
        self._check_rampable()
        log.debug("safety guard on %r: %s", spec.name, self._describe())

    def _check_rampable(self) -> None:
        """Every slew-limited channel can be brought to 0 V within the limits, in bounded time.

        Controls ramp by DC steps; inputs need a stream or ramped plateaus (`spec.ramp_time`)
        unless the station says the channel may drop. A ramp across the whole range must fit
        in `limits.max_ramp_time`, so no request or safe state can take forever.
        """
        streams = isinstance(self._device, Streaming) and self._spec.sample_rate is not None
        for eff in self._channels:
            chan = eff.channel
            if chan.role not in _DRIVEN or not math.isfinite(chan.max_slew):
                continue
            key = eff.slew_source if eff.slew_source != _SPEC else f"limits.channels.{eff.name}"
            span = chan.max - chan.min
            if math.isfinite(span) and span / chan.max_slew > self._limits.max_ramp_time:
                raise ConfigError(
                    f"{key}.max_slew: {chan.max_slew:g} {chan.unit}/s needs "
                    f"{span / chan.max_slew:.3g} s to cross the range "
                    f"{_fmt_range(chan.min, chan.max)}, more than limits.max_ramp_time "
                    f"{self._limits.max_ramp_time:g} s; raise max_slew or max_ramp_time"
                )
            if chan.role is Role.INPUT and not streams and self._spec.ramp_time <= 0:
                limit = self._limits.channels.get(eff.name)
                if limit is None or not limit.may_drop:
                    raise ConfigError(
                        f"limits.channels.{eff.name}: input {eff.name!r} is slew-limited but "
                        f"device {self._spec.name!r} can neither stream nor ramp between "
                        "plateaus (ramp_time 0), so the safe state could not ramp it to 0; "
                        "give the device a ramp_time, or set may_drop: true for the channel"
                    )

    if not TYPE_CHECKING:
        # Hidden from type checkers so that typos on a guard are still caught statically.
        def __getattr__(self, name: str) -> NoReturn:
            capability = _CAPABILITY_OF.get(name)
            if capability is not None:
                raise CapabilityError(
                    f"device {type(self._device).__name__} has no {name}(): it is not "
                    f"{capability.__name__}; check isinstance(device, {capability.__name__}) first"
                )
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    # -- Device protocol ---------------------------------------------------------------------

    @property
    def spec(self) -> DeviceSpec:
        """The device spec with the effective ranges and slew limits (what is really allowed)."""
        return self._spec

    @property
    def clock(self) -> Clock:
        return self._device.clock

    def unguarded_device(self, reason: str) -> Device:
        """The wrapped device itself: an escape hatch past every experiment limit.

        Each use is logged with `reason`; nothing sent through it is checked.
        """
        log.info("unguarded access to device %r: %s", self._spec.name, reason)
        return self._device

    @property
    def limits(self) -> SafetyLimits:
        """A copy of the limits in force (changing it changes nothing the guard enforces)."""
        return self._limits.model_copy(deep=True)

    def set_controls(self, values: FloatArray) -> None:
        """Check the whole request, then ramp the controls there on slew-limited channels."""
        arr = _as_array(values, "set_controls")
        n = len(self._controls)
        if arr.shape != (n,):
            raise ValueError(
                f"set_controls: expected shape ({n},) (one value per control channel "
                f"{[e.name for e in self._controls]}), got {arr.shape}"
            )
        self._check_values(arr[np.newaxis, :], self._controls, "set_controls", row_word=None)
        self._check_known("set_controls")
        self._ramp_controls(arr)

    def measure(self, inputs: FloatArray) -> FloatArray:
        """Check every plateau (range and the slew between plateaus), then measure."""
        arr = self._checked_plateaus(inputs, "measure")
        try:
            with self._driving("measure"):
                return self._device.measure(arr)
        finally:
            # Asked through every row: assume it ended on the last (after a failure too).
            self._last_inputs = arr[-1].copy()

    def _check_known(self, what: str) -> None:
        """Refuse to drive a device whose levels a failed request left unknown: a transition
        could not be checked from where the channels really are."""
        if self._unknown is not None:
            raise InstrumentError(
                f"{what}: refused: the levels on device {self._spec.name!r} are unknown since "
                f"{self._unknown} failed part-way; call safe_state() (it ramps from the last "
                "levels sent) and check the device before driving it again"
            )

    @contextmanager
    def _driving(self, what: str) -> Iterator[None]:
        """Around every call that moves the device's levels: if it fails part-way, where the
        channels ended is unknown, and nothing more is driven until the safe state."""
        try:
            yield
        except BaseException:
            self._unknown = what
            raise

    def _checked_plateaus(self, inputs: FloatArray, what: str) -> FloatArray:
        arr = _as_array(inputs, what)
        n = len(self._inputs)
        self._check_known(what)
        if arr.ndim != 2 or arr.shape[1] != n or arr.shape[0] < 1:
            raise ValueError(
                f"{what}: expected shape (n_cases >= 1, {n}) (one column per input "
                f"channel {[e.name for e in self._inputs]}), got {arr.shape}"
            )
        self._check_values(arr, self._inputs, what, row_word="row")
        self._check_plateau_slew(arr)
        return arr

    def safe_state(self) -> None:
        """Ramp controls and slew-limited inputs to zero, then the device's safe state. Idempotent.

        Inputs ramp through a stream (streaming devices) or ramped plateaus; channels the station
        marks `may_drop` are left to the device's own safe state.
        """
        if self._unknown is not None:
            log.warning(
                "making safe after %s failed part-way: ramping from the last levels sent",
                self._unknown,
            )
        try:
            self._park(bounded=False, retries=_SAFE_RETRIES)
        except Exception:
            log.exception("ramping to zero failed; forcing the device's safe state")
        finally:
            self._device.safe_state()
            self._unknown = None
            self._last_controls = np.zeros(len(self._controls))
            self._last_inputs = np.zeros(len(self._inputs))
            self._last_control_time = self._device.clock.now()
            log.info("device %r is in its safe state", self._spec.name)

    def close(self) -> None:
        self._device.close()

    def park(self) -> None:
        """Ramp the controls and every slew-limited input to 0 within the limits (no-op at 0).

        Streams begin at 0, so protocols park before streaming from DC levels.
        """
        self._check_known("park")
        self._park(bounded=True)

    def _park(self, *, bounded: bool, retries: int = 0) -> None:
        """`park`; `bounded`: refuse a control ramp longer than limits.max_ramp_time (the safe
        state never refuses); `retries`: per control step after an instrument error."""
        pending = self._pending_controls
        if pending is not None:  # the step that failed: one stair from both places it may be
            self._send_controls(pending, retries=retries)
        if np.any(self._last_controls != 0.0):
            log.debug("ramping controls to zero")
            self._ramp_controls(np.zeros(len(self._controls)), bounded=bounded, retries=retries)
        self._ramp_inputs_to_zero()

    def _ramp_inputs_to_zero(self) -> None:
        """Bring every slew-limited input from its held level to 0 within its max_slew."""
        slew = np.array([e.channel.max_slew for e in self._inputs])
        may_drop = np.array([self._may_drop(e.name) for e in self._inputs], dtype=bool)
        moving = (self._last_inputs != 0.0) & np.isfinite(slew) & ~may_drop
        if not moving.any():
            return
        cols = np.flatnonzero(moving)
        levels = self._last_inputs[cols]
        rate = self._spec.sample_rate
        if isinstance(self._device, Streaming) and rate is not None:
            effs = [self._inputs[c] for c in cols]
            wave = _ramp_down(levels, slew[cols], lambda step: step * rate)
            log.info("ramping inputs %s to zero (%d samples)", [e.name for e in effs], len(wave))
            self._check_values(wave, effs, "safe-state ramp", row_word="sample")
            self._check_sample_slew(wave, effs)
            self._check_entry_slew(wave, effs)
            with self._driving("the ramp of the inputs to zero"):
                self._device.stream(wave, tuple(e.name for e in effs))
            self._last_inputs[cols] = wave[-1]
        else:
            ramp_time = self._spec.ramp_time
            limited = np.where(may_drop, math.inf, slew)
            rows = _ramp_down(self._last_inputs.copy(), limited, lambda step: step / ramp_time)
            log.info("ramping inputs to zero in %d plateaus", len(rows))
            checked = self._checked_plateaus(rows, "safe-state ramp")
            with self._driving("the ramp of the inputs to zero"):
                self._device.measure(checked)
            self._last_inputs = rows[-1].copy()

    def _may_drop(self, name: str) -> bool:
        limit = self._limits.channels.get(name)
        return limit is not None and limit.may_drop

    # -- Stateful ----------------------------------------------------------------------------

    def state_dict(self) -> JSONDict:
        """The guard's tracked levels, plus the wrapped device's state when it has one."""
        state: JSONDict = {
            "last_controls": self._last_controls.tolist(),
            "last_inputs": self._last_inputs.tolist(),
            "last_control_time": self._last_control_time,
        }
        if isinstance(self._device, Stateful):
            state["device"] = self._device.state_dict()
        return state

    def load_state_dict(self, state: JSONDict) -> None:
        """Restore what `state_dict` returned (checked against the effective limits).

        The saved levels are taken over only with a Stateful device, whose state comes back too.
        """
        expected = {"last_controls", "last_inputs", "last_control_time"}
        if isinstance(self._device, Stateful):
            expected.add("device")
        if set(state) != expected:
            raise ValueError(f"guard state: expected keys {sorted(expected)}, got {sorted(state)}")
        controls = _as_array(state["last_controls"], "guard state last_controls")
        inputs = _as_array(state["last_inputs"], "guard state last_inputs")
        if controls.shape != self._last_controls.shape or inputs.shape != self._last_inputs.shape:
            raise ValueError(
                f"guard state: expected {len(self._controls)} controls and {len(self._inputs)} "
                f"inputs, got shapes {controls.shape} and {inputs.shape}"
            )
        self._check_values(controls[np.newaxis, :], self._controls, "guard state", row_word=None)
        self._check_values(inputs[np.newaxis, :], self._inputs, "guard state", row_word=None)
        if isinstance(self._device, Stateful):
            device_state = state["device"]
            if not isinstance(device_state, dict):
                raise ValueError(
                    f"guard state: the device part must be a mapping (device "
                    f"{self._spec.name!r} has state), got {type(device_state).__name__}"
                )
            self._check_restore(device_state, controls, inputs)
            self._device.load_state_dict(device_state)
            self._last_controls = controls
            self._last_inputs = inputs
            t = state["last_control_time"]
            self._last_control_time = None if t is None else float(t)
        else:
            # Hardware is not restored by a checkpoint: it really is where this guard has driven it
            # (zero after the previous run's safe state), so ramps must start from there.
            log.info(
                "device is not Stateful; keeping the guard's tracked levels, not the saved ones"
            )

    def _check_restore(
        self, device_state: JSONDict, controls: FloatArray, inputs: FloatArray
    ) -> None:
        """What restoring `device_state` would put on the device: checked like a request, and
        consistent with the levels the guard recorded with it (or the restore is refused)."""
        device = self._device
        if not isinstance(device, RestoreChecked):
            raise CapabilityError(
                f"device {type(device).__name__} ({self._spec.name!r}) cannot say what restoring "
                "its state would put on its channels (no restored_levels()), so the guard will "
                "not restore it; implement hil.core.RestoreChecked in its driver"
            )
        try:
            levels = device.restored_levels(device_state)
        except (KeyError, TypeError, IndexError) as exc:
            raise ValueError(f"device state: malformed ({type(exc).__name__}: {exc})") from None
        unknown = sorted(set(levels) - {e.name for e in (*self._controls, *self._inputs)})
        if unknown:
            raise ValueError(f"device state: levels for channels that are not driven: {unknown}")
        for group, recorded in ((self._controls, controls), (self._inputs, inputs)):
            held = [(i, e) for i, e in enumerate(group) if e.name in levels]
            if not held:
                continue
            effs = [e for _, e in held]
            restored = np.array([[levels[e.name] for e in effs]], dtype=np.float64)
            self._check_values(restored, effs, "restored device state", row_word=None)
            saved = recorded[[i for i, _ in held]][np.newaxis, :]
            a, b = self._applied(restored, effs), self._applied(saved, effs)
            mismatch = ~np.isclose(a, b, rtol=1e-9, atol=1e-12)
            if mismatch.any():
                col = int(np.argwhere(mismatch)[0][1])
                raise ValueError(
                    f"device state: channel {effs[col].name!r} would be restored to "
                    f"{restored[0, col]:g} but the guard recorded {saved[0, col]:g}; the "
                    "checkpoint is inconsistent (edited or damaged) and is not restored"
                )

    # -- checks --------------------------------------------------------------------------------

    def _applied(self, arr: FloatArray, channels: Sequence[_Effective]) -> FloatArray:
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
            f"{e.name} {_fmt_range(e.channel.min, e.channel.max)} slew {e.channel.max_slew:g}"
            for e in self._channels
        )

    def _refuse(self, violation: SafetyViolation) -> NoReturn:
        log.warning("refused: %s", violation)
        raise violation

    def _check_values(
        self,
        arr: FloatArray,
        channels: Sequence[_Effective],
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
            if source == _SPEC:
                hint = "the device cannot take this value; keep the request inside the range"
            elif source == _CEILING:
                hint = f"raise {_CEILING} in the station file or keep the request inside the range"
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

    def _slew_hint(self, eff: _Effective, remedy: str) -> str:
        if eff.slew_source == _SPEC:
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

    def _check_sample_slew(self, arr: FloatArray, effs: Sequence[_Effective]) -> None:
        slew = np.array([e.channel.max_slew for e in effs])
        limited = np.isfinite(slew)
        if not limited.any() or arr.shape[0] < 2:
            return
        rate_hz = self._stream_rate()
        rate = np.abs(np.diff(arr, axis=0)) * rate_hz
        bad = limited[np.newaxis, :] & (rate > slew[np.newaxis, :])
        if bad.any():
            row, col = (int(i) for i in np.argwhere(bad)[0])
            eff = effs[col]
            unit = eff.channel.unit
            self._refuse(
                SafetyViolation(
                    eff.name,
                    float(rate[row, col]),
                    f"max_slew {eff.channel.max_slew:g} {unit}/s (step {arr[row, col]:g} -> "
                    f"{arr[row + 1, col]:g} {unit} between samples {row} and {row + 1} at "
                    f"{rate_hz:g} Hz; value is the rate in {unit}/s)",
                    self._slew_hint(eff, "smooth the waveform (more samples per transition)"),
                )
            )

    def _check_entry_slew(self, arr: FloatArray, effs: Sequence[_Effective]) -> None:
        """From the level each channel holds into the waveform's first sample, within max_slew.

        After a stream every channel holds its last sample, so the next request's transition
        starts from there (tracked by the guard).
        """
        slew = np.array([e.channel.max_slew for e in effs])
        limited = np.isfinite(slew)
        if not limited.any():
            return
        rate_hz = self._stream_rate()
        held = np.array([self._held_level(e) for e in effs])
        rate = np.abs(arr[0] - held) * rate_hz
        bad = limited & (rate > slew)
        if bad.any():
            col = int(np.argmax(bad))
            eff = effs[col]
            unit = eff.channel.unit
            self._refuse(
                SafetyViolation(
                    eff.name,
                    float(rate[col]),
                    f"max_slew {eff.channel.max_slew:g} {unit}/s (entry jump from the held "
                    f"level {held[col]:g} {unit} to the first sample {arr[0, col]:g} {unit} in "
                    f"one sample at {rate_hz:g} Hz; value is the rate in {unit}/s)",
                    self._slew_hint(
                        eff,
                        "bring the channel to the waveform's first sample first (set_controls "
                        "ramps controls; safe_state ramps every channel to 0)",
                    ),
                )
            )

    def _held_level(self, eff: _Effective) -> float:
        """The level the guard last sent to a driven channel (0 before anything was sent)."""
        for group, levels in (
            (self._controls, self._last_controls),
            (self._inputs, self._last_inputs),
        ):
            for i, e in enumerate(group):
                if e.name == eff.name:
                    return float(levels[i])
        raise KeyError(eff.name)

    # -- ramping ---------------------------------------------------------------------------------

    def _ramp_steps(self, delta: FloatArray, *, bounded: bool = True) -> int:
        """Number of equal steps so that no slew-limited channel moves more than one step's worth.

        0 means no slew-limited channel moves (one direct call is enough).
        """
        slew = np.array([e.channel.max_slew for e in self._controls])
        limited = np.isfinite(slew)
        if not limited.any():
            return 0
        change = np.abs(delta[limited])
        max_step = slew[limited] * self._limits.ramp_interval
        worst = float(np.max(change / max_step))
        if worst == 0.0:
            return 0
        duration = worst * self._limits.ramp_interval
        if bounded and duration > self._limits.max_ramp_time:
            col = int(np.argmax(change / max_step))
            eff = [e for e, lim in zip(self._controls, limited, strict=True) if lim][col]
            self._refuse(
                SafetyViolation(
                    eff.name,
                    float(change[col]),
                    f"limits.max_ramp_time {self._limits.max_ramp_time:g} s (a change of this "
                    f"size at max_slew {eff.channel.max_slew:g} {eff.channel.unit}/s takes "
                    f"{duration:.3g} s; value is the change)",
                    "change the controls in smaller steps, or raise max_slew or "
                    "limits.max_ramp_time in the station file; nothing was sent",
                )
            )
        steps = max(1, math.ceil(worst))
        while np.any(change / steps > max_step):  # guard against rounding in the division
            steps += 1
        return steps

    def _ramp_controls(self, target: FloatArray, *, bounded: bool = True, retries: int = 0) -> None:
        """Go from the last controls to `target` in equal steps `ramp_interval` apart.

        `bounded`: refuse a ramp longer than limits.max_ramp_time (the safe state never refuses).
        """
        start = self._last_controls
        delta = target - start
        steps = self._ramp_steps(delta, bounded=bounded)
        if steps == 0:
            self._send_controls(target, retries=retries)
            return
        if steps > 1:
            log.debug(
                "ramping controls in %d steps over %g s", steps, steps * self._limits.ramp_interval
            )
        for k in range(1, steps + 1):
            value = target if k == steps else start + delta * (k / steps)
            self._wait_ramp_interval()
            self._send_controls(value, retries=retries)

    def _wait_ramp_interval(self) -> None:
        """Let at least ramp_interval of device time pass since the last control change."""
        if self._last_control_time is None:
            return
        remaining = self._limits.ramp_interval - (self.clock.now() - self._last_control_time)
        if remaining > 0:
            self.clock.advance(remaining)

    def _send_controls(self, values: FloatArray, *, retries: int = 0) -> None:
        """One DC step. If the device fails, the step may or may not have been applied: it is
        kept as pending, and the safe state sends it again before ramping on from it. `retries`:
        send the same step again that many times after an instrument error (the safe ramp)."""
        for attempt in range(retries + 1):
            try:
                with self._driving("set_controls"):
                    self._device.set_controls(values.copy())
                break
            except InstrumentError as exc:
                self._pending_controls = values.copy()
                if attempt == retries:
                    raise
                log.warning("a control step failed (%s); sending the same step again", exc)
            except BaseException:
                self._pending_controls = values.copy()
                raise
        self._pending_controls = None
        self._last_controls = values.copy()
        self._last_control_time = self.clock.now()


class StreamingSafetyGuard(SafetyGuard):
    """A guard around a Streaming device: waveforms are checked whole before upload."""

    def stream(self, waveform: FloatArray, channels: Sequence[str]) -> FloatArray:
        """Check range, zero start/end and per-sample slew of every channel, then play."""
        if isinstance(channels, str):
            raise ValueError(
                f"stream: channels must be a sequence of names, got the string {channels!r}"
            )
        names = list(channels)
        if len(set(names)) != len(names):
            raise ValueError(f"stream: duplicate channel names in {names}")
        unknown = [n for n in names if n not in self._by_name]
        if unknown:
            raise ValueError(
                f"stream: device {self._spec.name!r} has no channel(s) {unknown}; "
                f"its channels are {list(self._by_name)}"
            )
        arr = _as_array(waveform, "stream")
        if arr.ndim != 2 or arr.shape[1] != len(names) or arr.shape[0] < 1:
            raise ValueError(
                f"stream: expected waveform shape (n_samples >= 1, {len(names)}) for "
                f"channels {names}, got {arr.shape}"
            )
        effs = [self._by_name[n] for n in names]
        for col, eff in enumerate(effs):
            if eff.channel.role not in _DRIVEN:
                self._refuse(
                    SafetyViolation(
                        eff.name,
                        float(np.max(np.abs(arr[:, col]))),
                        f"role {eff.channel.role}: outputs are measured, never driven",
                        "stream only input and control channels; nothing was sent",
                    )
                )
        self._check_values(arr, effs, "stream", row_word="sample")
        self._check_zero_ends(arr, effs)
        self._check_sample_slew(arr, effs)
        self._check_entry_slew(arr, effs)
        self._check_known("stream")
        streamer = self._device
        assert isinstance(streamer, Streaming)  # guaranteed by SafetyGuard.__new__
        try:
            with self._driving("stream"):
                return streamer.stream(arr, tuple(names))
        finally:
            # Each streamed channel now holds its last sample (assumed after a failure too).
            control_index = {e.name: i for i, e in enumerate(self._controls)}
            input_index = {e.name: i for i, e in enumerate(self._inputs)}
            for col, name in enumerate(names):
                if name in control_index:
                    self._last_controls[control_index[name]] = arr[-1, col]
                    self._last_control_time = self.clock.now()
                else:
                    self._last_inputs[input_index[name]] = arr[-1, col]

    def _check_zero_ends(self, arr: FloatArray, effs: Sequence[_Effective]) -> None:
        tol = self._limits.zero_tolerance
        for label, row in (("zero start (first sample)", 0), ("zero end (last sample)", -1)):
            bad = np.abs(arr[row]) > tol
            if bad.any():
                col = int(np.argmax(bad))
                eff = effs[col]
                self._refuse(
                    SafetyViolation(
                        eff.name,
                        float(arr[row, col]),
                        f"{label} within ±{tol:g} {eff.channel.unit} (stream)",
                        "begin and end every waveform at 0 (ramp in and out), or raise "
                        "limits.zero_tolerance in the station file; nothing was sent",
                    )
                )


class PulsingSafetyGuard(SafetyGuard):
    """A guard around a device with programmable state: pulse requests are checked whole."""

    def apply_pulses(self, pulses: Any) -> None:
        """Check every count (whole numbers, per-device and per-request limits), then pulse."""
        arr = _as_array(pulses, "apply_pulses")
        flat = arr.ravel()

        def weight(index: int) -> str:
            return f"weight {tuple(int(i) for i in np.unravel_index(index, arr.shape))}"

        fractional = np.flatnonzero(~np.isfinite(flat) | (flat != np.rint(flat)))
        if fractional.size:
            index = int(fractional[0])
            self._refuse(
                SafetyViolation(
                    weight(index),
                    float(flat[index]),
                    "whole pulse counts",
                    "pulse counts are integers; nothing was sent",
                )
            )
        limits = self._limits
        magnitude = np.abs(flat)
        if limits.max_pulses_per_device is not None and magnitude.size:
            index = int(np.argmax(magnitude))
            if magnitude[index] > limits.max_pulses_per_device:
                self._refuse(
                    SafetyViolation(
                        weight(index),
                        float(flat[index]),
                        f"limits.max_pulses_per_device {limits.max_pulses_per_device}",
                        "split the update into several requests or lower the learning rate; "
                        "nothing was sent",
                    )
                )
        total = float(magnitude.sum())
        if limits.max_pulses_per_request is not None and total > limits.max_pulses_per_request:
            self._refuse(
                SafetyViolation(
                    "pulse request",
                    total,
                    f"limits.max_pulses_per_request {limits.max_pulses_per_request}",
                    "split the update into several requests; nothing was sent",
                )
            )
        device = self._device
        assert isinstance(device, ProgrammableState)  # guaranteed by SafetyGuard.__new__
        device.apply_pulses(arr.astype(np.int64))

    def read_state(self) -> FloatArray:
        """Read the weights back (reading drives only the device's own read voltages)."""
        device = self._device
        assert isinstance(device, ProgrammableState)
        return device.read_state()


class NodeSafetyGuard(SafetyGuard):
    """A guard around a layered device whose units can be offset (node perturbation)."""

    @property
    def layer_shapes(self) -> tuple[tuple[int, int], ...]:
        device = self._device
        assert isinstance(device, NodePerturbable)  # guaranteed by SafetyGuard.__new__
        return device.layer_shapes

    @property
    def layer_gains(self) -> tuple[float, ...]:
        device = self._device
        assert isinstance(device, NodePerturbable)
        return device.layer_gains

    def measure_nodes(
        self, inputs: FloatArray, offsets: Sequence[FloatArray]
    ) -> tuple[FloatArray, tuple[FloatArray, ...]]:
        """Check the plateaus as `measure` does and every offset against the limit, then measure."""
        arr = self._checked_plateaus(inputs, "measure_nodes")
        checked = [_as_array(o, f"measure_nodes offsets[{i}]") for i, o in enumerate(offsets)]
        bound = self._limits.max_node_offset
        for layer, o in enumerate(checked):
            bad = ~np.isfinite(o) | (np.abs(o) > (bound if bound is not None else math.inf))
            if bad.any():
                index = tuple(int(i) for i in np.argwhere(bad)[0])
                self._refuse(
                    SafetyViolation(
                        f"layer {layer} unit offset {index}",
                        float(o[index]),
                        "finite" if bound is None else f"limits.max_node_offset ±{bound:g}",
                        "lower the node-perturbation sigma; nothing was sent",
                    )
                )
        device = self._device
        assert isinstance(device, NodePerturbable)
        try:
            with self._driving("measure_nodes"):
                return device.measure_nodes(arr, checked)
        finally:
            self._last_inputs = arr[-1].copy()


_CAPABILITY_OF: dict[str, type] = {
    "stream": Streaming,
    "apply_pulses": ProgrammableState,
    "read_state": ProgrammableState,
    "measure_nodes": NodePerturbable,
    "layer_shapes": NodePerturbable,
    "layer_gains": NodePerturbable,
}


@functools.cache
def _guard_class(streams: bool, pulses: bool, nodes: bool) -> type[SafetyGuard]:
    """The guard class that offers exactly the capabilities of the device behind it."""
    bases = [
        cls
        for cls, has in (
            (StreamingSafetyGuard, streams),
            (PulsingSafetyGuard, pulses),
            (NodeSafetyGuard, nodes),
        )
        if has
    ]
    if not bases:
        return SafetyGuard
    if len(bases) == 1:
        return bases[0]
    name = "".join(b.__name__.removesuffix("SafetyGuard") for b in bases) + "SafetyGuard"
    return type(name, tuple(bases), {})
