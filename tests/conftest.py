"""Shared pytest set-up: hardware tests are opt-in (`pytest tests/hardware --hardware
--device-address ADDR --device-type keithley2400` or `--station FILE`); `--soak` lengthens the
kill-and-resume soak and the guard fuzzer."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--hardware", action="store_true", help="run tests that need real instruments")
    parser.addoption("--device-address", default=None, help="VISA address of the device under test")
    parser.addoption(
        "--device-type",
        default="keithley2400",
        help="instrument at --device-address: keithley2400 | keithley2600 (smua)",
    )
    parser.addoption(
        "--station", default=None, help="station file of a real rig for the hardware rig tests"
    )
    parser.addoption(
        "--soak",
        action="store_true",
        help="longer suites: the kill-and-resume soak (more kill points, the shipped configs' "
        "full lengths) and the guard fuzzer (ten times the requests)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--hardware"):
        return
    skip = pytest.mark.skip(reason="needs real hardware: run with --hardware --device-address ADDR")
    for item in items:
        if "hardware" in item.keywords:
            item.add_marker(skip)
