"""Config loading: valid files resolve; every kind of bad input names the file, line and key."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from hil.config import json_schema, load_experiment, load_station, resolve_experiment
from hil.core import ConfigError
from hil.registry import Kind, available, resolve
from hil.yamlfile import YamlDocument, load_yaml

ROOT = Path(__file__).resolve().parents[2]

STATION = """\
name: test-station
device:
  type: analytic
  offset: 0.001
limits:
  max_abs_voltage: 1.0
  channels:
    ctrl0: {min: -0.5, max: 0.5}
"""

EXPERIMENT = """\
name: test-exp
station: station.yaml
seed: 7
procedure:
  type: train
  steps: 5
task:
  type: regression
  inputs: [[0.0, 0.0], [0.5, -0.5]]
  targets: [0.1, 0.2]
estimator:
  type: spsa
  c: 0.05
optimizer:
  type: adam
  lr: 0.02
"""


def _write(tmp_path: Path, experiment: str = EXPERIMENT, station: str = STATION) -> Path:
    (tmp_path / "station.yaml").write_text(station)
    path = tmp_path / "exp.yaml"
    path.write_text(experiment)
    return path


def test_valid_experiment_resolves_with_defaults_filled(tmp_path: Path) -> None:
    resolved = load_experiment(_write(tmp_path))
    data = resolved.as_dict()
    assert data["station"]["name"] == "test-station"
    assert data["station"]["device"]["type"] == "analytic"
    assert data["station"]["device"]["offset"] == 0.001
    assert "n_controls" in data["station"]["device"]  # defaults are recorded
    assert data["estimator"] == {**data["estimator"], "type": "spsa", "c": 0.05}
    assert data["procedure"]["steps"] == 5


def test_shipped_configs_are_valid() -> None:
    configs = sorted((ROOT / "configs").rglob("*.yaml"))
    assert configs
    for path in configs:
        doc = load_yaml(path)
        if "task" in doc.data:
            load_experiment(path)
        else:
            load_station(path)


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("  lr: 0.02", "  lr: fast", "exp.yaml:16: optimizer.lr: Input should be a valid number"),
        ("  c: 0.05", "  c: 0.05\n  colour: red", "exp.yaml:14: estimator.colour: unknown key"),
        ("type: spsa", "type: spsaa", "estimator.type: unknown estimator type 'spsaa'"),
        ("seed: 7", "seed: 7\nsteps: 3", "exp.yaml:4: steps: unknown key"),
        ("  steps: 5", "  steps: -1", "procedure.steps: Input should be greater than 0"),
        ("name: test-exp", "name: test exp", "exp.yaml:1: name: String should match pattern"),
        (
            "station: station.yaml",
            "station: nowhere.yaml",
            "exp.yaml:2: station: station file",  # ... '.../nowhere.yaml' does not exist
        ),
        ("type: adam", "type: no.such.module:Adam", "cannot import module 'no.such.module'"),
        ("type: adam", "type: pathlib:Path", "has no pydantic `Settings` class"),
        (
            "  lr: 0.02",
            "  lr: [0.02",
            "exp.yaml:17:1: invalid YAML: expected ',' or ']', but got '<stream end>' "
            "(while parsing a flow sequence started at line 16)",
        ),
        ("  lr: 0.02", "  lr: 0.02\n  lr: 0.03", "key 'optimizer.lr' appears twice"),
    ],
)
def test_bad_experiment_names_file_line_and_key(
    tmp_path: Path, old: str, new: str, expected: str
) -> None:
    assert old in EXPERIMENT
    path = _write(tmp_path, EXPERIMENT.replace(old, new, 1))
    with pytest.raises(ConfigError) as info:
        load_experiment(path)
    assert expected in str(info.value)


def test_bad_station_key_points_into_the_station_file(tmp_path: Path) -> None:
    path = _write(tmp_path, station=STATION.replace("max_abs_voltage: 1.0", "max_abs_voltage: -1"))
    with pytest.raises(ConfigError, match=r"station\.yaml:6: limits\.max_abs_voltage"):
        load_experiment(path)


def test_inline_station_errors_carry_the_station_prefix(tmp_path: Path) -> None:
    inline = "station:\n" + "".join(f"  {line}\n" for line in STATION.splitlines())
    text = EXPERIMENT.replace("station: station.yaml\n", inline).replace(
        "offset: 0.001", "offset: loud"
    )
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"exp\.yaml:6: station\.device\.offset"):
        load_experiment(path)


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "exp.yaml"
    path.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_experiment(path)


def test_registry_lists_and_resolves_builtins() -> None:
    for kind in Kind:
        entries = available(kind)
        assert entries, kind
        for entry in entries:
            assert isinstance(resolve(kind, entry.name), type)


def test_full_import_path_resolves() -> None:
    from protocols.optimizers import Adam

    assert resolve(Kind.OPTIMIZER, "protocols.optimizers:Adam") is Adam
    assert resolve(Kind.OPTIMIZER, "protocols.optimizers.Adam") is Adam


def test_json_schema_describes_both_files() -> None:
    assert "station" in json_schema("experiment")["properties"]
    assert "limits" in json_schema("station")["properties"]
    with pytest.raises(ConfigError, match="unknown schema"):
        json_schema("campaign")


def test_exponents_without_a_dot_are_numbers(tmp_path: Path) -> None:
    """YAML 1.2 floats: `1e-3` is a number (PyYAML alone reads it as a string)."""
    path = _write(tmp_path, EXPERIMENT.replace("c: 0.05", "c: 5e-2"))
    assert load_experiment(path).components["estimator"].settings.c == 0.05  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("old", "new"),
    [("steps: 5", "steps: '5'"), ("steps: 5", "steps: 5.0"), ("steps: 5", "steps: true")],
)
def test_files_are_typed_strictly_but_records_are_not(tmp_path: Path, old: str, new: str) -> None:
    """A hand-written file gets no coercion; run.json (strict=False) validates as it was written,
    with non-finite floats stored as strings."""
    path = _write(tmp_path, EXPERIMENT.replace(old, new))
    with pytest.raises(ConfigError, match=r"procedure\.steps: Input should be a valid integer"):
        load_experiment(path)
    recorded = load_experiment(_write(tmp_path)).as_dict()
    assert recorded["station"]["device"]["max_slew"] == "inf"
    recorded["procedure"]["steps"] = "5"
    doc = YamlDocument(path=tmp_path / "run.json", data=recorded)
    resolved = resolve_experiment(doc)
    assert resolved.station.device.settings.max_slew == math.inf  # type: ignore[attr-defined]
    assert resolved.as_dict()["procedure"]["steps"] == 5


def test_errors_are_one_line_with_the_first_problems(tmp_path: Path) -> None:
    bad = EXPERIMENT.replace("steps: 5", "steps: 0\n  a: 1\n  b: 2\n  c: 3\n  d: 4")
    with pytest.raises(ConfigError) as info:
        load_experiment(_write(tmp_path, bad))
    message = str(info.value)
    assert "\n" not in message
    assert "exp.yaml:6: procedure.steps: Input should be greater than 0; use a larger value" in (
        message
    )
    assert message.endswith("and 2 more problems")


def test_station_check_catches_limits_on_unknown_channels(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from hil.cli import app

    path = tmp_path / "station.yaml"
    path.write_text(STATION.replace("ctrl0:", "ctrl9:"))
    result = CliRunner().invoke(app, ["config", "check", str(path)])
    assert result.exit_code == 2
    assert "limits.channels.ctrl9: device 'analytic' has no channel 'ctrl9'" in result.stderr
