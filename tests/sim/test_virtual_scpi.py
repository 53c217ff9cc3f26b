"""Virtual SCPI instruments on loopback TCP, through real pyvisa (pyvisa-py) and raw sockets."""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Iterator

import numpy as np
import pytest
import pyvisa
from pyvisa.resources import MessageBasedResource

from simulators.dnpu import DNPUDevice
from simulators.virtual import (
    Backplane,
    Electrode,
    Keithley2400,
    Resistor,
    ScpiServer,
    VirtualStation,
)
from simulators.virtual.keithley2400 import STATUS_COMPLIANCE

pytestmark = pytest.mark.timeout(10)

TIMEOUT_MS = 2000
NO_ERROR = '0,"No error"'


@pytest.fixture
def server() -> Iterator[ScpiServer]:
    with ScpiServer(Keithley2400(Resistor(1e3)), "smu-test") as srv:
        yield srv


@pytest.fixture
def rm() -> Iterator[pyvisa.ResourceManager]:
    manager = pyvisa.ResourceManager("@py")
    yield manager
    manager.close()


def open_visa(rm: pyvisa.ResourceManager, address: str) -> MessageBasedResource:
    inst = rm.open_resource(
        address, read_termination="\n", write_termination="\n", timeout=TIMEOUT_MS
    )
    assert isinstance(inst, MessageBasedResource)
    return inst


@pytest.fixture
def inst(server: ScpiServer, rm: pyvisa.ResourceManager) -> Iterator[MessageBasedResource]:
    resource = open_visa(rm, server.address)
    yield resource
    resource.close()


@pytest.fixture
def raw(server: ScpiServer) -> Iterator[socket.socket]:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=2.0)
    yield sock
    sock.close()


def readline(sock: socket.socket) -> bytes:
    """One response line (byte by byte, so the next line stays in the socket); b"" at EOF."""
    data = b""
    while not data.endswith(b"\n"):
        byte = sock.recv(1)
        if not byte:
            break
        data += byte
    return data


def errors(inst: MessageBasedResource) -> list[str]:
    """Drain the error queue."""
    found = []
    while (entry := inst.query("SYST:ERR?")) != NO_ERROR:
        found.append(entry)
        assert len(found) < 20
    return found


def codes(inst: MessageBasedResource) -> list[int]:
    return [int(e.split(",")[0]) for e in errors(inst)]


def reading(inst: MessageBasedResource, query: str = ":READ?") -> list[float]:
    return [float(v) for v in inst.query(query).split(",")]


def test_idn_and_common_commands(inst: MessageBasedResource) -> None:
    assert inst.query("*IDN?").startswith("KEITHLEY INSTRUMENTS INC.,MODEL 2400,")
    assert inst.query("*OPC?") == "1"
    assert inst.query("*idn?;*opc?").endswith(";1")
    assert inst.query(":SYSTem:ERRor:NEXT?") == NO_ERROR
    assert inst.query("SYST:ERR?") == NO_ERROR


@pytest.mark.parametrize(
    "command",
    [
        ":SOURce:VOLTage:LEVel 1.5",
        "SOUR:VOLT 1.5",
        "sour:volt:lev:imm:ampl 1.5",
        "SOURCE:VOLTAGE:IMMEDIATE 1.5",
        ":sOuRcE:VoLt:AmPl 15E-1",
    ],
)
def test_short_long_forms_and_case(inst: MessageBasedResource, command: str) -> None:
    inst.write(command)
    assert inst.query(":SOUR:VOLT?") == "+1.500000E+00"
    assert errors(inst) == []


@pytest.mark.parametrize("command", ["SOURC:VOLT 1", "SOU:VOLT 1", ":SOUR:VOLTAG 1", "VOLT 1"])
def test_forms_between_short_and_long_are_undefined(
    inst: MessageBasedResource, command: str
) -> None:
    inst.write(command)
    assert codes(inst) == [-113]


def test_chained_units_continue_the_path(inst: MessageBasedResource) -> None:
    inst.write(":SOUR:VOLT:LEV 1;RANG 20;:SENS:CURR:PROT 0.01;:OUTP ON")
    assert inst.query(":SOUR:VOLT:RANG?;LEV?;:OUTP?") == "+2.100000E+01;+1.000000E+00;1"
    assert inst.query(":SOUR:VOLT:RANG:AUTO?") == "0"
    assert errors(inst) == []
    inst.write(":SOUR:VOLT 1;OUTP OFF")  # OUTP is not under :SOUR:VOLT
    assert codes(inst) == [-113]


def test_error_queue_codes_in_order(inst: MessageBasedResource) -> None:
    inst.write("BOGUS:HEADER 1")
    inst.write(":SOUR:VOLT 300")
    inst.write(":SOUR::VOLT 1")
    inst.write(':SENS:FUNC "CURR')
    inst.write(":OUTP MAYBE")
    inst.write(":SOUR:VOLT one")
    inst.write(":SOUR:VOLT")
    inst.write(":SOUR:VOLT 1,2")
    inst.write(":READ")
    assert inst.query("*ESR?") == str(32 | 16)
    assert codes(inst) == [-113, -222, -102, -102, -224, -104, -109, -108, -113]
    assert inst.query("*ESR?") == "0"
    assert inst.query(":SOUR:VOLT?") == "+0.000000E+00"


def test_error_stops_the_rest_of_the_message(inst: MessageBasedResource) -> None:
    inst.write(":SOUR:VOLT 1;:NOPE;:SOUR:VOLT 2")
    assert codes(inst) == [-113]
    assert inst.query(":SOUR:VOLT?") == "+1.000000E+00"


def test_error_queue_overflow_and_cls(inst: MessageBasedResource) -> None:
    for _ in range(12):
        inst.write("NOPE")
    assert inst.query("SYST:ERR:COUN?") == "10"
    found = codes(inst)
    assert found == [-113] * 9 + [-350]
    inst.write("NOPE;*CLS")
    inst.write("*CLS")
    assert errors(inst) == []


def test_min_max_def(inst: MessageBasedResource) -> None:
    inst.write(":SOUR:VOLT MAX")
    assert inst.query(":SOUR:VOLT?") == "+2.100000E+02"
    inst.write(":SOUR:VOLT DEF;:SOUR:VOLT:RANG MIN")
    assert inst.query(":SOUR:VOLT:RANG?") == "+2.100000E-01"
    assert inst.query(":SOUR:VOLT? MAX") == "+2.100000E-01"
    inst.write(":SENS:CURR:PROT MAXIMUM")
    assert inst.query(":SENS:CURR:PROT?") == "+1.050000E+00"
    assert inst.query(":SENS:CURR:PROT? DEF") == "+1.050000E-04"
    inst.write(":OUTP MAX")
    assert codes(inst) == [-224]


def test_source_level_beyond_fixed_range(inst: MessageBasedResource) -> None:
    inst.write(":SOUR:VOLT:RANG 2;:SOUR:VOLT 1.5")
    assert inst.query(":SOUR:VOLT:RANG?") == "+2.100000E+00"
    inst.write(":SOUR:VOLT 5")
    assert codes(inst) == [-222]
    assert inst.query(":SOUR:VOLT?") == "+1.500000E+00"
    inst.write(":SOUR:VOLT:RANG 0.1")  # below the level it sources
    assert codes(inst) == [-221]
    inst.write(":SOUR:VOLT:RANG:AUTO ON;:SOUR:VOLT 5")
    assert inst.query(":SOUR:VOLT:RANG?") == "+2.100000E+01"


def test_rst_restores_defaults_and_keeps_errors(inst: MessageBasedResource) -> None:
    inst.write(":SOUR:FUNC CURR;:SOUR:VOLT 3;:OUTP ON;:FORM:ELEM CURR;NOPE")
    inst.write("status:queue:clear;*RST;:stat:pres;:*CLS;")  # PyMeasure's reset
    assert inst.query(":SOUR:FUNC?;:SOUR:VOLT?;:OUTP?") == "VOLT;+0.000000E+00;0"
    assert inst.query(":SENS:CURR:PROT?;:FORM:ELEM?") == "+1.050000E-04;VOLT,CURR,RES,TIME,STAT"
    inst.write("NOPE;*RST")
    assert codes(inst) == [-113]
    inst.write("NOPE")
    inst.write("*RST")
    assert codes(inst) == [-113]


def test_reading_and_compliance_clipping(inst: MessageBasedResource) -> None:
    inst.write(':SENS:FUNC "CURR";:SENS:CURR:PROT 1e-4;:SOUR:VOLT 0.05;:OUTP ON')
    v, i, r, _, status = reading(inst)
    assert (v, i, r) == (0.05, 5e-5, 9.91e37)
    assert not int(status) & STATUS_COMPLIANCE
    assert inst.query(":SENS:CURR:PROT:TRIP?") == "0"
    inst.write(":SOUR:VOLT -1")
    v, i, _, _, status = reading(inst)
    assert (v, i) == (-1.0, -1e-4)
    assert int(status) & STATUS_COMPLIANCE
    assert inst.query(":SENS:CURR:PROT:TRIP?") == "1"
    assert reading(inst, ":FETC?")[:2] == [-1.0, -1e-4]
    inst.write(":FORM:ELEM CURR")
    assert reading(inst, ":MEAS:CURR?") == [-1e-4]
    assert errors(inst) == []


def test_current_source_mode(inst: MessageBasedResource) -> None:
    inst.write(":SOUR:FUNC CURR;:SOUR:CURR 1e-3;:SENS:VOLT:PROT 10;:OUTP ON")
    v, i, _, _, status = reading(inst)
    assert v == pytest.approx(1.0)
    assert i == 1e-3
    inst.write(":SOUR:CURR 0.1")
    v, i, _, _, status = reading(inst)
    assert (v, i) == (10.0, 0.01)
    assert int(status) & STATUS_COMPLIANCE


def test_read_with_output_off_answers_nothing(raw: socket.socket) -> None:
    raw.sendall(b":READ?\r\nSYST:ERR?\r\n:FETC?\nSYST:ERR?\n")
    assert readline(raw) == b'803,"Output disabled"\n'
    assert readline(raw).startswith(b"-230,")


def test_malformed_input_never_crashes(raw: socket.socket, server: ScpiServer) -> None:
    raw.sendall(b"\xff\xfe\x00garbage\n\n;;\n*IDN\x01?\n:SOUR:VOLT 'x\n" + b"A" * 5000 + b"\n")
    raw.sendall(b"*IDN?\r\n")
    assert readline(raw).startswith(b"KEITHLEY")
    found = []
    for _ in range(10):
        raw.sendall(b"SYST:ERR?\n")
        line = readline(raw)
        if line == b'0,"No error"\n':
            break
        found.append(int(line.split(b",")[0]))
    assert found == [-102, -102, -102, -102, -113]


def test_faults_delay_gives_a_timeout(server: ScpiServer, rm: pyvisa.ResourceManager) -> None:
    inst = open_visa(rm, server.address)
    inst.timeout = 200
    server.set_faults(delay=0.5)
    with pytest.raises(pyvisa.errors.VisaIOError) as info:
        inst.query("*OPC?")
    assert info.value.error_code == pyvisa.constants.StatusCode.error_timeout
    inst.close()
    server.clear_faults()
    inst = open_visa(rm, server.address)
    assert inst.query("*OPC?") == "1"
    inst.close()


def test_faults_drop_and_garble(server: ScpiServer, inst: MessageBasedResource) -> None:
    inst.timeout = 200
    server.set_faults(drop=1, garble=1)
    with pytest.raises(pyvisa.errors.VisaIOError):
        inst.query("*IDN?")
    inst.write("*OPC?")
    garbled = inst.read_raw()
    assert garbled == b"\xff1\n"
    assert inst.query("*OPC?") == "1"
    with pytest.raises(TypeError):
        server.set_faults(explode=1)


def test_faults_disconnect(server: ScpiServer, raw: socket.socket) -> None:
    server.set_faults(disconnect_after=1)
    raw.sendall(b"*OPC?\n")
    assert readline(raw) == b"1\n"
    raw.sendall(b"*OPC?\n")
    assert readline(raw) == b""
    with socket.create_connection(("127.0.0.1", server.port), timeout=2.0) as again:
        again.sendall(b"*OPC?\n")
        assert readline(again) == b"1\n"


def test_disconnect_through_pyvisa(server: ScpiServer, inst: MessageBasedResource) -> None:
    """pyvisa-py sees a closed peer as a read timeout, later as an OSError (broken pipe)."""
    inst.timeout = 200
    server.set_faults(disconnect_after=0)
    with pytest.raises(pyvisa.errors.VisaIOError) as info:
        inst.query("*IDN?")
    assert info.value.error_code == pyvisa.constants.StatusCode.error_timeout
    for _ in range(3):
        with pytest.raises((pyvisa.errors.VisaIOError, OSError)):
            inst.query("*IDN?")


def _threads(prefix: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(prefix)]


def test_clean_shutdown_with_clients_connected(rm: pyvisa.ResourceManager) -> None:
    srv = ScpiServer(Keithley2400(Resistor(1e3)), "smu-shutdown")
    with srv:
        port = srv.port
        inst = open_visa(rm, srv.address)
        sock = socket.create_connection(("127.0.0.1", port), timeout=2.0)
        assert inst.query("*OPC?") == "1"
        sock.sendall(b"*OPC?\n")
        assert readline(sock) == b"1\n"
        assert len(_threads("smu-shutdown")) == 3
    assert _threads("smu-shutdown") == []
    assert readline(sock) == b""
    sock.close()
    inst.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2.0)
    with pytest.raises(RuntimeError, match="not started"):
        _ = srv.port


def test_binds_loopback_only(server: ScpiServer) -> None:
    assert server.address == f"TCPIP::127.0.0.1::{server.port}::SOCKET"
    assert server._listener is not None
    assert server._listener.getsockname()[0] == "127.0.0.1"


def test_virtual_station_addresses(rm: pyvisa.ResourceManager) -> None:
    devices = {"smu1": Keithley2400(Resistor(1e3)), "smu2": Keithley2400(Resistor(2e3))}
    with VirtualStation(devices) as station:
        addresses = station.addresses
        assert set(addresses) == {"smu1", "smu2"}
        ports = set()
        for name, address in addresses.items():
            match = re.fullmatch(r"TCPIP::127\.0\.0\.1::(\d+)::SOCKET", address)
            assert match, address
            ports.add(int(match.group(1)))
            inst = open_visa(rm, address)
            inst.write(":SENS:CURR:PROT 1;:SOUR:VOLT 2;:OUTP ON;:FORM:ELEM CURR")
            assert float(inst.query(":READ?")) == 2 / (1e3 if name == "smu1" else 2e3)
            inst.close()
        assert len(ports) == 2
    assert _threads("smu1") == []
    assert _threads("smu2") == []


def test_seeded_noise_is_reproducible() -> None:
    def currents(seed: int) -> list[str | bytes | None]:
        k = Keithley2400(Resistor(1e3, noise=1e-6, seed=seed))
        k.execute(":SENS:CURR:PROT 1;:SOUR:VOLT 1;:OUTP ON;:FORM:ELEM CURR")
        return [k.execute(":READ?") for _ in range(5)]

    assert currents(7) == currents(7)
    assert currents(7) != currents(8)


def test_dnpu_electrodes_behind_two_smus(
    inst: MessageBasedResource, server: ScpiServer, rm: pyvisa.ResourceManager
) -> None:
    """One SMU holds a control of a DNPU, another reads its output: the backplane wires them."""
    wired, local = DNPUDevice(seed=3), DNPUDevice(seed=3)
    backplane = Backplane(wired)
    control = wired.spec.controls[0].name
    output = wired.spec.outputs[0].name
    server.device = Keithley2400(Electrode(backplane, output))
    with ScpiServer(Keithley2400(Electrode(backplane, control)), "gate") as gate:
        source = open_visa(rm, gate.address)
        try:
            source.write(":SOUR:VOLT 0.3;:OUTP ON")
            assert source.query("SYST:ERR?").startswith("0,")
        finally:
            source.close()
    assert backplane.levels()[control] == 0.3
    inst.write(":SENS:CURR:PROT 1e-6;:SOUR:VOLT 0;:OUTP ON;:FORM:ELEM CURR")
    through_wire = [float(inst.query(":READ?")) for _ in range(3)]
    controls = np.zeros(len(local.spec.controls))
    controls[0] = 0.3
    local.set_controls(controls)
    inputs = np.zeros((1, len(local.spec.inputs)))
    in_process = [float(local.measure(inputs)[0, 0]) * 1e-9 for _ in range(3)]
    assert through_wire == [float(f"{v:.6E}") for v in in_process]


def test_pymeasure_keithley2400_end_to_end(server: ScpiServer) -> None:
    """PyMeasure's own driver (what drivers/ wraps) configures, reads and shuts the SMU down."""
    from pymeasure.instruments.keithley import Keithley2400 as PyMeasure2400

    smu = PyMeasure2400(
        server.address,
        visa_library="@py",
        read_termination="\n",
        write_termination="\n",
        timeout=TIMEOUT_MS,
    )
    try:
        smu.reset()
        assert smu.id.startswith("KEITHLEY INSTRUMENTS INC.,MODEL 2400")
        assert smu.source_enabled is False
        smu.source_mode = "voltage"
        smu.write(":SOURCE:VOLTAGE:MODE FIXED")
        smu.source_voltage_range = 2
        smu.source_voltage = 0.0
        smu.write(':SENSE:FUNCTION "CURR"')
        smu.compliance_current = 1e-4
        smu.current_range_auto_enabled = True
        smu.current_nplc = 1
        assert smu.source_mode == "voltage"
        assert smu.ask(":SOURCE:VOLTAGE:MODE?").strip() == "FIX"
        assert smu.source_voltage_range == 2.1
        assert smu.compliance_current == 1e-4
        assert smu.current_range_auto_enabled is True
        assert smu.current_nplc == 1
        assert smu.check_errors() == []
        smu.enable_source()
        smu.source_voltage = 0.05
        assert smu.current == 5e-5
        values = smu.values(":READ?")
        assert values[:3] == [0.05, 5e-5, 9.91e37]
        smu.source_voltage = 1.0
        assert smu.values(":READ?")[1] == 1e-4  # clipped at the compliance
        smu.shutdown()
        assert smu.source_voltage == 0.0
        assert smu.source_enabled is False
        assert smu.check_errors() == []
    finally:
        smu.adapter.close()
