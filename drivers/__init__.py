"""Real instruments (pyvisa, pyserial) and the substrate rigs composed from them.

Instruments come from maintained libraries (PyMeasure); each is wrapped as a small channel
interface with instrument-range checks, settings read back at connect and translated faults.
"""

from drivers.faults import RetrySettings
from drivers.generic import GenericChannel, GenericSettings
from drivers.instruments import (
    InstrumentSettings,
    PyMeasureChannel,
    SourceMeasureChannel,
    ramp_levels,
)
from drivers.keithley import (
    Keithley2400Channel,
    Keithley2400Settings,
    Keithley2600Channel,
    Keithley2600Settings,
    SMUSettings,
)

__all__ = [
    "GenericChannel",
    "GenericSettings",
    "InstrumentSettings",
    "Keithley2400Channel",
    "Keithley2400Settings",
    "Keithley2600Channel",
    "Keithley2600Settings",
    "PyMeasureChannel",
    "RetrySettings",
    "SMUSettings",
    "SourceMeasureChannel",
    "ramp_levels",
]
