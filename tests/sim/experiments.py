"""Small experiment files for the end-to-end run tests."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from hil.rundir import RunDirectory

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"


def hil_process(*args: str, stdout: int = subprocess.PIPE) -> subprocess.Popen[str]:
    """`python -m hil ARGS` in a child process (for signal and kill tests), the test helpers
    importable so configs may name `faulty:...` devices."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests" / "sim"), str(ROOT)])}
    return subprocess.Popen(
        [sys.executable, "-m", "hil", *args],
        cwd=ROOT,
        env=env,
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
    )


def experiment_text(
    *,
    steps: int = 40,
    device_type: str = "analytic",
    real_time: bool = False,
    initial: str = "[0.1, 0.0, -0.1, 0.0, 0.2]",
) -> str:
    """A fast 3-case regression on the analytic device; `real_time` paces it for signal tests."""
    return f"""\
name: small
seed: 12345
station:
  name: small-station
  device:
    type: {device_type}
    noise: {{white: 0.002}}
    timing:
      samples_per_plateau: 2
      settle_time: 0.001
      real_time: {str(real_time).lower()}
  limits:
    max_abs_voltage: 1.0
    channels:
      ctrl0: {{min: -0.8, max: 0.8, max_slew: 200.0}}
procedure:
  type: train
  steps: {steps}
  initial_controls: {initial}
task:
  type: regression
  inputs: [[-0.5, 0.5], [0.0, 0.0], [0.5, -0.5]]
  targets: [0.3, -0.2, 0.8]
estimator:
  type: spsa
  c: 0.05
optimizer:
  type: adam
  lr: 0.03
"""


def dnpu_station(tmp_path: Path, device: str = "dnpu") -> Path:
    """configs/stations/sim-dnpu.yaml written to `tmp_path` with its device type replaced
    (e.g. by a fault-injecting subclass such as `faulty:FlakyDNPU`)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    station = tmp_path / "station.yaml"
    sim_dnpu = ROOT / "configs" / "stations" / "sim-dnpu.yaml"
    station.write_text(sim_dnpu.read_text().replace("type: dnpu", f"type: {device}"))
    return station


def small_experiment(tmp_path: Path, **options: Any) -> Path:
    """`experiment_text(**options)` written to a file in `tmp_path`."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "small.yaml"
    path.write_text(experiment_text(**options))
    return path


def journal_steps(run: Path) -> list[dict[str, Any]]:
    """The step records of a run's journal."""
    return [r for r in RunDirectory(run).events() if r["event"] == "step"]


def wait_for_steps(out: Path, n: int, proc: subprocess.Popen[str], timeout: float = 60) -> Path:
    """The run directory under `out` once its journal holds `n` steps (the child still running)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"run ended early: {proc.communicate()}")
        runs = list(out.iterdir()) if out.exists() else []
        if runs and len(journal_steps(runs[0])) >= n:
            return runs[0]
        time.sleep(0.02)
    proc.kill()
    raise AssertionError(f"no {n} steps within {timeout} s")
