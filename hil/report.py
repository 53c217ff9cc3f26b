"""`hil report RUN`: a PNG of loss and control trajectories and a short markdown summary."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np

from hil.core import JSONDict, RunError
from hil.rundir import REPORT_DIR, RunDirectory, file_error


def _step_records(rundir: RunDirectory) -> list[JSONDict]:
    return [r for r in rundir.events() if r.get("event") == "step"]


def _plot(records: list[JSONDict], names: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.array([r["step"] for r in records])
    loss = np.array([np.nan if r.get("loss") is None else r["loss"] for r in records], dtype=float)
    best = np.array(
        [np.nan if r.get("best_loss") is None else r["best_loss"] for r in records], dtype=float
    )
    controls = np.array([r.get("controls") or [] for r in records], dtype=float)
    has_controls = controls.ndim == 2 and controls.shape[1] > 0
    if has_controls:
        fig, (ax_loss, ax_ctrl) = plt.subplots(2, 1, figsize=(8, 7), sharex=True)
    else:  # e.g. pulse-programmed weights: no control electrodes to draw
        fig, ax_loss = plt.subplots(1, 1, figsize=(8, 4))
        ax_loss.set_xlabel("step")
    ax_loss.plot(steps, loss, lw=1, label="loss (measured)")
    ax_loss.plot(steps, best, lw=1.5, label="best so far")
    if np.all(loss[np.isfinite(loss)] > 0):
        ax_loss.set_yscale("log")
    ax_loss.set_ylabel("loss")
    ax_loss.legend()
    ax_loss.set_title(title)
    if has_controls:
        for j in range(controls.shape[1]):
            ax_ctrl.plot(steps, controls[:, j], lw=1, label=names[j] if j < len(names) else str(j))
        ax_ctrl.set_xlabel("step")
        ax_ctrl.set_ylabel("control value")
        ax_ctrl.legend(fontsize="small", ncol=min(4, controls.shape[1]))
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)


def _markdown(info: JSONDict, summary: JSONDict | None, records: list[JSONDict]) -> str:
    config = info["config"]
    lines = [
        f"# Run `{info['name']}`",
        "",
        f"- created: {info.get('created', '?')}",
        f"- config: `{info.get('config_file', '?')}`",
        f"- station: `{config['station']['name']}`, device `{config['station']['device']['type']}`",
        f"- task `{config['task']['type']}`, estimator `{config['estimator']['type']}`, "
        f"optimizer `{config['optimizer']['type']}`",
        f"- seed entropy: `{info['seed_entropy']}`",
    ]
    if summary is None:
        lines += ["- status: **running or killed** (no summary yet; `hil resume` continues it)"]
    else:
        lines += [
            f"- status: **{summary['status']}** ({summary['reason']})",
            f"- steps: {summary['steps_done']} of {summary['total_steps']}",
        ]
        if "final_loss" in summary:
            lines.append(f"- final loss (unperturbed): {summary['final_loss']:.6g}")
        if summary.get("best_loss") is not None:
            lines.append(
                f"- best measured loss: {summary['best_loss']:.6g} (step {summary['best_step']})"
            )
        lines.append(
            f"- device evaluations: {summary.get('evaluations')}, "
            f"device time: {summary.get('device_time', 0.0):.4g} s"
        )
        lines += _tuning_lines(summary)
        controls = summary.get("final_controls") or summary.get("controls") or {}
        if controls:
            lines += ["", "| control | value |", "|---|---|"]
            lines += [f"| {k} | {v:.6g} |" for k, v in controls.items()]
        if summary.get("metrics"):
            lines += ["", "| metric | value |", "|---|---|"]
            lines += [f"| {k} | {v:.6g} |" for k, v in summary["metrics"].items()]
    if records:
        first, last = records[0].get("loss"), records[-1].get("loss")
        if first is not None and last is not None:
            lines += [
                "",
                f"Loss went from {first:.4g} (step 1) to {last:.4g} (step {records[-1]['step']}).",
            ]
    lines += ["", "![loss and controls](training.png)", ""]
    return "\n".join(lines)


def _tuning_lines(summary: JSONDict) -> list[str]:
    """Calibrated values, blocking and recommendation, when the procedure reports them."""
    lines = []
    calibration = summary.get("calibration")
    if calibration:
        parts = [f"loss noise σ {calibration['sigma']:.4g}"]
        if calibration.get("c") is not None:
            parts.append(f"{calibration.get('setting') or 'c'} = {calibration['c']:.4g}")
        if calibration.get("learning_rate") is not None:
            parts.append(f"learning rate {calibration['learning_rate']:.4g}")
        parts.append(f"{calibration['evaluations']} evaluations")
        lines.append("- calibration: " + ", ".join(parts))
    if summary.get("allowed_increase") is not None:
        lines.append(
            f"- blocking: {summary.get('rejected_steps', 0)} steps rejected (allowed increase "
            f"{summary['allowed_increase']:.4g})"
        )
    if summary.get("recommend") not in (None, "last"):
        lines.append(f"- final controls: the {summary['recommend']} of the iterates")
    return lines


def write_report(run_path: Path) -> Path:
    """Write report/training.png and report/summary.md for a run; returns the report folder.

    Each file is written under a temporary name and renamed, so a failure (disk full,
    read-only directory) leaves no half-written file; it raises a one-line RunFileError.
    """
    rundir = RunDirectory.open(run_path)
    info = rundir.run_info()
    summary = rundir.summary()
    records = _step_records(rundir)
    if not records:
        raise RunError(f"{run_path}: no completed steps yet, nothing to report")
    out = rundir.file(REPORT_DIR)
    try:
        names = [c["name"] for c in info["station_snapshot"]["channels"] if c["role"] == "control"]
        markdown = _markdown(info, summary, records)
    except (KeyError, TypeError, ValueError) as exc:
        raise RunError(
            f"{rundir.file('run.json')}: cannot read the run's record ({type(exc).__name__}: "
            f"{exc}); the file is damaged"
        ) from None
    png, md = out / ".training.png.tmp", out / ".summary.md.tmp"
    try:
        out.mkdir(exist_ok=True)
        _plot(records, names, png, f"{info['name']} ({run_path.name})")
        md.write_text(markdown, encoding="utf-8")
        png.replace(out / "training.png")
        md.replace(out / "summary.md")
    except OSError as exc:
        raise file_error(out, exc, "write the report") from None
    finally:
        for tmp in (png, md):
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
    return out
