"""`hil gradcheck`: how good is an experiment's gradient estimator at its starting point?

Builds the experiment as `hil run` would (device behind its guard, task, estimator), estimates the
gradient `repeats` times at the procedure's starting parameters and compares with a reference:
exact when the device is a simulator that knows its gradient, else a long average of central
differences. Writes gradcheck.json and a scatter plot; the device is made safe on every exit.
With `compare`, every estimator `auto` could choose is also run with the settings it predicts
for a target cosine (`hil.gradcompare`), predicted seconds beside achieved.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from hil.build import build_run
from hil.config import resolve_experiment
from hil.core import ConfigError, JSONDict
from hil.gradcompare import CandidateResult, compare_estimators
from hil.yamlfile import load_yaml
from protocols.base import GradientEstimator, Objective
from protocols.calibration import narrowest_range
from protocols.diagnostics import (
    GradientQuality,
    Reference,
    assess,
    averaged_gradient,
    oracle_gradient,
    oracle_of,
)
from protocols.estimators import CentralDifference

ReferenceKind = Literal["auto", "oracle", "average"]


@dataclass(frozen=True)
class GradcheckResult:
    """What `hil gradcheck` measured and where it wrote it."""

    quality: GradientQuality
    names: list[str]
    directory: Path
    record: JSONDict
    comparison: list[CandidateResult]


def gradcheck(
    config: Path,
    *,
    repeats: int = 20,
    reference: ReferenceKind = "auto",
    reference_repeats: int = 50,
    reference_step: float | None = None,
    out: Path = Path("runs/gradcheck"),
    seed: int = 0,
    compare: bool = False,
    target: float = 0.99,
) -> GradcheckResult:
    """Run the check; raises ConfigError for an experiment whose procedure has no estimator."""
    if repeats < 1:
        raise ConfigError(f"--repeats must be at least 1, got {repeats}")
    if not 0 < target < 1:
        raise ConfigError(f"--target is a cosine between 0 and 1 (exclusive), got {target}")
    experiment = resolve_experiment(load_yaml(config))
    built = build_run(experiment, entropy=seed)
    with built.guard:
        procedure = built.procedure
        objective = getattr(procedure, "objective", None)
        estimator = getattr(procedure, "estimator", None)
        optimizer = getattr(procedure, "optimizer", None)
        if not (
            isinstance(objective, Objective)
            and isinstance(estimator, GradientEstimator)
            and optimizer is not None
        ):
            raise ConfigError(
                f"{config}: procedure {experiment.config.procedure.type!r} has no gradient "
                "estimator to check (gradcheck needs a gradient-training procedure)"
            )
        theta = np.asarray(optimizer.ask(), dtype=float)
        ref = _reference(objective, theta, reference, reference_repeats, reference_step)
        estimates = [estimator.estimate(objective, theta) for _ in range(repeats)]
        quality = assess(estimates, ref)
        names = [c.name for c in objective.device.spec.controls]
        record = {
            "config": str(config),
            "experiment": experiment.config.name,
            "estimator": experiment.components["estimator"].name,
            "seed": seed,
            "theta": theta.tolist(),
            "parameters": "normalized" if objective.normalized else "physical",
            "controls": names,
            "summary": quality.summary(),
            "reference": {
                "kind": ref.kind,
                "gradient": ref.gradient.tolist(),
                "stderr": None if ref.stderr is None else ref.stderr.tolist(),
                "evaluations": ref.evaluations,
                "device_seconds": ref.device_seconds,
            },
            "estimates": quality.estimates.tolist(),
            "cosine": quality.cosine.tolist(),
            "snr": [v if math.isfinite(v) else None for v in quality.snr.tolist()],
        }
        comparison: list[CandidateResult] = []
        if compare:
            comparison, measured = compare_estimators(
                objective, theta, ref, target=target, repeats=repeats
            )
            measured.pop("predictions", None)
            record["compare"] = {
                "target_cosine": target,
                "measured": measured,
                "candidates": [c.as_dict() for c in comparison],
            }
    directory = out / f"{experiment.config.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "gradcheck.json").write_text(json.dumps(record, indent=2) + "\n")
    _scatter(
        quality, directory / "scatter.png", title=f"{experiment.config.name}: {record['estimator']}"
    )
    return GradcheckResult(quality, names, directory, record, comparison)


def _reference(
    objective: Objective,
    theta: np.ndarray,
    kind: ReferenceKind,
    repeats: int,
    step: float | None,
) -> Reference:
    oracle = oracle_of(objective)
    single = len(objective.output_columns) == 1
    if kind == "oracle" or (kind == "auto" and oracle is not None and single):
        if oracle is None:
            raise ConfigError(
                f"device {objective.device.spec.name!r} does not know its own gradient; "
                "use --reference average"
            )
        try:
            return oracle_gradient(objective, theta, oracle)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    h = step if step is not None else _default_step(objective)
    return averaged_gradient(
        objective, theta, CentralDifference(CentralDifference.Settings(h=h)), repeats
    )


def _default_step(objective: Objective) -> float:
    """5 % of half the narrowest parameter range (0.05 with normalized parameters, and when
    no range is finite)."""
    narrowest = narrowest_range(objective)
    return 0.05 if narrowest is None else 0.05 * narrowest / 2


def _scatter(quality: GradientQuality, path: Path, *, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ref = quality.reference
    fig, ax = plt.subplots(figsize=(5.5, 5.0))
    d = ref.gradient.size
    for row in quality.estimates:
        ax.scatter(ref.gradient, row, s=8, color="tab:blue", alpha=0.25, linewidths=0)
    xerr = None if ref.stderr is None else ref.stderr
    spread = quality.spread
    yerr = None if not np.all(np.isfinite(spread)) else spread
    ax.errorbar(
        ref.gradient,
        quality.mean,
        xerr=xerr,
        yerr=yerr,
        fmt="o",
        color="tab:red",
        ms=4,
        capsize=2,
        label=f"mean of {quality.estimates.shape[0]} (±1 sd)",
    )
    lim = float(np.max(np.abs(np.concatenate([ref.gradient, quality.estimates.ravel()]))))
    lim = 1.05 * lim if lim > 0 else 1.0
    ax.plot([-lim, lim], [-lim, lim], color="grey", lw=0.8, label="estimate = reference")
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_xlabel(f"reference ∂L/∂θ ({ref.kind})")
    ax.set_ylabel("estimated ∂L/∂θ")
    cos = float(np.median(quality.cosine))
    ax.set_title(f"{title}\n{d} controls, median cosine {cos:.3f}", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
