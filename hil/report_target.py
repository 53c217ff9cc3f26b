"""The report's figures for a run on a task with a target (gate, classification): the final
per-case outputs against the decision threshold, and the score of every check over the run."""

from __future__ import annotations

from typing import Any

import numpy as np

from hil.core import JSONDict
from hil.report_html import Figure, png, pyplot


def target_figures(records: list[JSONDict], summary: JSONDict | None) -> list[Figure]:
    """The gate plot (outputs per case with the threshold) and the checks' scores, each only
    where the run has them."""
    figures = []
    final = None if summary is None else summary.get("target")
    if isinstance(final, dict) and final.get("case_outputs"):
        figures.append(_cases_figure(final))
    checks = [r for r in records if isinstance(r.get("target"), dict)]
    if checks:
        figures.append(_checks_figure(records, checks))
    return figures


def _cases_figure(final: JSONDict) -> Figure:
    """Each training case's output at the final point, by class, with the threshold and the
    margin the target asks for (shaded ± half of it around the threshold)."""
    plt = pyplot()
    outputs = np.array([np.nan if v is None else v for v in final["case_outputs"]], dtype=float)
    labels = np.array(final.get("case_labels") or [0] * outputs.size, dtype=int)
    fig, ax = plt.subplots(1, 1, figsize=(8, 3.6))
    many = outputs.size > 16
    cases = np.arange(outputs.size)
    for cls, colour in ((0, "tab:blue"), (1, "tab:red")):
        pick = labels == cls
        x = cases[pick] if not many else np.full(int(pick.sum()), cls, dtype=float)
        jitter = 0.0 if not many else np.linspace(-0.2, 0.2, int(pick.sum()))
        ax.scatter(x + jitter, outputs[pick], color=colour, label=f"class {cls}", zorder=3)
    threshold = final.get("threshold")
    margin = _margin(final)
    if threshold is not None:
        ax.axhline(threshold, color="k", lw=1, label="threshold")
        noise = final.get("noise")
        if noise is not None and margin is not None:
            half = margin * float(noise) / 2
            ax.axhspan(threshold - half, threshold + half, color="0.85", label="margin asked")
    if many:
        ax.set_xticks([0, 1], ["class 0", "class 1"])
    elif margin is not None and outputs.size == 4:  # a gate: its input levels, low 0, high 1
        ax.set_xticks(cases, ["inputs 0 0", "inputs 0 1", "inputs 1 0", "inputs 1 1"])
    else:
        ax.set_xticks(cases, [f"case {k}" for k in cases])
    ax.set_ylabel("output")
    ax.legend(fontsize="small")
    caption = (
        f"Outputs per case at the final point (mean of the check's repeats): {final['detail']}"
    )
    return Figure("Target", caption, png(fig))


def _margin(final: JSONDict) -> float | None:
    """The margin in noise units a gate's verdict asked for (None: not a gate)."""
    value = (final.get("metrics") or {}).get("margin_sigma")
    return None if value is None else float(value)


def _checks_figure(records: list[JSONDict], checks: list[JSONDict]) -> Figure:
    """The score of every check (separation in σ, or accuracy), reached ones filled, with the
    restarts as dashed lines."""
    plt = pyplot()
    fig, ax = plt.subplots(1, 1, figsize=(8, 3.2))
    steps = np.array([r["target"]["step"] for r in checks], dtype=float)
    scores = np.array([_score(r["target"]) for r in checks], dtype=float)
    reached = np.array([bool(r["target"]["reached"]) for r in checks])
    ax.plot(steps, scores, lw=1, color="0.4")
    ax.scatter(steps[reached], scores[reached], color="tab:green", label="target reached", zorder=3)
    ax.scatter(steps[~reached], scores[~reached], color="0.4", s=12, label="not reached", zorder=3)
    restarts = [r for r in records if isinstance(r.get("restart"), dict)]
    for k, r in enumerate(restarts):
        ax.axvline(
            r["step"], color="tab:orange", ls="--", lw=1, label="restart" if k == 0 else None
        )
    ax.set_xlabel("step")
    ax.set_ylabel("score (separation σ, or accuracy)")
    ax.legend(fontsize="small")
    return Figure("Target", "Score of each measured check over the run", png(fig))


def _score(target: dict[str, Any]) -> float:
    validation = target.get("validation")
    score = validation.get("score") if isinstance(validation, dict) else target.get("score")
    return np.nan if score is None else float(score)
