"""Every simulator passes the conformance suite of `hil.testing`."""

from __future__ import annotations

from typing import Any

import pytest

from hil.core import Device
from hil.testing import DeviceFactory, device_checks
from simulators.analog_mlp import AnalogMLPDevice
from simulators.analytic import AnalyticDevice
from simulators.crossbar import CrossbarDevice
from simulators.dnpu import DNPUDevice
from simulators.landscape import LandscapeDevice

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


def analog_mlp(seed: int, noise: bool) -> Device:
    settings: dict[str, Any] = {"layers": [3, 5, 2], "noise": {"flicker_psd": 1e-2}}
    if not noise:
        settings["noise"] = {"membrane": 0.0, "flicker_psd": 0.0, "drift_std": 0.0}
    return AnalogMLPDevice(AnalogMLPDevice.Settings.model_validate(settings), seed=seed)


def crossbar(seed: int, noise: bool) -> Device:
    if noise:
        settings: dict[str, Any] = {
            "write_noise_std": 2.0,
            "corrupt_devices_prob": 0.1,
            "io": {"w_noise": 0.02},
            "retention": {"model": "pcm"},
        }
    else:
        settings = {"dw_min_std": 0.0, "io": {"out_noise": 0.0}}
    return CrossbarDevice(
        CrossbarDevice.Settings.model_validate({"rows": 8, "cols": 4, **settings}), seed=seed
    )


def landscape(seed: int, noise: bool) -> Device:
    settings = {"dim": 4, "noise": 0.1 if noise else 0.0}
    return LandscapeDevice(LandscapeDevice.Settings.model_validate(settings), seed=seed)


FACTORIES: dict[str, DeviceFactory] = {
    "analytic": analytic,
    "dnpu": dnpu,
    "analog-mlp": analog_mlp,
    "crossbar": crossbar,
    "landscape": landscape,
}
CASES = [
    pytest.param(check, id=f"{device}-{name}")
    for device, factory in FACTORIES.items()
    for name, check in device_checks(factory)
]


@pytest.mark.parametrize("check", CASES)
def test_conformance(check: object) -> None:
    assert callable(check)
    check()
