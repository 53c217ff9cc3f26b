"""Both crossbar rigs end to end: the serial rig over `socket://` to the XBAR/1 emulator, the ArC
TWO rig on the pyarc2 fake, each backed by a `CrossbarDevice`. A weight pattern is programmed by
pulses and read back, the conformance checks that apply to rigs pass, the array is grounded on
every exit path, and faults arrive as `InstrumentError`s naming the board."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from drivers.rigs.crossbar import Arc2CrossbarRig, SerialCrossbarRig
from hil.config import load_station
from hil.core import (
    ConfigError,
    Device,
    InstrumentError,
    InstrumentProtocolError,
    ProgrammableState,
    SafetyViolation,
)
from hil.testing import device_checks
from hil.virtual import build_virtual_rig
from simulators.crossbar import CrossbarDevice, CrossbarSettings, IOParameters
from simulators.virtual.arc2 import ArC2Error, FakeInstrument
from simulators.virtual.crossbar_serial import (
    BoardModel,
    CrossbarBoardEmulator,
    CrossbarSerialServer,
)

pytestmark = pytest.mark.timeout(30)

STATIONS = Path(__file__).resolve().parents[2] / "configs" / "stations"

ROWS, COLS = 4, 3
G_REF, G_SCALE = 50e-6, 50e-6
PATTERN = np.array([[20, -20, 0], [0, 15, -15], [-10, 0, 10], [5, 5, -5]])
RIG: dict[str, Any] = {
    "name": "xbar",
    "rows": ROWS,
    "cols": COLS,
    "read_voltage": 0.2,
    "input_voltage": 0.2,
    "set_pulse": {"amplitude": 1.2, "width_ns": 100, "gap_ns": 1000},
    "reset_pulse": {"amplitude": 1.5, "width_ns": 100, "gap_ns": 1000},
    "g_ref": G_REF,
    "g_scale": G_SCALE,
    "clock": "virtual",
}
LIMITS: dict[str, Any] = {
    "max_amplitude": 2.0,
    "max_read_voltage": 0.5,
    "max_width_ns": 1000,
    "max_count": 50,
}


def simulator(seed: int, noise: bool = True) -> CrossbarDevice:
    """A small array with a linear read path (no ADC steps), so reads compare exactly."""
    io = IOParameters(inp_res=0, out_res=0, out_noise=0.01 if noise else 0.0)
    settings = CrossbarSettings(
        rows=ROWS, cols=COLS, construction_seed=4, io=io, dw_min_std=0.3 if noise else 0.0
    )
    return CrossbarDevice(settings, seed=seed)


class Bench:
    """Starts emulators and rigs and stops them all at the end of a test."""

    def __init__(self) -> None:
        self.servers: list[CrossbarSerialServer] = []
        self.rigs: list[Device] = []

    def serial(self, device: CrossbarDevice, **board: Any) -> tuple[SerialCrossbarRig, Any]:
        emulator = CrossbarBoardEmulator(device, BoardModel(g_ref=G_REF, g_scale=G_SCALE))
        server = CrossbarSerialServer(emulator).start()
        self.servers.append(server)
        settings = SerialCrossbarRig.Settings.model_validate(
            {
                **RIG,
                "board": {
                    "name": "xbar-board",
                    "url": server.url,
                    "timeout": 1.0,
                    "retry": {"count": 0},
                    "word_lines": ROWS,
                    "bit_lines": COLS,
                    "compliance_current": 1e-3,
                    **LIMITS,
                    **board,
                },
            }
        )
        rig = SerialCrossbarRig(settings)
        self.rigs.append(rig)
        return rig, server

    def arc2(self, device: CrossbarDevice) -> tuple[Arc2CrossbarRig, FakeInstrument]:
        fake = FakeInstrument(device, g_ref=G_REF, g_scale=G_SCALE)
        settings = Arc2CrossbarRig.Settings.model_validate(
            {
                **RIG,
                "board": {
                    "name": "arc2-board",
                    "firmware": "fw.bin",
                    "row_channels": (0, 1, 2, 3),
                    "col_channels": (16, 17, 18),
                    **LIMITS,
                },
            }
        )
        rig = Arc2CrossbarRig(settings, instrument=fake)
        self.rigs.append(rig)
        return rig, fake

    def close(self) -> None:
        for rig in self.rigs:
            with contextlib.suppress(InstrumentError):  # a board a test disconnected
                rig.close()
        for server in self.servers:
            server.stop()


@pytest.fixture
def bench() -> Iterator[Bench]:
    running = Bench()
    try:
        yield running
    finally:
        running.close()


def test_a_pattern_programmed_through_the_serial_emulator_reads_back(bench: Bench) -> None:
    backing, twin = simulator(1), simulator(1)
    rig, server = bench.serial(backing)
    start = rig.read_state()
    np.testing.assert_allclose(start, backing.read_state(), atol=1e-9)
    rig.apply_pulses(PATTERN)
    weights = rig.read_state()
    np.testing.assert_allclose(weights, backing.read_state(), atol=1e-9)  # the simulator's own
    moved = weights - start
    assert np.all(np.sign(moved) == np.sign(PATTERN))
    # the same counts on an in-process twin: equal within the cycle-to-cycle step noise
    twin.apply_pulses(PATTERN)
    spread = 0.3 * 0.001 * np.sqrt(np.abs(PATTERN)) * 4 + 1e-12
    assert np.all(np.abs(weights - twin.weights) <= spread * 3)
    x = np.array([[0.5, -0.25, 1.0, 0.0], [-1.0, 1.0, 0.5, 0.25]])
    np.testing.assert_allclose(rig.measure(x), x @ backing.weights, atol=0.05)
    assert server.board.lines == "GND"  # grounded after every operation


def test_a_pattern_programmed_through_the_arc2_fake_matches_the_simulator(bench: Bench) -> None:
    backing, twin = simulator(2), simulator(2)
    rig, fake = bench.arc2(backing)
    rig.apply_pulses(PATTERN)
    twin.apply_pulses(PATTERN)  # one execute() → one apply_pulses: the same noise draws
    np.testing.assert_allclose(rig.read_state(), twin.read_state(), rtol=0, atol=1e-12)
    x = np.array([[0.5, -0.25, 1.0, 0.0]])
    np.testing.assert_allclose(rig.measure(x), x @ twin.weights, atol=1e-12)
    names = [name for name, _ in fake.calls]
    assert names.count("pulse_one") == int(np.abs(PATTERN).sum())
    assert fake.state == "ground"


def test_pulse_counts_beyond_the_limit_are_refused_before_sending(bench: Bench) -> None:
    rig, server = bench.serial(simulator(3))
    sent = len(server.board.log)
    too_many = np.zeros((ROWS, COLS), dtype=int)
    too_many[2, 1] = -51
    with pytest.raises(SafetyViolation, match="pulse count"):
        rig.apply_pulses(too_many)
    with pytest.raises(SafetyViolation, match="row1"):
        rig.measure(np.array([[0.0, 1.5, 0.0, 0.0]]))
    assert len(server.board.log) == sent
    arc2, fake = bench.arc2(simulator(3))
    calls = len(fake.calls)
    with pytest.raises(SafetyViolation, match="pulse count"):
        arc2.apply_pulses(too_many)
    assert len(fake.calls) == calls


def _pulse_then_fail(rig: SerialCrossbarRig | Arc2CrossbarRig, pulses: int = 1) -> None:
    with rig:
        rig.apply_pulses(np.full((ROWS, COLS), pulses))
        raise RuntimeError("boom")


def test_the_array_is_grounded_on_exit_and_on_exception(bench: Bench) -> None:
    rig, server = bench.serial(simulator(4))
    with pytest.raises(RuntimeError, match="boom"):
        _pulse_then_fail(rig)
    assert server.board.log[-1] == ("GND", "OK")
    deadline = time.monotonic() + 2.0
    while server.board.session and time.monotonic() < deadline:
        time.sleep(0.01)  # the port closed: the board ends the session
    assert not server.board.session
    arc2, fake = bench.arc2(simulator(4))
    fake.calls.clear()
    with pytest.raises(RuntimeError, match="boom"):
        _pulse_then_fail(arc2, pulses=0)
    grounding = [("ground_all", ()), ("execute", ()), ("wait", ())]
    assert fake.calls == grounding * 2  # safe_state, then close (which grounds again)


def test_faults_name_the_board(bench: Bench) -> None:
    rig, server = bench.serial(simulator(5))
    server.set_faults(garble=1)
    with pytest.raises(InstrumentProtocolError, match=r"xbar-board \(HIL,XBAR-EMULATOR"):
        rig.read_state()
    server.set_faults(disconnect_after=0)
    with pytest.raises(InstrumentError, match="xbar-board"):
        rig.read_state()
    arc2, fake = bench.arc2(simulator(5))
    fake.fail_next("read_all", ArC2Error("FPGA memory read failed"))
    with pytest.raises(InstrumentError, match=r"arc2-board \(ArC TWO #0\): read_all"):
        arc2.read_state()


def test_the_board_watchdog_grounds_an_idle_selection() -> None:
    board = CrossbarBoardEmulator(simulator(6), watchdog=0.1)
    assert board.handle("HELLO 1").startswith("OK")
    assert board.handle("WDT 0.1") == "OK"
    assert board.handle("SEL 1 1") == "OK"
    time.sleep(0.15)
    assert board.handle("SEL?") == "OK NONE"
    assert board.lines == "GND"


# -- conformance (hil.testing): the checks that apply to a rig ---------------------------------

_BENCH = Bench()


def _serial_factory(seed: int, noise: bool) -> Device:
    return _BENCH.serial(simulator(seed, noise))[0]


def _arc2_factory(seed: int, noise: bool) -> Device:
    return _BENCH.arc2(simulator(seed, noise))[0]


NOT_FOR_RIGS = {"noise_streams", "state_round_trip", "stream_matches_measure"}
"""A rig has no generator of its own, keeps no checkpointable state and does not stream."""


@pytest.fixture
def shared_bench() -> Iterator[None]:
    try:
        yield
    finally:
        _BENCH.close()
        _BENCH.rigs.clear()
        _BENCH.servers.clear()


@pytest.mark.usefixtures("shared_bench")
@pytest.mark.parametrize(
    "check",
    [
        pytest.param(check, id=f"{kind}-{name}")
        for kind, factory in (("serial", _serial_factory), ("arc2", _arc2_factory))
        for name, check in device_checks(factory)
        if name not in NOT_FOR_RIGS
    ],
)
def test_conformance(check: Any) -> None:
    check()


def test_rigs_have_the_programmable_state_capability(bench: Bench) -> None:
    rig, _ = bench.serial(simulator(7))
    assert isinstance(rig, ProgrammableState)
    assert isinstance(rig, Device)
    assert rig.spec.outputs


def test_a_station_file_gives_line_and_channel_maps_as_yaml_lists(tmp_path: Path) -> None:
    """A person's station file is validated strictly: YAML lists for `word_lines`/`bit_lines`
    and ArC TWO's `row_channels`/`col_channels` load, are still checked, and map the array."""
    station = yaml.safe_load((STATIONS / "crossbar-arc2-virtual.yaml").read_text())
    device = station["device"]
    device.update(rows=2, cols=2, word_lines=[3, 1], bit_lines=[0, 2])
    device["board"].update(row_channels=[0, 1, 2, 3], col_channels=[16, 17, 18, 19])
    station["virtual"]["device"].update(rows=4, cols=4)
    path = tmp_path / "station.yaml"
    path.write_text(yaml.safe_dump(station))
    resolved = load_station(path)
    settings = resolved.device.settings
    assert isinstance(settings, Arc2CrossbarRig.Settings)
    assert settings.lines == ((3, 1), (0, 2))
    assert settings.board.row_channels == [0, 1, 2, 3]
    rig = build_virtual_rig(resolved, np.random.SeedSequence(5))
    try:
        assert isinstance(rig, Arc2CrossbarRig)
        sim = rig.board.instrument.device  # the fake's simulated 4 × 4 array
        before = sim.read_state()
        rig.apply_pulses(np.array([[10, 0], [0, 0]]))  # row 0, column 0: word 3, bit 0
        moved = np.argwhere(sim.read_state() != before)
        assert moved.tolist() == [[3, 0]]
    finally:
        rig.close()
    device["word_lines"] = [3, 3]
    path.write_text(yaml.safe_dump(station))
    with pytest.raises(ConfigError, match=r"word_lines: 2 distinct lines expected"):
        load_station(path)
