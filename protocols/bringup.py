"""Station bring-up as a resumable procedure: IV sweeps, output noise, step responses (issue 10).

`CalibrationProcedure` (registry name `calibrate`) runs its measurements one step each, through
whatever device it is given (the safety guard in a run), and keeps their results in its state, so
the run engine checkpoints and resumes it like a training run:

- `iv`: per driven electrode, a sweep 0 → max → min → 0 over `points` levels per leg (the guard
  ramps controls and checks input plateaus), the other electrodes at 0 V; the outputs at every
  level, and the small-signal slope ∂y/∂V at 0 V from the points nearest it.
- `noise`: a stream of zeros on the inputs for `seconds` (streaming devices), each output's
  spectrum fitted by `protocols.noise_fit` (white floor, 1/f part, corner, mains lines).
- `step`: per electrode, a stream holding 0 V, stepping to `fraction` of the range's top and back
  (streaming devices without a slew limit on that electrode); bandwidth and settling time per
  output by `protocols.step_response`.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from hil.core import (
    Channel,
    ConfigError,
    Device,
    FloatArray,
    JSONDict,
    Parking,
    Role,
    Streaming,
)
from protocols.noise_fit import fit_noise
from protocols.step_response import fit_step

Measurement = Literal["iv", "noise", "step"]
ALL: tuple[Measurement, ...] = ("iv", "noise", "step")


class IVSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    points: int = Field(default=11, ge=3, le=1001, description="levels per leg of the sweep")
    fraction: float = Field(default=1.0, gt=0, le=1, description="of each range end")


class NoiseSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    seconds: float = Field(default=4.0, gt=0, le=3600, description="s of record")
    mains: float = Field(default=50.0, ge=0, le=1000, description="Hz; 0: no mains lines")


class StepSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    fraction: float = Field(default=0.25, gt=0, le=1, description="of the range's top")
    before: float = Field(default=0.05, gt=0, le=60, description="s at 0 V before the step")
    after: float = Field(default=0.2, gt=0, le=600, description="s at the level")
    tolerance: float = Field(default=0.01, gt=0, lt=1, description="settled within this")


class CalibrationProcedure:
    """Bring-up measurements, one per step, results kept in the state (resumable)."""

    class Settings(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)

        what: list[Measurement] = Field(default_factory=lambda: list(ALL), min_length=1)
        iv: IVSettings = Field(default_factory=IVSettings)
        noise: NoiseSettings = Field(default_factory=NoiseSettings)
        step: StepSettings = Field(default_factory=StepSettings)

    def __init__(self, settings: Settings, *, device: Device, **_: object) -> None:
        self.settings = settings
        self.device = device
        spec = device.spec
        self._driven = [c for c in spec.channels if c.role is not Role.OUTPUT]
        self._outputs = [c.name for c in spec.outputs]
        streams = isinstance(device, Streaming) and spec.sample_rate is not None
        plan: list[tuple[Measurement, str]] = []
        for what in dict.fromkeys(settings.what):
            if what in ("noise", "step") and not streams:
                raise ConfigError(
                    f"procedure.what: {what!r} needs a streaming device; {spec.name!r} does "
                    "not stream (measure iv only, or use a streaming rig)",
                    key=("procedure", "what"),
                )
            if what == "noise":
                plan.append(("noise", ""))
            else:
                plan += [(what, c.name) for c in self._driven]
        self._plan = plan
        self._results: list[JSONDict] = []

    # -- the Procedure interface -----------------------------------------------------------------
    @property
    def steps_done(self) -> int:
        return len(self._results)

    @property
    def total_steps(self) -> int:
        return len(self._plan)

    @property
    def done(self) -> bool:
        return self.steps_done >= self.total_steps

    def step(self) -> JSONDict:
        what, channel = self._plan[self.steps_done]
        t0 = self.device.clock.now()
        if what == "iv":
            result = self._iv(self.device.spec.channel(channel))
        elif what == "noise":
            result = self._noise()
        else:
            result = self._step(self.device.spec.channel(channel))
        record: JSONDict = {
            "step": self.steps_done + 1,
            "measurement": what,
            "channel": channel or None,
            "device_seconds": self.device.clock.now() - t0,
            "device_time": self.device.clock.now(),
            **result,
        }
        self._results.append(record)
        return record

    def progress(self) -> JSONDict:
        return {"steps_done": self.steps_done, "total_steps": self.total_steps}

    def finish(self) -> JSONDict:
        return {"calibration": self._results}

    def state_dict(self) -> JSONDict:
        return {"results": [dict(r) for r in self._results]}

    def load_state_dict(self, state: JSONDict) -> None:
        results = state["results"]
        if not isinstance(results, list) or len(results) > self.total_steps:
            raise ValueError("calibration state: results do not fit this plan")
        self._results = [dict(r) for r in results]

    # -- measurements ------------------------------------------------------------------------------
    def _levels(self, chan: Channel) -> FloatArray:
        n, f = self.settings.iv.points, self.settings.iv.fraction
        top, bottom = f * chan.max, f * chan.min
        up = np.linspace(0.0, top, n)
        down = np.linspace(top, bottom, 2 * n - 1)[1:]
        back = np.linspace(bottom, 0.0, n)[1:]
        return np.concatenate([up, down, back])

    def _iv(self, chan: Channel) -> JSONDict:
        levels = self._levels(chan)
        spec = self.device.spec
        n_in, controls = len(spec.inputs), [c.name for c in spec.controls]
        if chan.role is Role.INPUT:
            column = [c.name for c in spec.inputs].index(chan.name)
            self.device.set_controls(np.zeros(len(controls)))
            rows = np.zeros((levels.size, n_in))
            rows[:, column] = levels
            y = np.asarray(self.device.measure(rows), dtype=float)
        else:
            index, answered = controls.index(chan.name), []
            for level in levels:
                theta = np.zeros(len(controls))
                theta[index] = level
                self.device.set_controls(theta)
                answered.append(self.device.measure(np.zeros((1, n_in)))[0])
            self.device.set_controls(np.zeros(len(controls)))
            y = np.asarray(answered, dtype=float)
        distinct = np.unique(levels)
        nearest = distinct[np.argsort(np.abs(distinct))[: max(3, distinct.size // 4)]]
        near = np.isin(levels, nearest)  # every visit of the levels nearest 0 V, both directions
        slope = [
            float(np.polyfit(levels[near], y[near, k], 1)[0]) for k in range(len(self._outputs))
        ]
        return {"levels": levels.tolist(), "outputs": y.tolist(), "slope_at_zero": slope}

    def _to_zero(self) -> None:
        """Every driven channel to 0 V (within its limits, where the device can ramp): a
        stream starts from the levels held."""
        if isinstance(self.device, Parking):
            self.device.park()
        else:
            self.device.set_controls(np.zeros(len(self.device.spec.controls)))

    def _noise(self) -> JSONDict:
        s, spec = self.settings.noise, self.device.spec
        assert isinstance(self.device, Streaming)
        assert spec.sample_rate is not None
        self._to_zero()
        n = max(512, round(s.seconds * spec.sample_rate))
        names = [c.name for c in spec.inputs] or [spec.controls[0].name]
        trace = self.device.stream(np.zeros((n, len(names))), names)
        fits = {}
        for k, name in enumerate(self._outputs):
            fit = fit_noise(trace[:, k], spec.sample_rate, mains=s.mains)
            fits[name] = {
                "white": fit.white,
                "white_se": fit.white_se,
                "flicker": fit.flicker,
                "flicker_se": fit.flicker_se,
                "alpha": fit.alpha,
                "alpha_se": fit.alpha_se,
                "corner": fit.corner,
                "corner_se": fit.corner_se,
                "lines": [[line.frequency, line.excess] for line in fit.lines],
            }
        return {"samples": n, "noise": fits}

    def _step(self, chan: Channel) -> JSONDict:
        s, spec = self.settings.step, self.device.spec
        assert isinstance(self.device, Streaming)
        assert spec.sample_rate is not None
        if math.isfinite(chan.max_slew):
            raise ConfigError(
                f"procedure.what: a step response of {chan.name!r} needs a jump, but the "
                f"channel is slew-limited ({chan.max_slew:g} {chan.unit}/s); leave `step` out",
                key=("procedure", "what"),
            )
        self._to_zero()
        rate = spec.sample_rate
        before, after = round(s.before * rate), round(s.after * rate)
        size = s.fraction * (chan.max if chan.max > 0 else chan.min)
        wave = np.zeros((before + after + 1, 1))
        wave[before : before + after, 0] = size
        trace = self.device.stream(wave, [chan.name])
        fits = {}
        for k, name in enumerate(self._outputs):
            fit = fit_step(trace[: before + after, k], rate, before, size, tolerance=s.tolerance)
            fits[name] = {
                "bandwidth": fit.bandwidth,
                "bandwidth_se": fit.bandwidth_se,
                "settling_time": None if math.isnan(fit.settling_time) else fit.settling_time,
                "gain": fit.gain,
                "residual_rms": fit.residual_rms,
            }
        return {"step_size": size, "response": fits}
