"""The command line: bad input gets one clear line and a non-zero exit, and writes nothing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hil.cli import app
from hil.core import ConfigError

from experiments import QUICKSTART, ROOT, experiment_text, small_experiment
from faulty import FlakyAnalytic

runner = CliRunner()


@pytest.fixture(autouse=True)
def _no_injected_fault() -> Iterator[None]:
    FlakyAnalytic.fail_at = None
    yield
    FlakyAnalytic.fail_at = None


def _bad_input(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    return path


BAD_CONFIGS = {
    "malformed-yaml": ("name: x\nstation: [unclosed\n", "invalid YAML"),
    "unknown-type": (
        experiment_text(steps=3).replace("type: spsa", "type: sgpa"),
        "unknown estimator type 'sgpa'",
    ),
    "initial-outside-range": (
        experiment_text(initial="[0.95, 0, 0, 0, 0]"),
        "procedure.initial_controls.ctrl0: 0.95 is outside the allowed range [-0.8, 0.8]",
    ),
    "task-inputs-outside-range": (
        experiment_text().replace("[-0.5, 0.5]", "[-5.0, 0.5]"),
        "task input -5 (case 0, channel 'in0') is outside the allowed range [-1, 1]",
    ),
    "optimizer-not-an-optimizer": (
        experiment_text().replace("type: adam\n  lr: 0.03", "type: protocols.external:CMAAdapter"),
        "does not implement the Optimizer (start, ask, tell, state_dict, load_state_dict)",
    ),
    "non-finite-learning-rate": (
        experiment_text().replace("lr: 0.03", "lr: .inf"),
        "optimizer.lr: inf is not a finite number",
    ),
    "bool-for-an-int": (
        experiment_text().replace("steps: 40", "steps: true"),
        "procedure.steps: Input should be a valid integer",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_config_gives_one_line_and_writes_nothing(tmp_path: Path, case: str) -> None:
    text, expected = BAD_CONFIGS[case]
    config = _bad_input(tmp_path, text)
    out = tmp_path / "runs"
    result = runner.invoke(app, ["run", str(config), "--out", str(out)])
    assert result.exit_code == 2
    assert expected in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.output
    assert not out.exists()
    check = runner.invoke(app, ["config", "check", str(config)])
    assert check.exit_code == 2
    assert expected in check.stderr


def test_debug_shows_the_exception(tmp_path: Path) -> None:
    config = _bad_input(tmp_path, BAD_CONFIGS["unknown-type"][0])
    result = runner.invoke(app, ["--debug", "run", str(config), "--out", str(tmp_path / "r")])
    assert result.exit_code != 0
    assert isinstance(result.exception, ConfigError)


def test_resume_of_a_missing_run_is_a_clear_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["resume", str(tmp_path / "no-run")])
    assert result.exit_code == 1
    assert "no such run directory" in result.stderr
    assert not (tmp_path / "no-run").exists()


def test_device_error_mid_run_pauses_and_says_how_to_resume(tmp_path: Path) -> None:
    FlakyAnalytic.fail_at = 30
    config = small_experiment(tmp_path, device_type="faulty:FlakyAnalytic")
    config.write_text(config.read_text() + "faults: {retries: 0}\n")
    out = tmp_path / "runs"
    result = runner.invoke(app, ["run", str(config), "--out", str(out), "-q"])
    assert result.exit_code == 3
    assert "paused: InstrumentTimeout" in result.stderr
    assert "hil resume" in result.stderr
    (run,) = out.iterdir()
    assert json.loads((run / "summary.json").read_text())["status"] == "paused"
    FlakyAnalytic.fail_at = None
    resumed = runner.invoke(app, ["resume", str(run), "-q"])
    assert resumed.exit_code == 0, resumed.output
    assert (run / "report" / "training.png").is_file()


def test_run_then_report(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    result = runner.invoke(
        app, ["run", str(small_experiment(tmp_path, steps=5)), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    (run,) = out.iterdir()
    (run / "report" / "summary.md").unlink()
    again = runner.invoke(app, ["report", str(run)])
    assert again.exit_code == 0
    assert (run / "report" / "summary.md").is_file()


def test_list_check_and_schema() -> None:
    listing = runner.invoke(app, ["list"])
    assert listing.exit_code == 0
    for name in ("analytic", "spsa", "central-difference", "adam", "sgd", "regression", "train"):
        assert name in listing.stdout
    check = runner.invoke(app, ["config", "check", str(QUICKSTART)])
    assert check.exit_code == 0
    assert "ok:" in check.stdout
    schema = runner.invoke(app, ["config", "schema", "station"])
    assert schema.exit_code == 0
    assert "max_abs_voltage" in json.loads(schema.stdout)["$defs"]["SafetyLimits"]["properties"]


def test_error_text_is_printed_as_written_not_as_console_markup() -> None:
    """`pip install 'hil[nidaq]'` in an error must reach the operator with its brackets."""
    result = runner.invoke(
        app, ["config", "check", str(ROOT / "configs" / "stations" / "dnpu-daq-bench.yaml")]
    )
    assert result.exit_code != 0
    assert "'hil[nidaq]'" in result.output


def test_instrument_entries_of_a_station_file_are_typed_strictly(tmp_path: Path) -> None:
    """An SMU entry's number written as a string is refused as any other setting would be."""
    station = (ROOT / "configs" / "stations" / "dnpu-smu-virtual.yaml").read_text()
    assert "      nplc: 0.1\n" in station
    path = tmp_path / "station.yaml"
    path.write_text(station.replace("      nplc: 0.1\n", '      nplc: "0.1"\n', 1))
    result = runner.invoke(app, ["config", "check", str(path)])
    assert result.exit_code == 2
    assert "instruments.smu0.nplc" in result.output
