"""The safety guard in front of every device: whole requests checked, DC changes ramped, every
exit made safe, restores checked like requests, and a failed write stops all driving."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

import numpy as np

from hil.core.capabilities import (
    Averaging,
    Converting,
    Demodulating,
    Device,
    DeviceBase,
    NodePerturbable,
    ProgrammableState,
    Reconnecting,
    RestoreChecked,
    Stateful,
    Streaming,
)
from hil.core.channels import DeviceSpec, Role
from hil.core.clock import Clock
from hil.core.errors import CapabilityError, ConfigError, InstrumentError, SafetyViolation
from hil.core.types import FloatArray, JSONDict
from hil.safety.checks import GuardChecks
from hil.safety.effective import (
    DRIVEN,
    SPEC,
    effective_channels,
    fit_to_converter,
    fmt_range,
)
from hil.safety.limits import SafetyLimits

log = logging.getLogger("hil.safety")

_SAFE_RETRIES = 5  # the safe-state ramp sends a failed control step again up to this often


def ramp_down(
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


@dataclass(frozen=True)
class DeviceRequest:
    """One successful request through the guard: what was `sent`, what came back (`received`,
    None for a request that returns nothing), and the device-clock `time` when it ended."""

    kind: str
    sent: Mapping[str, Any]
    received: Any
    time: float


Observer = Callable[[DeviceRequest], None]


def as_array(values: Any, name: str) -> FloatArray:
    """A fresh float64 copy: what is checked is exactly what is sent, whatever the caller does."""
    try:
        return np.array(values, dtype=np.float64, copy=True)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: cannot convert to a float array ({exc})") from exc


class SafetyGuard(GuardChecks, DeviceBase):
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
                isinstance(device, Reconnecting),
                isinstance(device, Demodulating),
                isinstance(device, Averaging),
            )
            from hil.safety.variants import guard_class  # the variants subclass this one

            return super().__new__(guard_class(*flags))
        return super().__new__(cls)

    def __init__(self, device: Device, limits: SafetyLimits) -> None:
        self._device = device
        # A private deep copy: nobody holding the caller's object can loosen what is enforced.
        self._limits = limits.model_copy(deep=True)
        self._channels = effective_channels(device.spec, self._limits)
        if isinstance(device, Converting):
            self._channels = tuple(fit_to_converter(e, device, device.spec) for e in self._channels)
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
        self._observers: list[Observer] = []
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
            if chan.role not in DRIVEN or not math.isfinite(chan.max_slew):
                continue
            key = eff.slew_source if eff.slew_source != SPEC else f"limits.channels.{eff.name}"
            span = chan.max - chan.min
            if math.isfinite(span) and span / chan.max_slew > self._limits.max_ramp_time:
                raise ConfigError(
                    f"{key}.max_slew: {chan.max_slew:g} {chan.unit}/s needs "
                    f"{span / chan.max_slew:.3g} s to cross the range "
                    f"{fmt_range(chan.min, chan.max)}, more than limits.max_ramp_time "
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

    def observe(self, callback: Observer) -> Callable[[], None]:
        """Call `callback` after each successful request (recording); returns the unsubscribe.

        Observers must copy what they keep (the arrays are the guard's and the caller's); one
        that raises is logged and dropped, the request stands.
        """
        self._observers.append(callback)

        def stop() -> None:
            if callback in self._observers:
                self._observers.remove(callback)

        return stop

    def _notify(self, kind: str, sent: Mapping[str, Any], received: Any) -> None:
        """Tell the observers about a request that succeeded."""
        if not self._observers:
            return
        request = DeviceRequest(kind, sent, received, self._device.clock.now())
        for callback in tuple(self._observers):
            try:
                callback(request)
            except Exception:
                log.exception("an observer of the guard failed; it is no longer called")
                self._observers.remove(callback)

    @property
    def limits(self) -> SafetyLimits:
        """A copy of the limits in force (changing it changes nothing the guard enforces)."""
        return self._limits.model_copy(deep=True)

    def set_controls(self, values: FloatArray) -> None:
        """Check the whole request, then ramp the controls there on slew-limited channels."""
        arr = as_array(values, "set_controls")
        n = len(self._controls)
        if arr.shape != (n,):
            raise ValueError(
                f"set_controls: expected shape ({n},) (one value per control channel "
                f"{[e.name for e in self._controls]}), got {arr.shape}"
            )
        self._check_values(arr[np.newaxis, :], self._controls, "set_controls", row_word=None)
        self._check_known("set_controls")
        self._ramp_controls(arr)
        self._notify("set_controls", {"controls": arr}, None)

    def measure(self, inputs: FloatArray) -> FloatArray:
        """Check every plateau (range and the slew between plateaus), then measure."""
        arr = self._checked_plateaus(inputs, "measure")
        try:
            with self._driving("measure"):
                outputs = self._device.measure(arr)
            self._notify(
                "measure", {"inputs": arr, "controls": self._last_controls.copy()}, outputs
            )
            return outputs
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
        arr = as_array(inputs, what)
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
            wave = ramp_down(levels, slew[cols], lambda step: step * rate)
            log.info("ramping inputs %s to zero (%d samples)", [e.name for e in effs], len(wave))
            self._check_values(wave, effs, "safe-state ramp", row_word="sample")
            self._check_stream_slew(wave, effs)
            with self._driving("the ramp of the inputs to zero"):
                self._device.stream(wave, tuple(e.name for e in effs))
            self._last_inputs[cols] = wave[-1]
        else:
            ramp_time = self._spec.ramp_time
            limited = np.where(may_drop, math.inf, slew)
            rows = ramp_down(self._last_inputs.copy(), limited, lambda step: step / ramp_time)
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
        controls = as_array(state["last_controls"], "guard state last_controls")
        inputs = as_array(state["last_inputs"], "guard state last_inputs")
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


_CAPABILITY_OF: dict[str, type] = {
    "stream": Streaming,
    "apply_pulses": ProgrammableState,
    "read_state": ProgrammableState,
    "measure_nodes": NodePerturbable,
    "layer_shapes": NodePerturbable,
    "layer_gains": NodePerturbable,
    "reconnect": Reconnecting,
    "dither_channels": Demodulating,
    "max_dithers": Demodulating,
    "demodulated_output": Demodulating,
    "demodulate": Demodulating,
    "plateau_samples": Averaging,
    "set_plateau_samples": Averaging,
}
