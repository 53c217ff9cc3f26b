"""Resume refuses damaged or inconsistent run directories, and changes nothing when it does.

One failed run (stopped by an injected device error after 11 of 40 steps) is copied once per
case; each case damages the copy the way an accident or an edit would, and `hil resume` must exit
1 with one line saying what disagrees, leaving every file byte-identical. The allowed repairs (a
torn last journal line, a step the checkpoint holds but the journal lacks) are checked to resume
to exactly the uninterrupted result.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from hil.cli import app
from hil.rundir import RunDirectory, seal, unsealed
from hil.runner import RunStatus, resume_run, start_run

from experiments import small_experiment
from faulty import FlakyAnalytic

runner = CliRunner()
FAIL_AT = 100  # plateaus: 3 per evaluation, 3 evaluations per step -> fails in step 12


@pytest.fixture(autouse=True)
def _no_injected_fault() -> Iterator[None]:
    FlakyAnalytic.fail_at = None
    yield
    FlakyAnalytic.fail_at = None


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A failed run at step 11, another of the same config, and the uninterrupted reference."""
    base = tmp_path_factory.mktemp("integrity")
    reference = start_run(small_experiment(base / "ref_cfg"), base / "ref")
    assert reference.status is RunStatus.COMPLETED
    config = small_experiment(base / "cfg", device_type="faulty:FlakyAnalytic")
    config.write_text(config.read_text() + "faults: {retries: 0}\n")  # the fault pauses the run
    failed = []
    for name in ("failed", "other"):
        FlakyAnalytic.fail_at = FAIL_AT
        outcome = start_run(config, base / name)
        FlakyAnalytic.fail_at = None
        assert outcome.status is RunStatus.PAUSED
        failed.append(outcome.path)
    return {"run": failed[0], "other": failed[1], "reference": reference.summary, "base": base}


@pytest.fixture
def run(runs: dict[str, Any], tmp_path: Path) -> Path:
    """A fresh copy of the failed run."""
    source: Path = runs["run"]
    copy = tmp_path / source.name
    shutil.copytree(source, copy)
    return copy


def _fingerprint(run: Path) -> dict[str, str]:
    """Hash of every file but the lock (which records the pid of its last holder)."""
    return {
        str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(run.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def _json(path: Path) -> Any:
    return json.loads(path.read_text())


def _edit_json(path: Path, edit: Callable[[Any], Any], *, reseal: bool) -> None:
    data = edit(_json(path))
    path.write_text(json.dumps(seal(data) if reseal else data))


def _set(key: str, value: Any) -> Callable[[Any], Any]:
    def edit(data: Any) -> Any:
        data[key] = value
        return data

    return edit


def _lines(run: Path) -> list[str]:
    return (run / "events.jsonl").read_text().splitlines(keepends=True)


def _write_lines(run: Path, lines: list[str]) -> None:
    (run / "events.jsonl").write_text("".join(lines))


def _step_line(run: Path, step: int) -> int:
    return next(i for i, line in enumerate(_lines(run)) if json.loads(line).get("step") == step)


def _edit_record(run: Path, step: int, key: str, value: Any) -> None:
    lines = _lines(run)
    i = _step_line(run, step)
    record = json.loads(lines[i])
    record[key] = value
    lines[i] = json.dumps(record) + "\n"
    _write_lines(run, lines)


def _garbage_in_the_middle(run: Path) -> None:
    lines = _lines(run)
    _write_lines(run, [*lines[:5], "this is not JSON\n", *lines[5:]])


def _line_deleted(run: Path) -> None:
    lines = _lines(run)
    del lines[_step_line(run, 5)]
    _write_lines(run, lines)


def _journal_cut_short(run: Path) -> None:
    _write_lines(run, _lines(run)[: _step_line(run, 9) + 1])


def _edited_config(data: Any) -> Any:
    data["config"]["optimizer"]["lr"] = 0.05
    return data


def _edited_config_and_digest(data: Any) -> Any:
    from hil.rundir import digest

    data = _edited_config(data)
    data["config_digest"] = digest(data["config"])
    return data


def _device_without_part(data: Any) -> Any:
    del data["device"]
    return data


def _input_at_seven_volts(data: Any) -> Any:
    """The saved device levels edited past the station's 1 V ceiling, consistently: the guard's
    record and the simulator's own level of input in0 (the first driven level) both at 7 V."""
    data["device"]["last_inputs"][0] = 7.0
    data["device"]["device"]["levels"][0] = 7.0
    return data


def _input_level_inconsistent(data: Any) -> Any:
    """Only the simulator's level edited (inside the limits): guard and device disagree."""
    data["device"]["device"]["levels"][0] = 0.25
    return data


def _checkpoint_of_other(runs: dict[str, Any]) -> Callable[[Path], None]:
    other: Path = runs["other"]

    def damage(run: Path) -> None:
        shutil.copy(other / "checkpoint.json", run / "checkpoint.json")

    return damage


CP, RJ = "checkpoint.json", "run.json"

# case name -> (damage(run), text the one-line error must contain)
CASES: dict[str, tuple[Callable[[Path], object], str]] = {
    "steps_done edited": (
        lambda r: _edit_json(r / CP, _set("steps_done", 5), reseal=False),
        "checkpoint.json: checksum mismatch",
    ),
    "steps_done edited and resealed": (
        lambda r: _edit_json(r / CP, _set("steps_done", 1000000), reseal=True),
        "steps_done is 1000000 but the step record it holds is for step 11",
    ),
    "checkpoint null": (
        lambda r: (r / CP).write_text("null\n"),
        "holds null, not a checkpoint",
    ),
    "checkpoint missing": (
        lambda r: (r / CP).unlink(),
        "missing, but the journal records 11 steps",
    ),
    "checkpoint truncated": (
        lambda r: (r / CP).write_bytes((r / CP).read_bytes()[:200]),
        "checkpoint.json: not valid JSON",
    ),
    "device null": (
        lambda r: _edit_json(r / CP, _set("device", None), reseal=True),
        "no device state (device: null)",
    ),
    "device part missing": (
        lambda r: _edit_json(r / CP, _device_without_part, reseal=True),
        "no device state (no device part)",
    ),
    "checkpoint schema too new": (
        lambda r: _edit_json(r / CP, _set("schema_version", 3), reseal=True),
        "checkpoint schema version 3 is newer",
    ),
    "device level past the limit, resealed": (
        lambda r: _edit_json(r / CP, _input_at_seven_volts, reseal=True),
        "channel 'in0': value 7.0 violates range",
    ),
    "device level inconsistent, resealed": (
        lambda r: _edit_json(r / CP, _input_level_inconsistent, reseal=True),
        "the checkpoint is inconsistent",
    ),
    "checkpoint from another run": (lambda r: None, "belongs to run"),  # set in the test
    "garbage line in the journal": (_garbage_in_the_middle, "events.jsonl:6: not a journal record"),
    "journal record edited": (
        lambda r: _edit_record(r, 4, "loss", 0.0),
        "events.jsonl:5: checksum mismatch",
    ),
    "journal line deleted": (_line_deleted, "lines missing, duplicated or reordered"),
    "journal behind the checkpoint": (_journal_cut_short, "at step 11, but the journal records 9"),
    "run.json schema 1": (
        lambda r: _edit_json(r / RJ, _set("schema_version", 1), reseal=True),
        "run schema version 1 was written by an older hil",
    ),
    "run.json config edited": (
        lambda r: _edit_json(r / RJ, _edited_config, reseal=False),
        "run.json: checksum mismatch",
    ),
    "run.json config edited, resealed": (
        lambda r: _edit_json(r / RJ, _edited_config, reseal=True),
        "does not match its config digest",
    ),
    "run.json config and digest edited": (
        lambda r: _edit_json(r / RJ, _edited_config_and_digest, reseal=True),
        "the journal was started with config",
    ),
}

refused: list[str] = []


@pytest.mark.parametrize("case", list(CASES))
def test_damaged_run_is_refused_and_left_untouched(
    runs: dict[str, Any], run: Path, case: str
) -> None:
    damage, expected = CASES[case]
    if case == "checkpoint from another run":
        damage = _checkpoint_of_other(runs)
    damage(run)
    before = _fingerprint(run)
    result = runner.invoke(app, ["resume", str(run), "-q"])
    assert result.exit_code == 1, result.output
    assert expected in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.output
    assert _fingerprint(run) == before
    refused.append(case)


def test_figures_corruption_cases(capsys: pytest.CaptureFixture[str]) -> None:
    """Prints how many of the corruption cases were refused (run after them)."""
    with capsys.disabled():
        print(f"\nintegrity: {len(refused)} of {len(CASES)} corruption cases refused")


def _steps(run: Path) -> list[dict[str, Any]]:
    return [r for r in RunDirectory(run).events() if r["event"] == "step"]


def test_torn_last_line_is_dropped_logged_and_the_run_resumes_exactly(
    runs: dict[str, Any], run: Path
) -> None:
    journal = run / "events.jsonl"
    intact = journal.read_bytes()
    journal.write_bytes(intact + b'{"event": "step", "time": 17')
    result = runner.invoke(app, ["resume", str(run), "-q"])
    assert result.exit_code == 0, result.output
    assert "dropped a torn last line" in result.stderr
    assert "dropped a torn last line" in (run / "run.log").read_text()
    assert journal.read_bytes().startswith(intact)  # only the torn tail went
    assert [s["step"] for s in _steps(run)] == list(range(1, 41))
    assert _json(run / "summary.json")["final_controls"] == runs["reference"]["final_controls"]


def test_a_step_in_the_checkpoint_but_not_the_journal_is_journalled_once(
    runs: dict[str, Any], run: Path
) -> None:
    lines = _lines(run)
    i = _step_line(run, 11)
    assert json.loads(lines[-1])["event"] == "stop"
    _write_lines(run, lines[:i])  # killed after the checkpoint of step 11, before its journal line
    checkpoint = _json(run / "checkpoint.json")
    outcome = resume_run(run)
    assert outcome.status is RunStatus.COMPLETED
    steps = _steps(run)
    assert [s["step"] for s in steps] == list(range(1, 41))
    assert unsealed(steps[10]) == checkpoint["last_step"]
    assert outcome.summary["final_controls"] == runs["reference"]["final_controls"]
    assert outcome.summary["final_loss"] == runs["reference"]["final_loss"]


def test_old_runs_still_report(run: Path) -> None:
    _edit_json(run / RJ, _set("schema_version", 1), reseal=True)
    result = runner.invoke(app, ["report", str(run)])
    assert result.exit_code == 0, result.output
    assert (run / "report" / "summary.md").is_file()


def test_run_json_records_digest_station_and_outcome_in_run_log(run: Path) -> None:
    info = _json(run / "run.json")
    assert info["schema_version"] == 2
    assert info["config_digest"].startswith("sha256:")
    assert info["station_file"] is None  # the small experiment's station is inline
    start = RunDirectory(run).events()[0]
    assert start["event"] == "start"
    assert start["config_digest"] == info["config_digest"]
    log = (run / "run.log").read_text()
    assert "started" in log
    assert info["config_digest"] in log
    assert "ended: paused (InstrumentTimeout" in log
    assert resume_run(run).status is RunStatus.COMPLETED
    log = (run / "run.log").read_text()
    assert f"resumed at step 11; config digest {info['config_digest']}" in log
    assert "ended: completed (all 40 steps done)" in log


# -- station limits at resume: the stricter of run.json's and the station file's --------------


def _station_experiment(cfg: Path) -> Path:
    """The small experiment (all controls from 0 V) with its station in a file of its own."""
    text = small_experiment(
        cfg, device_type="faulty:FlakyAnalytic", initial="[0, 0, 0, 0, 0]"
    ).read_text()
    start, end = text.index("station:\n"), text.index("procedure:")
    station = yaml.safe_load(text[start:end])["station"]
    (cfg / "station.yaml").write_text(yaml.safe_dump(station))
    path = cfg / "small.yaml"
    path.write_text(
        text[:start] + "station: station.yaml\n" + text[end:] + "faults: {retries: 0}\n"
    )
    return path


@pytest.fixture(scope="module")
def station_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A failed run at step 11 whose experiment names a station file, and its reference."""
    base = tmp_path_factory.mktemp("station")
    reference = start_run(_station_experiment(base / "ref_cfg"), base / "ref")
    assert reference.status is RunStatus.COMPLETED
    FlakyAnalytic.fail_at = FAIL_AT
    outcome = start_run(_station_experiment(base / "cfg"), base / "failed")
    FlakyAnalytic.fail_at = None
    assert outcome.status is RunStatus.PAUSED
    return {"run": outcome.path, "cfg": base / "cfg", "reference": reference.summary}


@pytest.fixture
def station_run(station_runs: dict[str, Any], tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the failed run and of its config folder; run.json names the copied station."""
    cfg = tmp_path / "cfg"
    shutil.copytree(station_runs["cfg"], cfg)
    run = tmp_path / station_runs["run"].name
    shutil.copytree(station_runs["run"], run)
    _edit_json(run / RJ, _set("station_file", str(cfg / "station.yaml")), reseal=True)
    return run, cfg / "station.yaml"


def _edit_station(path: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    station = yaml.safe_load(path.read_text())
    edit(station["limits"])
    path.write_text(yaml.safe_dump(station))


def test_run_json_names_the_station_file(station_runs: dict[str, Any]) -> None:
    info = _json(station_runs["run"] / RJ)
    assert info["station_file"] == str((station_runs["cfg"] / "station.yaml").resolve())


def test_stricter_station_limits_tighten_the_resumed_run(station_run: tuple[Path, Path]) -> None:
    run, station = station_run
    _edit_station(station, lambda limits: limits.update(max_abs_voltage=0.9))
    result = runner.invoke(app, ["resume", str(run), "-q"])
    assert result.exit_code == 0, result.output
    note = "limits.max_abs_voltage: recorded 1.0, station file now 0.9"
    assert note in result.stderr
    assert note in (run / "run.log").read_text()
    (event,) = [r for r in RunDirectory(run).events() if r["event"] == "limits"]
    assert any(note in line for line in event["notes"])
    assert event["limits"]["max_abs_voltage"] == 0.9


def test_looser_station_limits_are_ignored(
    station_runs: dict[str, Any], station_run: tuple[Path, Path]
) -> None:
    run, station = station_run
    _edit_station(station, lambda limits: limits.update(max_abs_voltage=2.0))
    result = runner.invoke(app, ["resume", str(run), "-q"])
    assert result.exit_code == 0, result.output
    assert "the recorded (stricter) value stays in force" in result.stderr
    assert "device settings differ" not in result.stderr
    summary = _json(run / "summary.json")
    assert summary["final_controls"] == station_runs["reference"]["final_controls"]


def test_changed_device_settings_are_reported_and_not_taken_over(
    station_runs: dict[str, Any], station_run: tuple[Path, Path]
) -> None:
    run, station = station_run
    data = yaml.safe_load(station.read_text())
    data["device"]["noise"]["white"] = 0.02
    station.write_text(yaml.safe_dump(data))
    result = runner.invoke(app, ["resume", str(run), "-q"])
    assert result.exit_code == 0, result.output
    assert "its device settings differ from those recorded" in result.stderr
    summary = _json(run / "summary.json")
    assert summary["final_controls"] == station_runs["reference"]["final_controls"]


def test_limits_the_saved_state_violates_refuse_the_resume(station_run: tuple[Path, Path]) -> None:
    run, station = station_run
    info = _json(run / RJ)
    names = [c["name"] for c in info["station_snapshot"]["channels"] if c["role"] == "control"]
    controls = _json(run / CP)["last_step"]["controls"]
    k = max(range(len(names)), key=lambda i: abs(controls[i]))
    half = abs(controls[k]) / 2

    def tighten(limits: dict[str, Any]) -> None:
        limits["channels"][names[k]] = {"min": -half, "max": half}

    _edit_station(station, tighten)
    before = _fingerprint(run)
    result = runner.invoke(app, ["resume", str(run), "-q"])
    assert result.exit_code == 1, result.output
    assert "outside the limits now in force" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert _fingerprint(run) == before


@pytest.mark.parametrize(
    ("damage", "said"),
    [
        (lambda path: path.unlink(), "is missing; the limits recorded in run.json apply"),
        (
            lambda path: path.write_text(path.read_text() + "colour: blue\n"),
            "is not valid",
        ),
    ],
)
def test_missing_or_invalid_station_file_keeps_the_recorded_limits(
    station_runs: dict[str, Any],
    station_run: tuple[Path, Path],
    damage: Callable[[Path], None],
    said: str,
) -> None:
    run, station = station_run
    damage(station)
    result = runner.invoke(app, ["resume", str(run), "-q"])
    assert result.exit_code == 0, result.output
    assert said in result.stderr
    summary = _json(run / "summary.json")
    assert summary["final_controls"] == station_runs["reference"]["final_controls"]
