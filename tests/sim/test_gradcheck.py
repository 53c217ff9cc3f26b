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


def test_gradcheck_compare_runs_every_candidate_at_its_predicted_settings(tmp_path: Path) -> None:
    """The quickstart device streams and its averaging can be set: all three candidates are
    predicted and run; each one's measured seconds per estimate is its prediction (the same
    plateaus or stream, ±5 %), and the cheapest predicted reaches the target. The device's
    averaging is left as the station set it."""
    result = runner.invoke(
        app,
        ["gradcheck", str(QUICKSTART), "--repeats", "6", "--out", str(tmp_path), "--compare"],
    )
    assert result.exit_code == 0, result.output
    assert "which estimator is fastest here" in result.output
    (directory,) = tmp_path.iterdir()
    record = json.loads((directory / "gradcheck.json").read_text())
    compare = record["compare"]
    assert compare["target_cosine"] == 0.99
    candidates = compare["candidates"]
    names = {c["prediction"]["candidate"] for c in candidates}
    assert names == {"central-difference", "hadamard-spsa", "homodyne"}
    for c in candidates:
        assert abs(c["seconds"] / c["prediction"]["seconds"] - 1) < 0.05, c
    fastest = min(candidates, key=lambda c: c["prediction"]["seconds"])
    assert fastest["reached"], fastest
