"""Instrument faults on a virtual station end in a paused, resumable run with the device safe.

The station's `virtual.faults` arms transport faults on the served instruments; the run goes
through the real drivers, the retries of the run engine, and `hil resume`.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml

from hil.core import ConfigError
from hil.runner import RunStatus, resume_run, start_run

CONFIGS = Path(__file__).resolve().parents[2] / "configs"

pytestmark = pytest.mark.filterwarnings(
    "ignore:It is not known whether this device support SCPI:FutureWarning"
)


def experiment(tmp: Path, faults: dict[str, Any], *, steps: int, retries: int) -> Path:
    """configs/dnpu-virtual.yaml with its station inline, the faults armed, shorter."""
    station = yaml.safe_load((CONFIGS / "stations" / "dnpu-smu-virtual.yaml").read_text())
    station["virtual"]["faults"] = faults
    config = yaml.safe_load((CONFIGS / "dnpu-virtual.yaml").read_text())
    config["station"] = station
    config["procedure"]["steps"] = steps
    config["faults"] = {"retries": retries, "backoff": 0.0}
    path = tmp / "faulty-virtual.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _steps(run: Path) -> list[int]:
    records = (json.loads(line) for line in (run / "events.jsonl").read_text().splitlines())
    return [r["step"] for r in records if r.get("event") == "step"]


def test_a_lost_instrument_pauses_the_run_and_every_resume_continues(tmp_path: Path) -> None:
    """The ammeter's connection drops after 150 messages of every session: each run or resume
    gets a few steps further, pauses with the instrument named, and the last one completes."""
    config = experiment(tmp_path, {"ammeter": {"disconnect_after": 150}}, steps=12, retries=0)
    outcome = start_run(config, tmp_path / "runs")
    assert outcome.status is RunStatus.PAUSED, outcome.reason
    assert "ammeter" in outcome.reason
    summary = json.loads((outcome.path / "summary.json").read_text())
    assert summary["status"] == "paused"
    done = summary["steps_done"]
    assert 0 < done < 12
    for _ in range(6):
        outcome = resume_run(outcome.path)
        if outcome.status is RunStatus.COMPLETED:
            break
        assert outcome.status is RunStatus.PAUSED, outcome.reason
        now = json.loads((outcome.path / "summary.json").read_text())["steps_done"]
        assert now > done, "a resume must make progress"
        done = now
    assert outcome.status is RunStatus.COMPLETED, outcome.reason
    assert _steps(outcome.path) == list(range(1, 13))  # every step once, none lost or repeated


def test_garbled_replies_are_retried_by_the_driver_and_the_run_completes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The ammeter's first two replies (its identity, at connect) arrive garbled: the driver
    retries the query, names the instrument in its warnings, and the run goes on."""
    config = experiment(tmp_path, {"ammeter": {"garble": 2}}, steps=4, retries=0)
    outcome = start_run(config, tmp_path / "runs")
    assert outcome.status is RunStatus.COMPLETED, outcome.reason
    retries = [r.getMessage() for r in caplog.records if "retry" in r.getMessage()]
    assert len(retries) == 2, retries
    assert all("ammeter" in m and "*IDN?" in m for m in retries)


def test_faults_for_an_unknown_instrument_are_a_config_error(tmp_path: Path) -> None:
    config = experiment(tmp_path, {"nowhere": {"garble": 1}}, steps=2, retries=0)
    with pytest.raises(ConfigError, match=r"virtual\.faults\.nowhere.*served"):
        start_run(config, tmp_path / "runs")
    leaked = [t.name for t in threading.enumerate() if t.name.startswith(("smu", "ammeter"))]
    assert leaked == [], "the servers started before the error must be stopped"
