"""Station and experiment configuration: pydantic models, YAML loading, errors that point home.

A station file is the lab's wiring diagram: which device (`type:` plus its settings) and the
experiment limits the safety guard enforces. An experiment file names a station (a path relative to
the experiment file, or inline) and the procedure, task, estimator and optimizer to run on it.
Every component is `type:` plus that class's own settings; unknown keys are rejected everywhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hil.core import ConfigError, RegistryError
from hil.registry import Kind, resolve
from hil.safety import SafetyLimits
from hil.yamlfile import KeyPath, YamlDocument, load_yaml

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class Component(BaseModel):
    """`type:` (a registered name or an import path) plus the class's own settings."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(min_length=1, description="registered name or 'package.module:Class'")

    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class StationConfig(BaseModel):
    """One station: the device and the limits the safety guard enforces on it."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN)
    description: str = ""
    device: Component
    limits: SafetyLimits


class ExperimentConfig(BaseModel):
    """One experiment: a station, a procedure and the components it uses."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN, description="used in the run directory name")
    description: str = ""
    station: str | dict[str, Any] = Field(
        description="path to a station file (relative to this file) or the station inline "
        "(validated as a station file)"
    )
    seed: int | None = Field(
        default=None, ge=0, description="root seed; omitted = fresh entropy, recorded in run.json"
    )
    procedure: Component = Field(default_factory=lambda: Component(type="train"))
    task: Component
    estimator: Component
    optimizer: Component


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
    config: StationConfig
    device: ResolvedComponent

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = _json_floats(self.config.model_dump(mode="json"))
        data["device"] = self.device.as_dict()
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


def _dotted(loc: KeyPath) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _format_errors(exc: ValidationError, doc: YamlDocument, prefix: KeyPath) -> str:
    lines = []
    for err in exc.errors():
        loc = (*prefix, *(p for p in err["loc"] if not isinstance(p, str) or "[" not in p))
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            message = "unknown key; remove it or check its spelling"
        elif err["type"] != "missing" and "input" in err:
            message += f" (got {err['input']!r})"
        lines.append(f"{doc.where(loc)}: {_dotted(loc)}: {message}")
    return "\n".join(lines)


def _validate(model: type[BaseModel], data: Any, doc: YamlDocument, prefix: KeyPath) -> Any:
    try:
        return model.model_validate(data, context={"base_dir": doc.path.parent.resolve()})
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, doc, prefix)) from None


def _resolve_component(
    kind: Kind, component: Component, doc: YamlDocument, prefix: KeyPath
) -> ResolvedComponent:
    try:
        cls = resolve(kind, component.type)
    except RegistryError as exc:
        raise ConfigError(
            f"{doc.where((*prefix, 'type'))}: {_dotted(prefix)}.type: {exc}"
        ) from None
    settings_model = getattr(cls, "Settings", None)
    if not (isinstance(settings_model, type) and issubclass(settings_model, BaseModel)):
        raise ConfigError(
            f"{doc.where((*prefix, 'type'))}: {_dotted(prefix)}.type: {component.type!r} has no "
            "pydantic `Settings` class, so it cannot be configured from a file"
        )
    settings = _validate(settings_model, component.params(), doc, prefix)
    return ResolvedComponent(name=component.type, cls=cls, settings=settings)


def _mapping(doc: YamlDocument, what: str) -> dict[str, Any]:
    if not isinstance(doc.data, dict):
        raise ConfigError(
            f"{doc.path}: expected a mapping of keys to values at the top of the {what} file, "
            f"got {type(doc.data).__name__}"
        )
    return doc.data


def resolve_station(doc: YamlDocument, data: Any, prefix: KeyPath = ()) -> ResolvedStation:
    config: StationConfig = _validate(StationConfig, data, doc, prefix)
    device = _resolve_component(Kind.DEVICE, config.device, doc, (*prefix, "device"))
    return ResolvedStation(config=config, device=device)


def resolve_experiment(doc: YamlDocument) -> ResolvedExperiment:
    """Validate an experiment document (a file, or run.json's resolved config)."""
    data = _mapping(doc, "experiment")
    config: ExperimentConfig = _validate(ExperimentConfig, data, doc, ())
    if isinstance(config.station, str):
        station_path = (doc.path.parent / config.station).resolve()
        station_doc = load_yaml(station_path)
        station = resolve_station(station_doc, _mapping(station_doc, "station"))
    else:
        station = resolve_station(doc, config.station, ("station",))
    components = {
        key: _resolve_component(kind, getattr(config, key), doc, (key,))
        for key, kind in COMPONENT_KINDS.items()
    }
    return ResolvedExperiment(doc=doc, config=config, station=station, components=components)


def load_experiment(path: Path) -> ResolvedExperiment:
    return resolve_experiment(load_yaml(path))


def load_station(path: Path) -> ResolvedStation:
    doc = load_yaml(path)
    return resolve_station(doc, _mapping(doc, "station"))


def is_station_document(doc: YamlDocument) -> bool:
    """A station file has a device and no task."""
    return isinstance(doc.data, dict) and "device" in doc.data and "task" not in doc.data


def json_schema(kind: str) -> dict[str, Any]:
    """JSON schema for editors: 'experiment' or 'station'."""
    models: dict[str, type[BaseModel]] = {
        "experiment": ExperimentConfig,
        "station": StationConfig,
    }
    if kind not in models:
        raise ConfigError(f"unknown schema {kind!r}; choose one of {sorted(models)}")
    return models[kind].model_json_schema()
