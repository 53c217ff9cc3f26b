"""The DNPU-on-SMUs rig with AWG dithers and an SR830 lock-in, all virtual, over loopback TCP.

The rig, PyMeasure, pyvisa-py and the virtual instruments run their real code paths: the lock-in
reading streams the simulated DNPU with the SMUs' levels plus the AWG's sine and demodulates its
output current. The demodulated ∂I/∂θ agrees with the simulator's exact gradient; training with
the lock-in estimator through `hil run` lowers the loss; every exit leaves the AWGs off at their
minimum amplitude and the SMUs off at 0 V; refused dithers send nothing.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from pydantic import ValidationError

from drivers.rigs.dithered import DitheredSMURig
from drivers.rigs.smu import SMURig, Wire
from hil.config import load_station, resolve_station
from hil.core import (
    Demodulating,
    Device,
    DeviceSaturated,
    InstrumentError,
    Reconnecting,
    Role,
    SafetyViolation,
)
from hil.runner import start_run
from hil.safety import DemodulatingSafetyGuard, SafetyGuard, SafetyLimits
from hil.testing import device_checks
from hil.virtual import ServedStation, build_virtual_rig, serve_station
from hil.yamlfile import YamlDocument
from protocols.base import Objective
from protocols.lockin_gradient import LockinGradient
from protocols.tasks import RegressionTask
from simulators.dnpu import DNPUDevice
from simulators.virtual.awg import Keysight33500
from simulators.virtual.dither import InProcessLockin
from simulators.virtual.keithley2400 import Keithley2400

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
STATION = CONFIGS / "stations" / "dnpu-lockin-virtual.yaml"
CONTROLS = ("E0", "E3", "E4", "E5", "E6")
FREQUENCY, AMPLITUDE = 97.0, 0.02  # Hz, V peak
QUIET = {"white": 0.0, "relative": 0.0, "flicker_psd": 0.0, "drift_std": 0.0}

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.filterwarnings(
        "ignore:It is not known whether this device support SCPI:FutureWarning"
    ),
]


OPENED: list[Device] = []


@pytest.fixture(autouse=True, scope="module")
def _close_everything() -> Iterator[None]:
    yield
    while OPENED:
        OPENED.pop().close()


def virtual_rig(seed: int, noise: bool) -> Device:
    data = yaml.safe_load(STATION.read_text())
    if not noise:
        data["virtual"]["device"]["noise"] = QUIET
    doc = YamlDocument(path=STATION, data=data, lines={})
    rig = build_virtual_rig(resolve_station(doc, data), np.random.SeedSequence(seed))
    assert isinstance(rig, DitheredSMURig)
    OPENED.append(rig)
    return rig


# The checks whose paths the AWGs and the lock-in change (connect, spec, safe state); measuring
# and the clock are the SMU rig's own, checked in test_smu_rig.
CHECKS = [
    (name, check)
    for name, check in device_checks(virtual_rig, own_randomness=False)
    if name in ("spec", "safe_state", "range_refused")
]


@pytest.mark.parametrize(("name", "check"), CHECKS, ids=[name for name, _ in CHECKS])
def test_conformance(name: str, check: Any) -> None:
    check()


@pytest.fixture
def served() -> Iterator[ServedStation]:
    station = serve_station(load_station(STATION), np.random.SeedSequence(3))
    yield station
    station.stop()


def params_of(served: ServedStation) -> dict[str, Any]:
    return {k: v for k, v in copy.deepcopy(served.device_params).items() if k != "type"}


def rig_on(served: ServedStation, lockin: dict[str, Any] | None = None) -> DitheredSMURig:
    params = params_of(served)
    params["instruments"]["lockin"].update(lockin or {})
    rig = SMURig(SMURig.Settings.model_validate(params))
    assert isinstance(rig, DitheredSMURig)
    return rig


def instruments(served: ServedStation, kind: type[Any]) -> dict[str, Any]:
    devices = {
        name: getattr(server, "device", None) for name, server in served.servers.servers.items()
    }
    return {name: device for name, device in devices.items() if isinstance(device, kind)}


def assert_all_safe(served: ServedStation) -> None:
    for name, awg in instruments(served, Keysight33500).items():
        assert not awg.outputs[1].on, f"{name}: output left on"
        assert awg.outputs[1].amplitude == pytest.approx(2e-3), f"{name}: amplitude not minimal"
    for name, smu in instruments(served, Keithley2400).items():
        assert not smu.state.output, f"{name}: output left on"
        assert smu.state.volt.level == 0.0, f"{name}: left at {smu.state.volt.level} V"
    assert not held_dithers(served)


def held_dithers(served: ServedStation) -> dict[str, Any]:
    backplane = next(iter(instruments(served, Keysight33500).values())).listener.backplane
    dithers: dict[str, Any] = backplane.dithers()
    return dithers


def test_the_station_wires_awgs_and_the_lockin() -> None:
    settings = SMURig.Settings.model_validate(
        {k: v for k, v in yaml.safe_load(STATION.read_text())["device"].items() if k != "type"}
    )
    wires = settings.wiring()
    assert Wire("awg0", "keysight33500", "E0", Role.CONTROL, 1.0) in wires
    assert Wire("lockin", "sr830", "Iout", Role.OUTPUT, 1e-9) in wires
    assert len(wires) == 8 + 5 + 1


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["dithers"].update(E1=d["dithers"].pop("E6")), "not a control channel"),
        (lambda d: d["lockin"].update(output="E0"), "not an output channel"),
        (lambda d: d.pop("lockin"), "give both"),
        (lambda d: d["dithers"].pop("E6"), r"\['awg6'\] are wired to no channel"),
        (lambda d: d["channels"]["E0"].update(instrument="awg0"), "of type"),
        (lambda d: d["dithers"].update(E0="smu1"), "of type keysight33500"),
        (lambda d: d["lockin"].update(scale=0.0), "finite and non-zero"),
    ],
)
def test_rig_settings_refuse_bad_wiring(change: Callable[[Any], Any], message: str) -> None:
    device = yaml.safe_load(STATION.read_text())["device"]
    device.pop("type")
    change(device)
    with pytest.raises(ValidationError, match=message):
        SMURig.Settings.model_validate(device)


def test_the_demodulated_gradient_is_the_simulators_exact_one(served: ServedStation) -> None:
    """√2·X/A per control against `true_gradient`: within 4 standard errors (from 4 reads) plus
    1 % (the 1 kHz amplifier's lag at 97 Hz scales X by cos 5.5° = 0.995)."""
    theta = np.array([0.1, -0.2, 0.0, 0.1, -0.1])
    rows = np.array([[0.3, -0.5], [-1.0, 0.4]])
    dithers = dict.fromkeys(CONTROLS, (FREQUENCY, AMPLITUDE))
    with rig_on(served) as rig:
        assert isinstance(rig, Demodulating)
        assert rig.dither_channels() == CONTROLS
        assert rig.demodulated_output() == "Iout"
        rig.set_controls(theta)
        t0 = rig.clock.now()
        xy = np.stack([rig.demodulate(row, dithers, reads=4) for row in rows])
        # device time: per row and dither 4 × the lock-in's settling, 10.05 τ at 24 dB/oct
        assert rig.clock.now() - t0 >= 2 * 5 * 4 * 10.05 * 0.03
    gradient = math.sqrt(2) * xy[..., 0].mean(axis=2) / AMPLITUDE
    stderr = math.sqrt(2) * xy[..., 0].std(axis=2, ddof=1) / 2 / AMPLITUDE
    exact = served.simulator.true_gradient(theta, rows)  # type: ignore[attr-defined]
    assert np.all(np.abs(gradient - exact) < 4 * stderr + 0.01 * np.abs(exact))
    x, y = xy[..., 0].ravel(), xy[..., 1].ravel()
    assert -0.15 < x @ y / (x @ x) < -0.02  # Y: the chain's small lag (tan 5.5° = 0.097)
    assert_all_safe(served)


def test_the_sr860_reads_the_same_through_its_own_commands() -> None:
    data = yaml.safe_load(STATION.read_text())
    data["device"]["instruments"]["lockin"]["type"] = "sr860"
    doc = YamlDocument(path=STATION, data=data, lines={})
    served = serve_station(resolve_station(doc, data), np.random.SeedSequence(3))
    try:
        with SMURig(SMURig.Settings.model_validate(params_of(served))) as rig:
            assert isinstance(rig, DitheredSMURig)
            rig.set_controls(np.array([0.1, -0.2, 0.0, 0.1, -0.1]))
            (x,) = rig.demodulate(np.array([0.3, -0.5]), {"E5": (FREQUENCY, AMPLITUDE)})[0]
        assert math.sqrt(2) * x[0] / AMPLITUDE == pytest.approx(-99.7, rel=0.05)  # exact: -99.695
        assert_all_safe(served)
    finally:
        served.stop()


def test_safe_state_on_an_exception_and_on_a_lockin_overload(served: ServedStation) -> None:
    rig = rig_on(served, {"sensitivity": 1e-7})  # 0.1 nA rms full scale: the dither overloads

    def run_and_fail() -> None:
        with rig:
            rig.set_controls(np.array([0.3, 0.2, -0.1, 0.1, 0.0]))
            with pytest.raises(DeviceSaturated, match="overload"):
                rig.demodulate(np.array([0.0, 0.0]), {"E0": (FREQUENCY, AMPLITUDE)})
            assert not instruments(served, Keysight33500)["awg0"].outputs[1].on  # off at once
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        run_and_fail()
    assert_all_safe(served)


def test_refused_dithers_send_nothing(served: ServedStation) -> None:
    with rig_on(served) as rig:
        rig.set_controls(np.array([0.55, 0.0, 0.0, 0.0, 0.0]))
        awg = instruments(served, Keysight33500)["awg0"]
        before = copy.deepcopy(awg.outputs[1])
        for dithers, match in [
            ({"E0": (FREQUENCY, 0.06)}, r"E0.*range \[-1.2, 0.6\]"),  # 0.55 + 0.06 > 0.6
            ({"E3": (FREQUENCY, 0.2)}, r"max_voltage"),  # the AWG's own ceiling, 0.1 V
            ({"E3": (math.nan, 0.01)}, r"frequency"),
            ({"E3": (FREQUENCY, 0.0)}, r"amplitude"),
        ]:
            with pytest.raises(SafetyViolation, match=match):
                rig.demodulate(np.array([0.0, 0.0]), dithers)
        with pytest.raises(ValueError, match="no AWG"):
            rig.demodulate(np.array([0.0, 0.0]), {"E1": (FREQUENCY, 0.01)})
        assert awg.outputs[1] == before
        assert not held_dithers(served)
        # Behind the guard: its limits (max_slew 50 V/s) refuse 2π·500 Hz·0.02 V = 63 V/s.
        limits = SafetyLimits.model_validate(yaml.safe_load(STATION.read_text())["limits"])
        guard = SafetyGuard(rig, limits)
        assert isinstance(guard, DemodulatingSafetyGuard)
        with pytest.raises(SafetyViolation, match=r"E3.*max_slew 50"):
            guard.demodulate(np.array([0.0, 0.0]), {"E3": (500.0, AMPLITUDE)})
        assert instruments(served, Keysight33500)["awg3"].outputs[1].frequency == 97.0
    assert_all_safe(served)


def test_the_estimator_gives_the_exact_loss_gradient_through_the_guard() -> None:
    """On the quiet simulator behind an in-process lock-in, the chain rule through √2·X/A gives
    ∂L/∂θ of the exact outputs and gradients within 2 % (the lag's cos 5.5° and the dither's
    curvature); every demodulation and second is counted."""
    settings = yaml.safe_load(STATION.read_text())["virtual"]["device"]
    settings.pop("type")
    settings["noise"] = QUIET
    dnpu = DNPUDevice(DNPUDevice.Settings.model_validate(settings), seed=5)
    limits = SafetyLimits.model_validate(yaml.safe_load(STATION.read_text())["limits"])
    guard = SafetyGuard(InProcessLockin(dnpu, time_constant=0.03), limits)
    assert isinstance(guard, DemodulatingSafetyGuard)
    task = RegressionTask.from_arrays(
        [[-1.2, -1.2], [-1.2, 0.6], [0.6, -1.2], [0.6, 0.6]], [-20.0, 20.0, 20.0, -20.0]
    )
    objective = Objective(guard, task)
    theta = np.array([0.1, -0.2, 0.0, 0.29, -0.1])  # E5 near its 0.3 V bound: shifted inward
    estimator = LockinGradient(LockinGradient.Settings(amplitudes=AMPLITUDE, reads=2))
    t0 = objective.device_time()
    estimate = estimator.estimate(objective, theta)
    x = objective.device_inputs
    dl_dy = task.output_gradient(dnpu.true_output(theta, x))[:, 0]
    exact = dl_dy @ dnpu.true_gradient(theta, x)
    np.testing.assert_allclose(estimate.gradient, exact, rtol=0.02, atol=0.02 * np.abs(exact).max())
    assert estimate.extras["shifted"] == 1.0
    assert estimate.evaluations == objective.evaluations == 1 + 4 * 5
    assert estimate.device_seconds == pytest.approx(objective.device_time() - t0)
    assert estimate.device_seconds > 20 * 2 * 10.05 * 0.03  # two settled readings per dither


def _losses(run: Path) -> list[float]:
    lines = (json.loads(line) for line in (run / "events.jsonl").read_text().splitlines())
    return [r["loss"] for r in lines if r.get("event") == "step"]


def test_training_with_lockin_gradients_through_hil_run(tmp_path: Path) -> None:
    """configs/dnpu-lockin-virtual.yaml, shortened to 6 steps of one reading per dither (the
    standard error from Y): the loss falls by more than 30 %."""
    experiment = yaml.safe_load((CONFIGS / "dnpu-lockin-virtual.yaml").read_text())
    experiment["station"] = str(STATION)
    experiment["procedure"]["steps"] = 6
    experiment["procedure"]["final_repeats"] = 1
    experiment["estimator"]["reads"] = 1
    config = tmp_path / "lockin.yaml"
    config.write_text(yaml.safe_dump(experiment))
    outcome = start_run(config, tmp_path / "runs")
    assert outcome.status.value == "completed", outcome.reason
    losses = _losses(outcome.path)
    assert len(losses) == 6
    assert losses[-1] < 0.7 * losses[0]
    # every estimate: 1 loss evaluation + 4 cases × 5 dithered controls
    assert outcome.summary["evaluations"] >= 6 * (1 + 4 * 5)


def test_a_reconnect_reattaches_the_lockin_and_awgs_and_the_guard_makes_everything_safe(
    served: ServedStation,
) -> None:
    """The lock-in's connection drops mid-demodulation: the reconnect re-attaches every
    instrument by readback only, the guard's safe state ends with AWGs off and SMUs at 0 V, off,
    and the rig demodulates again."""
    rig = rig_on(served, {"timeout": 0.3})  # s: the dead connection's reads time out sooner
    guard = SafetyGuard(rig, SafetyLimits.model_validate({"max_abs_voltage": 1.6}))
    assert isinstance(guard, Reconnecting)
    assert isinstance(guard, Demodulating)
    theta = np.array([0.1, -0.2, 0.0, 0.1, -0.1])
    guard.set_controls(theta)
    served.servers.servers["lockin"].faults.disconnect_after = 0
    with pytest.raises(InstrumentError, match="lockin"):
        guard.demodulate(np.array([0.3, -0.5]), {"E5": (FREQUENCY, AMPLITUDE)})
    assert not held_dithers(served)  # the AWG went off as the read failed
    guard.reconnect()
    assert_all_safe(served)
    guard.set_controls(theta)
    (x,) = guard.demodulate(np.array([0.3, -0.5]), {"E5": (FREQUENCY, AMPLITUDE)})[0]
    assert np.isfinite(x).all()
    rig.close()
    assert_all_safe(served)
