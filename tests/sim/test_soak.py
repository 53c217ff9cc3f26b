"""Kill-and-resume soak: SIGKILL `hil run` and `hil resume` at seeded-random moments, resume until
the run completes, and compare with an uninterrupted run of the same config.

The shipped configs run with fewer steps (same station and components); `--soak` runs them at
full length with more kill points. After every kill `hil resume` must continue (never refuse), and
the end must be bit-identical to the uninterrupted run: summary (controls, loss, metrics, counts),
checkpoint (procedure and device state) and the journal's step records, each step exactly once.
Only wall-clock fields (times) and the run's own identity differ.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hil.rundir import RUN_FILE, RunDirectory, unsealed
from hil.runner import RunOutcome, RunStatus, start_run

from experiments import ROOT, hil_process

# config -> (steps in the fast suite, kill points in the fast suite)
CONFIGS = {"quickstart": (60, 8), "dnpu-homodyne": (8, 8), "crossbar-pulses": (16, 8)}
SOAK_KILLS = 30
STARTUP = 0.6  # s: about what `python -m hil` takes to import before it runs anything


def _copy(name: str, folder: Path, steps: int | None) -> Path:
    """The shipped config with absolute paths and, unless None, `steps` steps."""
    source = ROOT / "configs" / f"{name}.yaml"
    lines = []
    for line in source.read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("station", "  data") and value.strip() and not value.strip().startswith("/"):
            line = f"{key}: {(source.parent / value.split('#')[0].strip()).resolve()}"
        elif key == "  steps" and steps is not None:
            line = f"  steps: {steps}"
        lines.append(line)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / source.name
    path.write_text("\n".join(lines) + "\n")
    return path


def _the_run(out: Path) -> Path | None:
    """The run directory, once its run.json exists; a directory killed before that is removed."""
    for path in out.iterdir() if out.exists() else []:
        if (path / RUN_FILE).is_file():
            return path
        shutil.rmtree(path)
    return None


def _journal_steps(path: Path) -> int:
    return path.read_bytes().count(b'"event": "step"') if path.exists() else 0


def _wait_for_steps(out: Path, steps: int, proc: subprocess.Popen[str]) -> None:
    """Until the run's journal records `steps` steps (or the process ended)."""
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        journals = list(out.glob("*/events.jsonl")) if out.exists() else []
        if journals and _journal_steps(journals[0]) >= steps:
            return
        time.sleep(0.002)


def _steps_done(run: Path | None) -> int:
    if run is None or not (run / "checkpoint.json").exists():
        return 0
    return int(json.loads((run / "checkpoint.json").read_text())["steps_done"])


def _completed(run: Path | None) -> bool:
    summary = RunDirectory(run).summary() if run is not None else None
    return summary is not None and summary["status"] == "completed"


def _repairs(run: Path) -> dict[str, int]:
    """How often resume dropped a torn line, journalled a step, removed temporary files."""
    kinds = {"torn line": "torn", "step journalled": "journalled step", "temp files": "temporary"}
    repairs = [
        line for r in RunDirectory(run).events() if r["event"] == "resume" for line in r["repairs"]
    ]
    return {kind: sum(key in line for line in repairs) for kind, key in kinds.items()}


def _comparable_checkpoint(run: Path) -> dict[str, Any]:
    state: dict[str, Any] = json.loads((run / "checkpoint.json").read_text())
    for key in ("run_id", "saved_at", "sha256"):
        del state[key]
    del state["last_step"]["time"]
    return state


def _comparable_steps(run: Path) -> list[dict[str, Any]]:
    steps = [unsealed(r) for r in RunDirectory(run).events() if r["event"] == "step"]
    for step in steps:
        del step["time"]
    return steps


def _comparable_summary(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in summary.items() if k != "ended_at"}


@dataclass
class _Soak:
    """One config's soak: its reference run and what the kill-and-resume loop did."""

    name: str
    config: Path
    reference: RunOutcome
    duration: float  # s the uninterrupted run took in this process
    kills: dict[str, int] = field(default_factory=lambda: {"run": 0, "resume": 0})
    run: Path | None = None

    @property
    def total(self) -> int:
        return int(self.reference.summary["total_steps"])


def _kill_and_resume(soak: _Soak, out: Path, kills_wanted: int, seed: int) -> None:
    """`hil run`, then `hil resume` until completed, SIGKILLing the first `kills_wanted`."""
    rng = np.random.default_rng(seed)
    for _attempt in range(4 * kills_wanted + 10):
        run = soak.run
        command = "resume" if run is not None else "run"
        journal_steps = _journal_steps(run / "events.jsonl") if run else 0
        args = ("resume", str(run)) if run else ("run", str(soak.config), "--out", str(out))
        proc = hil_process(*args, "-q", stdout=subprocess.DEVNULL)
        if sum(soak.kills.values()) < kills_wanted:
            if rng.random() < 0.25:  # while starting: imports, checks, repairs
                moment = rng.uniform(0.0, STARTUP)
            else:  # while stepping: after a random number of further steps, within a step
                left = soak.total - journal_steps  # spread the kills still wanted over it
                span = max(1, min(left - 1, 2 * left // (kills_wanted - sum(soak.kills.values()))))
                _wait_for_steps(out, journal_steps + int(rng.integers(0, span)), proc)
                moment = rng.uniform(0.0, soak.duration / soak.total)
            try:
                proc.wait(timeout=moment)
            except subprocess.TimeoutExpired:
                proc.kill()
                soak.kills[command] += 1
        _, stderr = proc.communicate(timeout=300)
        assert proc.returncode in (0, -9), f"{command} exited {proc.returncode}: {stderr}"
        soak.run = _the_run(out)
        if proc.returncode == 0 or _completed(soak.run):  # killed after the summary was written
            return
    raise AssertionError(f"{soak.name}: the run did not complete")


def test_killed_runs_resume_bit_identical(
    tmp_path: Path, request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]
) -> None:
    long = bool(request.config.getoption("--soak"))
    soaks = []
    for name, (fast_steps, _) in CONFIGS.items():
        config = _copy(name, tmp_path / name / "cfg", None if long else fast_steps)
        began = time.perf_counter()
        reference = start_run(config, tmp_path / name / "reference")
        assert reference.status is RunStatus.COMPLETED, reference.reason
        soaks.append(_Soak(name, config, reference, time.perf_counter() - began))
    with ThreadPoolExecutor(len(soaks)) as pool:  # the three configs side by side
        futures = [
            pool.submit(
                _kill_and_resume,
                soak,
                tmp_path / soak.name / "runs",
                SOAK_KILLS if long else CONFIGS[soak.name][1],
                seed=i + (1000 if long else 0),
            )
            for i, soak in enumerate(soaks)
        ]
        for future in futures:
            future.result()

    for soak in soaks:
        run, reference = soak.run, soak.reference
        assert run is not None
        summary = RunDirectory(run).summary()
        assert summary is not None
        assert _comparable_summary(summary) == _comparable_summary(reference.summary)
        assert _comparable_checkpoint(run) == _comparable_checkpoint(reference.path)
        journal = _comparable_steps(run)
        assert [s["step"] for s in journal] == list(range(1, soak.total + 1))
        assert journal == _comparable_steps(reference.path)
        RunDirectory(run).verify()
    kills = sum(sum(soak.kills.values()) for soak in soaks)
    with capsys.disabled():
        for soak in soaks:
            assert soak.run is not None
            print(
                f"\nsoak {soak.name}: {sum(soak.kills.values())} SIGKILLs ({soak.kills['run']} "
                f"in run, {soak.kills['resume']} in resume) over {soak.total} steps; summary, "
                "checkpoint and journal bit-identical to the uninterrupted run; repairs: "
                f"{_repairs(soak.run)}"
            )
        print(f"soak: {kills} kill points, {len(soaks)} of {len(soaks)} runs bit-identical")
    assert kills >= 20
