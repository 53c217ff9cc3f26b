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

from drivers.rigs.smu import SMURig
from hil.config import ResolvedStation, load_station, resolve_station
from hil.core import (
    ConfigError,
    Device,
    InstrumentDisconnected,
    InstrumentError,
    SafetyViolation,
)
from hil.runner import start_run
from hil.testing import device_checks
from hil.virtual import ServedStation, build_virtual_rig, serve_station
from hil.yamlfile import YamlDocument
from simulators.virtual.keithley2400 import Keithley2400

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
