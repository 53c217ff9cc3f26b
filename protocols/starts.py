"""Where a procedure starts: the initial control values its settings give, checked."""

from __future__ import annotations

import numpy as np

from hil.core import ConfigError, FloatArray
from protocols.base import Objective


def initial_controls(
    given: list[float] | dict[str, float] | None, names: list[str], objective: Objective
) -> FloatArray:
    """The start's control values from the settings, checked against the allowed ranges."""
    n = len(names)
    if given is None:
        theta = np.zeros(n)
    elif isinstance(given, dict):
        unknown = sorted(set(given) - set(names))
        if unknown:
            raise ConfigError(
                f"procedure.initial_controls: unknown control channel(s) {unknown}; "
                f"the controls are {names}"
            )
        theta = np.array([given.get(name, 0.0) for name in names])
    else:
        if len(given) != n:
            raise ConfigError(
                f"procedure.initial_controls: {len(given)} values given, the device has "
                f"{n} controls {names}"
            )
        theta = np.asarray(given, dtype=float)
    lower, upper = objective.control_lower, objective.control_upper
    for i, name in enumerate(names):
        if not lower[i] <= theta[i] <= upper[i]:
            raise ConfigError(
                f"procedure.initial_controls.{name}: {theta[i]} is outside the allowed range "
                f"[{lower[i]}, {upper[i]}] (device range within the station limits); "
                "choose a start value inside it",
                key=("procedure", "initial_controls", name if isinstance(given, dict) else i),
            )
    return theta
