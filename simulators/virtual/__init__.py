"""Virtual instruments: simulators served over loopback SCPI so drivers run their real code path.

`ScpiDevice` (scpi) parses and executes SCPI strictly; `ScpiServer` (server) puts one on
127.0.0.1 with injectable transport faults; `Keithley2400` emulates a 2400 SourceMeter over a
pluggable load (`Resistor`, or `DeviceElectrode` in front of any simulator); `VirtualStation`
(station) serves several at once and lists their VISA addresses.
"""

from simulators.virtual.keithley2400 import Keithley2400, Load
from simulators.virtual.loads import DeviceElectrode, Resistor
from simulators.virtual.scpi import Command, ScpiDevice, ScpiError
from simulators.virtual.server import Faults, ScpiServer
from simulators.virtual.station import VirtualStation

__all__ = [
    "Command",
    "DeviceElectrode",
    "Faults",
    "Keithley2400",
    "Load",
    "Resistor",
    "ScpiDevice",
    "ScpiError",
    "ScpiServer",
    "VirtualStation",
]
