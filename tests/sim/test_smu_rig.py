"""The DNPU-on-SMUs rig against virtual Keithley 2400s over loopback TCP/SCPI.

The rig, PyMeasure, pyvisa-py and the virtual instruments run their real code paths: the
conformance suite, safe state on every exit path, end-to-end training against the in-process
simulator on the same seed, faults, and the station file's errors.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from pymeasure.instruments.keithley import Keithley2400 as PyMeasure2400
from pymeasure.instruments.keithley import Keithley2600 as PyMeasure2600
from pymeasure.test import expected_protocol

from drivers.keithley import (
    Keithley2400Channel,
    Keithley2400Settings,
    Keithley2600Channel,
    Keithley2600Settings,
)
from drivers.rigs.smu import SMURig
from hil.config import ResolvedStation, load_station, resolve_station
from hil.core import (
    ConfigError,
    Device,
    InstrumentDisconnected,
    InstrumentError,
    Reconnecting,
    SafetyViolation,
)
from hil.runner import RunStatus, start_run
from hil.safety import SafetyGuard, SafetyLimits
from hil.testing import device_checks
from hil.virtual import ServedStation, build_virtual_rig, serve_station
from hil.yamlfile import YamlDocument
from simulators.virtual.keithley2400 import Keithley2400
from simulators.virtual.server import ScpiServer

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
STATION = CONFIGS / "stations" / "dnpu-smu-virtual.yaml"
QUIET = {"white": 0.0, "relative": 0.0, "flicker_psd": 0.0, "drift_std": 0.0}

pytestmark = pytest.mark.filterwarnings(
    "ignore:It is not known whether this device support SCPI:FutureWarning"
)


def station_data() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(STATION.read_text())
    return data


def resolved(data: dict[str, Any]) -> ResolvedStation:
    return resolve_station(YamlDocument(path=STATION, data=data, lines={}), data)


OPENED: list[Device] = []


@pytest.fixture(autouse=True, scope="module")
def _close_everything() -> Iterator[None]:
    yield
    while OPENED:
        OPENED.pop().close()


def virtual_rig(seed: int, noise: bool) -> Device:
    data = station_data()
    if not noise:
        data["virtual"]["device"]["noise"] = QUIET
    rig = build_virtual_rig(resolved(data), np.random.SeedSequence(seed))
    OPENED.append(rig)
    return rig


@pytest.mark.parametrize(
    ("name", "check"),
    device_checks(virtual_rig, own_randomness=False),
    ids=[name for name, _ in device_checks(virtual_rig, own_randomness=False)],
)
def test_conformance(name: str, check: Any) -> None:
    check()


@pytest.fixture
def served() -> Iterator[ServedStation]:
    station = serve_station(load_station(STATION), np.random.SeedSequence(3))
    yield station
    station.stop()


def smus(served: ServedStation) -> dict[str, Keithley2400]:
    found = {}
    for name, server in served.servers.servers.items():
        assert isinstance(server, ScpiServer)
        assert isinstance(server.device, Keithley2400)
        found[name] = server.device
    return found


def rig_on(served: ServedStation, **changes: Any) -> SMURig:
    params = {k: v for k, v in copy.deepcopy(served.device_params).items() if k != "type"}
    params.update(changes)
    return SMURig(SMURig.Settings.model_validate(params))


def assert_all_safe(served: ServedStation) -> None:
    for name, smu in smus(served).items():
        assert not smu.state.output, f"{name}: output left on"
        assert smu.state.volt.level == 0.0, f"{name}: left at {smu.state.volt.level} V"


def test_connect_configures_every_smu_and_starts_safe(served: ServedStation) -> None:
    with rig_on(served) as rig:
        for smu in smus(served).values():
            assert smu.state.compliance_current == pytest.approx(1e-6)
            assert not smu.state.output
        rig.set_controls(np.array([0.1, 0.2, -0.1, 0.1, 0.0]))
        levels = served.simulator.spec  # the simulator behind the wire
        assert levels.name == "dnpu"
        assert smus(served)["smu0"].state.volt.level == 0.1
        assert smus(served)["ammeter"].state.output
    assert_all_safe(served)


def test_measure_reads_the_simulator_through_the_wire(served: ServedStation) -> None:
    """Each plateau is the simulator's own measurement at the same levels, to 7 digits."""
    twin_station = station_data()["virtual"]["device"]
    twin = resolved(station_data()).virtual
    assert twin is not None
    local = twin.cls(twin.settings, seed=np.random.SeedSequence(3))
    assert twin_station["type"] == "dnpu"
    theta = np.array([0.1, 0.2, -0.1, 0.1, 0.0])
    x = np.array([[0.1, 0.2], [0.3, -0.3], [0.0, 0.0]])
    with rig_on(served) as rig:
        rig.set_controls(theta)
        wire = rig.measure(x)
    local.set_controls(theta)
    here = np.vstack([local.measure(row[np.newaxis, :]) for row in x])
    np.testing.assert_allclose(wire, here, rtol=1e-6, atol=1e-9)


def test_safe_state_on_an_exception_and_refusals_before_sending(served: ServedStation) -> None:
    rig = rig_on(served)

    def run_and_fail() -> None:
        with rig:
            rig.set_controls(np.array([0.5, 0.5, 0.2, 0.2, 0.2]))
            with pytest.raises(SafetyViolation, match="E0"):
                rig.set_controls(np.array([0.7, 0.0, 0.0, 0.0, 0.0]))
            assert smus(served)["smu0"].state.volt.level == 0.5  # nothing of the refused one
            with pytest.raises(SafetyViolation):
                rig.measure(np.array([[0.0, 0.0], [np.nan, 0.0]]))
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        run_and_fail()
    assert_all_safe(served)
    with pytest.raises(RuntimeError, match="closed"):
        rig.set_controls(np.zeros(5))


def test_a_refused_connect_leaves_every_smu_released(served: ServedStation) -> None:
    """An SMU found with its output on refuses the rig; those connected before go safe."""
    smus(served)["smu3"].state.output = True
    with pytest.raises(InstrumentError, match="smu3"):
        rig_on(served)
    for name, smu in smus(served).items():
        if name != "smu3":
            assert not smu.state.output


def test_a_garbled_reading_is_retried_and_a_disconnect_names_the_smu(
    served: ServedStation,
) -> None:
    rig = rig_on(served)
    first = rig.measure(np.zeros((1, 2)))
    served.servers.servers["ammeter"].faults.garble = 1
    again = rig.measure(np.zeros((1, 2)))
    assert np.isfinite(again).all()
    assert again.shape == first.shape
    served.servers.servers["ammeter"].faults.disconnect_after = 0
    with pytest.raises(InstrumentError, match="ammeter"):
        rig.measure(np.zeros((1, 2)))
    # Closing still brings every SMU it can reach to 0 V and off, then reports the dead one.
    with pytest.raises(InstrumentDisconnected, match="ammeter"):
        rig.close()
    for name, smu in smus(served).items():
        if name != "ammeter":
            assert not smu.state.output, f"{name} left on after the fault"


def test_stepped_input_ramp_costs_ramp_time(served: ServedStation) -> None:
    with rig_on(served, ramp_time=0.01, ramp_steps=4) as rig:
        t0 = rig.clock.now()
        rig.measure(np.array([[0.4, -0.4]]))
        assert rig.clock.now() - t0 == pytest.approx(rig.spec.plateau_time())
        assert rig.spec.plateau_time() == pytest.approx(0.01 + 0.001 + 0.001)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.pop("virtual"), r"virtual: .*no `virtual:` section"),
        (
            lambda d: d["device"]["channels"].update(E7=d["device"]["channels"].pop("E6")),
            r"device\.channels\.E7: .*has no channel 'E7'",
        ),
        (
            lambda d: d["device"]["channels"]["E1"].update(role="control"),
            r"device\.channels\.E1: .*wires 'E1' as control but the simulator's channel is input",
        ),
    ],
)
def test_virtual_station_errors_name_the_key(change: Any, message: str) -> None:
    data = station_data()
    change(data)
    with pytest.raises(ConfigError, match=message):
        build_virtual_rig(resolved(data), np.random.SeedSequence(0))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["channels"]["E3"].update(instrument="smu0"), "more than one channel"),
        (lambda d: d["channels"]["E0"].update(max=2.5), r"beyond the instrument range"),
        (lambda d: d["instruments"]["smu0"].update(type="keithley9999"), "keithley9999"),
        (lambda d: d["instruments"]["smu0"].update(nplc=50), r"instruments\.smu0.*nplc"),
        (lambda d: d["channels"]["E0"].update(instrument="nowhere"), "nowhere"),
        (lambda d: d["channels"]["E0"].update(min=0.1), "must contain 0 V"),
        (lambda d: d["channels"].pop("Iout"), "no channel"),
    ],
)
def test_rig_settings_refuse_bad_wiring(change: Any, message: str) -> None:
    device = station_data()["device"]
    device.pop("type")
    change(device)
    with pytest.raises(ValueError, match=message):
        SMURig.Settings.model_validate(device)


def _losses(run: Path) -> list[float]:
    lines = (json.loads(line) for line in (run / "events.jsonl").read_text().splitlines())
    return [r["loss"] for r in lines if r.get("event") == "step"]


def test_training_through_the_wire_matches_the_in_process_simulator(tmp_path: Path) -> None:
    """configs/dnpu-virtual.yaml trains through TCP/SCPI and ends within the noise of the
    same experiment on the in-process simulator with the same seed."""
    wire = start_run(CONFIGS / "dnpu-virtual.yaml", tmp_path / "runs")
    assert wire.status.value == "completed", wire.reason
    experiment = yaml.safe_load((CONFIGS / "dnpu-virtual.yaml").read_text())
    station = station_data()
    experiment["station"] = {
        "name": "sim-dnpu-in-process",
        "device": station["virtual"]["device"],
        "limits": station["limits"],
    }
    (tmp_path / "in-process.yaml").write_text(yaml.safe_dump(experiment))
    local = start_run(tmp_path / "in-process.yaml", tmp_path / "runs")
    assert local.status.value == "completed", local.reason
    a, b = _losses(wire.path), _losses(local.path)
    assert len(a) == len(b) == experiment["procedure"]["steps"]
    # Step 1 measures both at the same controls: the losses differ by measurement noise only.
    # Its size: the loss's spread over repeated evaluations of the same simulator.
    sigma = _loss_noise(experiment, station)
    assert abs(a[0] - b[0]) < 4 * np.sqrt(2) * sigma, (a[0], b[0], sigma)
    # Both train: the final loss falls by an order of magnitude, and the two agree within
    # the spread of final losses over steps near the end (noise and SPSA's own jitter).
    assert wire.summary["final_loss"] < 0.1 * a[0]
    assert local.summary["final_loss"] < 0.1 * b[0]
    tail = np.array(a[-10:] + b[-10:])
    assert abs(np.mean(a[-10:]) - np.mean(b[-10:])) < 4 * tail.std(ddof=1) / np.sqrt(5)


def _loss_noise(experiment: dict[str, Any], station: dict[str, Any]) -> float:
    """Standard deviation of the task loss at zero controls on the simulator, measured."""
    from simulators.dnpu import DNPUDevice

    settings = {k: v for k, v in station["virtual"]["device"].items() if k != "type"}
    device = DNPUDevice(DNPUDevice.Settings.model_validate(settings), seed=11)
    targets = np.array(experiment["task"]["targets"])
    lo = np.array([-1.2, -1.2])
    hi = np.array([0.6, 0.6])
    x = lo + (np.array(experiment["task"]["inputs"]) + 1) / 2 * (hi - lo)
    losses = [np.mean((device.measure(x)[:, 0] - targets) ** 2) for _ in range(30)]
    return float(np.std(losses, ddof=1))


# -- reconnect (hil.core.Reconnecting) ----------------------------------------------------------
def held(served: ServedStation) -> dict[str, tuple[float, bool]]:
    """What each virtual SMU holds: (level, output on)."""
    return {n: (smu.state.volt.level, smu.state.output) for n, smu in smus(served).items()}


def test_a_reconnect_takes_over_the_live_levels_and_the_guard_brings_every_smu_to_0v_off(
    served: ServedStation,
) -> None:
    params = {k: v for k, v in copy.deepcopy(served.device_params).items() if k != "type"}
    params["instruments"]["ammeter"]["timeout"] = 0.3  # s: the dead connection times out sooner
    rig = SMURig(SMURig.Settings.model_validate(params))
    guard = SafetyGuard(rig, SafetyLimits.model_validate({"max_abs_voltage": 1.6}))
    assert isinstance(guard, Reconnecting)  # the rig reconnects, so its guard does
    theta = np.array([0.1, 0.2, -0.1, 0.1, 0.0])
    guard.set_controls(theta)
    served.servers.servers["ammeter"].faults.disconnect_after = 0
    with pytest.raises(InstrumentError, match="ammeter"):
        guard.measure(np.array([[0.3, -0.2]]))
    live = held(served)
    assert live["smu0"] == (0.1, True)  # the fault left the outputs on, holding their levels
    rig.reconnect()
    assert held(served) == live  # read back only: nothing switched, nothing set
    wired = {n: c.instrument for n, c in rig.settings.channels.items()}
    assert {wired[n]: (smu.level, smu.enabled) for n, smu in rig._smus.items()} == live
    guard.reconnect()  # the run engine's call: reconnect, then the guard's safe state
    assert_all_safe(served)
    guard.set_controls(theta)  # the levels are known again: driving is allowed
    assert np.isfinite(guard.measure(np.zeros((1, 2)))).all()
    rig.close()
    assert_all_safe(served)


def test_a_reconnect_that_fails_names_the_smu_and_reaches_every_other_one(
    served: ServedStation,
) -> None:
    rig = rig_on(served)
    rig.set_controls(np.array([0.1, 0.2, -0.1, 0.1, 0.0]))
    smus(served)["smu2"].state.compliance_current = 1e-3  # e.g. power-cycled: not as configured
    with pytest.raises(InstrumentError, match=r"smu2 .*compliance_current.*reads back"):
        rig.reconnect()
    with pytest.raises(InstrumentError, match=r"smu2.*not connected"):
        rig.safe_state()
    for name, (level, on) in held(served).items():
        if name != "smu2":
            assert (level, on) == (0.0, False), name
    rig.close()


READBACK_2400 = [
    (":FORMAT:ELEMENTS VOLTAGE, CURRENT, RESISTANCE, TIME, STATUS", None),  # the constructor's
    ("*IDN?", "KEITHLEY INSTRUMENTS INC.,MODEL 2400,1234567,C30/A02  /K/J"),
    (":SOURCE:FUNCTION?", "VOLT"),
    (":SOURCE:VOLTAGE:MODE?", "FIX"),
    (":SOURCE:VOLTAGE:RANGE?", "2.100000E+00"),
    (":SENSE:CURRENT:PROTECTION?", "1.000000E-05"),
    (":SENSE:CURRENT:RANGE?", "1.050000E-05"),
    (":SENSE:CURRENT:NPLCYCLES?", "1.000000E+00"),
    (":SOURCE:VOLTAGE?", "4.500000E-01"),
    ("OUTPUT?", "1"),
]


def test_a_2400_reattaches_with_queries_only_and_takes_its_live_level(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = Keithley2400Settings.model_validate(
        {
            "name": "smu1",
            "address": "GPIB0::24::INSTR",
            "compliance_current": 1e-5,
            "source_range": 2.0,
            "measure_range": 1e-5,
            "nplc": 1.0,
        }
    )
    smu = Keithley2400Channel(settings)
    with expected_protocol(PyMeasure2400, READBACK_2400) as instrument:
        monkeypatch.setattr(smu, "_open", lambda: instrument)
        smu.reattach()
        assert (smu.level, smu.enabled) == (0.45, True)


READBACK_2600 = [
    ("*IDN?", "Keithley Instruments Inc., Model 2636B, 7654321, 3.2.2"),
    ("print(smub.source.func)", "1.00000e+00"),
    ("print(smub.source.rangev)", "2.00000e+00"),
    ("print(smub.source.limiti)", "1.00000e-07"),
    ("print(smub.measure.autorangei)", "1.00000e+00"),
    ("print(smub.measure.nplc)", "5.00000e-01"),
    ("print(smub.source.levelv)", "-3.00000e-01"),
    ("print(smub.source.output)", "0.00000e+00"),
]


def test_a_2600_channel_reattaches_with_queries_only(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Keithley2600Settings.model_validate(
        {
            "name": "gate",
            "address": "TCPIP::192.0.2.10::INSTR",
            "channel": "smub",
            "compliance_current": 1e-7,
            "source_range": 2.0,
            "measure_range": None,
            "nplc": 0.5,
        }
    )
    smu = Keithley2600Channel(settings)
    with expected_protocol(PyMeasure2600, READBACK_2600) as instrument:
        monkeypatch.setattr(smu, "_open", lambda: instrument)
        smu.reattach()
        assert (smu.level, smu.enabled) == (-0.3, False)


def test_a_run_with_a_transient_disconnect_reconnects_retries_and_completes(
    tmp_path: Path,
) -> None:
    """configs/dnpu-virtual.yaml, shorter, its ammeter's connection dropped once in step 1: the
    step is retried after a reconnect (without one the dead session fails every retry) and the
    run completes with every step once."""
    station = station_data()
    station["virtual"]["faults"] = {"ammeter": {"disconnect_after": 40}}
    station["device"]["instruments"]["ammeter"]["timeout"] = 0.3  # s: fails sooner
    config = yaml.safe_load((CONFIGS / "dnpu-virtual.yaml").read_text())
    config.update(station=station, faults={"retries": 2, "backoff": 0.0})
    config["procedure"].update(steps=3, final_repeats=1)
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(config))
    outcome = start_run(path, tmp_path / "runs")
    assert outcome.status is RunStatus.COMPLETED, outcome.reason
    events = [json.loads(line) for line in (outcome.path / "events.jsonl").read_text().splitlines()]
    faults = [e for e in events if e.get("event") == "fault"]
    assert len(faults) == 1, faults
    assert faults[0]["error"] == "InstrumentDisconnected"
    assert "ammeter" in faults[0]["message"]
    assert [e["step"] for e in events if e.get("event") == "step"] == [1, 2, 3]
