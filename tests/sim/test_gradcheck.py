"""`hil gradcheck`: the table, the JSON record and the scatter plot of an estimator's quality."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from hil.cli import app

from experiments import QUICKSTART, experiment_text

runner = CliRunner()


def test_gradcheck_on_the_quickstart_against_the_oracle(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["gradcheck", str(QUICKSTART), "--repeats", "8", "--out", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    assert "cosine_median" in result.output
    assert "ctrl0" in result.output
    (directory,) = tmp_path.iterdir()
    record = json.loads((directory / "gradcheck.json").read_text())
    assert record["reference"]["kind"] == "oracle"
    assert len(record["estimates"]) == 8
    assert len(record["theta"]) == 5
    assert -1.0 <= record["summary"]["cosine_median"] <= 1.0
    assert (directory / "scatter.png").stat().st_size > 10_000


def test_gradcheck_with_an_averaged_reference(tmp_path: Path) -> None:
    config = tmp_path / "exp.yaml"
    config.write_text(experiment_text(steps=3))
    result = runner.invoke(
        app,
        [
            "gradcheck",
            str(config),
            "--repeats",
            "3",
            "--reference",
            "average",
            "--reference-repeats",
            "4",
            "--out",
            str(tmp_path / "out"),
        ],
    )
    assert result.exit_code == 0, result.output
    (directory,) = (tmp_path / "out").iterdir()
    record = json.loads((directory / "gradcheck.json").read_text())
    assert record["reference"]["kind"] == "average"
    assert record["reference"]["evaluations"] > 0
    assert all(s is not None for s in record["reference"]["stderr"])


def test_gradcheck_refuses_an_unknown_reference(tmp_path: Path) -> None:
    result = runner.invoke(app, ["gradcheck", str(QUICKSTART), "--reference", "magic"])
    assert result.exit_code == 2
    assert "auto, oracle or average" in result.output
