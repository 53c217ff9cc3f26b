"""Build a run's live objects from a resolved experiment: device, guard, components, procedure."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import numpy as np

from hil.config import ResolvedComponent, ResolvedExperiment, ResolvedStation
from hil.core import ConfigError, Device, HilError, Procedure
from hil.safety import SafetyGuard

# Order matters: each component gets the same child seed on every build of the same experiment.
SEEDED_PARTS = ("device", "task", "estimator", "optimizer", "procedure")


@dataclass
class BuiltRun:
    """Everything a run executes."""

    guard: SafetyGuard
    procedure: Procedure


def fresh_entropy() -> int:
    """A new root seed from the OS, to be recorded so the run can be repeated."""
    return int(np.random.SeedSequence().entropy)  # type: ignore[arg-type]


def _instantiate(component: ResolvedComponent, seed: np.random.SeedSequence, **kwargs: Any) -> Any:
    params = inspect.signature(component.cls).parameters
    if "seed" in params:
        kwargs["seed"] = seed
    return component.cls(component.settings, **kwargs)


def build_device(station: ResolvedStation, seed: np.random.SeedSequence) -> SafetyGuard:
    """The station's device behind its safety guard."""
    device = _instantiate(station.device, seed)
    if not isinstance(device, Device):
        raise ConfigError(
            f"device type {station.device.name!r} does not implement the Device interface "
            "(spec, clock, set_controls, measure, safe_state, close)"
        )
    return SafetyGuard(device, station.config.limits)


def build_run(resolved: ResolvedExperiment, entropy: int) -> BuiltRun:
    """Instantiate everything; errors name the file and section that caused them."""
    seeds = dict(
        zip(SEEDED_PARTS, np.random.SeedSequence(entropy).spawn(len(SEEDED_PARTS)), strict=True)
    )
    guard = build_device(resolved.station, seeds["device"])
    try:
        parts = {
            key: _instantiate(resolved.components[key], seeds[key])
            for key in ("task", "estimator", "optimizer")
        }
        procedure = _instantiate(
            resolved.components["procedure"], seeds["procedure"], device=guard, **parts
        )
    except HilError as exc:
        guard.close()
        key = exc.key if isinstance(exc, ConfigError) and exc.key else ("procedure",)
        raise ConfigError(f"{resolved.doc.where(key)}: {exc}", key=key) from None
    except (ValueError, TypeError) as exc:
        guard.close()
        raise ConfigError(f"{resolved.doc.path}: cannot build the experiment: {exc}") from None
    if not isinstance(procedure, Procedure):
        raise ConfigError(
            f"procedure type {resolved.components['procedure'].name!r} does not "
            "implement the Procedure interface"
        )
    return BuiltRun(guard=guard, procedure=procedure)
