"""What every substrate rig shares: the settings keys they have in common, the channel model,
the clock a station asks for, the range check before anything is sent, and the
try-every-instrument loop of safe states and closes.

Station files are validated strictly (`hil.config`), where a YAML string never is an enum and a
YAML list never a tuple: the models here take only what YAML gives (strings, numbers, lists).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal, TypeVar

import numpy as np
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, ValidationInfo

from hil.core import (
    Clock,
    DeviceBase,
    DeviceSpec,
    FloatArray,
    Role,
    SafetyViolation,
    VirtualClock,
    WallClock,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
S = TypeVar("S", bound=BaseModel)


def _role(value: Any) -> Any:
    """A role's name (what a YAML file gives) as the `Role` it names."""
    if isinstance(value, str) and not isinstance(value, Role):
        try:
            return Role(value)
        except ValueError:
            names = ", ".join(r.value for r in Role)
            raise ValueError(f"role {value!r} is not one of {names}") from None
    return value


RoleName = Annotated[Role, BeforeValidator(_role)]
"""A channel role given by name (`input`, `control`, `output`), also under strict validation."""


class RigSettings(BaseModel):
    """Keys every rig's `device:` block has: which clock its waits run on."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    clock: Literal["wall", "virtual"] = Field(
        default="wall",
        description="wall: waits sleep; virtual: waits advance a virtual clock "
        "(virtual instruments only: nothing physical settles)",
    )

    def make_clock(self, given: Clock | None = None) -> Clock:
        """`given`, or the clock the `clock` key names."""
        if given is not None:
            return given
        return VirtualClock() if self.clock == "virtual" else WallClock()


class PlateauSettings(RigSettings):
    """Keys of a rig that measures DC plateaus one reading at a time (SMU and DAC/ADC rigs)."""

    settle_time: float = Field(default=0.01, ge=0, le=60, description="s after a change")
    reading_time: float = Field(
        default=0.02, gt=0, le=60, description="s per reading (e.g. 1 NPLC at 50 Hz)"
    )
    output_gain: float = Field(default=1.0, description="what protocols see as gain")


class RigChannelBase(BaseModel):
    """One channel of a substrate: its role, and for a driven one its range and slew."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    role: RoleName
    min: float = Field(default=0.0, description="lowest level (driven channels)")
    max: float = Field(default=0.0, description="highest level (driven channels)")
    max_slew: float = Field(default=math.inf, gt=0, description="per second (driven channels)")
    unit: str = Field(default="V", min_length=1)

    @property
    def driven(self) -> bool:
        """An input or a control: something the rig sets."""
        return self.role is not Role.OUTPUT

    def check_range(self) -> None:
        """A driven channel's range must be finite, hold 0 (its safe level) and not be empty."""
        if not (math.isfinite(self.min) and math.isfinite(self.max)):
            raise ValueError(f"range [{self.min:g}, {self.max:g}] {self.unit} must be finite")
        if not self.min <= 0.0 <= self.max or self.min == self.max:
            span = f"[{self.min:g}, {self.max:g}] {self.unit}"
            raise ValueError(f"range {span} must contain 0 {self.unit} and not be empty")


def require_output(channels: Mapping[str, RigChannelBase]) -> None:
    """A rig measures something: at least one output channel."""
    if not any(c.role is Role.OUTPUT for c in channels.values()):
        raise ValueError("channels: at least one output is needed")


def entry_settings(
    name: str, entry: Mapping[str, Any], models: Mapping[str, type[S]], *, strict: bool = False
) -> S:
    """The validated settings of the `instruments.<name>` entry, by its `type:` (ValueError
    naming the key); `strict` for a file a person wrote, as the station around it."""
    fields = dict(entry)
    kind = fields.pop("type", None)
    if not isinstance(kind, str) or kind not in models:
        raise ValueError(f"instruments.{name}.type: {kind!r} is not one of {sorted(models)}")
    try:
        return models[kind].model_validate({"name": name, **fields}, strict=strict)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in (name, *first["loc"]))
        message = first["msg"].removeprefix("Value error, ")
        raise ValueError(f"instruments.{where}: {message}") from None


def strict_file(info: ValidationInfo) -> bool:
    """Whether the settings come from a file a person wrote (`hil.config` says so in the
    validation context), so entries validated by hand are held to the same strict types."""
    return bool(info.context and info.context.get("strict"))


def each(action: str, items: Mapping[str, T], fn: Callable[[T], None]) -> None:
    """`fn` on every item, each tried even after one fails; the first failure is raised after
    all (a safe state or close must reach every instrument)."""
    first: BaseException | None = None
    for name, item in items.items():
        try:
            fn(item)
        except BaseException as exc:
            log.error("%s of %r failed: %s", action, name, exc)
            first = first or exc
    if first is not None:
        raise first


class Rig(DeviceBase):
    """A device composed from instruments: its spec, its clock, and the checks before sending."""

    _spec: DeviceSpec
    _clock: Clock

    @property
    def spec(self) -> DeviceSpec:
        return self._spec

    @property
    def clock(self) -> Clock:
        return self._clock

    def _wait(self, seconds: float) -> None:
        if seconds > 0:
            self._clock.advance(seconds)

    def _checked(self, values: FloatArray, names: list[str], what: str) -> FloatArray:
        """Shape, finiteness and channel ranges, refused before anything is sent."""
        v = np.array(values, dtype=float)
        if v.shape != (len(names),):
            raise ValueError(f"{what}: expected shape ({len(names)},), got {v.shape}")
        for name, value in zip(names, v, strict=True):
            chan = self._spec.channel(name)
            if not (math.isfinite(value) and chan.min <= value <= chan.max):
                raise SafetyViolation(
                    name,
                    float(value),
                    f"the rig's range [{chan.min:g}, {chan.max:g}] {chan.unit}",
                    f"{what}; nothing was sent",
                )
        return v

    def _checked_rows(self, inputs: FloatArray, names: list[str]) -> FloatArray:
        """Input rows (n_cases × inputs) for `measure`, every row checked before anything is
        sent."""
        x = np.array(inputs, dtype=float)
        if x.ndim != 2 or x.shape[0] < 1:
            raise ValueError(f"measure: expected shape (n_cases, {len(names)}), got {x.shape}")
        for row in x:
            self._checked(row, names, "measure")
        return x
