"""Names to classes: devices, estimators, optimizers, tasks and procedures.

Three sources, in order: the static table of what ships in the tree, entry points of installed
plugins (`hil.devices`, `hil.drivers`, `hil.estimators`, `hil.optimizers`, `hil.tasks`,
`hil.procedures`), and a full import path (`package.module:Class` or `package.module.Class`).
Classes are imported only when asked for, so listing them is cheap.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from enum import StrEnum
from importlib.metadata import entry_points

from hil.core import RegistryError


class Kind(StrEnum):
    """What a registered class is for."""

    DEVICE = "device"
    ESTIMATOR = "estimator"
    OPTIMIZER = "optimizer"
    TASK = "task"
    PROCEDURE = "procedure"


ENTRY_POINT_GROUPS: dict[Kind, tuple[str, ...]] = {
    Kind.DEVICE: ("hil.devices", "hil.drivers"),
    Kind.ESTIMATOR: ("hil.estimators",),
    Kind.OPTIMIZER: ("hil.optimizers",),
    Kind.TASK: ("hil.tasks",),
    Kind.PROCEDURE: ("hil.procedures",),
}

BUILTIN: dict[Kind, dict[str, str]] = {
    Kind.DEVICE: {
        "analytic": "simulators.analytic:AnalyticDevice",
        "dnpu": "simulators.dnpu:DNPUDevice",
        "analog-mlp": "simulators.analog_mlp:AnalogMLPDevice",
        "crossbar": "simulators.crossbar:CrossbarDevice",
        "landscape": "simulators.landscape:LandscapeDevice",
        "smu-rig": "drivers.rigs.smu:SMURig",
        "daq-rig": "drivers.rigs.daq:DaqRig",
        "analog-rig": "drivers.rigs.analog:AnalogRig",
        "crossbar-serial-rig": "drivers.rigs.crossbar:SerialCrossbarRig",
        "crossbar-arc2-rig": "drivers.rigs.crossbar:Arc2CrossbarRig",
    },
    Kind.ESTIMATOR: {
        "central-difference": "protocols.estimators:CentralDifference",
        "spsa": "protocols.estimators:SPSA",
        "spsa2": "protocols.estimators:SPSA2",
        "forward-difference": "protocols.estimators:ForwardDifference",
        "homodyne": "protocols.homodyne:Homodyne",
        "gaussian-smoothing": "protocols.evolution:GaussianSmoothing",
        "antithetic-es": "protocols.evolution:AntitheticES",
        "weight-perturbation": "protocols.evolution:WeightPerturbation",
        "node-perturbation": "protocols.node_perturbation:NodePerturbation",
        "delta-rule": "protocols.pulsed:DeltaRule",
        "intrinsic-node-perturbation": "protocols.pulsed:IntrinsicNodePerturbation",
        "homodyne-lockin": "protocols.lockin_gradient:LockinGradient",
        "auto": "protocols.auto:AutoEstimator",
    },
    Kind.OPTIMIZER: {
        "sgd": "protocols.optimizers:SGD",
        "adam": "protocols.optimizers:Adam",
    },
    Kind.TASK: {
        "regression": "protocols.tasks:RegressionTask",
        "minimize-output": "protocols.tasks:MinimizeOutputTask",
        "gate": "protocols.classify:GateTask",
        "classification": "protocols.classify:ClassificationTask",
    },
    Kind.PROCEDURE: {
        "train": "protocols.training:TrainingProcedure",
        "pulse-train": "protocols.pulsed:PulseTrainingProcedure",
        "calibrate": "protocols.bringup:CalibrationProcedure",
        "population": "protocols.population:PopulationProcedure",
    },
}


@dataclass(frozen=True)
class Entry:
    """One available implementation."""

    kind: Kind
    name: str
    target: str  # "module:attr"
    source: str  # "builtin" or the entry-point group


def available(kind: Kind) -> list[Entry]:
    """Every implementation of `kind` known without importing it."""
    entries = [Entry(kind, n, t, "builtin") for n, t in BUILTIN[kind].items()]
    for group in ENTRY_POINT_GROUPS[kind]:
        entries.extend(Entry(kind, ep.name, ep.value, group) for ep in entry_points(group=group))
    return sorted(entries, key=lambda e: e.name)


def _import(target: str, *, what: str) -> type:
    """The class at `target`; any failure to import it (a module that raises on import, a bad
    name) is a RegistryError that says what was wrong."""
    if ":" in target:
        module_name, _, attr = target.partition(":")
    else:
        module_name, _, attr = target.rpartition(".")
    if not module_name or not attr or module_name.startswith("."):
        raise RegistryError(f"{what}: {target!r} is not an import path like 'package.module:Class'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise RegistryError(f"{what}: cannot import module {module_name!r} ({exc})") from exc
    except Exception as exc:
        raise RegistryError(
            f"{what}: importing module {module_name!r} failed ({type(exc).__name__}: {exc})"
        ) from exc
    obj = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except Exception as exc:
            raise RegistryError(f"{what}: module {module_name!r} has no {attr!r}") from exc
    if not isinstance(obj, type):
        raise RegistryError(f"{what}: {target!r} is not a class; name a class")
    return obj


def resolve(kind: Kind, name: str) -> type:
    """The class for a `type:` value: a registered name or a full import path."""
    for entry in available(kind):
        if entry.name == name:
            return _import(entry.target, what=f"{kind} {name!r}")
    if "." in name or ":" in name:
        return _import(name, what=f"{kind} type {name!r}")
    known = ", ".join(e.name for e in available(kind))
    raise RegistryError(
        f"unknown {kind} type {name!r}; available: {known} "
        f"(or give a full import path like 'package.module:Class'; `hil list` shows all)"
    )
