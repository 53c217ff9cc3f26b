"""The self-contained `report/report.html` of a run: one page that opens offline.

Everything the page shows is inline: CSS in a `<style>` element, figures as base64 PNG data
URIs, the resolved config in a collapsible block. It needs no script and makes no request, so it
can be mailed, archived or opened on an instrument PC without a network. Every value is
HTML-escaped: config strings (names, descriptions) come from users.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import yaml

from hil.core import FloatArray, JSONDict

_CSS = """
body { font-family: system-ui, sans-serif; max-width: 60rem; margin: 1.5rem auto;
       padding: 0 1rem; color: #222; line-height: 1.4; }
h1 { font-size: 1.5rem; margin-bottom: 0.2rem; }
h2 { font-size: 1.2rem; border-bottom: 1px solid #ccc; margin-top: 1.8rem; }
table { border-collapse: collapse; margin: 0.5rem 0; }
th, td { text-align: left; padding: 0.15rem 0.8rem 0.15rem 0; vertical-align: top; }
th { font-weight: 600; }
td.num { font-variant-numeric: tabular-nums; }
.wide { overflow-x: auto; }
.status-completed { color: #17612a; } .status-paused, .status-running { color: #8a5a00; }
.status-aborted, .status-failed, .status-missed { color: #a11; }
figure { margin: 0.8rem 0; } figure img { max-width: 100%; height: auto; }
figcaption { font-size: 0.9rem; color: #555; }
pre { background: #f6f6f6; padding: 0.6rem; overflow-x: auto; font-size: 0.85rem; }
.muted { color: #666; }
@media print {
  body { max-width: none; margin: 0; }
  details::details-content { content-visibility: visible; display: block; }
  figure { break-inside: avoid; }
}
"""


@dataclass(frozen=True)
class Figure:
    """A PNG figure for the page: its bytes, a caption and the section it belongs to."""

    section: str
    caption: str
    png: bytes


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (no display; imported only when a report is drawn)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png(fig: Any) -> bytes:
    """A matplotlib figure as PNG bytes; the figure is closed."""
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, dpi=110, format="png")
    pyplot().close(fig)
    return buffer.getvalue()


def panels(n: int, height: float, columns: int = 2) -> tuple[Any, list[Any]]:
    """A figure 8 inches wide with `n` panels, rows of at most `columns`, spare cells hidden."""
    ncols = min(n, columns)
    nrows = math.ceil(n / ncols)
    fig, axes = pyplot().subplots(nrows, ncols, figsize=(8, height * nrows + 0.4), squeeze=False)
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def float_array(value: Any, ndim: int) -> FloatArray:
    """A JSON list of a record as a float array of `ndim` dimensions (null → NaN); ValueError
    when it has another shape or is empty (the page then notes the record as damaged)."""
    array = np.asarray(value, dtype=float)
    if array.ndim != ndim or array.size == 0:
        raise ValueError(f"expected a non-empty {ndim}-d list, got shape {array.shape}")
    return array


def number(value: Any) -> str:
    """A value as shown in a table cell (not yet escaped): floats to 6 significant digits."""
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.6g}" if math.isfinite(value) else str(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(number(v) for v in value) + "]"
    return str(value)


def plus_minus(value: Any, se: Any) -> str:
    """`value ± se` for a table cell; the value alone where there is no standard error."""
    return number(value) if se is None else f"{number(value)} ± {number(se)}"


def _table(rows: Iterable[tuple[Any, Any]], head: tuple[str, str] | None = None) -> str:
    cells = [
        f'<tr><th scope="row">{_esc(k)}</th><td class="num">{_esc(number(v))}</td></tr>'
        for k, v in rows
    ]
    if not cells:
        return ""
    top = (
        f"<thead><tr><th>{_esc(head[0])}</th><th>{_esc(head[1])}</th></tr></thead>" if head else ""
    )
    return f"<table>{top}<tbody>{''.join(cells)}</tbody></table>"


def grid(head: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A table with a header row, each row named by its first cell; values through number()."""
    body = "".join(
        f'<tr><th scope="row">{_esc(number(row[0]))}</th>'
        + "".join(f'<td class="num">{_esc(number(v))}</td>' for v in row[1:])
        + "</tr>"
        for row in rows
    )
    top = "".join(f"<th>{_esc(h)}</th>" for h in head)
    table = f"<table><thead><tr>{top}</tr></thead><tbody>{body}</tbody></table>"
    return f'<div class="wide">{table}</div>' if body else ""


def note(text: str) -> str:
    """A muted paragraph: what a figure or table assumes, or why something is left out."""
    return f'<p class="muted">{_esc(text)}</p>'


def _controls_table(summary: JSONDict) -> str:
    final = summary.get("final_controls") or summary.get("controls") or {}
    best = summary.get("best_controls") or {}
    if not final:
        return ""
    rows = [
        f'<tr><th scope="row">{_esc(name)}</th><td class="num">{_esc(number(value))}</td>'
        f'<td class="num">{_esc(number(best.get(name)))}</td></tr>'
        for name, value in final.items()
    ]
    return (
        "<table><thead><tr><th>control</th><th>final</th><th>at best loss</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _figure(fig: Figure) -> str:
    data = base64.b64encode(fig.png).decode("ascii")
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{_esc(fig.caption)}">'
        f"<figcaption>{_esc(fig.caption)}</figcaption></figure>"
    )


def _overview(info: JSONDict) -> list[tuple[str, Any]]:
    config = info["config"]
    station = config["station"]
    components = [
        (key, config[key]["type"])
        for key in ("task", "estimator", "optimizer", "procedure")
        if config.get(key) is not None  # a calibration has no task, estimator or optimizer
    ]
    return [
        ("run", info.get("run_id", info["name"])),
        ("created", info.get("created")),
        ("config file", info.get("config_file")),
        ("station", f"{station['name']} (device {station['device']['type']})"),
        ("station file", info.get("station_file")),
        *components,
        ("seed entropy", info.get("seed_entropy")),
    ]


def _status(summary: JSONDict | None, records: list[JSONDict]) -> str:
    if summary is None:
        return (
            '<p class="status-running"><strong>running or killed</strong>: no summary yet '
            f"(<code>hil resume</code> continues it); {len(records)} steps in the journal.</p>"
        )
    status = str(summary["status"])
    return (
        f'<p class="status-{_esc(status)}"><strong>{_esc(status)}</strong>: '
        f"{_esc(summary.get('reason', ''))}</p>"
    )


def _outcome(summary: JSONDict | None, records: list[JSONDict]) -> str:
    if summary is None:
        return _status(summary, records)
    best = summary.get("best_loss")
    rows: list[tuple[str, Any]] = [
        ("steps", f"{summary['steps_done']} of {summary['total_steps']}"),
        ("final loss (unperturbed)", summary.get("final_loss")),
        ("last measured loss", summary.get("last_loss")),
        (
            "best measured loss",
            None if best is None else f"{number(best)} (step {summary.get('best_step')})",
        ),
        ("device evaluations", summary.get("evaluations")),
        ("device time [s]", summary.get("device_time")),
        ("learning rate", summary.get("learning_rate")),
        ("final controls", f"the {summary.get('recommend', 'last')} of the iterates"),
    ]
    target = summary.get("target")
    if isinstance(target, dict):
        rows.insert(
            1,
            (
                "target",
                f"{target.get('detail')} (step {target.get('step')}; "
                f"{target.get('checks')} checks, {target.get('restarts')} restarts)",
            ),
        )
    parts = [_status(summary, records), _table(rows)]
    if summary.get("metrics"):
        parts += ["<h3>Metrics</h3>", _table(summary["metrics"].items(), ("metric", "value"))]
    controls = _controls_table(summary)
    if controls:
        parts += ["<h3>Controls</h3>", controls]
    return "".join(parts)


def _estimator(info: JSONDict, summary: JSONDict | None) -> str:
    """The estimator's and optimizer's settings, and what calibration and blocking found."""
    config = info["config"]
    parts = []
    for key, title in (("estimator", "Estimator"), ("optimizer", "Optimizer")):
        if config.get(key) is not None:  # a population procedure has neither
            parts += [f"<h3>{title}</h3>", _table(_flat(config[key]))]
    if config.get("estimator") is None and config.get("procedure") is not None:
        parts += ["<h3>Procedure</h3>", _table(_flat(config["procedure"]))]
    if summary is not None:
        calibration = summary.get("calibration")
        if calibration:
            parts += ["<h3>Calibration</h3>", _table(_flat(calibration))]
        tuning = [
            (label, summary.get(key))
            for key, label in (
                ("noise_sigma", "loss noise σ"),
                ("allowed_increase", "blocking: allowed increase"),
                ("rejected_steps", "blocking: steps rejected"),
            )
            if summary.get(key) is not None
        ]
        if tuning:
            parts += ["<h3>Noise and blocking</h3>", _table(tuning)]
    return "".join(parts)


def _flat(data: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Nested settings as dotted keys, so every value sits in its own cell."""
    rows: list[tuple[str, Any]] = []
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            rows += _flat(value, f"{name}.")
        else:
            rows.append((name, value))
    return rows


def details(title: str, data: Any) -> str:
    """A collapsed block with `data` as YAML (config, records a report cannot draw)."""
    text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100)
    return f"<details><summary>{_esc(title)}</summary><pre>{_esc(text)}</pre></details>"


def _calibration_outcome(summary: JSONDict | None, records: list[JSONDict]) -> str:
    """A calibration's status and steps: it has no loss, controls or metrics."""
    if summary is None:
        return _status(summary, records)
    rows = [("steps", f"{summary['steps_done']} of {summary['total_steps']}")]
    return _status(summary, records) + _table(rows)


def render_html(
    info: JSONDict,
    summary: JSONDict | None,
    records: list[JSONDict],
    figures: list[Figure],
    calibration: Mapping[str, str] | None = None,
) -> str:
    """The whole page for a run: overview, outcome, figures, estimator details, config.

    A calibration run gives `calibration`: per section title, in page order, the HTML of its
    tables (`hil.report_calibration`); each section shows its figures, then that HTML, and the
    procedure's settings replace the estimator's.
    """
    config = info["config"]
    description = config.get("description") or ""
    sections: dict[str, list[str]] = {title: [] for title in calibration or {}}
    for fig in figures:
        sections.setdefault(fig.section, []).append(_figure(fig))
    if calibration is None:
        outcome, settings = _outcome(summary, records), _estimator(info, summary)
    else:
        outcome = _calibration_outcome(summary, records)
        settings = _table(_flat(config["procedure"]))
    body = [
        f"<h1>Run {_esc(info['name'])}</h1>",
        f'<p class="muted">{_esc(description)}</p>' if description else "",
        _table(_overview(info)),
        "<h2>Outcome</h2>",
        outcome,
    ]
    for title, items in sections.items():
        body += [f"<h2>{_esc(title)}</h2>", *items, (calibration or {}).get(title, "")]
    body += [
        "<h2>Estimator and calibration</h2>" if calibration is None else "<h2>Procedure</h2>",
        settings,
        "<h2>Configuration</h2>",
        details("Resolved experiment", config),
        details("Station snapshot", info.get("station_snapshot")),
        details("Environment", info.get("environment")),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>Run {_esc(info['name'])}</title><style>{_CSS}</style></head>"
        f"<body>{''.join(body)}</body></html>\n"
    )
