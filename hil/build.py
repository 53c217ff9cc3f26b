"""Build a run's live objects from a resolved experiment: device, guard, components, procedure.

This is the one validation path after the config files are read: `hil config check` and
`hil run` (before it creates a run directory) both call `build_run`, which builds everything the
run executes — device and guard, task, estimator, optimizer, procedure — checks each against its
interface (the runtime Protocols of `hil.core` and `protocols.base`) and runs the cross-checks
the components make when they are built (start values, task data against the channels, an
estimator's preflight). Whatever fails is a ConfigError naming file, line and key.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from hil.config import ResolvedComponent, ResolvedExperiment, ResolvedStation
from hil.core import ConfigError, Device, InstrumentError, Procedure
from hil.safety import SafetyGuard
from hil.virtual import build_virtual_rig, is_virtual
from hil.yamlfile import KeyPath, YamlDocument, dotted, one_line
from protocols.base import GradientEstimator, Optimizer, Task
from protocols.pulsed import WeightGradientEstimator

# Order matters: each component gets the same child seed on every build of the same experiment.
SEEDED_PARTS = ("device", "task", "estimator", "optimizer", "procedure")

# What each part must implement; the procedure checks which estimator interface it needs.
INTERFACES: dict[str, tuple[tuple[type, ...], str]] = {
    "task": ((Task,), "Task (inputs, n_outputs, mapping, loss, metrics, output_gradient)"),
    "estimator": (
        (GradientEstimator, WeightGradientEstimator),
        "GradientEstimator (estimate, state_dict, load_state_dict) or WeightGradientEstimator "
        "(weight_gradient)",
    ),
    "optimizer": (
        (Optimizer,),
        "Optimizer (start, ask, tell, state_dict, load_state_dict)",
    ),
    "procedure": (
        (Procedure,),
        "Procedure (steps_done, total_steps, done, step, progress, finish, state_dict, "
        "load_state_dict)",
    ),
}

_LIMIT_KEY = re.compile(r"^limits\.channels\.([^\s:]+?)(?:\.max_slew)?:")


@dataclass
class BuiltRun:
    """Everything a run executes, and the experiment it was built from (after `adjust`)."""

    guard: SafetyGuard
    procedure: Procedure
    resolved: ResolvedExperiment


Adjust = Callable[[ResolvedExperiment, SafetyGuard], ResolvedExperiment]
"""A change to the experiment once its device is built (a calibration's settings)."""


def fresh_entropy() -> int:
    """A new root seed from the OS, to be recorded so the run can be repeated."""
    return int(np.random.SeedSequence().entropy)  # type: ignore[arg-type]


def _instantiate(component: ResolvedComponent, seed: np.random.SeedSequence, **kwargs: Any) -> Any:
    params = inspect.signature(component.cls).parameters
    if "seed" in params:
        kwargs["seed"] = seed
    return component.cls(component.settings, **kwargs)


def _located(doc: YamlDocument, key: KeyPath, exc: Exception, name: str) -> ConfigError:
    """`exc` (raised while building the part at `key`) as a one-line ConfigError there."""
    if isinstance(exc, ConfigError):
        message = str(exc)
        if not message.startswith(str(key[0])):
            message = f"{dotted(key)}: {message}"
        return ConfigError(one_line(f"{doc.where(key)}: {message}"), key=key)
    return ConfigError(
        one_line(
            f"{doc.where(key)}: {dotted(key)}: cannot build {name!r}: "
            f"{type(exc).__name__}: {exc}; check its settings"
        ),
        key=key,
    )


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _check_interface(
    obj: Any, part: str, component: ResolvedComponent, doc: YamlDocument, prefix: KeyPath
) -> None:
    protocols, description = INTERFACES[part]
    if not isinstance(obj, protocols):
        key = (*prefix, "type")
        raise ConfigError(
            f"{doc.where(key)}: {dotted(key)}: {component.name!r} "
            f"({component.cls.__module__}.{component.cls.__qualname__}) does not implement the "
            f"{description} interface {_article(part)} {part} needs; name "
            f"{_article(part)} {part} class",
            key=key,
        )


def build_device(station: ResolvedStation, seed: np.random.SeedSequence) -> SafetyGuard:
    """The station's device behind its safety guard; errors point into the station file."""
    doc, prefix = station.doc, station.prefix
    try:
        if is_virtual(station):
            device = build_virtual_rig(station, seed)
        else:
            device = _instantiate(station.device, seed)
    except InstrumentError as exc:  # stays an instrument fault, located in the station file
        raise type(exc)(one_line(f"{station.where(('device',))}: {exc}")) from exc
    except Exception as exc:
        raise _located(doc, (*prefix, "device"), exc, station.device.name) from exc
    if not isinstance(device, Device):
        key = (*prefix, "device", "type")
        raise ConfigError(
            f"{doc.where(key)}: {dotted(key)}: {station.device.name!r} does not implement the "
            "Device interface (spec, clock, set_controls, measure, safe_state, close); "
            "name a device class",
            key=key,
        )
    try:
        return SafetyGuard(device, station.config.limits)
    except Exception as exc:
        device.close()
        match = _LIMIT_KEY.match(str(exc))
        key = (*prefix, "limits", "channels", match.group(1)) if match else (*prefix, "limits")
        if isinstance(exc, ConfigError):
            raise ConfigError(one_line(f"{doc.where(key)}: {exc}"), key=key) from None
        raise _located(doc, key, exc, station.device.name) from exc


def _check_pulse_limits(resolved: ResolvedExperiment) -> None:
    """A procedure's per-weight pulse cap (`max_pulses`) within what station and device take."""
    wanted = getattr(resolved.components["procedure"].settings, "max_pulses", None)
    if not isinstance(wanted, int):
        return
    station = resolved.station
    caps = [
        (station.config.limits.max_pulses_per_device, ("limits", "max_pulses_per_device")),
        (getattr(station.device.settings, "max_pulse_count", None), ("device", "max_pulse_count")),
    ]
    for cap, key in caps:
        if isinstance(cap, int) and wanted > cap:
            at = ("procedure", "max_pulses")
            raise ConfigError(
                f"{resolved.doc.where(at)}: procedure.max_pulses: {wanted} pulses per weight "
                f"and step is above {dotted(key)} {cap} ({station.where(key)}); lower "
                "max_pulses or raise the limit",
                key=at,
            )


def build_run(resolved: ResolvedExperiment, entropy: int, adjust: Adjust | None = None) -> BuiltRun:
    """Instantiate and cross-check everything; errors name the file, line and key. `adjust`
    may change the experiment's settings once the device (behind its guard) exists."""
    _check_pulse_limits(resolved)
    seeds = dict(
        zip(SEEDED_PARTS, np.random.SeedSequence(entropy).spawn(len(SEEDED_PARTS)), strict=True)
    )
    _check_parts(resolved)
    guard = build_device(resolved.station, seeds["device"])
    try:
        if adjust is not None:
            resolved = adjust(resolved, guard)
        parts = {
            key: _build_part(resolved, key, seeds[key])
            for key in ("task", "estimator", "optimizer")
            if key in resolved.components
        }
        procedure = _build_part(resolved, "procedure", seeds["procedure"], device=guard, **parts)
    except BaseException:
        guard.close()
        raise
    return BuiltRun(guard=guard, procedure=procedure, resolved=resolved)


def _check_parts(resolved: ResolvedExperiment) -> None:
    """Every part the procedure takes without a default is in the experiment (a training
    procedure needs task, estimator and optimizer; a calibration none of them)."""
    procedure = resolved.components["procedure"]
    params = inspect.signature(procedure.cls).parameters
    for part in ("task", "estimator", "optimizer"):
        param = params.get(part)
        needed = param is not None and param.default is inspect.Parameter.empty
        if needed and part not in resolved.components:
            raise ConfigError(
                f"{resolved.doc.where(())}: {part}: procedure {procedure.name!r} needs a "
                f"`{part}:` section; add one (`hil list` shows the {part} types)",
                key=(part,),
            )


def _build_part(
    resolved: ResolvedExperiment, part: str, seed: np.random.SeedSequence, **kwargs: Any
) -> Any:
    component, doc = resolved.components[part], resolved.doc
    try:
        obj = _instantiate(component, seed, **kwargs)
    except InstrumentError:
        raise
    except ConfigError as exc:
        raise _located(doc, exc.key or (part,), exc, component.name) from None
    except Exception as exc:
        raise _located(doc, (part,), exc, component.name) from exc
    _check_interface(obj, part, component, doc, (part,))
    return obj
