"""Channels and device specifications: what a device exposes and within which limits."""

from __future__ import annotations

import math
from enum import StrEnum

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from hil.core.types import FloatArray


class Role(StrEnum):
    """What a channel does in a learning machine."""

    INPUT = "input"  # data electrode: carries the task's inputs
    CONTROL = "control"  # trainable electrode: the parameters the optimizer moves
    OUTPUT = "output"  # measured node


class Channel(BaseModel):
    """One electrode or measured node, with the range the hardware accepts."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    role: Role
    min: float = -math.inf
    max: float = math.inf
    unit: str = "V"
    max_slew: float = Field(default=math.inf, gt=0, description="maximum rate of change, unit/s")

    @model_validator(mode="after")
    def _ordered(self) -> Channel:
        if not self.min < self.max:
            raise ValueError(f"channel {self.name!r}: min {self.min} must be below max {self.max}")
        return self

    @property
    def range(self) -> tuple[float, float]:
        return (self.min, self.max)


class DeviceSpec(BaseModel):
    """Everything a protocol needs to plan a measurement on a device."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    channels: tuple[Channel, ...]
    sample_rate: float | None = Field(default=None, gt=0, description="Hz, for streaming devices")
    settle_time: float = Field(default=0.0, ge=0, description="s to wait after a DC change")
    ramp_time: float = Field(
        default=0.0, ge=0, description="s of linear ramp from one plateau's levels to the next"
    )
    plateau_samples: int | None = Field(
        default=None, ge=1, description="samples averaged per plateau by `measure`, if sampled"
    )
    output_gain: float = Field(default=1.0, description="e.g. transimpedance, V/A")

    @model_validator(mode="after")
    def _unique_names(self) -> DeviceSpec:
        names = [c.name for c in self.channels]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"device {self.name!r}: duplicate channel names {duplicates}")
        return self

    def by_role(self, role: Role) -> tuple[Channel, ...]:
        return tuple(c for c in self.channels if c.role is role)

    @property
    def inputs(self) -> tuple[Channel, ...]:
        return self.by_role(Role.INPUT)

    @property
    def controls(self) -> tuple[Channel, ...]:
        return self.by_role(Role.CONTROL)

    @property
    def outputs(self) -> tuple[Channel, ...]:
        return self.by_role(Role.OUTPUT)

    def channel(self, name: str) -> Channel:
        for c in self.channels:
            if c.name == name:
                return c
        raise KeyError(f"device {self.name!r} has no channel {name!r}")

    def plateau_time(self) -> float:
        """Device seconds one `measure` plateau takes: ramp, settle, then the averaged samples."""
        sampling = 0.0
        if self.plateau_samples is not None and self.sample_rate is not None:
            sampling = self.plateau_samples / self.sample_rate
        return self.ramp_time + self.settle_time + sampling

    def bounds(self, role: Role) -> tuple[FloatArray, FloatArray]:
        """Lower and upper range of the channels with `role`, in channel order."""
        chans = self.by_role(role)
        return (
            np.array([c.min for c in chans], dtype=float),
            np.array([c.max for c in chans], dtype=float),
        )
