"""Every simulator passes the conformance suite of `hil.testing`."""

from __future__ import annotations

import pytest

from hil.core import Device
from hil.testing import DeviceFactory, device_checks
from simulators.analytic import AnalyticDevice
from simulators.dnpu import DNPUDevice

QUIET = {"white": 0.0, "relative": 0.0, "flicker_psd": 0.0, "drift_std": 0.0}


def analytic(seed: int, noise: bool) -> Device:
    settings = {
        "noise": {"white": 0.01, "flicker_psd": 1e-6, "flicker_f_ref": 10.0, "drift_std": 0.01}
        if noise
        else {},
        "cutoff": 200.0,
        "timing": {"sample_rate": 1000.0, "ramp_time": 0.002, "settle_time": 0.01},
    }
    return AnalyticDevice(AnalyticDevice.Settings.model_validate(settings), seed=seed)


def dnpu(seed: int, noise: bool) -> Device:
    settings = {"hidden": [16, 16]} if noise else {"hidden": [16, 16], "noise": QUIET}
    return DNPUDevice(DNPUDevice.Settings.model_validate(settings), seed=seed)


FACTORIES: dict[str, DeviceFactory] = {"analytic": analytic, "dnpu": dnpu}
CASES = [
    pytest.param(check, id=f"{device}-{name}")
    for device, factory in FACTORIES.items()
    for name, check in device_checks(factory)
]


@pytest.mark.parametrize("check", CASES)
def test_conformance(check: object) -> None:
    assert callable(check)
    check()
