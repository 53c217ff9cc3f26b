"""Experiment limits: a guard in front of every device that checks whole requests before sending.

The guard never clamps. A request that would put any value outside a configured limit raises
`SafetyViolation` and nothing at all reaches the device. DC control changes on slew-limited
channels are ramped in small steps; every transition (into a stream, between plateaus, to the
safe state) is checked; every exit of a `with` block ramps to zero and puts the device in its safe
state. `sigterm_raises()` turns SIGTERM into an exception so that the same cleanup runs when the
process is asked to stop.

Modules: `limits` (the station's limits), `effective` (per-channel effective limits),
`checks` (whole-request checks), `guard` (the guard), `variants` (streaming, pulsing,
node-offset, reconnecting and demodulating guards), `signals`.
"""

from hil.safety.guard import SafetyGuard
from hil.safety.limits import ChannelLimit, SafetyLimits, stricter_limits
from hil.safety.signals import Terminated, sigterm_raises
from hil.safety.variants import (
    AveragingSafetyGuard,
    DemodulatingSafetyGuard,
    NodeSafetyGuard,
    PulsingSafetyGuard,
    StreamingSafetyGuard,
)

__all__ = [
    "AveragingSafetyGuard",
    "ChannelLimit",
    "DemodulatingSafetyGuard",
    "NodeSafetyGuard",
    "PulsingSafetyGuard",
    "SafetyGuard",
    "SafetyLimits",
    "StreamingSafetyGuard",
    "Terminated",
    "sigterm_raises",
    "stricter_limits",
]
