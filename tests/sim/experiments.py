"""Small experiment files for the end-to-end run tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

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


def small_experiment(tmp_path: Path, **options: Any) -> Path:
    """`experiment_text(**options)` written to a file in `tmp_path`."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "small.yaml"
    path.write_text(experiment_text(**options))
    return path
