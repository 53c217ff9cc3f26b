"""Virtual instruments: simulators served over loopback SCPI so drivers run their real code path.

`ScpiDevice` (scpi) parses and executes SCPI strictly; `ScpiServer` (server) puts one on
127.0.0.1 with injectable transport faults; `Keithley2400` emulates a 2400 SourceMeter over a
pluggable load (`Resistor`, or an `Electrode` of a simulator wired through a `Backplane`, which
several instruments share as they share a substrate on the bench); `VirtualStation`
(station) serves several at once and lists their VISA addresses.
"""

from simulators.virtual.backplane import Backplane
from simulators.virtual.keithley2400 import Keithley2400, Load
from simulators.virtual.loads import Electrode, Resistor, Terminal
from simulators.virtual.scpi import Command, ScpiDevice, ScpiError
from simulators.virtual.server import Faults, ScpiServer
from simulators.virtual.station import VirtualStation

__all__ = [
    "Backplane",
    "Command",
    "Electrode",
    "Faults",
    "Keithley2400",
    "Load",
    "Resistor",
    "ScpiDevice",
    "ScpiError",
    "ScpiServer",
    "Terminal",
    "VirtualStation",
]
