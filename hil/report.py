"""`hil report RUN`: a PNG of loss and control trajectories, a short markdown summary and a
self-contained HTML page (`hil.report_html`) with the outcome, figures and the resolved config.

A calibration run (`hil calibrate`) gets its measurements instead (`hil.report_calibration`):
IV curves, noise spectra with the fitted model, step responses, the HGE plan and crossbar maps,
each figure also written beside the page as a PNG."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from hil.core import JSONDict, RunError
from hil.report_calibration import calibration_report, measurements
from hil.report_html import Figure, png, pyplot, render_html
from hil.report_target import target_figures
from hil.rundir import REPORT_DIR, RunDirectory, file_error

FloatArray = NDArray[np.float64]


def _step_records(rundir: RunDirectory) -> list[JSONDict]:
    return [r for r in rundir.events() if r.get("event") == "step"]


def _column(records: list[JSONDict], key: str) -> FloatArray:
    """One numeric field of every step record, NaN where a step did not record it."""
    return np.array([np.nan if r.get(key) is None else r[key] for r in records], dtype=float)


def _draw_loss(ax: Any, records: list[JSONDict], title: str) -> None:
    steps, loss = _column(records, "step"), _column(records, "loss")
    ax.plot(steps, loss, lw=1, label="loss (measured)")
    ax.plot(steps, _column(records, "best_loss"), lw=1.5, label="best so far")
    if np.all(loss[np.isfinite(loss)] > 0):
        ax.set_yscale("log")
    ax.set_ylabel("loss")
    ax.legend()
    ax.set_title(title)


def _controls(records: list[JSONDict]) -> FloatArray | None:
    """Control values per step (steps × controls), or None where there are no electrodes."""
    controls = np.array([r.get("controls") or [] for r in records], dtype=float)
    return controls if controls.ndim == 2 and controls.shape[1] > 0 else None


def _draw_controls(
    ax: Any, records: list[JSONDict], controls: FloatArray, names: list[str]
) -> None:
    steps = _column(records, "step")
    for j in range(controls.shape[1]):
        ax.plot(steps, controls[:, j], lw=1, label=names[j] if j < len(names) else str(j))
    ax.set_xlabel("step")
    ax.set_ylabel("control value")
    ax.legend(fontsize="small", ncol=min(4, controls.shape[1]))


def _draw_gradient(ax: Any, records: list[JSONDict]) -> None:
    """Gradient norm per step and, where the estimator reported it, the norm of its SE."""
    steps, norm = _column(records, "step"), _column(records, "grad_norm")
    ax.plot(steps, norm, lw=1, label="‖gradient estimate‖")
    shown = norm
    se = [r.get("gradient_stderr") for r in records]
    if any(s is not None for s in se):
        se_norm = np.array([np.nan if s is None else np.linalg.norm(s) for s in se], dtype=float)
        ax.plot(steps, se_norm, lw=1, label="‖standard error‖")
        shown = np.concatenate([norm, se_norm])
    if np.all(shown[np.isfinite(shown)] > 0):
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("gradient")
    ax.legend()


def _plot(records: list[JSONDict], names: list[str], title: str) -> bytes:
    """training.png: the loss above the control trajectories (loss alone without electrodes)."""
    plt = pyplot()
    controls = _controls(records)
    if controls is not None:
        fig, (ax_loss, ax_ctrl) = plt.subplots(2, 1, figsize=(8, 7), sharex=True)
        _draw_controls(ax_ctrl, records, controls, names)
    else:  # e.g. pulse-programmed weights: no control electrodes to draw
        fig, ax_loss = plt.subplots(1, 1, figsize=(8, 4))
        ax_loss.set_xlabel("step")
    _draw_loss(ax_loss, records, title)
    return png(fig)


def _figures(
    records: list[JSONDict], summary: JSONDict | None, names: list[str], title: str
) -> list[Figure]:
    """The report page's figures, one per quantity, each only where the journal has it."""
    plt = pyplot()
    fig, ax = plt.subplots(1, 1, figsize=(8, 3.6))
    _draw_loss(ax, records, title)
    ax.set_xlabel("step")
    figures = [Figure("Training", "Loss per step: measured and best so far", png(fig))]
    controls = _controls(records)
    if controls is not None:
        fig, ax = plt.subplots(1, 1, figsize=(8, 3.6))
        _draw_controls(ax, records, controls, names)
        figures.append(Figure("Training", "Control trajectories", png(fig)))
    if np.any(np.isfinite(_column(records, "grad_norm"))):
        fig, ax = plt.subplots(1, 1, figsize=(8, 3.2))
        _draw_gradient(ax, records)
        caption = "Gradient estimate per step (norm; standard error where the estimator gives one)"
        figures.append(Figure("Gradient quality", caption, png(fig)))
    return figures + target_figures(records, summary)


def _markdown(info: JSONDict, summary: JSONDict | None, records: list[JSONDict]) -> str:
    config = info["config"]
    lines = [
        f"# Run `{info['name']}`",
        "",
        f"- created: {info.get('created', '?')}",
        f"- config: `{info.get('config_file', '?')}`",
        f"- station: `{config['station']['name']}`, device `{config['station']['device']['type']}`",
        "- "
        + ", ".join(
            f"{key} `{config[key]['type']}`"
            for key in ("task", "estimator", "optimizer", "procedure")
            if config.get(key) is not None
        ),
        f"- seed entropy: `{info['seed_entropy']}`",
    ]
    if summary is None:
        lines += ["- status: **running or killed** (no summary yet; `hil resume` continues it)"]
    else:
        lines += [
            f"- status: **{summary['status']}** ({summary['reason']})",
            f"- steps: {summary['steps_done']} of {summary['total_steps']}",
        ]
        target = summary.get("target")
        if isinstance(target, dict):
            lines.append(f"- target: {target.get('detail')} (step {target.get('step')})")
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


def _read_run(run_path: Path) -> tuple[RunDirectory, JSONDict, JSONDict | None, list[JSONDict]]:
    """The run's directory, run.json, summary (None while running) and step records."""
    rundir = RunDirectory.open(run_path)
    info = rundir.run_info()
    summary = rundir.summary()
    records = _step_records(rundir)
    if not records:
        raise RunError(f"{run_path}: no completed steps yet, nothing to report")
    return rundir, info, summary, records


def _damaged(rundir: RunDirectory, exc: Exception) -> RunError:
    return RunError(
        f"{rundir.file('run.json')}: cannot read the run's record ({type(exc).__name__}: "
        f"{exc}); the file is damaged"
    )


def _control_names(info: JSONDict) -> list[str]:
    return [c["name"] for c in info["station_snapshot"]["channels"] if c["role"] == "control"]


def _is_calibration(info: JSONDict, records: list[JSONDict]) -> bool:
    """A bring-up run (`hil calibrate`): its steps are measurements, not training steps."""
    procedure = info["config"].get("procedure") or {}
    return procedure.get("type") == "calibrate" or any("measurement" in r for r in records)


def _calibration_page(
    info: JSONDict, summary: JSONDict | None, records: list[JSONDict]
) -> tuple[str, list[Figure]]:
    """report.html of a calibration run, and its figures (also written as PNGs beside it)."""
    channels = (info.get("station_snapshot") or {}).get("channels") or []
    units = {str(c.get("name")): str(c.get("unit") or "") for c in channels}
    figures, sections = calibration_report(records, units)
    return render_html(info, summary, records, figures, calibration=sections), figures


def _page(info: JSONDict, summary: JSONDict | None, records: list[JSONDict], title: str) -> str:
    """report.html's page: one builder, so the written report and the live view agree."""
    if _is_calibration(info, records):
        return _calibration_page(info, summary, records)[0]
    return render_html(
        info, summary, records, _figures(records, summary, _control_names(info), title)
    )


def _png_name(index: int, fig: Figure) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", fig.section.lower()).strip("-") or "figure"
    return f"{index:02d}-{slug}.png"


def _calibration_markdown(
    info: JSONDict, summary: JSONDict | None, records: list[JSONDict], pngs: dict[str, Figure]
) -> str:
    """summary.md of a calibration: what was measured and the figures."""
    station = info["config"]["station"]
    lines = [
        f"# Calibration `{info['name']}`",
        "",
        f"- created: {info.get('created', '?')}",
        f"- station: `{station['name']}`, device `{station['device']['type']}`",
    ]
    if summary is None:
        lines.append("- status: **running or killed** (no summary yet; `hil resume` continues it)")
    else:
        lines += [
            f"- status: **{summary['status']}** ({summary['reason']})",
            f"- steps: {summary['steps_done']} of {summary['total_steps']}",
        ]
    lines += ["", "| measurement | steps | device time [s] |", "|---|---|---|"]
    lines += [f"| {m.kind} | {m.steps} | {m.device_seconds:.4g} |" for m in measurements(records)]
    lines += [""] + [f"![{fig.caption}]({name})" for name, fig in pngs.items()]
    lines += ["", "Tables with the fitted values and their errors: report.html.", ""]
    return "\n".join(lines)


def report_page(run_path: Path) -> str:
    """The report.html page of a run, built in memory and written nowhere (`hil report --live`)."""
    rundir, info, summary, records = _read_run(run_path)
    try:
        return _page(info, summary, records, f"{info.get('name')} ({run_path.name})")
    except (KeyError, TypeError, ValueError) as exc:
        raise _damaged(rundir, exc) from None


def write_report(run_path: Path) -> Path:
    """Write report/training.png (a calibration: one PNG per figure), report/summary.md and
    report/report.html for a run; returns the report folder.

    Each file is written under a temporary name and renamed, so a failure (disk full,
    read-only directory) leaves no half-written file; it raises a one-line RunFileError.
    """
    rundir, info, summary, records = _read_run(run_path)
    out = rundir.file(REPORT_DIR)
    title = f"{info.get('name')} ({run_path.name})"
    try:
        if _is_calibration(info, records):
            page, figures = _calibration_page(info, summary, records)
            pngs = {_png_name(i, fig): fig for i, fig in enumerate(figures, 1)}
            markdown = _calibration_markdown(info, summary, records, pngs)
            files = {name: fig.png for name, fig in pngs.items()}
        else:
            markdown = _markdown(info, summary, records)
            page = _page(info, summary, records, title)
            files = {"training.png": _plot(records, _control_names(info), title)}
    except (KeyError, TypeError, ValueError) as exc:
        raise _damaged(rundir, exc) from None
    files |= {"summary.md": markdown.encode("utf-8"), "report.html": page.encode("utf-8")}
    temporaries = [out / f".{name}.tmp" for name in files]
    try:
        out.mkdir(exist_ok=True)
        for tmp, data in zip(temporaries, files.values(), strict=True):
            tmp.write_bytes(data)
        for tmp, name in zip(temporaries, files, strict=True):
            tmp.replace(out / name)
        for stale in set(out.glob("[0-9][0-9]-*.png")) - {out / name for name in files}:
            stale.unlink()  # a calibration figure an earlier report had and this one has not
    except OSError as exc:
        raise file_error(out, exc, "write the report") from None
    finally:
        for tmp in temporaries:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
    return out
