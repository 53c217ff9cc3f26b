"""A substrate on one NI DAQ card (e.g. a DNPU): AO channels drive the electrodes, AI channels
read the outputs through transimpedance amplifiers. A `Device` that is also `Streaming`.

Everything the rig does is a finite AO/AI play of `drivers.nidaq.DaqStream`, so DC levels and
streams share one path and one sample clock:

- `set_controls(θ)` ramps the controls from the levels the card holds to θ (at least
  `ramp_time`, longer if a channel's slew needs it); the inputs keep their levels;
- `measure(X)` plays one plateau per row of X: a linear ramp of `ramp_time` from the previous
  levels, `settle_time` of settling, then `plateau_samples` samples whose mean is the row's
  output — all rows in one play, so a plateau costs exactly `spec.plateau_time()`;
- `stream(waveform, channels)` plays the waveform on the named inputs/controls while the others
  keep their levels, and returns every output sample;
- `safe_state()` ramps every AO channel to 0 V within its slew and leaves it there.

What the card holds between plays is explicit: a DAQ's AO keeps its last sample when a task ends,
so after every play each electrode holds the play's last level (`held`), and the next play is
checked from there (range and slew of the rig's channel map first, then the card's own AO limits).
Nothing is clamped: a request outside a limit raises `SafetyViolation` before any task exists.

A rig has no random number generator and no `noise_streams`: its noise is the hardware's.
With `clock: virtual` the device clock advances by each play's duration (for a rig over the fake
`nidaqmx` in CI); with `clock: wall` the play itself took the time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from pydantic import Field, model_validator

from drivers.nidaq import DaqSettings, DaqStream, Limits, linear_ramp, ramp_samples
from drivers.rigs.base import Rig, RigChannelBase, RigSettings, require_output
from hil.core import Channel, Clock, DeviceSpec, FloatArray, InstrumentDisconnected, Role


class DaqRigChannel(RigChannelBase):
    """One electrode or output of the substrate and the DAQ channel wired to it (levels in V;
    an output's `unit` is that of its AI gain)."""

    ao: str | None = Field(default=None, description="the DAQ AO channel driving an electrode")
    ai: str | None = Field(default=None, description="the DAQ AI channel reading an output")


class DaqRigSettings(RigSettings):
    """The station-file entry of a DAQ rig: the card, the channel map and the plateau timing."""

    name: str = Field(default="daq-rig", min_length=1)
    daq: DaqSettings
    channels: dict[str, DaqRigChannel] = Field(min_length=2)
    settle_time: float = Field(default=0.0, ge=0, le=3600, description="s before averaging")
    ramp_time: float = Field(default=0.0, ge=0, le=60, description="s of ramp between plateaus")
    plateau_samples: int = Field(default=10, ge=1, le=1_000_000, description="samples averaged")

    @model_validator(mode="after")
    def _wired(self) -> DaqRigSettings:
        ao_used: list[str] = []
        ai_used: list[str] = []
        for name, c in self.channels.items():
            if c.role is Role.OUTPUT:
                if c.ai is None or c.ao is not None:
                    raise ValueError(f"channel {name!r}: an output names its `ai` channel only")
                if c.ai not in self.daq.ai:
                    raise ValueError(f"channel {name!r}: ai {c.ai!r} is not under daq.ai")
                ai_used.append(c.ai)
                continue
            if c.ao is None or c.ai is not None:
                raise ValueError(f"channel {name!r}: an {c.role} names its `ao` channel only")
            if c.ao not in self.daq.ao:
                raise ValueError(f"channel {name!r}: ao {c.ao!r} is not under daq.ao")
            ao_used.append(c.ao)
            card = self.daq.ao[c.ao]
            try:
                c.check_range()
            except ValueError as exc:
                raise ValueError(f"channel {name!r}: {exc}") from None
            if not card.min <= c.min < c.max <= card.max:
                raise ValueError(
                    f"channel {name!r}: range [{c.min}, {c.max}] V must be ordered and inside "
                    f"the AO range [{card.min}, {card.max}] V of {c.ao}"
                )
        require_output(self.channels)
        for kind, used, declared in (("ao", ao_used, self.daq.ao), ("ai", ai_used, self.daq.ai)):
            if sorted(used) != sorted(declared):
                raise ValueError(
                    f"every daq.{kind} channel must be wired to exactly one rig channel: "
                    f"declared {sorted(declared)}, wired {sorted(used)}"
                )
        rate = self.daq.sample_rate
        for key in ("ramp_time", "settle_time"):
            samples = getattr(self, key) * rate
            if abs(samples - round(samples)) > 1e-6:
                raise ValueError(
                    f"{key} {getattr(self, key)} s is {samples:g} samples at {rate:g} Hz; "
                    "make it a whole number of samples"
                )
        return self


class DaqRig(Rig):
    """A `Device` and `Streaming` substrate on one NI DAQ card (see the module docstring)."""

    Settings = DaqRigSettings

    def __init__(
        self,
        settings: DaqRigSettings,
        *,
        clock: Clock | None = None,
        nidaqmx_module: Any | None = None,
    ) -> None:
        self.settings = s = settings
        self.daq = DaqStream(s.daq, nidaqmx_module)
        self._clock = s.make_clock(clock)
        self._rate = s.daq.sample_rate
        self._n_ramp = round(s.ramp_time * self._rate)
        self._n_hold = round(s.settle_time * self._rate) + s.plateau_samples
        self._spec = self._make_spec()
        ao_keys = list(s.daq.ao)
        ai_keys = list(s.daq.ai)
        driven = {c.ao: (name, c) for name, c in s.channels.items() if c.ao is not None}
        self._ao_names = [driven[k][0] for k in ao_keys]
        self._column = {name: ao_keys.index(c.ao) for name, c in s.channels.items() if c.ao}
        self._in_cols = [self._column[c.name] for c in self._spec.inputs]
        self._ctrl_cols = [self._column[c.name] for c in self._spec.controls]
        self._out_cols = [ai_keys.index(str(s.channels[c.name].ai)) for c in self._spec.outputs]
        chans = [driven[k][1] for k in ao_keys]
        self.limits = Limits(
            names=tuple(self._ao_names),
            lo=np.array([c.min for c in chans]),
            hi=np.array([c.max for c in chans]),
            slew=np.array([c.max_slew for c in chans]),
            owner=f"the rig {s.name!r} channel",
        )
        self._slew = np.minimum(self.limits.slew, self.daq.limits.slew)
        self._closed = False

    def _make_spec(self) -> DeviceSpec:
        """The channel map as channels; a driven channel's slew is the tighter of its own and
        its AO channel's."""
        s = self.settings
        channels = [
            Channel(name=name, role=c.role, unit=c.unit)
            if c.ao is None
            else Channel(
                name=name,
                role=c.role,
                min=c.min,
                max=c.max,
                max_slew=min(c.max_slew, s.daq.ao[c.ao].max_slew),
            )
            for name, c in s.channels.items()
        ]
        first_output = next(c for c in s.channels.values() if c.role is Role.OUTPUT)
        return DeviceSpec(
            name=s.name,
            channels=tuple(channels),
            sample_rate=s.daq.sample_rate,
            settle_time=s.settle_time,
            ramp_time=s.ramp_time,
            plateau_samples=s.plateau_samples,
            output_gain=s.daq.ai[str(first_output.ai)].gain,
        )

    # -- Device ---------------------------------------------------------------------------------

    @property
    def held(self) -> dict[str, float]:
        """The level each driven channel holds now, V (the card keeps its last AO sample)."""
        return dict(zip(self._ao_names, self.daq.held.tolist(), strict=True))

    def set_controls(self, values: FloatArray) -> None:
        """Ramp the controls to `values` (spec order) from the held levels; inputs stay."""
        self._check_open()
        v = np.array(values, dtype=float)
        if v.shape != (len(self._ctrl_cols),):
            raise ValueError(
                f"set_controls: expected shape ({len(self._ctrl_cols)},), got {v.shape}"
            )
        held = self.daq.held
        target = held.copy()
        target[self._ctrl_cols] = v
        self.limits.check_levels(target[np.newaxis, :])
        n = ramp_samples(held, target, self._slew, self._rate)
        if n == 0:
            return
        self._play(linear_ramp(held, target, max(n, self._n_ramp)))

    def measure(self, inputs: FloatArray) -> FloatArray:
        """One plateau per input row (ramp, settle, average), all in one play;
        returns n_cases × n_outputs in the outputs' units."""
        self._check_open()
        x = np.array(inputs, dtype=float)
        n_in = len(self._in_cols)
        if x.ndim != 2 or x.shape[1] != n_in or x.shape[0] < 1:
            raise ValueError(f"measure: expected shape (n_cases, {n_in}), got {x.shape}")
        held = self.daq.held
        n_cases = x.shape[0]
        targets = np.tile(held, (n_cases, 1))
        targets[:, self._in_cols] = x
        self.limits.check_levels(targets)
        starts = np.vstack([held[np.newaxis, :], targets[:-1]])
        n_ramp = self._n_ramp
        fractions = np.arange(1, n_ramp + 1) / max(n_ramp, 1)
        ramps = starts[:, None, :] + (targets - starts)[:, None, :] * fractions[None, :, None]
        holds = np.broadcast_to(targets[:, None, :], (n_cases, self._n_hold, targets.shape[1]))
        wave = np.concatenate([ramps, holds], axis=1).reshape(-1, targets.shape[1])
        out = self._play(wave)
        per_case = out.reshape(n_cases, n_ramp + self._n_hold, out.shape[1])
        mean: FloatArray = per_case[:, -self.settings.plateau_samples :, :].mean(axis=1)
        return mean

    def stream(self, waveform: FloatArray, channels: Sequence[str]) -> FloatArray:
        """Play `waveform` (n_samples × len(channels)) on named inputs/controls; the others keep
        their levels. Returns n_samples × n_outputs; afterwards each channel holds its last
        sample."""
        self._check_open()
        names = list(channels)
        w = np.array(waveform, dtype=float)
        if w.ndim != 2 or w.shape[1] != len(names) or w.shape[0] < 1:
            raise ValueError(f"stream: expected shape (n_samples, {len(names)}), got {w.shape}")
        if len(set(names)) != len(names):
            raise ValueError(f"stream: duplicate channel names in {names}")
        unknown = [n for n in names if n not in self._column]
        if unknown:
            raise ValueError(
                f"{unknown} are not input or control channels of {self._spec.name!r}; "
                f"driven channels are {self._ao_names}"
            )
        full = np.tile(self.daq.held, (w.shape[0], 1))
        full[:, [self._column[n] for n in names]] = w
        return self._play(full)

    def safe_state(self) -> None:
        """Ramp every AO channel to 0 V within its slew (at least `ramp_time`) and hold it there.
        Idempotent: nothing is played when the card already holds 0 V."""
        if self._closed:
            return
        n = self.daq.park(max_slew=self.limits.slew, min_samples=max(self._n_ramp, 1))
        self._elapse(n)

    def close(self) -> None:
        """Go safe, then release the card (each play's tasks are already closed)."""
        if self._closed:
            return
        try:
            self.safe_state()
        finally:
            self._closed = True

    def measure_offset(self) -> FloatArray:
        """Go safe, then measure the AI offsets with every AO at 0 V (V, per daq.ai channel)."""
        self._check_open()
        self.safe_state()
        offsets = self.daq.measure_offset()
        self._elapse(self.settings.daq.offset_samples)
        return offsets

    # -- internals ------------------------------------------------------------------------------

    def _play(self, wave: FloatArray) -> FloatArray:
        """Check against the rig's limits from the held levels, play, return the outputs."""
        self.limits.check(wave, self._rate, self.daq.held)
        out = self.daq.drive(wave)
        self._elapse(wave.shape[0])
        result: FloatArray = out[:, self._out_cols]
        return result

    def _elapse(self, samples: int) -> None:
        """With `clock: virtual` the clock advances by the play's duration; with `clock: wall`
        the time has already passed while the card played."""
        if samples and self.settings.clock == "virtual":
            self._clock.advance(samples / self._rate)

    def _check_open(self) -> None:
        if self._closed:
            raise InstrumentDisconnected(
                f"rig {self._spec.name!r} is closed; build a new one to measure again"
            )
