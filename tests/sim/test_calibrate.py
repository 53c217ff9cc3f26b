"""`hil calibrate` end to end: a station's bring-up measures what its simulator was configured
with, publishes a versioned calibration file that later runs load, and resumes after kill -9."""

from __future__ import annotations

import json
import math
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from hil.cli import app

from experiments import hil_process, journal_steps, wait_for_steps

FS = 2000.0
WHITE = 0.002  # V per sample
# V²/Hz at 10 Hz: the 1/f part meets the floor 2·WHITE²/FS = 4e-9 at 25 Hz. The simulator's 1/f
# (a bank of Lorentzians up to Nyquist) flattens near its top pole; at this level that adds
# ~2.5 % of the floor there, below the fit's standard error.
FLICKER = 1e-8
CUTOFF = 40.0  # Hz
GAIN_ERROR, OFFSET = 0.05, 0.2


def station(tmp_path: Path, *, real_time: bool = False, **device: Any) -> Path:
    """A bench analytic device with a known output chain, in its own station file."""
    data = {
        "name": "bench-analytic",
        "device": {
            "type": "analytic",
            "n_inputs": 1,
            "n_controls": 3,
            "cutoff": CUTOFF,
            "gain_error": GAIN_ERROR,
            "offset": OFFSET,
            "timing": {"sample_rate": FS, "real_time": real_time},
            "noise": {
                "white": WHITE,
                "flicker_psd": FLICKER,
                "flicker_f_ref": 10.0,
            },
            **device,
        },
        "limits": {"max_abs_voltage": 1.0},
    }
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def calibrate(*args: str) -> Any:
    result = CliRunner().invoke(app, ["calibrate", *args, "-q", "--seed", "7"])
    assert result.exit_code == 0, result.output
    return result


def test_a_calibration_measures_the_configured_station_and_publishes_it(tmp_path: Path) -> None:
    path = station(tmp_path)
    settings = tmp_path / "settings.yaml"
    settings.write_text("noise: {seconds: 16.0, mains: 0}\nplan: {target_snr: 100, repeats: 24}\n")
    out = tmp_path / "runs"
    result = calibrate(
        str(path),
        "--what",
        "offset,noise,step,plan,check",
        "--settings",
        str(settings),
        "--out",
        str(out),
    )
    assert "HGE plan" in result.output
    published = json.loads((tmp_path / "bench.calibration.json").read_text())
    assert published["schema"] == "hil.calibration/1"
    assert published["version"] == 1
    assert published["station"]["name"] == "bench-analytic"
    records = {r["measurement"]: r for r in published["results"]}

    noise = records["noise"]["noise"]["out"]
    assert noise["white"] == pytest.approx(2 * WHITE**2 / FS, abs=4 * noise["white_se"])
    corner = 10.0 * FLICKER / (2 * WHITE**2 / FS)
    assert noise["corner"] == pytest.approx(corner, abs=4 * noise["corner_se"])
    assert noise["alpha"] == pytest.approx(1.0, abs=4 * noise["alpha_se"])

    steps = [r for r in published["results"] if r["measurement"] == "step"]
    resolved = [r["response"]["out"] for r in steps if r["response"]["out"]["resolved"]]
    assert len(resolved) >= 2  # the electrodes whose step stands out of the noise
    for fit in resolved:
        assert fit["bandwidth"] == pytest.approx(CUTOFF, abs=4 * fit["bandwidth_se"])

    offset = records["offset"]["offset"]["out"]
    assert offset["se"] < 0.01  # the zero-input output is read to better than 1 %

    check = records["check"]["check"]
    assert check["ratio"] == pytest.approx(1.0, abs=max(3 * check["ratio_se"], 0.0))
    assert abs(check["ratio"] - 1.0) <= 0.25
    assert set(published["use"]) == {"noise", "settling", "plan"}
    run = next(out.iterdir())
    assert (run / "traces.h5").is_file()
    assert (run / "report" / "report.html").is_file()


def test_offset_recovers_the_chain_offset_and_gain(tmp_path: Path) -> None:
    """The analytic function is odd in x around 0 with the controls at 0 only by chance, so
    compare against a second station without gain error and offset: the offsets differ by
    exactly the configured offset plus the gain error times the function's value."""
    with_chain = station(tmp_path / "a", noise={"white": WHITE})
    plain = station(tmp_path / "b", noise={"white": WHITE}, gain_error=0.0, offset=0.0)
    calibrate(str(with_chain), "--what", "offset", "--out", str(tmp_path / "runs"))
    calibrate(str(plain), "--what", "offset", "--out", str(tmp_path / "runs"))
    a = json.loads((tmp_path / "a" / "bench.calibration.json").read_text())["results"][0]
    b = json.loads((tmp_path / "b" / "bench.calibration.json").read_text())["results"][0]
    f0, g0 = b["offset"]["out"], b["transfer"]["in0"]["out"]
    f1, g1 = a["offset"]["out"], a["transfer"]["in0"]["out"]
    expected = (1 + GAIN_ERROR) * f0["mean"] + OFFSET
    assert f1["mean"] == pytest.approx(expected, abs=4 * math.hypot(f1["se"], 1.05 * f0["se"]))
    ratio_se = math.hypot(g1["gain_se"] / g0["gain"], g1["gain"] * g0["gain_se"] / g0["gain"] ** 2)
    assert g1["gain"] / g0["gain"] == pytest.approx(1 + GAIN_ERROR, abs=4 * ratio_se)


def experiment(tmp_path: Path, station_file: Path, estimator: dict[str, Any]) -> Path:
    data = {
        "name": "trained",
        "station": str(station_file),
        "seed": 3,
        "procedure": {"type": "train", "steps": 2},
        "task": {"type": "regression", "inputs": [[0.2], [-0.2]], "targets": [0.1, -0.1]},
        "estimator": estimator,
        "optimizer": {"type": "sgd", "lr": 0.01},
    }
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_runs_use_the_calibration_and_warn_when_it_is_stale_or_foreign(tmp_path: Path) -> None:
    path = station(tmp_path, noise={"white": WHITE})
    out = tmp_path / "runs"
    calibrate(str(path), "--what", "plan", "--out", str(out))
    published = json.loads((tmp_path / "bench.calibration.json").read_text())
    plan = published["use"]["plan"]

    config = experiment(tmp_path, path, {"type": "homodyne", "window": 0.5})
    result = CliRunner().invoke(app, ["run", str(config), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "calibration v1" in result.output
    run = max(out.glob("*trained*"))
    info = json.loads((run / "run.json").read_text())
    assert info["calibration"]["applied"] == ["amplitudes", "settle_time"]  # window was given
    assert info["config"]["estimator"]["window"] == 0.5
    assert info["config"]["estimator"]["amplitudes"] == pytest.approx(plan["amplitudes"])

    # a second calibration of part of the station keeps the plan and numbers the old file
    calibrate(str(path), "--what", "offset", "--out", str(out))
    second = json.loads((tmp_path / "bench.calibration.json").read_text())
    assert second["version"] == 2
    assert second["use"]["plan"] == plan
    assert json.loads((tmp_path / "bench.calibration.v1.json").read_text())["version"] == 1

    # stale: made long ago
    second["created_unix"] -= 30 * 86_400
    second["use"]["plan"]["created_unix"] -= 30 * 86_400
    (tmp_path / "bench.calibration.json").write_text(json.dumps(second))
    result = CliRunner().invoke(app, ["run", str(config), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "days old, older than calibration.max_age_days" in result.output

    # another station (another simulator) in the same file: warned, and nothing applied
    data = yaml.safe_load(path.read_text())
    data["device"]["model_seed"] = 1
    path.write_text(yaml.safe_dump(data))
    result = CliRunner().invoke(app, ["run", str(config), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "was made on another station" in result.output
    info = json.loads((max(out.glob("*trained*")) / "run.json").read_text())
    assert info["calibration"]["applied"] == []


def test_a_bad_calibration_request_names_what_is_wrong(tmp_path: Path) -> None:
    path = station(tmp_path)
    result = CliRunner().invoke(app, ["calibrate", str(path), "--what", "iv,sparkle"])
    assert result.exit_code != 0
    assert "procedure.what" in result.output
    assert "sparkle" in result.output
    result = CliRunner().invoke(app, ["calibrate", str(path), "--what", "check"])
    assert result.exit_code != 0
    assert "put 'plan' before it" in result.output
    result = CliRunner().invoke(app, ["calibrate", str(path), "--what", "pulses"])
    assert result.exit_code != 0
    assert "programmable weights" in result.output


def test_a_killed_calibration_resumes_and_publishes(tmp_path: Path) -> None:
    path = station(tmp_path, real_time=True, noise={"white": WHITE})
    out = tmp_path / "runs"
    settings = tmp_path / "settings.yaml"
    settings.write_text("iv: {points: 5}\nstep: {repeats: 2, after: 0.1}\n")
    proc = hil_process(
        "calibrate",
        str(path),
        "--what",
        "iv,step",
        "--settings",
        str(settings),
        "--out",
        str(out),
        "-q",
        "--seed",
        "8",
    )
    run = wait_for_steps(out, 2, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    done = len(journal_steps(run))
    assert 2 <= done < 8  # 4 iv + 4 step: killed part way
    assert not (tmp_path / "bench.calibration.json").exists()
    time.sleep(0.1)
    result = CliRunner().invoke(app, ["resume", str(run), "-q"])
    assert result.exit_code == 0, result.output
    steps = journal_steps(run)
    assert [s["step"] for s in steps] == list(range(1, 9))
    published = json.loads((tmp_path / "bench.calibration.json").read_text())
    assert [r["measurement"] for r in published["results"]] == ["iv"] * 4 + ["step"] * 4
    assert published["run"] == str(run.resolve())


LIGHT = """\
iv: {points: 3}
offset: {repeats: 4}
noise: {seconds: 1.0}
step: {repeats: 2, after: 0.05}
plan: {pilot_window: 0.2, noise_seconds: 1.0, max_window: 1.0}
conductance: {reads: 2}
pulses: {rounds: 3, reads: 2}
"""

STATIONS = sorted(
    p.name
    for p in (Path(__file__).parents[2] / "configs" / "stations").glob("*.yaml")
    if not p.name.endswith("-bench.yaml")
)


@pytest.mark.parametrize("name", STATIONS)
def test_every_shipped_station_calibrates(tmp_path: Path, name: str) -> None:
    """Each simulated and virtual station goes through its default bring-up (light settings)
    and publishes a calibration whose records match what the device measures."""
    source = Path(__file__).parents[2] / "configs" / "stations" / name
    copy = tmp_path / name
    copy.write_text(source.read_text())
    for data in (source.parent.parent / "data").glob("*"):  # files stations name relatively
        (tmp_path.parent / "data").mkdir(exist_ok=True)
        (tmp_path.parent / "data" / data.name).write_bytes(data.read_bytes())
    settings = tmp_path / "light.yaml"
    settings.write_text(LIGHT)
    calibrate(str(copy), "--settings", str(settings), "--out", str(tmp_path / "runs"))
    published = json.loads(copy.with_name(copy.stem + ".calibration.json").read_text())
    kinds = {r["measurement"] for r in published["results"]}
    assert kinds in (
        {"iv", "offset", "noise", "step", "plan"},
        {"conductance", "pulses", "offset"},
        {"iv", "offset"},
    )
    assert published["station"]["name"] == yaml.safe_load(source.read_text())["name"]


def test_a_damaged_calibration_file_is_a_warning_unless_the_experiment_names_it(
    tmp_path: Path,
) -> None:
    path = station(tmp_path, noise={"white": WHITE})
    out = tmp_path / "runs"
    (tmp_path / "bench.calibration.json").write_text('{"schema": "hil.calibration/1", "use": [')
    config = experiment(tmp_path, path, {"type": "spsa", "c": 0.05})
    result = CliRunner().invoke(app, ["run", str(config), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "cannot use this calibration file" in result.output
    info = json.loads((max(out.glob("*trained*")) / "run.json").read_text())
    assert info["calibration"] is None

    data = yaml.safe_load(config.read_text())
    data["calibration"] = {"file": "bench.calibration.json"}
    config.write_text(yaml.safe_dump(data))
    result = CliRunner().invoke(app, ["run", str(config), "--out", str(out)])
    assert result.exit_code == 2
    assert "calibration.file" in result.output


def test_an_iv_sweep_stops_at_compliance_and_goes_on(tmp_path: Path) -> None:
    """The virtual SMU rig with its ammeter's compliance at 30 nA: the DNPU's larger currents
    put it in compliance; those levels are recorded as missing, the sweep skips the levels
    beyond them on that side, and the bring-up completes."""
    source = Path(__file__).parents[2] / "configs" / "stations" / "dnpu-smu-virtual.yaml"
    data = yaml.safe_load(source.read_text())
    data["device"]["instruments"]["ammeter"]["compliance_current"] = 3e-8
    data["device"]["instruments"]["ammeter"]["measure_range"] = 1.05e-6
    path = tmp_path / "smu.yaml"
    path.write_text(yaml.safe_dump(data))
    settings = tmp_path / "iv.yaml"
    settings.write_text("iv: {points: 6, bias: {E0: 0.1}}\n")
    calibrate(str(path), "--what", "iv", "--settings", str(settings), "--out", str(tmp_path / "r"))
    results = json.loads((tmp_path / "smu.calibration.json").read_text())["results"]
    assert [r["channel"] for r in results] == ["E0", "E1", "E2", "E3", "E4", "E5", "E6"]
    saturated = [r for r in results if r["saturated_beyond"] != [None, None]]
    assert saturated  # some electrode drove the output past 30 nA
    for r in results:
        low, high = r["saturated_beyond"]
        for level, out in zip(r["levels"], r["outputs"], strict=True):
            limit = high if level >= 0 else low
            if limit is not None and abs(level) >= limit:
                assert out == [None]  # at and beyond the compliance level: not measured
            else:
                assert out[0] is not None
                assert abs(out[0]) <= 30.0 * 1.001  # nA: what was read stayed in compliance
        assert r["bias"] == ({} if r["channel"] == "E0" else {"E0": 0.1})


def test_a_plan_keeps_its_tones_below_the_bandwidth_the_station_measured(tmp_path: Path) -> None:
    """Step responses (here from an earlier calibration of the station) measured the 40 Hz
    output chain: the plan's tones stay below a fifth of it, where the chain passes 98 % of
    the gradient."""
    path = station(tmp_path, noise={"white": WHITE})
    out = str(tmp_path / "runs")
    calibrate(str(path), "--what", "step", "--out", out)
    bandwidth = json.loads((tmp_path / "bench.calibration.json").read_text())["use"]["settling"]
    calibrate(str(path), "--what", "plan", "--out", out)
    plan = json.loads((tmp_path / "bench.calibration.json").read_text())["results"][0]
    assert plan["output_bandwidth"] == pytest.approx(bandwidth["bandwidth"])
    assert max(plan["tones"]) <= 0.2 * plan["output_bandwidth"]
    assert bandwidth["bandwidth"] == pytest.approx(CUTOFF, rel=0.1)
