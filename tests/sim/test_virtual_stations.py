"""Every virtual station in configs/stations through `hil.build.build_device`: the rig on its
virtual instruments (served on loopback, or an in-process fake injected) measures, goes safe
and closes, leaving no thread or socket; one short `hil run` per rig kind trains; the 2600's
channels share instruments as on the bench; errors name the station key; `hil config check`
accepts the station files in configs/."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

import hil.runner
import hil.virtual
from hil.build import build_device
from hil.cli import app
from hil.config import (
    ResolvedStation,
    load_station,
    resolve_station,
)
from hil.core import ConfigError
from hil.runner import start_run
from hil.virtual import ServedStation, serve_station
from hil.yamlfile import YamlDocument
from simulators.virtual.arc2 import FakeInstrument
from simulators.virtual.awg import Keysight33500
from simulators.virtual.keithley2400 import Keithley2400
from simulators.virtual.keithley2600 import Keithley2600
from simulators.virtual.lockin import SR830, SR860
from simulators.virtual.nidaq import FakeNidaqmx
from simulators.virtual.scpi_daq import ScpiDaq
from simulators.virtual.server import ScpiServer

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.filterwarnings("ignore:It is not known whether this device support SCPI"),
]

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
STATIONS = CONFIGS / "stations"
VIRTUAL = sorted(STATIONS.glob("*-virtual.yaml"))
BENCH = sorted(STATIONS.glob("*-bench.yaml"))


def data(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(path.read_text())
    return loaded


def resolved(
    path: Path, changes: Callable[[dict[str, Any]], None] | None = None
) -> ResolvedStation:
    """The station as `hil run` resolves it (types coerced as in a run record)."""
    station = data(path)
    if changes is not None:
        changes(station)
    return resolve_station(YamlDocument(path=path, data=station, lines={}), station)


def sockets() -> int:
    """Open sockets of this process (Linux)."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
        except FileNotFoundError:  # the descriptor of the listing itself, closed since
            continue
    return count


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> list[ServedStation]:
    """Every station `build_device` serves, to look at its instruments."""
    found: list[ServedStation] = []

    def serve(*args: Any, **kwargs: Any) -> ServedStation:
        served = serve_station(*args, **kwargs)
        found.append(served)
        return served

    monkeypatch.setattr(hil.virtual, "serve_station", serve)
    return found


def stand_ins(served: ServedStation) -> list[Any]:
    """The virtual instruments behind a served station, served and injected."""
    found: list[Any] = list(served.injected.values())
    for server in served.servers.servers.values():
        found.append(server.device if isinstance(server, ScpiServer) else server.board)
    return found


def assert_safe(instrument: Any) -> None:
    """At 0 V with the outputs off, grounded, or (a DAQ) every task closed at 0 V."""
    if isinstance(instrument, Keithley2400):
        assert (instrument.state.output, instrument.state.volt.level) == (False, 0.0)
    elif isinstance(instrument, Keithley2600):
        assert all((s.output, s.levelv) == (False, 0.0) for s in instrument.smu.values())
    elif isinstance(instrument, ScpiDaq):
        assert not instrument.state.output
        assert set(instrument.state.ao_levels.values()) == {0.0}
    elif isinstance(instrument, Keysight33500):
        assert not any(output.on for output in instrument.outputs.values())
    elif isinstance(instrument, SR830 | SR860):
        return  # a meter: nothing to make safe
    elif isinstance(instrument, FakeInstrument):
        assert instrument.state == "ground"
    elif isinstance(instrument, FakeNidaqmx):
        assert instrument.open_tasks == []
        last = [c for c in instrument.calls if c.name.endswith(".write")][-1]
        assert np.all(np.asarray(last.args[0])[..., -1] == 0.0)
    else:
        assert instrument.lines == "GND", f"{type(instrument).__name__} not grounded"


def eventually(check: Callable[[Any], None], instrument: Any, timeout: float = 2.0) -> None:
    """`check(instrument)` passes within `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            check(instrument)
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.005)


@pytest.mark.parametrize("path", VIRTUAL, ids=[p.stem for p in VIRTUAL])
def test_every_virtual_station_measures_goes_safe_and_closes_clean(
    path: Path, captured: list[ServedStation]
) -> None:
    threads, open_sockets = set(threading.enumerate()), sockets()
    guard = build_device(resolved(path), np.random.SeedSequence(5))
    (served,) = captured
    try:
        spec = guard.spec
        guard.set_controls(np.array([0.25 * c.max for c in spec.controls]))
        inputs = np.array([[0.5 * c.max for c in spec.inputs]] * 2)
        out = guard.measure(inputs)
        assert out.shape == (2, len(spec.outputs))
        assert np.all(np.isfinite(out))
        guard.safe_state()
        for instrument in stand_ins(served):
            eventually(assert_safe, instrument)  # a write is not acknowledged: it may be in flight
    finally:
        guard.close()
    for instrument in stand_ins(served):
        assert_safe(instrument)  # the servers handled every line received before they stopped
    assert set(threading.enumerate()) <= threads, "a server thread outlived the station"
    assert sockets() == open_sockets, "a socket outlived the station"


def test_the_2600_channels_share_instruments_in_order_as_on_the_bench() -> None:
    served = serve_station(resolved(STATIONS / "dnpu-2600-virtual.yaml"), np.random.SeedSequence(0))
    try:
        assert list(served.servers.servers) == [
            "smu0+smu1",
            "smu2+smu3",
            "smu4+smu5",
            "smu6+ammeter",
        ]
        a = served.addresses
        assert a["smu0"] == a["smu1"] != a["smu2"] == a["smu3"]
        instruments = served.device_params["instruments"]
        assert instruments["ammeter"]["address"] == a["ammeter"]
        assert (instruments["ammeter"]["channel"], instruments["smu6"]["channel"]) == (
            "smub",
            "smua",
        )
        assert {i["visa_library"] for i in instruments.values()} == {"@py"}
    finally:
        served.stop()


def test_a_station_file_for_another_process_points_at_the_servers() -> None:
    served = serve_station(
        resolved(STATIONS / "crossbar-serial-virtual.yaml"), np.random.SeedSequence(0), every=True
    )
    try:
        text = served.station_text()
        station = yaml.safe_load(text)
        assert "virtual" not in station
        assert "&" not in text  # no YAML anchors: every entry written out
        assert station["device"]["board"]["url"] == served.addresses["board"]
        assert served.addresses["board"].startswith("socket://127.0.0.1:")
        assert station["device"]["board"]["word_lines"] == 16  # as written, not re-dumped
        assert set(station["device"]["board"]) == set(
            data(STATIONS / "crossbar-serial-virtual.yaml")["device"]["board"]
        )
    finally:
        served.stop()


@pytest.mark.parametrize(
    ("path", "change", "message"),
    [
        (
            "crossbar-serial-virtual.yaml",
            lambda d: d["virtual"]["device"].update(rows=32),
            r"device\.board: no virtual crossbar-serial for 'board': word_lines × bit_lines 16 × 4 "
            r"must be the simulator's rows × cols 32 × 4",
        ),
        (
            "crossbar-arc2-virtual.yaml",
            lambda d: d["virtual"].update(device={"type": "dnpu"}),
            r"device\.board: the simulator 'dnpu' has no channel 'row0'",
        ),
        (
            "dnpu-daq-virtual.yaml",
            lambda d: d["device"]["channels"]["E1"].update(role="control"),
            r"device\.daq: the rig wires 'E1' as control but the simulator's channel is input",
        ),
        (
            "analog-chip-virtual.yaml",
            lambda d: d["device"]["instruments"]["daq"].update(type="keithley9999"),
            r"instruments\.daq\.type",
        ),
    ],
)
def test_errors_name_the_station_key(
    path: str, change: Callable[[dict[str, Any]], None], message: str
) -> None:
    with pytest.raises((ConfigError, ValueError), match=message):
        build_device(resolved(STATIONS / path, change), np.random.SeedSequence(0)).close()


@pytest.mark.parametrize("path", ["dnpu-daq-virtual.yaml", "crossbar-arc2-virtual.yaml"])
def test_an_in_process_fake_cannot_be_served_to_another_process(path: str) -> None:
    key = {"dnpu-daq-virtual.yaml": "daq.device", "crossbar-arc2-virtual.yaml": "board.firmware"}
    with pytest.raises(ConfigError, match=rf"device\.{key[path]}: .*in-process fake.*cannot be"):
        serve_station(resolved(STATIONS / path), np.random.SeedSequence(0), every=True)


# -- one short training run per rig kind -----------------------------------------------------
DNPU_TASK = {
    "type": "regression",
    "input_scaling": "range",
    "inputs": [[-1, -1], [-1, 1], [1, -1], [1, 1]],
    "targets": [-20.0, 20.0, 20.0, -20.0],
}
SPSA = {
    "estimator": {"type": "spsa", "c": 0.05, "resamples": 2},
    "optimizer": {"type": "adam", "lr": 0.05},
}
RUNS: dict[str, dict[str, Any]] = {
    "dnpu-2600-virtual": {"procedure": {"type": "train", "steps": 15}, "task": DNPU_TASK, **SPSA},
    "dnpu-daq-virtual": {"procedure": {"type": "train", "steps": 15}, "task": DNPU_TASK, **SPSA},
    "analog-chip-virtual": {
        "procedure": {"type": "train", "steps": 15},
        "task": {
            "type": "regression",
            "input_scaling": "range",
            "inputs": [[-1, -1], [-1, 1], [1, -1], [1, 1]],
            "targets": [-30.0, 0.0, 10.0, 40.0],
        },
        "estimator": {"type": "spsa", "c": 2.0},
        "optimizer": {"type": "adam", "lr": 1.5},
    },
    **{
        name: {
            "procedure": {
                "type": "pulse-train",
                "steps": 15,
                "pulse_step": 0.001,
                "max_pulses": 8,
                "weight_min": -0.6,
                "weight_max": 0.6,
            },
            "task": {"type": "regression", "data": str(CONFIGS / "data" / "crossbar-linear.npz")},
            "estimator": {"type": "delta-rule"},
            "optimizer": {"type": "sgd", "lr": 0.05},
        }
        for name in ("crossbar-serial-virtual", "crossbar-arc2-virtual")
    },
}


def test_a_run_is_given_for_every_virtual_station() -> None:
    """Here, or as an experiment of its own in configs/ (trained by its own tests)."""
    own = {Path(str(data(p).get("station", ""))).stem for p in CONFIGS.glob("*.yaml")}
    assert sorted(RUNS) == sorted(p.stem for p in VIRTUAL if p.stem not in own)


def _losses(run: Path) -> list[float]:
    lines = (json.loads(line) for line in (run / "events.jsonl").read_text().splitlines())
    return [r["loss"] for r in lines if r.get("event") == "step"]


@pytest.mark.parametrize("name", sorted(RUNS))
def test_a_short_run_trains_on_the_virtual_station(name: str, tmp_path: Path) -> None:
    station = data(STATIONS / f"{name}.yaml")
    experiment = {"name": f"train-{name}", "station": station, "seed": 7, **RUNS[name]}
    config = tmp_path / "experiment.yaml"
    config.write_text(yaml.safe_dump(experiment, sort_keys=False))
    outcome = start_run(config, tmp_path / "runs")
    assert outcome.status.value == "completed", outcome.reason
    losses = _losses(outcome.path)
    assert len(losses) == RUNS[name]["procedure"]["steps"]
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses


# -- the station files -------------------------------------------------------------------------
CHECKED = [p for p in sorted(STATIONS.glob("*.yaml")) if p not in BENCH]


@pytest.mark.parametrize("path", CHECKED, ids=lambda p: p.stem)
def test_hil_config_check_accepts_every_station_file(path: Path) -> None:
    result = CliRunner().invoke(app, ["config", "check", str(path)])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("path", BENCH, ids=lambda p: p.stem)
def test_the_bench_templates_are_valid_but_name_no_virtual_instrument(path: Path) -> None:
    """Placeholder addresses: valid settings (strictly, as a person's file), nothing served;
    not connectable here, so not built."""
    station = load_station(path)
    assert station.config.virtual is None
    assert not hil.virtual.is_virtual(station)
    twin = data(STATIONS / path.name.replace("-bench", "-virtual"))
    assert twin["device"]["type"] == data(path)["device"]["type"]
