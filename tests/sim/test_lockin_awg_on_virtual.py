"""The AWG and lock-in drivers against the virtual 33522B, SR830 and SR860 over real TCP
(pyvisa-py): a sine from the AWG through a linear `SineSource` is demodulated to the expected
X, Y; an overload is `DeviceSaturated`; the emulations reject malformed commands into their error
status; transport faults arrive as `InstrumentError`s naming the instrument."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator

import pytest
import pyvisa

from drivers.awg import Keysight33500Channel, Keysight33500Settings
from drivers.lockin import SR830LockIn, SR830Settings, SR860LockIn, SR860Settings
from hil.core import DeviceSaturated, InstrumentError, SafetyViolation, VirtualClock
from simulators.virtual.awg import Keysight33500, SineSource
from simulators.virtual.lockin import SR830, SR860
from simulators.virtual.station import VirtualStation

pytestmark = pytest.mark.timeout(30)

GAIN, PHASE, NOISE = 0.02, 35.0, 2e-6  # V/V, degrees, V rms at τ = 1 s
FREQUENCY, AMPLITUDE = 137.0, 0.05  # Hz, Vpp
TAU = 0.3  # s: noise per component NOISE/√τ ≈ 3.7 µV against a 354 µV signal


@pytest.fixture
def source() -> SineSource:
    return SineSource(gain=GAIN, phase=PHASE, noise=NOISE, seed=7)


@pytest.fixture
def station(source: SineSource) -> Iterator[VirtualStation]:
    devices = {"awg": Keysight33500(source), "sr830": SR830(source), "sr860": SR860(source)}
    with VirtualStation(devices) as running:
        yield running


def common(station: VirtualStation, key: str, name: str) -> dict[str, object]:
    return {
        "name": name,
        "address": station.addresses[key],
        "visa_library": "@py",
        "timeout": 1.0,
        "retry": {"count": 0, "backoff": 0.01, "factor": 2},
    }


def awg(station: VirtualStation) -> Keysight33500Channel:
    settings = Keysight33500Settings.model_validate(
        {
            **common(station, "awg", "dither"),
            "channel": 1,
            "load": "high_z",
            "frequency": FREQUENCY,
            "amplitude": AMPLITUDE,
            "max_voltage": 1.0,
        }
    )
    return Keysight33500Channel(settings, clock=VirtualClock())


def lockin(station: VirtualStation, model: str, sensitivity: float) -> SR830LockIn | SR860LockIn:
    values = {
        **common(station, model, "demod"),
        "sensitivity": sensitivity,
        "time_constant": TAU,
        "filter_slope": 24,
        "reference": "external",
        "input": "A",
        "coupling": "AC",
    }
    if model == "sr830":
        return SR830LockIn(SR830Settings.model_validate(values), clock=VirtualClock())
    return SR860LockIn(SR860Settings.model_validate(values), clock=VirtualClock())


@pytest.mark.parametrize("model", ["sr830", "sr860"])
def test_a_dither_through_a_linear_device_gives_the_expected_xy(
    station: VirtualStation, source: SineSource, model: str
) -> None:
    gen, li = awg(station), lockin(station, model, 1e-3)
    gen.connect()
    li.connect()
    try:
        assert model.upper() in li.identify()
        gen.enable()
        li.clear_status()
        assert li.reference_frequency() == pytest.approx(FREQUENCY, rel=1e-5)
        assert li.settle_time() == pytest.approx(10.05 * TAU)
        rms = GAIN * AMPLITUDE / (2 * math.sqrt(2))
        tolerance = 5 * NOISE / math.sqrt(TAU) + 1e-6 * rms  # 5 σ of the noise + 6-digit replies
        x, y = li.read_xy()
        assert x == pytest.approx(rms * math.cos(math.radians(PHASE)), abs=tolerance)
        assert y == pytest.approx(rms * math.sin(math.radians(PHASE)), abs=tolerance)
        gen.set_sine(FREQUENCY, 2 * AMPLITUDE, 0.2)  # the signal doubles; the offset is DC
        x2, _ = li.read_xy()
        assert x2 == pytest.approx(2 * rms * math.cos(math.radians(PHASE)), abs=tolerance)
        with pytest.raises(SafetyViolation):
            gen.set_offset(0.99)  # 0.99 + 0.05 > max_voltage 1 V: refused before sending
    finally:
        li.close()
        gen.close()
    # The server handles the last writes on its own thread: wait for them (bounded).
    settled(lambda: not source.on)
    assert source.amplitude_vpp == pytest.approx(2e-3)  # the high-Z minimum
    assert source.offset == 0.0


def settled(condition: Callable[[], bool], timeout: float = 2.0) -> None:
    """Wait until the virtual instrument has handled what was written (no reply to wait on)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the virtual instrument never got there"
        time.sleep(0.01)


@pytest.mark.parametrize("model", ["sr830", "sr860"])
def test_an_overload_is_device_saturated(station: VirtualStation, model: str) -> None:
    gen, li = awg(station), lockin(station, model, 2e-4)  # 354 µV rms > 200 µV full scale
    gen.connect()
    li.connect()
    try:
        gen.enable()
        li.clear_status()
        with pytest.raises(DeviceSaturated, match="demod"):
            li.read_xy()
        assert li.overloaded()  # the overload is still there
    finally:
        li.close()
        gen.close()


@pytest.mark.parametrize("model", ["sr830", "sr860"])
def test_without_the_sync_the_reference_is_unlocked(station: VirtualStation, model: str) -> None:
    li = lockin(station, model, 1e-3)
    li.connect()
    try:
        with pytest.raises(InstrumentError, match="reference unlocked"):
            li.read_xy()  # the AWG's output is off: nothing on REF IN
    finally:
        li.close()


def raw_session(address: str) -> pyvisa.resources.MessageBasedResource:
    rm = pyvisa.ResourceManager("@py")
    session = rm.open_resource(address, read_termination="\n", write_termination="\n")
    session.timeout = 1000
    assert isinstance(session, pyvisa.resources.MessageBasedResource)
    return session


def test_the_emulations_reject_malformed_commands(station: VirtualStation) -> None:
    a = raw_session(station.addresses["awg"])
    try:
        a.write("SOUR1:FREQ 1e9")  # beyond 30 MHz
        a.write("SOUR1:VOLTS 1")  # no such header
        a.write("SOUR3:FREQ 1")  # no channel 3
        assert a.query("SYST:ERR?").startswith("-222")
        assert a.query("SYST:ERR?").startswith("-113")
        assert a.query("SYST:ERR?").startswith("-114")
        assert a.query("SYST:ERR?") == '0,"No error"'
    finally:
        a.close()
    s = raw_session(station.addresses["sr860"])
    try:
        s.write("SCAL 28")  # one past 1 nV
        s.write("RSRC 2")  # dual reference: not emulated
        assert s.query("*ESR?") == "16"
        s.write("CUROVLDSTAT? 1")  # takes no parameter: no answer
        assert s.query("*ESR?") == "32"
        assert len(s.query("SNAP? THeta, x").split(",")) == 2  # names, short or long, any case
        assert s.query("outp? phase") == "0"
    finally:
        s.close()
    s = raw_session(station.addresses["sr830"])
    try:
        s.write("SENS 27")  # one past 1 V
        assert s.query("*ESR?") == "16"  # execution error
        s.write("SNAP? 1")  # a bad query (one parameter) answers nothing: a command error
        s.write("XYZW")
        assert s.query("*ESR?") == "32"  # the next reply is this one, not a stray answer
        assert s.query("SENS?") == "26"  # nothing changed
    finally:
        s.close()


def test_the_awg_channel_suffix_and_load(station: VirtualStation, source: SineSource) -> None:
    a = raw_session(station.addresses["awg"])
    try:
        a.write("SOURce1:FREQ 250;VOLT 0.4;:OUTPut1:LOAD INF")  # relative units stay on ch 1
        assert a.query("SOUR1:FREQ?;VOLT?") == "+2.500000000000000E+02;+8.000000000000000E-01"
        assert a.query("SOUR2:FREQ?") == "+1.000000000000000E+03"  # channel 2 untouched
        a.write("OUTP1 ON")
        assert a.query("*OPC?") == "1"
        assert source.on
        assert source.amplitude_vpp == pytest.approx(0.8)  # 0.4 Vpp into 50 Ω is 0.8 V open
        a.write("SOUR1:VOLT:OFFS 9.7")  # 9.7 + 0.4 > 10 V open circuit: refused
        assert a.query("SYST:ERR?").startswith("-221")
    finally:
        a.close()


def test_a_garbled_reply_and_a_disconnect_become_instrument_errors(
    station: VirtualStation,
) -> None:
    li = lockin(station, "sr830", 1e-3)
    gen = awg(station)
    li.connect()
    gen.connect()
    servers = station.servers
    try:
        servers["sr830"].set_faults(garble=1)
        with pytest.raises(InstrumentError, match="demod"):
            li.reference_frequency()
        servers["awg"].set_faults(disconnect_after=0)
        with pytest.raises(InstrumentError, match="dither"):
            gen.set_frequency(200.0)
    finally:
        for server in servers.values():
            server.clear_faults()
        with contextlib.suppress(InstrumentError):  # the AWG link is gone: reported, no hang
            gen.close()
        li.close()
