"""NI-DAQmx streaming: sample-exact waveform playback with synchronised finite AO and AI tasks.

`DaqStream` plays a waveform (samples × AO channels) and returns what the AI channels read at the
same sample instants (samples × AI channels), in output units. Every play builds two finite tasks
on NI's `nidaqmx` package at the same sample clock rate and sample count:

1. the AO task: channels with their ranges, timing, start trigger = the AI start trigger
   (`/Dev1/ai/StartTrigger` by default), the whole buffer written with `auto_start=False`;
2. the AI task: channels with ranges and terminal configuration, the same timing;
3. AO is started first (armed: it waits for the trigger), then AI; starting AI fires its start
   trigger, so both sample clocks start on the same edge. The armed task must be started before
   the one that fires it: started the other way round, AO would miss the trigger and never play;
4. read exactly the number of samples written, wait for AO to finish, stop both.

Alignment: AI sample k is converted on the k-th tick of the AI clock, AO sample k is updated on
the k-th tick of the AO clock, and both clocks start on the same trigger edge at the same rate;
so AI sample k measures the response to AO sample k (with the analog lag of the wiring and the
amplifier, which shows up in the data, never as dropped or extra samples). The read returns
exactly n samples per channel or the play fails.

Both tasks are closed on every exit path. A DAQ card holds its last AO sample when a task ends:
`held` says which levels the card holds (all zero after a `play`, whose first and last samples
must be 0 V). After a fault mid-play the driver asks the AO task how many samples it generated to
know the held level; if even that fails, the level is unknown and only `park()` may move it.

AI readings become outputs: (volts − offset) × sign / gain, per AI channel, with the
transimpedance `gain` (V per output unit, e.g. V/A), `inverted` (sign −1 for an inverting
amplifier) and the `offset` from the station file; `measure_offset()` replaces the offsets with
the mean AI reading while the AO plays 0 V.

`nidaqmx` is optional (extra `nidaq`): it is imported when a `DaqStream` is built without an
injected module, and its absence is an `InstrumentError` saying how to install it.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import math
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from hil.core import (
    FloatArray,
    InstrumentDisconnected,
    InstrumentError,
    InstrumentProtocolError,
    InstrumentTimeout,
    SafetyViolation,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

Terminal = Literal["default", "rse", "nrse", "diff", "pseudo_diff"]

# DAQmx error codes that mean "not in time" and "the device is gone" (NI-DAQmx DAQmxErrors).
TIMEOUT_CODES = frozenset(
    {
        -200284,  # SamplesNotYetAvailable: a read timed out
        -200560,  # WaitUntilDoneDoesNotIndicateDone
        -200474,  # OperationTimedOut
        -200221,  # TimeoutExceeded
    }
)
DISCONNECT_CODES = frozenset(
    {
        -200045,  # DeviceRemoved
        -200324,  # DevAbsentOrUnavailable
        -200175,  # HardwareNotResponding
    }
)

_CHANNEL_KEY = r"^[A-Za-z0-9_]+(/[A-Za-z0-9_]+)?$"


class AOChannelSettings(BaseModel):
    """One analog output: the range the task is created with, and its fastest change."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min: float = Field(default=-10.0, description="V, min_val of the AO channel")
    max: float = Field(default=10.0, description="V, max_val of the AO channel")
    max_slew: float = Field(default=math.inf, gt=0, description="V/s between samples")

    @model_validator(mode="after")
    def _range(self) -> AOChannelSettings:
        if not (math.isfinite(self.min) and math.isfinite(self.max) and self.min <= 0 <= self.max):
            raise ValueError(f"AO range [{self.min}, {self.max}] V must be finite and hold 0 V")
        if self.min == self.max:
            raise ValueError("AO range: min must be below max")
        return self


class AIChannelSettings(BaseModel):
    """One analog input: its range and terminal configuration, and how volts become outputs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min: float = Field(default=-10.0, description="V, min_val of the AI channel")
    max: float = Field(default=10.0, description="V, max_val of the AI channel")
    terminal: Terminal = Field(default="default", description="TerminalConfiguration")
    gain: float = Field(
        default=1.0, gt=0, description="V per output unit: the transimpedance (V/A for A)"
    )
    inverted: bool = Field(default=False, description="an inverting amplifier: sign -1")
    offset: float = Field(default=0.0, description="V read with the AO at 0 V; subtracted")

    @model_validator(mode="after")
    def _range(self) -> AIChannelSettings:
        if not (math.isfinite(self.min) and math.isfinite(self.max) and self.min < self.max):
            raise ValueError(f"AI range [{self.min}, {self.max}] V must be finite and ordered")
        if not (math.isfinite(self.gain) and math.isfinite(self.offset)):
            raise ValueError("AI gain and offset must be finite")
        return self


class DaqSettings(BaseModel):
    """A DAQ card as the station file declares it.

    Channel keys are the card's channel names ("ao0", "ai3"), prefixed with `device`; a key with
    a slash ("cDAQ1Mod3/ao0") is a full physical channel (AO and AI on different modules).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    device: str = Field(default="Dev1", pattern=r"^[A-Za-z0-9_]+$", description="NI-MAX name")
    sample_rate: float = Field(gt=0, le=1e7, description="Hz, AO and AI sample clock")
    ao: dict[str, AOChannelSettings] = Field(min_length=1)
    ai: dict[str, AIChannelSettings] = Field(min_length=1)
    start_trigger: str | None = Field(
        default=None, description="AO start trigger source; default /<device>/ai/StartTrigger"
    )
    ao_clock_source: str = Field(
        default="", description='AO sample clock; "" = onboard, or e.g. /Dev1/ai/SampleClock'
    )
    timeout_margin: float = Field(
        default=2.0, gt=0, le=600, description="s added to a play's duration for its timeouts"
    )
    offset_samples: int = Field(
        default=1000, ge=1, le=10_000_000, description="samples averaged by measure_offset"
    )
    max_samples: int = Field(
        default=10_000_000, ge=1, description="longest waveform, samples per channel"
    )

    @field_validator("ao", "ai")
    @classmethod
    def _keys(cls, value: dict[str, Any]) -> dict[str, Any]:
        bad = [k for k in value if not re.match(_CHANNEL_KEY, k)]
        if bad:
            raise ValueError(f"channel names {bad}: use e.g. ao0, ai3 or Mod3/ao0")
        return value

    @property
    def trigger(self) -> str:
        return self.start_trigger or f"/{self.device}/ai/StartTrigger"

    def physical(self, key: str) -> str:
        """The physical channel of a channel key."""
        return key if "/" in key else f"{self.device}/{key}"


@dataclass(frozen=True)
class Limits:
    """Per-channel limits a waveform is checked against, and whose limits they are."""

    names: tuple[str, ...]
    lo: FloatArray
    hi: FloatArray
    slew: FloatArray
    owner: str

    def check_levels(self, levels: FloatArray) -> None:
        """Refuse non-finite levels and levels outside [lo, hi] (rows × channels)."""
        w = levels
        bad = ~np.isfinite(w)
        if bad.any():
            row, col = (int(i) for i in np.argwhere(bad)[0])
            raise SafetyViolation(self.names[col], float(w[row, col]), "a finite level")
        bad = (w < self.lo) | (w > self.hi)
        if bad.any():
            row, col = (int(i) for i in np.argwhere(bad)[0])
            raise SafetyViolation(
                self.names[col],
                float(w[row, col]),
                f"{self.owner} range [{self.lo[col]:g}, {self.hi[col]:g}] V",
                "nothing was sent",
            )

    def check(self, waveform: FloatArray, rate: float, held: FloatArray | None) -> None:
        """Refuse what `check_levels` refuses, and steps faster than the slew (from the held
        levels into the first sample too, when `held` is given)."""
        w = waveform
        self.check_levels(w)
        path = w if held is None else np.vstack([held[np.newaxis, :], w])
        if path.shape[0] < 2:
            return
        rates = np.abs(np.diff(path, axis=0)) * rate
        bad = rates > self.slew * (1 + 1e-9)
        if bad.any():
            row, col = (int(i) for i in np.argwhere(bad)[0])
            raise SafetyViolation(
                self.names[col],
                float(rates[row, col]),
                f"{self.owner} max_slew {self.slew[col]:g} V/s (step {row} of the path from the "
                "held level)",
                "ramp more slowly; nothing was sent",
            )


def ramp_samples(start: FloatArray, stop: FloatArray, slew: FloatArray, rate: float) -> int:
    """Fewest samples of a linear ramp from `start` to `stop` that keep every channel within its
    slew at `rate` (0 if nothing moves)."""
    distance = np.abs(stop - start)
    if not distance.any():
        return 0
    with np.errstate(divide="ignore"):
        seconds = np.where(distance > 0, distance / slew, 0.0)
    return max(1, math.ceil(float(np.max(seconds)) * rate - 1e-9))


def linear_ramp(start: FloatArray, stop: FloatArray, n: int) -> FloatArray:
    """n samples from `start` (excluded) to `stop` (included), rows × channels."""
    fractions = np.arange(1, n + 1) / n
    ramp: FloatArray = start[np.newaxis, :] + (stop - start)[np.newaxis, :] * fractions[:, None]
    ramp[-1] = stop
    return ramp


def import_nidaqmx() -> Any:
    """The real `nidaqmx` package (with its constants and errors), or a clear InstrumentError."""
    try:
        module = importlib.import_module("nidaqmx")
        importlib.import_module("nidaqmx.constants")
        importlib.import_module("nidaqmx.errors")
    except ImportError as exc:
        raise InstrumentError(
            "NI-DAQmx streaming needs the nidaqmx package: pip install 'hil[nidaq]' "
            f"(and NI's NI-DAQmx driver on the machine with the card) ({exc})"
        ) from exc
    return module


class DaqStream:
    """Synchronised finite AO/AI streaming on one NI DAQ card (see the module docstring)."""

    Settings = DaqSettings

    def __init__(self, settings: DaqSettings, nidaqmx_module: Any | None = None) -> None:
        self.settings = s = settings
        self._ni = nidaqmx_module if nidaqmx_module is not None else import_nidaqmx()
        self.ao_names = tuple(s.ao)
        self.ai_names = tuple(s.ai)
        ao = list(s.ao.values())
        self.limits = Limits(
            names=tuple(s.physical(k) for k in s.ao),
            lo=np.array([c.min for c in ao]),
            hi=np.array([c.max for c in ao]),
            slew=np.array([c.max_slew for c in ao]),
            owner=f"the DAQ {s.device} AO",
        )
        ai = list(s.ai.values())
        self._scale = np.array([(-1.0 if c.inverted else 1.0) / c.gain for c in ai])
        self._offsets = np.array([c.offset for c in ai])
        self._held: FloatArray = np.zeros(len(ao))

    @property
    def who(self) -> str:
        return f"DAQ {self.settings.device}"

    @property
    def held(self) -> FloatArray:
        """AO levels the card holds between tasks, V (NaN: unknown since a fault)."""
        return self._held.copy()

    @property
    def offsets(self) -> FloatArray:
        """Per AI channel, the volts subtracted from every reading."""
        return self._offsets.copy()

    def play(self, waveform: FloatArray) -> FloatArray:
        """Play a stream from 0 V back to 0 V; returns samples × AI channels in output units.

        Refused before any task exists (SafetyViolation): non-finite samples, samples outside an
        AO range, a first or last sample other than 0 V, a card not holding 0 V, a step faster
        than an AO channel's max_slew.
        """
        w = self._shape(waveform)
        for row, where in ((0, "first"), (-1, "last")):
            nonzero = np.flatnonzero(w[row] != 0)
            if nonzero.size:
                col = int(nonzero[0])
                raise SafetyViolation(
                    self.limits.names[col],
                    float(w[row, col]),
                    f"a stream's {where} sample must be 0 V",
                    "ramp from and back to 0 V inside the waveform; nothing was sent",
                )
        away = np.flatnonzero(self._held != 0)
        if away.size:
            col = int(away[0])
            raise SafetyViolation(
                self.limits.names[col],
                float(self._held[col]),
                "a stream starts with the card holding 0 V",
                "park() first; nothing was sent",
            )
        return self._to_outputs(self.drive_raw(w))

    def drive(self, waveform: FloatArray) -> FloatArray:
        """Play from the held levels (the path from them into the first sample is slew-checked);
        the card holds the last sample afterwards. Returns samples × AI channels, output units."""
        return self._to_outputs(self.drive_raw(self._shape(waveform)))

    def drive_raw(self, waveform: FloatArray) -> FloatArray:
        """`drive`, returning the AI readings in volts as read (no offset, gain or sign)."""
        w = self._shape(waveform)
        if not np.isfinite(self._held).all():
            raise InstrumentError(
                f"{self.who}: the AO level is unknown since a fault; park() first"
            )
        self.limits.check(w, self.settings.sample_rate, self._held)
        return self._run(w)

    def measure_offset(self, n_samples: int | None = None) -> FloatArray:
        """Read the AI channels with every AO at 0 V and keep the mean as the offsets (V)."""
        n = n_samples if n_samples is not None else self.settings.offset_samples
        if n < 1:
            raise ValueError(f"measure_offset: need at least 1 sample, got {n}")
        zeros = np.zeros((n, len(self.ao_names)))
        if (self._held != 0).any():
            raise InstrumentError(f"{self.who}: measure_offset needs the AO at 0 V; park() first")
        raw = self.drive_raw(zeros)
        self._offsets = raw.mean(axis=0)
        log.info("%s: AI offsets %s V", self.who, self._offsets.tolist())
        return self.offsets

    def park(
        self, max_slew: FloatArray | Sequence[float] | None = None, min_samples: int = 1
    ) -> int:
        """Ramp every AO channel from its held level to 0 V within its slew (and `max_slew`, if
        tighter), in at least `min_samples`; returns the samples played (0 if already at 0 V).

        With the held level unknown (a fault the card could not report on) the only way to a
        known level is one sample at 0 V: that step is logged as an error.
        """
        zero = np.zeros(len(self.ao_names))
        slew = self.limits.slew
        if max_slew is not None:
            slew = np.minimum(slew, np.asarray(max_slew, dtype=float))
        if not np.isfinite(self._held).all():
            log.error("%s: AO level unknown after a fault; stepping every AO to 0 V", self.who)
            self._run(zero[np.newaxis, :])
            return 1
        n = ramp_samples(self._held, zero, slew, self.settings.sample_rate)
        if n == 0:
            return 0
        ramp = linear_ramp(self._held, zero, max(n, min_samples))
        self.drive_raw(ramp)
        return int(ramp.shape[0])

    # -- the two tasks ----------------------------------------------------------------------

    def _run(self, w: FloatArray) -> FloatArray:
        """One synchronised finite play of `w` (already checked); AI volts, samples × AI.

        Both tasks are closed on every exit path; after a fault the held level is re-read.
        """
        tasks: dict[str, Any] = {}
        try:
            volts = self._tasks(w, tasks)
        except BaseException:
            self._close(tasks, quiet=True)
            raise
        self._close(tasks, quiet=False)
        return volts

    def _tasks(self, w: FloatArray, tasks: dict[str, Any]) -> FloatArray:
        """Create, configure, start, read, wait and stop; `tasks` collects what was created."""
        s, ni, call = self.settings, self._ni, self._call
        n = int(w.shape[0])
        timeout = n / s.sample_rate + s.timeout_margin
        finite = ni.constants.AcquisitionType.FINITE
        terminals = ni.constants.TerminalConfiguration
        ao_name, ai_name = f"hil-{s.device}-ao", f"hil-{s.device}-ai"
        ao = tasks[ao_name] = call(ao_name, "Task", ni.Task, ao_name)
        for key, c in s.ao.items():
            add = ao.ao_channels.add_ao_voltage_chan
            call(ao_name, "add_ao_voltage_chan", add, s.physical(key), min_val=c.min, max_val=c.max)
        timing = ao.timing.cfg_samp_clk_timing
        call(
            ao_name,
            "cfg_samp_clk_timing",
            timing,
            s.sample_rate,
            source=s.ao_clock_source,
            sample_mode=finite,
            samps_per_chan=n,
        )
        trigger = ao.triggers.start_trigger.cfg_dig_edge_start_trig
        call(ao_name, "cfg_dig_edge_start_trig", trigger, s.trigger)
        data = np.ascontiguousarray(w.T if w.shape[1] > 1 else w[:, 0], dtype=float)
        call(ao_name, "write", ao.write, data, auto_start=False, timeout=timeout)
        ai = tasks[ai_name] = call(ai_name, "Task", ni.Task, ai_name)
        for key, a in s.ai.items():
            call(
                ai_name,
                "add_ai_voltage_chan",
                ai.ai_channels.add_ai_voltage_chan,
                s.physical(key),
                terminal_config=terminals[a.terminal.upper()],
                min_val=a.min,
                max_val=a.max,
            )
        timing = ai.timing.cfg_samp_clk_timing
        call(
            ai_name,
            "cfg_samp_clk_timing",
            timing,
            s.sample_rate,
            sample_mode=finite,
            samps_per_chan=n,
        )
        call(ao_name, "start", ao.start)  # armed: waits for the AI start trigger
        try:
            call(ai_name, "start", ai.start)  # fires the trigger: both sample clocks start
            raw = call(ai_name, "read", ai.read, number_of_samples_per_channel=n, timeout=timeout)
            call(ao_name, "wait_until_done", ao.wait_until_done, timeout=timeout)
            call(ai_name, "stop", ai.stop)
            call(ao_name, "stop", ao.stop)
            volts = self._samples(raw, n)
        except BaseException:
            self._held = self._held_after_fault(ao_name, ao, w)
            raise
        self._held = w[-1].copy()
        return volts

    def _held_after_fault(self, name: str, ao: Any, w: FloatArray) -> FloatArray:
        """The AO level after a play broke off: the last sample generated (NaN if unknown)."""
        try:
            generated = int(ao.out_stream.total_samp_per_chan_generated)
        except Exception as exc:
            log.error("%s: task %s: cannot tell how far the AO got (%s)", self.who, name, exc)
            return np.full(w.shape[1], np.nan)
        if generated <= 0:
            return self._held
        held: FloatArray = w[min(generated, w.shape[0]) - 1].copy()
        return held

    def _close(self, tasks: dict[str, Any], *, quiet: bool) -> None:
        """Close every task (AI first), even if one close fails. The first failure is raised,
        or only logged when `quiet` (another error is already on its way)."""
        failure: InstrumentError | None = None
        for name, task in reversed(tasks.items()):
            try:
                self._call(name, "close", task.close)
            except InstrumentError as exc:
                failure = failure or exc
        if failure is not None:
            if not quiet:
                raise failure
            log.error("%s", failure)

    def _samples(self, raw: Any, n: int) -> FloatArray:
        """The read's data as samples × AI channels; anything but exactly n samples fails."""
        n_ai = len(self.ai_names)
        arr = np.asarray(raw, dtype=float)
        if arr.size != n * n_ai or (n_ai > 1 and arr.shape != (n_ai, n)):
            raise InstrumentProtocolError(
                f"{self.who}: read returned data of shape {arr.shape}, expected {n_ai} channels "
                f"× {n} samples; the play is not sample-exact and was discarded"
            )
        out: FloatArray = arr.reshape(n_ai, n).T.copy()
        return out

    def _to_outputs(self, volts: FloatArray) -> FloatArray:
        out: FloatArray = (volts - self._offsets) * self._scale
        return out

    def _shape(self, waveform: FloatArray) -> FloatArray:
        w = np.asarray(waveform, dtype=float)
        n_ao = len(self.ao_names)
        if w.ndim != 2 or w.shape[1] != n_ao or w.shape[0] < 1:
            raise ValueError(
                f"{self.who}: waveform must be samples × {n_ao} AO channels, got {w.shape}"
            )
        if w.shape[0] > self.settings.max_samples:
            raise ValueError(
                f"{self.who}: {w.shape[0]} samples exceed max_samples {self.settings.max_samples}"
            )
        return w

    def _call(self, task: str, call: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        with self._translated(task, call):
            return fn(*args, **kwargs)

    @contextlib.contextmanager
    def _translated(self, task: str, call: str) -> Iterator[None]:
        """nidaqmx errors → InstrumentError subclasses naming device, task, call and code.

        Errors without a code (errors.Error, e.g. DaqNotFoundError: no NI-DAQmx driver) become
        plain InstrumentErrors naming their class.
        """
        errors = self._ni.errors
        try:
            yield
        except getattr(errors, "Error", errors.DaqError) as exc:
            code = getattr(exc, "error_code", None)
            kind: type[InstrumentError] = InstrumentError
            if code in TIMEOUT_CODES:
                kind = InstrumentTimeout
            elif code in DISCONNECT_CODES:
                kind = InstrumentDisconnected
            text = str(exc).strip()
            detail = text.splitlines()[0] if text else type(exc).__name__
            what = f"DAQmx error {code}" if code is not None else type(exc).__name__
            raise kind(f"{self.who}: task {task!r}: {call} failed with {what}: {detail}") from exc
