"""The Keithley 2400 driver against the virtual 2400 over real TCP (pyvisa-py): the whole path a
lab's instrument takes, without hardware. Limits are written and read back, the measured current
is the load's, the output goes safe, and transport faults arrive as `InstrumentError`s."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from drivers.keithley import Keithley2400Channel, Keithley2400Settings
from hil.core import InstrumentError, SafetyViolation, VirtualClock
from simulators.virtual.keithley2400 import Keithley2400
from simulators.virtual.loads import Resistor
from simulators.virtual.station import VirtualStation

pytestmark = pytest.mark.timeout(30)

RESISTANCE = 1e6  # Ω: 0.5 V drives 0.5 µA


@pytest.fixture
def station() -> Iterator[VirtualStation]:
    with VirtualStation({"smu": Keithley2400(Resistor(RESISTANCE))}) as running:
        yield running


def channel(station: VirtualStation, **overrides: object) -> Keithley2400Channel:
    settings = Keithley2400Settings.model_validate(
        {
            "name": "gate",
            "address": station.addresses["smu"],
            "visa_library": "@py",
            "timeout": 1.0,
            "compliance_current": 1e-5,
            "source_range": 2.1,
            "measure_range": None,
            "nplc": 1,
            "ramp_step": 0.05,
            "max_slew": 10.0,
            "retry": {"count": 1, "backoff": 0.01, "factor": 2},
            **overrides,
        }
    )
    return Keithley2400Channel(settings, clock=VirtualClock())


def test_the_driver_configures_sources_and_reads_through_tcp(station: VirtualStation) -> None:
    smu = channel(station)
    smu.connect()
    try:
        assert "2400" in smu.identify()
        smu.set_level(0.0)
        smu.enable()
        smu.ramp_to(0.5)
        assert smu.read() == pytest.approx(0.5 / RESISTANCE, rel=1e-5)
        with pytest.raises(SafetyViolation):
            smu.set_level(5.0)  # beyond the 2.1 V source range: refused before sending
        assert smu.read() == pytest.approx(0.5 / RESISTANCE, rel=1e-5)
    finally:
        smu.close()
    assert not smu.enabled
    assert smu.level == 0.0


def test_a_garbled_reply_and_a_disconnect_become_instrument_errors(
    station: VirtualStation,
) -> None:
    smu = channel(station, retry={"count": 0, "backoff": 0.01, "factor": 2})
    smu.connect()
    try:
        smu.enable()
        server = station.servers["smu"]
        server.set_faults(garble=1)
        with pytest.raises(InstrumentError, match="gate"):
            smu.read()
        server.set_faults(disconnect_after=0)
        with pytest.raises(InstrumentError, match="gate"):
            smu.read()
    finally:
        server.clear_faults()
        with contextlib.suppress(InstrumentError):  # the link is gone: reported, no hang
            smu.close()
