"""Tests on real instruments: opt-in, skipped unless pytest runs with `--hardware`.

    pytest tests/hardware --hardware --device-address GPIB0::24::INSTR --device-type keithley2400
    pytest tests/hardware --hardware --station configs/stations/my-bench.yaml

The instrument test needs an SMU whose output terminals are open or on a load that takes
±0.1 V at 1 µA compliance; it sources at most 0.1 V. The station test builds the station's rig
behind its safety guard, asks for a level beyond a channel's range (refused, nothing sent),
measures at zero inputs with the controls at 0 V, and goes safe. Both leave every output at 0 V
and off, also when they fail.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from drivers.instruments import PyMeasureChannel
from drivers.keithley import (
    Keithley2400Channel,
    Keithley2400Settings,
    Keithley2600Channel,
    Keithley2600Settings,
)
from hil.build import build_device
from hil.config import load_station
from hil.core import Role, SafetyViolation

pytestmark = pytest.mark.hardware

SMUS: dict[
    str, tuple[type[PyMeasureChannel], type[Keithley2400Settings | Keithley2600Settings]]
] = {
    "keithley2400": (Keithley2400Channel, Keithley2400Settings),
    "keithley2600": (Keithley2600Channel, Keithley2600Settings),
}


def _option(config: pytest.Config, name: str) -> str:
    value = config.getoption(name)
    if not value:
        pytest.skip(f"give {name} on the command line")
    return str(value)


def test_smu_connects_reads_back_sources_and_goes_safe(pytestconfig: pytest.Config) -> None:
    address = _option(pytestconfig, "--device-address")
    kind = str(pytestconfig.getoption("--device-type"))
    if kind not in SMUS:
        pytest.fail(f"--device-type {kind!r}: one of {sorted(SMUS)}")
    cls, model = SMUS[kind]
    settings = model.model_validate(
        {
            "name": "dut",
            "address": address,
            "compliance_current": 1e-6,
            "source_range": 0.2,
            "measure_range": None,
            "nplc": 1,
            "ramp_step": 0.02,
            "max_slew": 0.5,
        }
    )
    smu = cls(settings)
    smu.connect()  # writes every limit and reads it back: a mismatch refuses to start
    try:
        assert smu.identify()
        with pytest.raises(SafetyViolation):
            smu.set_level(0.5)  # beyond the 0.2 V source range: refused before sending
        smu.enable()
        smu.ramp_to(0.1)
        smu.sync()
        current = smu.read()
        assert abs(current) <= 1.05e-6
    finally:
        smu.close()
    assert not smu.enabled
    assert smu.level == 0.0


def test_station_rig_refuses_measures_and_goes_safe(pytestconfig: pytest.Config) -> None:
    station = load_station(Path(_option(pytestconfig, "--station")))
    guard = build_device(station, np.random.SeedSequence(0))
    with guard:
        spec = guard.spec
        if spec.controls:
            beyond = np.zeros(len(spec.controls))
            beyond[0] = spec.controls[0].max + 1.0
            with pytest.raises(SafetyViolation):
                guard.set_controls(beyond)
            guard.set_controls(np.zeros(len(spec.controls)))
        outputs = guard.measure(np.zeros((2, len(spec.inputs))))
        assert outputs.shape == (2, len(spec.by_role(Role.OUTPUT)))
        assert np.isfinite(outputs).all()
        guard.safe_state()
