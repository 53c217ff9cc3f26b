"""The `limits:` section of a station file, frozen, and how two sets of limits merge at resume."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from hil.core.errors import ConfigError


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
