"""Station bring-up as a resumable procedure (registry name `calibrate`, `hil calibrate`).

`CalibrationProcedure` runs its measurements one step each, through whatever device it is given
(the safety guard in a run), and keeps their results in its state, so the run engine journals,
checkpoints, records traces of and resumes it like a training run. What each measures is in
`protocols.bringup_measure` (iv, offset, noise, step), `protocols.hge_plan` (plan, check) and
`protocols.bringup_crossbar` (conductance, pulses). The steps, in the order given by `what`:

- `iv` and `step`: one step per driven electrode; every other measurement: one step.
- `check` plays the plan of this calibration (so `plan` must come before it).
- Without `what`, the device decides: a streaming device gets iv, offset, noise, step and plan;
  one with programmable weights (a crossbar) conductance, pulses and offset; any other iv and
  offset.

Every step record carries `measurement`, `channel` (or null), `output_names`, the device seconds
it took and the device time it ended at, plus the measurement's own keys.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from hil.core import ConfigError, Device, JSONDict, ProgrammableState, Role, Streaming
from protocols import bringup_crossbar as crossbar
from protocols import bringup_measure as measure
from protocols.hge_plan import PlanSettings, check_plan, make_plan

Measurement = Literal["iv", "offset", "noise", "step", "plan", "check", "conductance", "pulses"]
STREAMING: tuple[Measurement, ...] = ("iv", "offset", "noise", "step", "plan")
PROGRAMMABLE: tuple[Measurement, ...] = ("conductance", "pulses", "offset")
PLATEAUS: tuple[Measurement, ...] = ("iv", "offset")
PER_ELECTRODE: frozenset[str] = frozenset({"iv", "step"})
NEEDS_STREAM: frozenset[str] = frozenset({"noise", "step", "plan", "check"})
NEEDS_WEIGHTS: frozenset[str] = frozenset({"conductance", "pulses"})


def default_measurements(device: Device) -> tuple[Measurement, ...]:
    """What a bring-up measures on `device` when `what` is not given."""
    if isinstance(device, Streaming) and device.spec.sample_rate is not None:
        return STREAMING
    if isinstance(device, ProgrammableState):
        return PROGRAMMABLE
    return PLATEAUS


class CalibrationProcedure:
    """Bring-up measurements, one per step, results kept in the state (resumable)."""

    class Settings(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)

        what: list[Measurement] | None = Field(
            default=None, min_length=1, description="measurements in order; default: by device"
        )
        iv: measure.IVSettings = Field(default_factory=measure.IVSettings)
        offset: measure.OffsetSettings = Field(default_factory=measure.OffsetSettings)
        noise: measure.NoiseSettings = Field(default_factory=measure.NoiseSettings)
        step: measure.StepSettings = Field(default_factory=measure.StepSettings)
        plan: PlanSettings = Field(default_factory=PlanSettings)
        conductance: crossbar.ConductanceSettings = Field(
            default_factory=crossbar.ConductanceSettings
        )
        pulses: crossbar.PulseSettings = Field(default_factory=crossbar.PulseSettings)

        @model_validator(mode="after")
        def _check_after_plan(self) -> CalibrationProcedure.Settings:
            what = list(dict.fromkeys(self.what or ()))
            if "check" in what and ("plan" not in what or what.index("plan") > what.index("check")):
                raise ValueError("'check' plays the plan of this calibration: put 'plan' before it")
            return self

    def __init__(self, settings: Settings, *, device: Device, **_: object) -> None:
        self.settings = settings
        self.device = device
        spec = device.spec
        driven = [c.name for c in spec.channels if c.role is not Role.OUTPUT]
        streams = isinstance(device, Streaming) and spec.sample_rate is not None
        weights = isinstance(device, ProgrammableState)
        plan: list[tuple[Measurement, str]] = []
        for what in dict.fromkeys(settings.what or default_measurements(device)):
            if (what in NEEDS_STREAM and not streams) or (what in NEEDS_WEIGHTS and not weights):
                needs = "a streaming device" if what in NEEDS_STREAM else "programmable weights"
                raise ConfigError(
                    f"procedure.what: {what!r} needs {needs}; {spec.name!r} has none (leave "
                    f"it out; this device measures {list(default_measurements(device))})",
                    key=("procedure", "what"),
                )
            if what in PER_ELECTRODE:
                plan += [(what, name) for name in driven]
            else:
                plan.append((what, ""))
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
        result = self._measure(what, channel)
        record: JSONDict = {
            "step": self.steps_done + 1,
            "measurement": what,
            "channel": channel or None,
            "output_names": [c.name for c in self.device.spec.outputs],
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
    def _output_bandwidth(self) -> float | None:
        """The lowest bandwidth the step responses of this calibration resolved, else the
        plan's `output_bandwidth` setting (None: neither)."""
        found = [
            float(fit["bandwidth"])
            for r in self._results
            if r["measurement"] == "step"
            for fit in r["response"].values()
            if fit.get("resolved")
        ]
        return min(found) if found else self.settings.plan.output_bandwidth

    def _measure(self, what: Measurement, channel: str) -> JSONDict:
        s, device = self.settings, self.device
        if what == "iv":
            return measure.iv(device, device.spec.channel(channel), s.iv)
        if what == "step":
            return measure.step(device, device.spec.channel(channel), s.step)
        if what == "offset":
            return measure.offset(device, s.offset)
        if what == "noise":
            return measure.noise(device, s.noise)
        if what == "plan":
            return make_plan(device, s.plan, self._output_bandwidth())
        if what == "conductance":
            return crossbar.conductance_map(device, s.conductance)
        if what == "pulses":
            return crossbar.pulse_response(device, s.pulses)
        plan = next(r for r in reversed(self._results) if r["measurement"] == "plan")
        checked = check_plan(device, s.plan, plan)
        return {"plan_step": plan["step"], "check": checked}
