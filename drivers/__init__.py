"""Real instruments (pyvisa, pyserial, nidaqmx, pyarc2) and the substrate rigs composed from them.

Instruments come from maintained libraries (PyMeasure) where they exist; each is wrapped with
instrument-range checks before sending, settings read back at connect and translated faults.
Rigs (`drivers.rigs`) compose them into `hil.core` devices declared in the station file.
"""

from drivers.awg import Keysight33500Channel, Keysight33500Settings
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
from drivers.lockin import (
    LockIn,
    LockInSettings,
    SR830LockIn,
    SR830Settings,
    SR860LockIn,
    SR860Settings,
)
from drivers.scpi_daq import ScpiDaqBoard, ScpiDaqSettings

__all__ = [
    "GenericChannel",
    "GenericSettings",
    "InstrumentSettings",
    "Keithley2400Channel",
    "Keithley2400Settings",
    "Keithley2600Channel",
    "Keithley2600Settings",
    "Keysight33500Channel",
    "Keysight33500Settings",
    "LockIn",
    "LockInSettings",
    "PyMeasureChannel",
    "RetrySettings",
    "SMUSettings",
    "SR830LockIn",
    "SR830Settings",
    "SR860LockIn",
    "SR860Settings",
    "ScpiDaqBoard",
    "ScpiDaqSettings",
    "SourceMeasureChannel",
    "ramp_levels",
]
