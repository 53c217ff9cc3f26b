"""The Keithley 2600 driver against the virtual 2602B over real TCP (pyvisa-py), on smua and
smub: limits are written and read back, the current is the load's, compliance clips it, a
malformed TSP chunk lands in the error queue, the output goes safe on close, and transport faults
arrive as `InstrumentError`s naming the channel."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import pytest

from drivers.keithley import Keithley2600Channel, Keithley2600Settings
from hil.core import DeviceSaturated, InstrumentError, SafetyViolation, VirtualClock
from simulators.virtual.keithley2600 import Keithley2600
from simulators.virtual.loads import Resistor
from simulators.virtual.server import ScpiServer

pytestmark = pytest.mark.timeout(30)

RESISTANCE = {"smua": 1e6, "smub": 2e6}  # Ω: 0.5 V drives 0.5 µA / 0.25 µA


@pytest.fixture
def device() -> Keithley2600:
    return Keithley2600(Resistor(RESISTANCE["smua"]), Resistor(RESISTANCE["smub"]))


@pytest.fixture
def server(device: Keithley2600) -> Iterator[ScpiServer]:
    with ScpiServer(device, "smu2600") as running:
        yield running


def channel(server: ScpiServer, name: str, **overrides: object) -> Keithley2600Channel:
    settings = Keithley2600Settings.model_validate(
        {
            "name": f"gate-{name}",
            "address": server.address,
            "channel": name,
            "visa_library": "@py",
            "timeout": 1.0,
            "compliance_current": 1e-5,
            "source_range": 2.0,
            "measure_range": None,
            "nplc": 0.5,
            "ramp_step": 0.1,
            "max_slew": 10.0,
            "retry": {"count": 1, "backoff": 0.01, "factor": 2},
            **overrides,
        }
    )
    return Keithley2600Channel(settings, clock=VirtualClock())


@pytest.mark.parametrize(("name", "measure_range"), [("smua", None), ("smub", 1e-5)])
def test_both_channels_configure_measure_and_go_safe(
    server: ScpiServer, device: Keithley2600, name: str, measure_range: float | None
) -> None:
    smu = channel(server, name, measure_range=measure_range)
    smu.connect()
    try:
        assert "2602B" in smu.identify()
        state = device.smu[name]
        assert (state.rangev, state.limiti, state.nplc) == (6.0, 1e-5, 0.5)  # 2 V → the 6 V range
        assert state.autorangei is (measure_range is None)
        smu.enable()
        smu.ramp_to(0.5)
        assert smu.read() == pytest.approx(0.5 / RESISTANCE[name], rel=1e-5)
        with pytest.raises(SafetyViolation):
            smu.set_level(2.5)  # beyond source_range: refused before sending
        assert state.levelv == pytest.approx(0.5)
    finally:
        smu.close()
    assert not smu.enabled
    deadline = time.monotonic() + 2.0  # writes are not acknowledged: the last may still run
    while (state.output, state.levelv) != (False, 0.0):
        assert time.monotonic() < deadline, f"not safe: {state}"
        time.sleep(0.005)


def test_the_channels_are_independent(server: ScpiServer, device: Keithley2600) -> None:
    a, b = channel(server, "smua"), channel(server, "smub", compliance_current=2e-5)
    a.connect()
    b.connect()
    try:
        a.enable()
        a.set_level(1.0)
        assert device.smu["smub"].levelv == 0.0
        assert not device.smu["smub"].output
        assert device.smu["smub"].limiti == 2e-5
        b.enable()
        b.set_level(-1.0)
        assert a.read() == pytest.approx(1e-6, rel=1e-5)
        assert b.read() == pytest.approx(-0.5e-6, rel=1e-5)
    finally:
        a.close()
        b.close()


def test_compliance_clips_the_current_and_sets_the_status(server: ScpiServer) -> None:
    smu = channel(server, "smua", compliance_current=1e-7)
    smu.connect()
    try:
        smu.enable()
        smu.set_level(0.05)  # 50 nA < 100 nA: not in compliance
        assert smu.read() == pytest.approx(5e-8, rel=1e-5)
        assert smu.instrument.ask("print(smua.source.compliance)").strip() == "false"
        smu.set_level(1.0)  # 1 µA wanted, limited at 100 nA: the reading is clipped
        with pytest.raises(DeviceSaturated, match="in compliance at 1 V: read 1e-07 A"):
            smu.read()
        assert smu.instrument.ask("print(smua.source.compliance)").strip() == "true"
    finally:
        smu.close()


def test_a_current_beyond_a_fixed_measure_range_is_saturated(server: ScpiServer) -> None:
    smu = channel(server, "smua", compliance_current=1e-4, measure_range=1e-6)
    smu.connect()
    try:
        smu.enable()
        smu.set_level(0.5)  # 0.5 µA through 1 MΩ: within the 1 µA range
        assert smu.read() == pytest.approx(5e-7, rel=1e-5)
        smu.set_level(1.5)  # 1.5 µA: beyond the fixed range, below the limit
        with pytest.raises(DeviceSaturated, match=r"overflow at 1\.5 V"):
            smu.read()
    finally:
        smu.close()


@pytest.mark.parametrize(
    ("chunk", "code", "text"),
    [
        ("smua.source.levelv=", -285, "TSP Syntax error"),
        ("print(smua.source.levelv", -285, "TSP Syntax error"),
        ("smua.source.nosuch=1", -286, "TSP Runtime error"),
        ("smuc.source.levelv=0", -286, "TSP Runtime error"),
        ("smua.source.compliance=1", -286, "read-only"),
        ("smua.source.limiti=2", 1101, "Parameter too big"),
        ("smua.measure.nplc=0", 1102, "Parameter too small"),
        ("smua.source.levelv=7", 1101, "Parameter too big"),  # beyond the fixed 6 V range
        ("smua.source.output=2", 1101, "Parameter too big"),
    ],
)
def test_a_bad_chunk_answers_nothing_and_queues_an_error(
    server: ScpiServer, device: Keithley2600, chunk: str, code: int, text: str
) -> None:
    smu = channel(server, "smua")
    smu.connect()
    try:
        smu.instrument.write(chunk)
        assert smu.instrument.ask("print(errorqueue.count)").strip() == "1.00000e+00"
        errors = smu.instrument.check_errors()
        assert [e[0] for e in errors] == [code]
        assert text in errors[0][1]
        assert smu.instrument.check_errors() == []
        assert (device.smu["smua"].levelv, device.smu["smua"].limiti) == (0.0, 1e-5)
        smu.instrument.write("smua.source.levelv=9")
        smu.instrument.write("errorqueue.clear()")
        assert smu.instrument.ask("print(errorqueue.count)").strip() == "0.00000e+00"
    finally:
        smu.close()


def test_a_live_output_is_refused_at_connect(server: ScpiServer, device: Keithley2600) -> None:
    device.execute("smub.source.output=1")
    smu = channel(server, "smub")
    with pytest.raises(InstrumentError, match="output is on at connect"):
        smu.connect()
    assert smu.instrument is None


def test_star_rst_restores_the_reset_state(device: Keithley2600) -> None:
    for chunk in ("smua.source.levelv=1", "smua.source.limiti=1e-3", "smua.source.output=1"):
        assert device.execute(chunk) is None
    assert device.execute("print(smua.source.levelv, smua.source.output)") == (
        "1.00000e+00\t1.00000e+00"
    )
    device.execute("*RST")
    assert device.execute("print(smua.source.levelv; smua.source.limiti)") is None
    assert device.execute("print(smua.source.levelv, smua.source.limiti)") == (
        "0.00000e+00\t1.00000e-01"
    )
    assert device.execute("print(errorqueue.next())") == (
        "-2.85000e+02\tTSP Syntax error at line 1: unexpected symbol near "
        "`print(smua.source.levelv'\t2.00000e+01\t1.00000e+00"
    )


def test_a_garbled_reply_and_a_disconnect_become_instrument_errors(server: ScpiServer) -> None:
    smu = channel(server, "smub", retry={"count": 0, "backoff": 0.01, "factor": 2})
    smu.connect()
    try:
        smu.enable()
        server.set_faults(garble=1)
        with pytest.raises(InstrumentError, match="gate-smub"):
            smu.read()
        server.set_faults(disconnect_after=0)
        with pytest.raises(InstrumentError, match="gate-smub"):
            smu.read()
    finally:
        server.clear_faults()
        with contextlib.suppress(InstrumentError):  # the link is gone: reported, no hang
            smu.close()


def test_a_current_beyond_a_fixed_measure_range_reads_overflow(device: Keithley2600) -> None:
    for chunk in (
        "smua.source.limiti=1e-4",
        "smua.measure.rangei=1e-6",
        "smua.source.levelv=3",  # 3 µA through 1 MΩ: above the 1 µA range, below the limit
        "smua.source.output=smua.OUTPUT_ON",
    ):
        assert device.execute(chunk) is None
    assert device.execute("print(smua.measure.i(), smua.source.compliance)") == (
        "9.91000e+37\tfalse"
    )
    assert device.execute("smua.measure.autorangei=smua.AUTORANGE_ON") is None
    assert device.execute("print(smua.measure.i())") == "3.00000e-06"
    assert device.execute("print(errorqueue.count)") == "0.00000e+00"


def test_sync_asks_opc_and_the_2602b_answers_1(
    server: ScpiServer, device: Keithley2600, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The drivers' default `sync_query` is `*OPC?`, answered as a real 2600 answers it.
    exchanged: list[tuple[str, str | bytes | None]] = []
    execute = device.execute

    def recorded(message: str) -> str | None:
        reply = execute(message)
        exchanged.append((message, reply))
        return reply

    monkeypatch.setattr(device, "execute", recorded)
    smu = channel(server, "smua")
    smu.connect()
    try:
        exchanged.clear()
        smu.sync()
        assert exchanged == [("*OPC?", "1")]
    finally:
        smu.close()


@pytest.mark.parametrize(
    ("chunk", "reply"),
    [
        ("*OPC?", "1"),
        ("*opc?", "1"),  # common commands are not case-sensitive
        ("*WAI", None),
        ("waitcomplete()", None),
        ("smua.source.levelv=0.5; waitcomplete(); print(smua.source.levelv)", "5.00000e-01"),
    ],
)
def test_opc_and_waitcomplete_answer_as_a_2600_does(
    device: Keithley2600, chunk: str, reply: str | None
) -> None:
    assert device.execute(chunk) == reply
    assert device.execute("print(errorqueue.count)") == "0.00000e+00"


@pytest.mark.parametrize("chunk", ["*OPC?;print(1)", "*OPC? 1", "print(1);*OPC?", "*OPC?X"])
def test_a_common_command_is_taken_only_alone_in_its_message(
    device: Keithley2600, chunk: str
) -> None:
    assert device.execute(chunk) is None
    code, message, *_ = str(device.execute("print(errorqueue.next())")).split("\t")
    assert (float(code), message.split(":")[0]) == (-285, "TSP Syntax error at line 1")


def test_opc_sets_the_event_status_bit_and_cls_clears_it(device: Keithley2600) -> None:
    assert device.execute("*ESR?") == "0"
    assert device.execute("*OPC") is None
    assert device.execute("*ESR?") == "1"  # OPC, bit 0; reading clears it
    assert device.execute("*ESR?") == "0"
    device.execute("smua.source.levelv=")  # a TSP syntax error sets an error bit too
    device.execute("*OPC")
    device.execute("*CLS")
    assert (device.execute("*ESR?"), device.execute("print(errorqueue.count)")) == (
        "0",
        "0.00000e+00",
    )
