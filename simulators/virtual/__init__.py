"""Virtual instruments: simulators served over loopback SCPI so drivers run their real code path.

`ScpiDevice` (scpi) parses and executes SCPI strictly; `ScpiServer` (server) puts one on
127.0.0.1 with injectable transport faults; `VirtualStation` (station) serves several at once
and lists their VISA addresses. Instruments: Keithley 2400 (SCPI) and 2600 (TSP) SourceMeters
over a pluggable load (`Resistor`, or an `Electrode` of a simulator wired through a `Backplane`,
which several instruments share as they share a substrate on the bench), SR830/SR860 lock-ins,
the Keysight 33500 AWG, and a SCPI DAC/ADC board. Serial boards (`crossbar_serial`) have their own
server; NI-DAQmx (`nidaq`) and ArC TWO (`arc2`) are in-process fakes of their Python APIs.
"""

from simulators.virtual.awg import Keysight33500
from simulators.virtual.backplane import Backplane
from simulators.virtual.keithley2400 import Keithley2400, Load
from simulators.virtual.keithley2600 import Keithley2600
from simulators.virtual.loads import Electrode, Resistor, Terminal
from simulators.virtual.lockin import SR830, SR860
from simulators.virtual.scpi import Command, ScpiDevice, ScpiError
from simulators.virtual.scpi_daq import ScpiDaq
from simulators.virtual.server import Faults, ScpiServer
from simulators.virtual.station import VirtualStation

__all__ = [
    "SR830",
    "SR860",
    "Backplane",
    "Command",
    "Electrode",
    "Faults",
    "Keithley2400",
    "Keithley2600",
    "Keysight33500",
    "Load",
    "Resistor",
    "ScpiDaq",
    "ScpiDevice",
    "ScpiError",
    "ScpiServer",
    "Terminal",
    "VirtualStation",
]
