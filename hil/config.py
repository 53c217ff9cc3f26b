"""Station and experiment configuration: pydantic models, YAML loading, errors that point home.

A station file is the lab's wiring diagram: which device (`type:` plus its settings) and the
experiment limits the safety guard enforces. An experiment file names a station (a path relative to
the experiment file, or inline) and the procedure, task, estimator and optimizer to run on it.
Every component is `type:` plus that class's own settings; unknown keys are rejected everywhere.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hil.core import ConfigError, RegistryError
from hil.core.paths import ConfigPath, UnreadableFile
from hil.registry import Kind, resolve
from hil.safety import SafetyLimits
from hil.yamlfile import KeyPath, YamlDocument, dotted, load_yaml, one_line

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
MAX_NAME = 64  # a run directory's name holds it
MAX_DESCRIPTION = 10_000


class Component(BaseModel):
    """`type:` (a registered name or an import path) plus the class's own settings."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(
        min_length=1, max_length=200, description="registered name or 'package.module:Class'"
    )

    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class InjectedFaults(BaseModel):
    """Transport faults a served virtual instrument injects (tests and operator drills)."""

    model_config = ConfigDict(extra="forbid")

    delay: float = Field(default=0.0, ge=0, le=60, description="s before every reply")
    drop: int = Field(default=0, ge=0, le=1_000_000, description="the next N replies not sent")
    garble: int = Field(default=0, ge=0, le=1_000_000, description="the next N replies corrupted")
    disconnect_after: int | None = Field(
        default=None, ge=0, le=10**9, description="close the connection after N more messages"
    )


class VirtualConfig(BaseModel):
    """The simulator a station's virtual instruments serve (`hil serve`, `address: virtual`)."""

    model_config = ConfigDict(extra="forbid")

    device: Component = Field(description="the simulator behind the virtual instruments")
    seed: int | None = Field(
        default=None, ge=0, description="the simulator's seed; omitted = the run's device seed"
    )
    faults: dict[str, InjectedFaults] = Field(
        default_factory=dict,
        description="instrument name → transport faults its server injects (served ones only)",
    )


class FaultPolicy(BaseModel):
    """What the run engine does when an instrument fails during a step."""

    model_config = ConfigDict(extra="forbid")

    retries: int = Field(default=2, ge=0, le=20, description="attempts of a failed step again")
    backoff: float = Field(default=1.0, ge=0, le=600, description="s before the first retry")
    factor: float = Field(default=2.0, ge=1, le=10, description="backoff growth per retry")


class RecordPolicy(BaseModel):
    """What a run keeps in traces.h5: everything, the DC requests only (no waveforms), or none;
    recording stops (the run goes on) when the file reaches max_mb."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["all", "plateaus", "none"] = "all"
    max_mb: float = Field(default=200.0, gt=0, description="size cap of traces.h5 in MB")


class CalibrationUse(BaseModel):
    """Which station calibration a run uses (`hil calibrate` writes it beside the station file)
    and when it is too old; a homodyne estimator takes the plan's settings it leaves unset."""

    model_config = ConfigDict(extra="forbid")

    use: bool = Field(default=True, description="load the station's calibration, if there is one")
    file: ConfigPath | None = Field(
        default=None, description="this calibration file instead of the station's own"
    )
    max_age_days: float = Field(
        default=7.0, gt=0, le=36_500, description="older calibrations are warned about"
    )


class StationConfig(BaseModel):
    """One station: the device and the limits the safety guard enforces on it."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN, max_length=MAX_NAME)
    description: str = Field(default="", max_length=MAX_DESCRIPTION)
    device: Component
    limits: SafetyLimits
    virtual: VirtualConfig | None = Field(
        default=None, description="a simulator served as this station's instruments"
    )


class ExperimentConfig(BaseModel):
    """One experiment: a station, a procedure and the components it uses."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        pattern=NAME_PATTERN, max_length=MAX_NAME, description="used in the run directory name"
    )
    description: str = Field(default="", max_length=MAX_DESCRIPTION)
    station: str | dict[str, Any] = Field(
        description="path to a station file (relative to this file) or the station inline "
        "(validated as a station file)"
    )
    seed: int | None = Field(
        default=None, ge=0, description="root seed; omitted = fresh entropy, recorded in run.json"
    )
    procedure: Component = Field(default_factory=lambda: Component(type="train"))
    task: Component | None = Field(default=None, description="what training scores")
    estimator: Component | None = Field(default=None, description="how gradients are measured")
    optimizer: Component | None = Field(default=None, description="how controls are updated")
    faults: FaultPolicy = Field(
        default_factory=FaultPolicy, description="retries of a step an instrument fault broke"
    )
    record: RecordPolicy = Field(
        default_factory=RecordPolicy, description="raw data kept in traces.h5 and its size cap"
    )
    calibration: CalibrationUse = Field(
        default_factory=CalibrationUse, description="the station calibration this run uses"
    )


COMPONENT_KINDS: dict[str, Kind] = {
    "procedure": Kind.PROCEDURE,
    "task": Kind.TASK,
    "estimator": Kind.ESTIMATOR,
    "optimizer": Kind.OPTIMIZER,
}


def _json_floats(value: Any) -> Any:
    """Infinite and NaN settings as the strings 'inf', '-inf', 'nan': strict JSON, and they
    validate back to the same floats when a run is resumed from run.json."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_floats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_floats(v) for v in value]
    return value


@dataclass(frozen=True)
class ResolvedComponent:
    """A component whose class is found and whose settings are validated."""

    name: str  # the `type:` value as written
    cls: type[Any]
    settings: BaseModel

    def as_dict(self) -> dict[str, Any]:
        return {"type": self.name, **_json_floats(self.settings.model_dump(mode="json"))}


@dataclass(frozen=True)
class ResolvedStation:
    """A station whose device class is found and whose settings and limits are validated.

    `doc` and `prefix` say where it was written (its own file, or inline in an experiment under
    `station:`), so errors found later, when it is built, can point there.
    """

    config: StationConfig
    device: ResolvedComponent
    doc: YamlDocument
    prefix: KeyPath = ()
    virtual: ResolvedComponent | None = None  # the simulator behind virtual instruments

    def where(self, key: KeyPath) -> str:
        """`file:line: station.key` for a key inside the station."""
        loc = (*self.prefix, *key)
        return f"{self.doc.where(loc)}: {dotted(loc)}"

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = _json_floats(self.config.model_dump(mode="json"))
        data["device"] = self.device.as_dict()
        if self.virtual is not None:
            data["virtual"]["device"] = self.virtual.as_dict()
        return data


@dataclass(frozen=True)
class ResolvedExperiment:
    """An experiment ready to build: every class found, every setting validated."""

    doc: YamlDocument
    config: ExperimentConfig
    station: ResolvedStation
    components: dict[str, ResolvedComponent]

    def as_dict(self) -> dict[str, Any]:
        """Self-contained config for run.json: station inline, defaults filled, paths absolute."""
        data = self.config.model_dump(mode="json")
        data["station"] = self.station.as_dict()
        for key, component in self.components.items():
            data[key] = component.as_dict()
        return data


_HINTS = {
    "missing": "a required key is missing; add it",
    "extra_forbidden": "unknown key; remove it or check its spelling",
    "int_type": "give a whole number (no quotes, no decimal point, not true/false)",
    "int_from_float": "give a whole number (no decimal point)",
    "float_type": "give a number (no quotes, not true/false)",
    "bool_type": "give true or false",
    "string_type": "give text",
    "list_type": "give a list",
    "dict_type": "give a mapping of keys to values",
    "model_type": "give a mapping of keys to values",
    "model_attributes_type": "give a mapping of keys to values",
    "union_tag_not_found": "give its `type:`",
    "greater_than": "use a larger value",
    "greater_than_equal": "use a larger value",
    "less_than": "use a smaller value",
    "less_than_equal": "use a smaller value",
    "string_too_long": "shorten it",
    "string_too_short": "give a non-empty value",
    "string_pattern_mismatch": "use letters, digits, '_', '.' and '-' (not first)",
    "too_long": "give fewer items",
    "too_short": "give more items",
}
_KINDS = {list: "a list", str: "a string", int: "a number", float: "a number", bool: "a boolean"}
_MAX_SHOWN_INPUT = 60
_MAX_SHOWN_ERRORS = 3


def _key_path(data: Any, loc: tuple[str | int, ...], missing: bool) -> KeyPath:
    """The keys of a pydantic error location that exist in the data (pydantic adds the names of
    union members, validators and tagged-union tags), plus the key that is `missing`."""
    out: list[str | int] = []
    current = data
    for n, part in enumerate(loc):
        if isinstance(part, str) and "[" in part:
            continue
        exists = (isinstance(current, dict) and part in current) or (
            isinstance(current, list) and isinstance(part, int) and 0 <= part < len(current)
        )
        if exists:
            out.append(part)
            current = current[part]
        elif missing and isinstance(current, dict) and n == len(loc) - 1:
            out.append(part)
    return tuple(out)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _MAX_SHOWN_INPUT else text[: _MAX_SHOWN_INPUT - 3] + "..."


def _format_errors(exc: ValidationError, doc: YamlDocument, prefix: KeyPath, data: Any) -> str:
    """One line: the first errors, each with file:line, key path, what is wrong and what to do."""
    parts = []
    errors = exc.errors()
    for err in errors[:_MAX_SHOWN_ERRORS]:
        loc = (*prefix, *_key_path(data, tuple(err["loc"]), err["type"] == "missing"))
        message = err["msg"].removeprefix("Value error, ")
        hint = _HINTS.get(err["type"])
        if err["type"] in ("missing", "extra_forbidden"):
            message = hint or message
        else:
            if hint:
                message += f"; {hint}"
            shown = err["type"] != "value_error"  # our validators' messages show the value
            if shown and "input" in err and not isinstance(err["input"], dict | list):
                message += f" (got {_shown(err['input'])})"
        parts.append(f"{doc.where(loc)}: {dotted(loc)}: {message}")
    if len(errors) > _MAX_SHOWN_ERRORS:
        parts.append(f"and {len(errors) - _MAX_SHOWN_ERRORS} more problems")
    return one_line("; ".join(parts))


def _validate(model: type[BaseModel], data: Any, doc: YamlDocument, prefix: KeyPath) -> Any:
    """Validate strictly for files a person wrote (see `YamlDocument.strict`)."""
    try:
        return model.model_validate(
            data,
            strict=doc.strict,
            context={"base_dir": Path(os.path.abspath(doc.path.parent)), "strict": doc.strict},
        )
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, doc, prefix, data), key=prefix) from None
    except RecursionError:
        raise ConfigError(f"{doc.where(prefix)}: {dotted(prefix)}: nested too deeply") from None


def _resolve_component(
    kind: Kind, component: Component, doc: YamlDocument, prefix: KeyPath
) -> ResolvedComponent:
    try:
        cls = resolve(kind, component.type)
    except RegistryError as exc:
        raise ConfigError(
            one_line(f"{doc.where((*prefix, 'type'))}: {dotted(prefix)}.type: {exc}"),
            key=(*prefix, "type"),
        ) from None
    settings_model = getattr(cls, "Settings", None)
    if not (isinstance(settings_model, type) and issubclass(settings_model, BaseModel)):
        raise ConfigError(
            f"{doc.where((*prefix, 'type'))}: {dotted(prefix)}.type: {component.type!r} has no "
            "pydantic `Settings` class, so it cannot be configured from a file; name a "
            "configurable class",
            key=(*prefix, "type"),
        )
    settings = _validate(settings_model, component.params(), doc, prefix)
    return ResolvedComponent(name=component.type, cls=cls, settings=settings)


def _mapping(doc: YamlDocument, what: str) -> dict[str, Any]:
    if doc.data is None:
        raise ConfigError(
            f"{doc.path}: the {what} file is empty; write its keys (see hil config schema)"
        )
    if not isinstance(doc.data, dict):
        raise ConfigError(
            f"{doc.where(())}: expected a mapping of keys to values at the top of the {what} "
            f"file, got {_KINDS.get(type(doc.data), 'a value')}; write `key: value` lines"
        )
    return doc.data


def resolve_station(doc: YamlDocument, data: Any, prefix: KeyPath = ()) -> ResolvedStation:
    config: StationConfig = _validate(StationConfig, data, doc, prefix)
    device = _resolve_component(Kind.DEVICE, config.device, doc, (*prefix, "device"))
    virtual = None
    if config.virtual is not None:
        at = (*prefix, "virtual", "device")
        virtual = _resolve_component(Kind.DEVICE, config.virtual.device, doc, at)
    return ResolvedStation(config=config, device=device, doc=doc, prefix=prefix, virtual=virtual)


def resolve_experiment(doc: YamlDocument) -> ResolvedExperiment:
    """Validate an experiment document (a file, or run.json's resolved config)."""
    data = _mapping(doc, "experiment")
    config: ExperimentConfig = _validate(ExperimentConfig, data, doc, ())
    if isinstance(config.station, str):
        station_path = Path(os.path.abspath(doc.path.parent / config.station))
        try:
            station_doc = load_yaml(station_path, what="station file")
        except UnreadableFile as exc:
            raise ConfigError(
                f"{doc.where(('station',))}: station: {exc}", key=("station",)
            ) from None
        station = resolve_station(station_doc, _mapping(station_doc, "station"))
    else:
        station = resolve_station(doc, config.station, ("station",))
    components = {
        key: _resolve_component(kind, component, doc, (key,))
        for key, kind in COMPONENT_KINDS.items()
        if (component := getattr(config, key)) is not None
    }
    return ResolvedExperiment(doc=doc, config=config, station=station, components=components)


def load_experiment(path: Path) -> ResolvedExperiment:
    return resolve_experiment(load_yaml(path, what="experiment file"))


def load_station(path: Path) -> ResolvedStation:
    doc = load_yaml(path, what="station file")
    return resolve_station(doc, _mapping(doc, "station"))


def is_station_document(doc: YamlDocument) -> bool:
    """A station file has a device and no station of its own (an experiment names one)."""
    return isinstance(doc.data, dict) and "device" in doc.data and "station" not in doc.data


def json_schema(kind: str) -> dict[str, Any]:
    """JSON schema for editors: 'experiment' or 'station'."""
    models: dict[str, type[BaseModel]] = {
        "experiment": ExperimentConfig,
        "station": StationConfig,
    }
    if kind not in models:
        raise ConfigError(f"unknown schema {kind!r}; choose one of {sorted(models)}")
    return models[kind].model_json_schema()
