"""The Keithley 2400 driver through the VISA transport, on pyvisa-sim (tests/unit/sim/*.yaml).

`expected_protocol` checks the exact messages without a transport; the virtual instruments check
the driver over TCP. Here the driver opens a GPIB address as on a bench, through pyvisa's
resource manager and PyMeasure's VISA adapter with the station's terminations and timeout, and
the simulated instrument answers from a YAML description: connect with readback, a level, a
reading, the safe state, and a reading the driver cannot use.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from drivers.keithley import Keithley2400Channel, Keithley2400Settings
from hil.core import InstrumentProtocolError, SafetyViolation, VirtualClock

SIM = Path(__file__).parent / "sim" / "keithley2400.yaml"
FIVE_ELEMENTS = "+1.000000E-01,+1.000000E-06,+9.910000E+37,+1.234000E+02,+1.944000E+04"

pytestmark = pytest.mark.filterwarnings(
    "ignore:It is not known whether this device support SCPI:FutureWarning"
)


def channel(**changes: object) -> Keithley2400Channel:
    values: dict[str, object] = {
        "name": "drain",
        "address": "GPIB0::24::INSTR",
        "visa_library": f"{SIM}@sim",
        "compliance_current": 1e-5,
        "source_range": 2.0,
        "measure_range": 1e-5,
        "nplc": 1.0,
        "ramp_step": 0.05,
        "max_slew": 1.0,
        "retry": {"count": 1, "backoff": 0.0},
    }
    values.update(changes)
    return Keithley2400Channel(Keithley2400Settings.model_validate(values), clock=VirtualClock())


def level(ch: Keithley2400Channel) -> float:
    return float(ch.instrument.ask(":SOURCE:VOLTAGE?"))


def test_connect_reads_back_sources_reads_and_goes_safe_over_visa() -> None:
    ch = channel()
    ch.connect()
    try:
        assert ch.identify().startswith("KEITHLEY INSTRUMENTS INC.,MODEL 2400")
        ch.enable()
        ch.ramp_to(0.1)
        assert level(ch) == pytest.approx(0.1)
        ch.sync()
        assert ch.read() == pytest.approx(1e-6)  # the 2nd of the five elements
        with pytest.raises(SafetyViolation):
            ch.set_level(2.5)  # beyond the 2 V range: refused before anything is sent
        assert level(ch) == pytest.approx(0.1)
    finally:
        ch.close()
    session = channel()
    session.connect()  # a new session sees what the instrument holds: 0 V, output off
    try:
        assert level(session) == 0.0
        assert session.instrument.ask("OUTPUT?").strip() == "0"
    finally:
        session.close()


def test_a_reading_with_the_wrong_elements_is_a_protocol_error_naming_the_instrument() -> None:
    """A 2400 left with other `:FORM:ELEM` answers three elements: the driver retries, then
    says which instrument, which command and what came back."""
    ch = channel()
    ch.connect()
    try:
        ch.enable()
        ch.instrument.write("SIM:READ +1.000000E-01,+1.000000E-06,+9.910000E+37")
        with pytest.raises(InstrumentProtocolError, match=r"drain .*:READ\?.*expected 5 elements"):
            ch.read()
    finally:
        ch.instrument.write(f"SIM:READ {FIVE_ELEMENTS}")  # the simulated device outlives a test
        ch.close()
