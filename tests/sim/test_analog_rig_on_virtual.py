"""The analog-chip rig against a virtual SCPI DAQ board over real TCP (pyvisa-py), the board
backed by the analog MLP simulator: the conformance checks that apply to a rig, outputs equal to
the in-process simulator's with the same seed (exactly through REAL,64 blocks, within NR3's
precision through ASCII), and the safe state on exit and on an exception."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import pyvisa
from pyvisa.resources import MessageBasedResource

from drivers.rigs.analog import AnalogRig
from hil.core import InstrumentError, SafetyViolation
from hil.testing import CHECKS
from simulators.analog_mlp import AnalogMLPDevice
from simulators.virtual.backplane import Backplane
from simulators.virtual.scpi_daq import ScpiDaq, Wire, board_for
from simulators.virtual.server import ScpiServer

pytestmark = pytest.mark.timeout(30)

LAYERS = [2, 3, 1]
CODES_PER_VOLT = 4.0  # inputs 0…31 and weights ±31 codes are 0…7.75 V / ±7.75 V on the board
LSB_PER_VOLT = 16.0  # int8 outputs are ±8 V on the 10 V input range
NO_RIG_CHECKS = {"noise_streams": "a rig has no random number generator to expose"}


def chip_settings(noise: bool) -> AnalogMLPDevice.Settings:
    settings: dict[str, Any] = {"layers": LAYERS, "noise": {"flicker_psd": 1e-2}}
    if not noise:
        settings["noise"] = {"membrane": 0.0, "flicker_psd": 0.0, "drift_std": 0.0}
    return AnalogMLPDevice.Settings.model_validate(settings)


def rig_settings(address: str = "TCPIP::127.0.0.1::1::SOCKET", **board: Any) -> AnalogRig.Settings:
    spec = AnalogMLPDevice(chip_settings(False)).spec
    channels: dict[str, dict[str, Any]] = {}
    for n, c in enumerate((*spec.inputs, *spec.controls), start=1):
        channels[c.name] = {
            "role": c.role.value,
            "board": n,
            "min": c.min,
            "max": c.max,
            "unit": "LSB",
            "scale": CODES_PER_VOLT,
        }
    for n, c in enumerate(spec.outputs, start=101):
        channels[c.name] = {"role": "output", "board": n, "unit": "LSB", "scale": LSB_PER_VOLT}
    driven = [c["board"] for c in channels.values() if c["role"] != "output"]
    return AnalogRig.Settings.model_validate(
        {
            "name": "mlp-chip",
            "instruments": {
                "daq": {
                    "type": "scpi-daq",
                    "address": address,
                    "visa_library": "@py",
                    "timeout": 1.0,
                    "ao": dict.fromkeys(driven, 10.0),
                    "ai": {101: 10.0},
                    "ramp_step": 0.5,
                    "max_slew": 20.0,
                    "retry": {"count": 0},
                    **board,
                }
            },
            "channels": channels,
            "settle_time": 1e-3,
            "reading_time": 1e-3,
            "clock": "virtual",
        }
    )


def settled(done: Callable[[], bool], timeout: float = 2.0) -> None:
    """Wait until the server has executed what a closed connection sent (writes are not
    acknowledged); fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "the virtual instrument never got there"
        time.sleep(0.005)


class Rigs:
    """Builds rigs, each on its own virtual board and chip, and remembers what serves each."""

    def __init__(self) -> None:
        self.made: list[tuple[AnalogRig, ScpiServer]] = []

    def __call__(self, seed: int, noise: bool, **board: Any) -> AnalogRig:
        chip = AnalogMLPDevice(chip_settings(noise), seed=seed)
        server = ScpiServer(
            board_for(Backplane(chip), rig_settings().wiring()), f"daq-{seed}"
        ).start()
        try:
            rig = AnalogRig(rig_settings(server.address, **board))
        except BaseException:
            server.stop()
            raise
        self.made.append((rig, server))
        return rig

    def server(self, rig: AnalogRig) -> tuple[ScpiServer, ScpiDaq]:
        """The server and the virtual board behind `rig`."""
        server = next(s for r, s in self.made if r is rig)
        assert isinstance(server.device, ScpiDaq)
        return server, server.device


@pytest.fixture
def make_rig() -> Iterator[Rigs]:
    rigs = Rigs()
    yield rigs
    for rig, server in rigs.made:
        with contextlib.suppress(InstrumentError):
            rig.close()
        server.stop()


@pytest.mark.parametrize("name", [n for n in CHECKS if n not in NO_RIG_CHECKS])
def test_conformance(make_rig: Rigs, name: str) -> None:
    CHECKS[name](make_rig)


@pytest.mark.parametrize(("data_format", "rtol"), [("real64", 0.0), ("ascii", 1e-6)])
def test_outputs_equal_the_in_process_simulator(
    make_rig: Rigs, data_format: str, rtol: float
) -> None:
    rig = make_rig(21, True, data_format=data_format)
    twin = AnalogMLPDevice(chip_settings(True), seed=21)
    rng = np.random.default_rng(3)
    lo, hi = twin.spec.bounds(twin.spec.controls[0].role)
    for _ in range(2):
        theta = rng.uniform(lo, hi)
        inputs = rng.uniform(0, 31, size=(4, LAYERS[0]))
        rig.set_controls(theta)
        twin.set_controls(theta)
        measured = rig.measure(inputs)
        expected = np.vstack([twin.measure(row[np.newaxis, :]) for row in inputs])
        np.testing.assert_allclose(measured, expected, rtol=rtol, atol=0)
    assert np.ptp(measured) > 0  # the outputs move: the comparison is not of constants


@pytest.mark.parametrize("fail", [False, True])
def test_safe_state_on_exit_and_on_an_exception(make_rig: Rigs, fail: bool) -> None:
    rig = make_rig(5, False)
    _, board = make_rig.server(rig)
    theta = np.full(len(rig.spec.controls), 30.0)  # 7.5 V on every control
    with contextlib.suppress(RuntimeError), rig:
        rig.set_controls(theta)
        rig.measure(np.array([[31.0, 31.0]]))
        assert board.state.output
        t0 = rig.clock.now()
        if fail:
            raise RuntimeError("a protocol failed mid-run")
    assert rig.clock.now() - t0 >= 7.5 / 20.0  # ramped down at no more than max_slew
    settled(lambda: not board.state.output)  # the last write is executed after close returns
    assert set(board.state.ao_levels.values()) == {0.0}
    assert set(board.backplane.levels().values()) == {0.0}


def test_out_of_range_requests_are_refused_before_sending(make_rig: Rigs) -> None:
    rig = make_rig(7, False)
    _, board = make_rig.server(rig)
    theta = np.zeros(len(rig.spec.controls))
    rig.set_controls(theta)
    theta[2] = 31.5
    with pytest.raises(SafetyViolation, match="w0_0_2"):
        rig.set_controls(theta)
    with pytest.raises(SafetyViolation, match="x1"):
        rig.measure(np.array([[0.0, 1.0], [0.0, -1.0]]))
    assert set(board.state.ao_levels.values()) == {0.0}
    assert board.execute("SYST:ERR?") == '0,"No error"'


def test_settings_refuse_a_range_the_board_cannot_drive() -> None:
    data = rig_settings().model_dump()
    data["channels"]["x0"]["max"] = 50.0  # 12.5 V at 4 codes/V, beyond ±10 V
    with pytest.raises(ValueError, match="beyond the board's"):
        AnalogRig.Settings.model_validate(data)
    data = rig_settings().model_dump()
    data["channels"]["x1"]["board"] = 1  # x0 is on AO 1
    with pytest.raises(ValueError, match="wired twice"):
        AnalogRig.Settings.model_validate(data)
    data = rig_settings().model_dump()
    data["channels"]["x0"]["max_slew"] = 10.0  # board ramps at 20 V/s = 80 codes/s
    with pytest.raises(ValueError, match=r"lower instruments\.daq\.max_slew"):
        AnalogRig.Settings.model_validate(data)


def test_a_broken_link_is_an_instrument_error_naming_the_board(make_rig: Rigs) -> None:
    rig = make_rig(9, False)
    server, _ = make_rig.server(rig)
    rig.measure(np.array([[1.0, 2.0]]))
    server.set_faults(disconnect_after=0)
    with pytest.raises(InstrumentError, match=r"daq \(HIL,VIRTUAL SCPI DAQ"):
        rig.measure(np.array([[3.0, 2.0]]))
    server.clear_faults()
    with pytest.raises(InstrumentError):
        rig.close()  # the safe state is attempted and its failure reported, never hung


@pytest.fixture
def raw_board() -> Iterator[tuple[MessageBasedResource, ScpiDaq]]:
    """A virtual board with 4 AO / 2 AI, and a plain pyvisa session to it."""
    chip = AnalogMLPDevice(chip_settings(False), seed=1)
    board = ScpiDaq(Backplane(chip), {1: Wire("x0", 4.0)}, {101: Wire("y0", 0.5)}, n_ao=4, n_ai=2)
    rm = pyvisa.ResourceManager("@py")
    with ScpiServer(board, "daq-raw") as server:
        inst = rm.open_resource(
            server.address, read_termination="\n", write_termination="\n", timeout=2000
        )
        assert isinstance(inst, MessageBasedResource)
        try:
            yield inst, board
        finally:
            inst.close()
            rm.close()


@pytest.mark.parametrize(
    ("command", "code"),
    [
        ("SOUR:VOLT 1,(@5)", -224),  # no AO 5 on this board
        ("SOUR:VOLT 10.5,(@1)", -222),  # beyond the 10 V range
        ("SOUR:VOLT 1,(@1", -104),  # an unterminated channel list
        ("SOUR:VOLT 1", -109),  # no channel list
        ("SENS:VOLT:RANG 20,(@101)", -222),
        ("SAMP:COUN 1.5", -224),
        ("FORM REAL,32", -224),
        ("ROUT:SCAN (@103)", -224),  # no AI 103
        ("FETC?", -230),  # no reading yet
        ("SOUR:CURR 1,(@1)", -113),
    ],
)
def test_the_virtual_board_is_strict(
    raw_board: tuple[MessageBasedResource, ScpiDaq], command: str, code: int
) -> None:
    inst, board = raw_board
    inst.write(command)
    assert inst.query("SYST:ERR?").startswith(f"{code},")
    assert inst.query("SYST:ERR?") == '0,"No error"'
    assert set(board.state.ao_levels.values()) == {0.0}


def test_the_virtual_board_holds_levels_and_reads_blocks(
    raw_board: tuple[MessageBasedResource, ScpiDaq],
) -> None:
    inst, board = raw_board
    inst.write("SOUR:VOLT 2.5,(@1:2)")
    assert inst.query("SOUR:VOLT? (@1,2,3)") == "+2.500000E+00,+2.500000E+00,+0.000000E+00"
    assert board.backplane.levels()["x0"] == 0.0  # outputs off: the chip sees 0 V
    assert inst.query("OUTP ON;*OPC?") == "1"  # executed once answered
    assert board.backplane.levels()["x0"] == 10.0  # 2.5 V at 4 codes per volt
    inst.write("SOUR:VOLT:RANG 2.5,(@1)")  # holds 2.5 V: allowed
    inst.write("SOUR:VOLT:RANG 1,(@1)")  # selects 2.5 V again
    inst.write("SOUR:VOLT 3,(@1)")  # beyond it: refused
    assert inst.query("SYST:ERR?").startswith("-222,")
    inst.write("ROUT:SCAN (@101:102);:SAMP:COUN 3;:FORM REAL,64")
    values = inst.query_binary_values("READ?", datatype="d", is_big_endian=True)
    assert len(values) == 6
    assert values[1::2] == [0.0, 0.0, 0.0]  # AI 102 is not wired
    assert values[0::2] == [2.0, 2.0, 2.0]  # the chip's offset, 1 LSB, at 0.5 LSB per volt
    inst.write("FORM ASC")
    assert [float(v) for v in inst.query("FETC?").split(",")] == values
    inst.write("SENS:VOLT:RANG 1,(@101)")
    assert inst.query("READ?").split(",")[:2] == ["+9.900000E+37", "+0.000000E+00"]  # overload
    inst.write("*RST")
    assert inst.query("OUTP?;:FORM?;:ROUT:SCAN?") == "0;ASC;(@)"
    assert inst.query("SYST:ERR?") == '0,"No error"'
