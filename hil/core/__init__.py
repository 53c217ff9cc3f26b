"""Core interfaces: channels, device specs and capabilities, clocks, errors.

This layer imports nothing from the rest of the project; drivers, protocols and simulators meet
here.
"""

from hil.core.capabilities import (
    Averaging,
    Closing,
    Converting,
    Demodulating,
    Device,
    DeviceBase,
    NodePerturbable,
    Parking,
    ProgrammableState,
    Reconnecting,
    RestoreChecked,
    Serving,
    Stateful,
    Streaming,
)
from hil.core.channels import Channel, DeviceSpec, Role
from hil.core.clock import Clock, VirtualClock, WallClock
from hil.core.errors import (
    CapabilityError,
    ConfigError,
    DeviceSaturated,
    HilError,
    InstrumentDisconnected,
    InstrumentError,
    InstrumentProtocolError,
    InstrumentTimeout,
    RegistryError,
    RunError,
    SafetyViolation,
)
from hil.core.procedure import Procedure, Targeted
from hil.core.types import FloatArray, IntArray, JSONDict, SeedLike, seed_sequence

__all__ = [
    "Averaging",
    "CapabilityError",
    "Channel",
    "Clock",
    "Closing",
    "ConfigError",
    "Converting",
    "Demodulating",
    "Device",
    "DeviceBase",
    "DeviceSaturated",
    "DeviceSpec",
    "FloatArray",
    "HilError",
    "InstrumentDisconnected",
    "InstrumentError",
    "InstrumentProtocolError",
    "InstrumentTimeout",
    "IntArray",
    "JSONDict",
    "NodePerturbable",
    "Parking",
    "Procedure",
    "ProgrammableState",
    "Reconnecting",
    "RegistryError",
    "RestoreChecked",
    "Role",
    "RunError",
    "SafetyViolation",
    "SeedLike",
    "Serving",
    "Stateful",
    "Streaming",
    "Targeted",
    "VirtualClock",
    "WallClock",
    "seed_sequence",
]
