"""What each instrument of a rig reports when it is re-attached after a lost connection.

Readback only: every query here is one the driver's connect already uses, none writes. An
instrument may be live on re-attach (its output on and holding a level), which connect would
refuse to reconfigure; here that is the state to take over, not a fault. The settings connect
wrote must still read back (a power-cycled or reset instrument does not: `InstrumentError`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from drivers.awg import HIGH_Z, Keysight33500Channel
from drivers.generic import GenericChannel
from drivers.instruments import PyMeasureChannel, as_float
from drivers.keithley import Keithley2400Channel, Keithley2600Channel
from drivers.lockin import SR830LockIn, SR860LockIn

ON = (True, 1, "ON", "on", "1")
"""What an `output_state` property reads when the output is on."""


def read_source(smu: PyMeasureChannel) -> Callable[[], tuple[float, bool]]:
    """The read-back of a source-measure channel: (level in V, output on)."""
    if isinstance(smu, Keithley2400Channel):
        return lambda: _keithley2400(smu)
    if isinstance(smu, Keithley2600Channel):
        return lambda: _keithley2600(smu)
    if isinstance(smu, GenericChannel):
        return lambda: _generic(smu)
    raise TypeError(f"{smu.who}: no read-back for {type(smu).__name__}")


def _keithley2400(ch: Keithley2400Channel) -> tuple[float, bool]:
    smu, s = ch.instrument, ch.settings
    ch.check_readback("source function", "voltage", smu.source_mode)
    ch.check_readback("source voltage mode", "FIX", smu.ask(":SOURCE:VOLTAGE:MODE?").strip())
    ch.check_readback("source_range", s.source_range, smu.source_voltage_range, "range")
    ch.check_readback("compliance_current", s.compliance_current, smu.compliance_current)
    if s.measure_range is None:
        ch.check_readback("measure auto-range", True, smu.current_range_auto_enabled)
    else:
        ch.check_readback("measure_range", s.measure_range, smu.current_range, "range")
    ch.check_readback("nplc", s.nplc, smu.current_nplc)
    return as_float(smu.source_voltage), as_float(smu.values("OUTPUT?")) != 0


def _keithley2600(ch: Keithley2600Channel) -> tuple[float, bool]:
    s = ch.settings
    smu = ch.instrument.ChA if s.channel == "smua" else ch.instrument.ChB
    ch.check_readback("source function", "voltage", smu.source_mode)
    ch.check_readback("source_range", s.source_range, smu.ask("source.rangev"), "range")
    ch.check_readback("compliance_current", s.compliance_current, smu.ask("source.limiti"))
    if s.measure_range is None:
        ch.check_readback("measure auto-range", 1.0, smu.ask("measure.autorangei"))
    else:
        ch.check_readback("measure_range", s.measure_range, smu.ask("measure.rangei"), "range")
    ch.check_readback("nplc", s.nplc, smu.ask("measure.nplc"))
    return as_float(smu.ask("source.levelv")), as_float(smu.ask("source.output")) != 0


def _generic(ch: GenericChannel) -> tuple[float, bool]:
    """Without an `output_state` property the output is taken as on: the safe state then
    ramps it down rather than trusting it is off."""
    s, target = ch.settings, ch.instrument
    for part in (s.channel or "").split("."):
        if part:
            target = getattr(target, part)
    for key, value in s.limits.items():
        ch.check_readback(key, value, getattr(target, key))
    on = True if s.output_state is None else getattr(target, s.output_state) in ON
    return as_float(getattr(target, s.set)), on


def awg(ch: Keysight33500Channel) -> Callable[[], Any]:
    """The read-back of a dithering AWG: the sine setup its connect wrote (the output may be
    on; its safe state switches it off at the minimum amplitude either way). The new PyMeasure
    object gets the station's ranges as its validators again, as at connect (no command)."""

    def read() -> None:
        s = ch.settings
        out = ch.instrument.ch_1 if s.channel == 1 else ch.instrument.ch_2
        out.amplitude_values = list(s.amplitude_range[s.load])
        out.offset_values = [-s.peak_limit[s.load], s.peak_limit[s.load]]
        out.frequency_values = [s.min_frequency, s.max_frequency]
        ch.check_readback("function", "SIN", str(out.shape).strip())
        ch.check_readback("amplitude unit", "VPP", str(out.amplitude_unit).strip())
        load = as_float(out.output_load)
        ch.check_readback("load", HIGH_Z if s.load == "high_z" else 50.0, load)
        ch.check_readback("sync", float(s.sync), ch.instrument.ask("OUTP:SYNC?"))

    return read


def lockin(li: SR830LockIn | SR860LockIn) -> Callable[[], None]:
    """The read-back of the lock-in: every setting its connect wrote (its own read-back)."""
    return lambda: li._read_back(li.settings)
