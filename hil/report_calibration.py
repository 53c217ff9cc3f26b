"""The calibration pages of `report.html`: what a bring-up (`hil calibrate`) measured (issue 10).

A calibration run journals one step record per measurement (formats in `protocols.bringup`,
`protocols.hge_plan` and `protocols.bringup_crossbar`). `calibration_report` turns them into PNG
figures and HTML sections for `hil.report_html.render_html`: IV curves, offset and gain, noise
spectra with the fitted model, step responses with their fit, the HGE plan and its check,
conductance and stuck-device maps (drawn by `hil.report_crossbar`), and tables of the fitted
values with their standard errors.

A journal may be damaged or older than this module: a record that lacks what its figure or table
needs is left out with a note naming the step and what is missing, fields this module does not
know are listed rather than dropped, and a measurement it does not know is shown as its record.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from numpy.typing import NDArray

from hil import report_crossbar as crossbar
from hil.core import JSONDict
from hil.report_html import (
    Figure,
    details,
    float_array,
    grid,
    note,
    number,
    panels,
    plus_minus,
    png,
    pyplot,
)

FloatArray = NDArray[np.float64]
T = TypeVar("T")
Rendered = tuple[list[Figure], list[str]]  # a section's figures and its HTML (tables, notes)
Units = Mapping[str, str]  # channel name → unit (the station's), for the axes

DAMAGE = (KeyError, TypeError, ValueError, IndexError, AttributeError)
"""What reading a record with missing or malformed fields raises."""
MAX_PANELS = 24
"""Most panels in one figure (outputs, electrode-output pairs); the tables list them all."""
OVERVIEW = "Calibration"
TITLES = {
    "iv": "IV sweeps",
    "offset": "Offset and gain",
    "noise": "Output noise",
    "step": "Step response",
    "plan": "HGE plan",
    "check": "HGE plan check",
    "conductance": "Conductance map",
    "pulses": "Pulse response",
}
BOOKKEEPING = {"event", "time", "seq", "sha256", "step", "measurement", "channel"}
BOOKKEEPING |= {"output_names", "device_seconds", "device_time"}


@dataclass(frozen=True)
class MeasurementSummary:
    """One kind of measurement in a calibration: how many steps, on which channels, how long."""

    kind: str
    steps: int
    channels: list[str]
    device_seconds: float


# -- reading records -----------------------------------------------------------------------------


def _num(value: Any) -> float | None:
    """A JSON number as a float; None for null (a non-finite value) and anything else."""
    number_type = isinstance(value, int | float) and not isinstance(value, bool)
    return float(value) if number_type else None


def _unit(units: Units, channel: str, power: str = "") -> str:
    """` [unit]` for an axis label (`power`: e.g. "²/Hz"), empty where the unit is unknown."""
    return f" [{units[channel]}{power}]" if units.get(channel) else ""


def _where(record: JSONDict) -> str:
    channel = record.get("channel")
    return f"step {record.get('step', '?')}" + (f" ({channel})" if channel else "")


def _why(exc: Exception) -> str:
    return f"missing {exc}" if isinstance(exc, KeyError) else f"{type(exc).__name__}: {exc}"


def _parsed(
    records: Sequence[JSONDict], parse: Callable[[JSONDict], T]
) -> tuple[list[T], list[str]]:
    """Each record parsed, and a note for each one too damaged to show."""
    good: list[T] = []
    notes: list[str] = []
    for record in records:
        try:
            good.append(parse(record))
        except DAMAGE as exc:
            notes.append(note(f"{_where(record)}: record damaged ({_why(exc)}); left out"))
    return good, notes


def _extra(record: JSONDict, known: set[str]) -> list[tuple[str, Any]]:
    """A record's fields but `known` ones and bookkeeping, as labelled values, one level deep:
    what a newer record adds is listed, not lost."""
    return [
        ((f"{key}: {sub}" if sub else key).replace("_", " "), value)
        for key in record
        if key not in known and key not in BOOKKEEPING
        for sub, value in (
            record[key].items() if isinstance(record[key], dict) else [("", record[key])]
        )
    ]


# -- drawing -------------------------------------------------------------------------------------


def _capped(n: int, what: str) -> list[str]:
    return [note(f"the first {MAX_PANELS} of {n} {what} are drawn")] if n > MAX_PANELS else []


# -- IV sweeps -----------------------------------------------------------------------------------

Sweep = tuple[str, list[str], FloatArray, FloatArray, FloatArray]  # channel, outputs, V, y, slope


def _parse_iv(record: JSONDict) -> Sweep:
    levels, y = float_array(record["levels"], 1), float_array(record["outputs"], 2)
    slope = float_array(record["slope_at_zero"], 1)
    names = record.get("output_names") or [f"output {k}" for k in range(y.shape[1])]
    if y.shape != (levels.size, len(names)) or slope.size != len(names):
        raise ValueError("levels, outputs and slopes do not match")
    return str(record.get("channel")), [str(n) for n in names], levels, y, slope


MAX_LINES = 12
"""Most electrodes drawn as curves in one panel; more are drawn as a map (electrode × point)."""


def _draw_iv(ax: Any, name: str, sweeps: list[Sweep], unit: str) -> None:
    """Output `name` against the level, one curve per swept electrode."""
    for channel, names, levels, y, _ in sweeps:
        if name in names:
            ax.plot(levels, y[:, names.index(name)], marker=".", ms=3, lw=1, label=channel)
    ax.axhline(0.0, color="0.8", lw=0.6)
    ax.axvline(0.0, color="0.8", lw=0.6)
    ax.set_xlabel(f"level of the swept electrode{unit}")
    ax.legend(fontsize="x-small", title="swept", title_fontsize="x-small")


def _draw_iv_map(fig: Any, ax: Any, name: str, sweeps: list[Sweep], label: str) -> None:
    """Output `name` along each electrode's sweep (0 → max → min → 0), electrodes as rows."""
    shown = [
        (channel, y[:, names.index(name)]) for channel, names, _, y, _ in sweeps if name in names
    ]
    values = np.full((len(shown), max(v.size for _, v in shown)), np.nan)
    for i, (_, v) in enumerate(shown):
        values[i, : v.size] = v
    crossbar.heat(fig, ax, values, label, cmap="coolwarm")
    ax.set_yticks(range(len(shown)), [c for c, _ in shown], fontsize=4 if len(shown) > 24 else 6)
    ax.set_xlabel("sweep point: 0 → max → min → 0")
    ax.set_ylabel("")


def _iv(records: Sequence[JSONDict], section: str, units: Units) -> Rendered:
    sweeps, notes = _parsed(records, _parse_iv)
    if not sweeps:
        return [], notes
    outputs = list(dict.fromkeys(name for s in sweeps for name in s[1]))
    many = len(sweeps) > MAX_LINES
    fig, axes = panels(
        min(MAX_PANELS, len(outputs)), height=0.12 * len(sweeps) + 1.5 if many else 3.0
    )
    for ax, name in zip(axes, outputs, strict=False):
        if many:
            _draw_iv_map(fig, ax, name, sweeps, f"{name}{_unit(units, name)}")
        else:
            _draw_iv(ax, name, sweeps, _unit(units, sweeps[0][0]))
            ax.set_ylabel(f"{name}{_unit(units, name)}")
    caption = "IV sweeps: each output against the level of each swept electrode (others at 0 V)"
    rows = [
        [
            channel,
            f"{number(float(np.nanmin(levels)))} to {number(float(np.nanmax(levels)))}"
            + _unit(units, channel),
            *(float(slope[names.index(n)]) if n in names else None for n in outputs),
        ]
        for channel, names, levels, _, slope in sweeps
    ]
    per = f"/{units.get(sweeps[0][0]) or 'V'}"  # the slope's unit: output unit per level unit
    slopes = [f"slope of {n} at 0{_unit(units, n, per)}" for n in outputs]
    table = grid(["electrode", "levels", *slopes], rows)
    return [Figure(section, caption, png(fig))], [table, *notes, *_capped(len(outputs), "outputs")]


# -- offset and gain -----------------------------------------------------------------------------


MAX_ROWS = 64
"""Longer input → output gain tables (a crossbar's) are collapsed, the gains drawn as a map."""


def _parse_offset(record: JSONDict) -> tuple[list[str], FloatArray]:
    """The offset and transfer tables, and the gains as an inputs × outputs matrix."""
    offsets = [
        [name, plus_minus(v["mean"], v.get("se")), v.get("sigma")]
        for name, v in record["offset"].items()
    ]
    levels = record["levels"] if isinstance(record.get("levels"), dict) else {}
    transfer: dict[str, dict[str, Any]] = record.get("transfer", {})
    rows = [
        [inp, out, plus_minus(g["gain"], g.get("gain_se")), levels.get(inp, record.get("level"))]
        for inp, gains in transfer.items()
        for out, g in gains.items()
    ]
    outputs = list(dict.fromkeys(out for gains in transfer.values() for out in gains))
    matrix = [[_num(transfer[i].get(o, {}).get("gain")) for o in outputs] for i in transfer]
    table = grid(["input", "output", "gain ∂y/∂V ± SE", "known level ±"], rows)
    if len(rows) > MAX_ROWS:
        table = f"<details><summary>all {len(rows)} gains</summary>{table}</details>"
    return [
        "<h3>Offset: every electrode at 0 V</h3>",
        grid(["output", "offset ± SE", "σ (plateau to plateau)"], offsets),
        "<h3>Gain: the transfer of a known input</h3>" if rows else "",
        table,
        grid(["also recorded", "value"], _extra(record, {"offset", "transfer", "levels", "level"})),
    ], np.array(matrix, dtype=float)


def _offset(records: Sequence[JSONDict], section: str, units: Units) -> Rendered:
    parsed, notes = _parsed(records, _parse_offset)
    figures = []
    for _, gains in parsed:
        if gains.size > MAX_ROWS:
            caption = "Gains of a known input, input × output"
            figures.append(Figure(section, caption, png(crossbar.gain_map(gains))))
    return figures, [part for parts, _ in parsed for part in parts] + notes


# -- output noise --------------------------------------------------------------------------------

NOISE_HEAD = "output|white floor|flicker at f_ref|f_ref [Hz]|α|corner [Hz]|mains lines: Hz (excess)"


@dataclass(frozen=True)
class _Spectrum:
    output: str
    fit: dict[str, float | None]
    lines: list[tuple[float, float]]
    spectrum: tuple[FloatArray, FloatArray] | None  # frequencies, PSD; None: only the fit


def _parse_noise(record: JSONDict) -> tuple[JSONDict, list[_Spectrum]]:
    spectra = []
    for name, entry in record["noise"].items():
        fit = {key: _num(entry[key]) for key in ("white", "flicker", "alpha", "corner")}
        fit |= {key: _num(entry.get(key)) for key in ("white_se", "flicker_se", "alpha_se")}
        fit |= {key: _num(entry.get(key)) for key in ("corner_se", "f_ref")}
        lines = [(float(f), float(excess)) for f, excess in entry.get("lines") or []]
        f, psd = entry.get("frequencies"), entry.get("psd")
        arrays = (
            (float_array(f, 1), float_array(psd, 1)) if f is not None and psd is not None else None
        )
        if arrays is not None and arrays[0].size != arrays[1].size:
            raise ValueError("frequencies and psd differ in length")
        spectra.append(_Spectrum(str(name), fit, lines, arrays))
    return record, spectra


def _noise_row(s: _Spectrum) -> list[Any]:
    fit = s.fit
    return [
        s.output,
        plus_minus(fit["white"], fit["white_se"]),
        plus_minus(fit["flicker"], fit["flicker_se"]),
        fit["f_ref"],
        plus_minus(fit["alpha"], fit["alpha_se"]),
        plus_minus(fit["corner"], fit["corner_se"]),
        "; ".join(f"{number(f)} ({number(e)})" for f, e in s.lines) or "none",
    ]


def _draw_spectrum(ax: Any, s: _Spectrum, f: FloatArray, psd: FloatArray, unit: str) -> None:
    """The measured PSD, the model S(f) = white + flicker·(f_ref/f)^α, floor, corner, lines."""
    keep = (f > 0) & (psd > 0)
    f, psd = f[keep], psd[keep]
    ax.loglog(f, psd, lw=0.8, color="C0", label="PSD (Welch)")
    white, flicker, alpha, f_ref = (s.fit[k] for k in ("white", "flicker", "alpha", "f_ref"))
    if f.size and white is not None and flicker is not None and alpha and f_ref:
        axis = np.geomspace(f.min(), f.max(), 200)
        model = white + flicker * (f_ref / axis) ** alpha
        ax.loglog(axis, model, color="C1", lw=1.4, label="fitted model")
    if white is not None and white > 0:
        ax.axhline(white, color="C2", ls="--", lw=1, label="white floor")
    corner = s.fit["corner"]
    if corner is not None and corner > 0:
        ax.axvline(corner, color="C3", ls=":", lw=1.2, label=f"1/f corner {corner:.4g} Hz")
    for k, (frequency, _) in enumerate(s.lines):
        ax.axvline(frequency, color="C4", lw=0.8, alpha=0.6, label=None if k else "mains lines")
    ax.set_xlabel("frequency [Hz]")
    ax.set_ylabel(f"PSD of {s.output}{unit}")
    ax.legend(fontsize="x-small")


def _noise(records: Sequence[JSONDict], section: str, units: Units) -> Rendered:
    parsed, notes = _parsed(records, _parse_noise)
    parts: list[str] = []
    drawn: list[tuple[_Spectrum, FloatArray, FloatArray]] = []
    for record, spectra in parsed:
        rate, samples = _num(record.get("sample_rate")), _num(record.get("samples"))
        seconds = samples / rate if samples is not None and rate else None
        parts += [
            note(
                f"{_where(record)}: {number(samples)} samples at {number(rate)} Hz "
                f"({number(seconds)} s), every input at 0 V; model S(f) = white + "
                "flicker·(f_ref/f)^α, the corner where the two parts are equal"
            ),
            grid(NOISE_HEAD.split("|"), [_noise_row(s) for s in spectra]),
            grid(["also recorded", "value"], _extra(record, {"noise", "samples", "sample_rate"})),
        ]
        drawn += [(s, *s.spectrum) for s in spectra if s.spectrum is not None]
        missing = [s.output for s in spectra if s.spectrum is None]
        if missing:
            notes.append(note(f"{_where(record)}: no spectrum recorded for {', '.join(missing)}"))
    if not drawn:
        return [], parts + notes
    fig, axes = panels(min(MAX_PANELS, len(drawn)), height=3.2)
    for ax, (s, f, psd) in zip(axes, drawn, strict=False):
        _draw_spectrum(ax, s, f, psd, _unit(units, s.output, "²/Hz"))
    caption = "Output noise spectra, the fitted model, its white floor and 1/f corner, mains lines"
    return [Figure(section, caption, png(fig))], parts + notes + _capped(len(drawn), "spectra")


# -- step responses ------------------------------------------------------------------------------

STEP_HEAD = "electrode|output|step [V]|bandwidth [Hz] ± SE|τ [s]|settling [s]|gain|residual rms"
# electrode, output, t, y, fit, settling time
Trace = tuple[str, str, FloatArray, FloatArray, FloatArray, float | None]


STEP_KNOWN_ORDER = ("tau", "settling_time", "gain", "residual_rms")
STEP_KNOWN = {"bandwidth", "bandwidth_se", *STEP_KNOWN_ORDER}


def _parse_step(record: JSONDict) -> tuple[list[tuple[list[Any], dict[str, Any]]], list[Trace]]:
    """Per output a table row (with the fields this module does not know) and the trace."""
    channel, size = str(record.get("channel")), _num(record.get("step_size"))
    shared = dict(_extra(record, {"response", "step_size"}))  # e.g. repeats averaged
    rows, traces = [], []
    for output, r in record["response"].items():
        extra = {k: v for k, v in _extra(r, STEP_KNOWN | {"t", "y", "fit"}) if k not in shared}
        row = [channel, output, size, plus_minus(r["bandwidth"], r.get("bandwidth_se"))]
        rows.append((row + [r.get(k) for k in STEP_KNOWN_ORDER], shared | extra))
        if all(r.get(k) is not None for k in ("t", "y", "fit")):
            t, y, fit = (float_array(r[k], 1) for k in ("t", "y", "fit"))
            if not t.size == y.size == fit.size:
                raise ValueError("t, y and fit differ in length")
            traces.append((channel, output, t, y, fit, _num(r.get("settling_time"))))
    return rows, traces


def _step(records: Sequence[JSONDict], section: str, units: Units) -> Rendered:
    parsed, notes = _parsed(records, _parse_step)
    known = [(row, extra) for group, _ in parsed for row, extra in group]
    traces = [trace for _, group in parsed for trace in group]
    other = list(dict.fromkeys(k for _, extra in known for k in extra))
    rows = [row + [extra.get(k) for k in other] for row, extra in known]
    table = grid([*STEP_HEAD.split("|"), *other], rows)
    if len(traces) < len(rows):
        notes.append(note(f"{len(rows) - len(traces)} responses have no recorded trace"))
    if not traces:
        return [], [table, *notes]
    fig, axes = panels(min(MAX_PANELS, len(traces)), height=2.4, columns=3)
    for k, (ax, (channel, output, t, y, fit, settled)) in enumerate(
        zip(axes, traces, strict=False)
    ):
        ax.plot(t, y, lw=0.8, color="C0", label="measured")
        ax.plot(t, fit, lw=1.2, ls="--", color="C1", label="first-order fit")
        if settled is not None:
            ax.axvline(settled, color="C2", ls=":", lw=1, label="settled")
        ax.set_title(f"{channel} → {output}{_unit(units, output)}", fontsize="small")
        ax.set_xlabel("time after the step [s]", fontsize="small")
        positive = t[t > 0]
        if positive.size:  # log time past the first sample: the rise and the tail both show
            ax.set_xscale("symlog", linthresh=float(positive.min()))
            ax.set_xlim(0.0, float(positive.max()))
        if k == 0:
            ax.legend(fontsize="x-small")
    caption = "Step responses per electrode and output, with the first-order fit and settling time"
    return [Figure(section, caption, png(fig))], [table, *notes, *_capped(len(traces), "responses")]


# -- HGE plan ------------------------------------------------------------------------------------

PLAN_COLUMNS = {
    "operating_point": "operating point [V]",
    "tones": "tone [Hz]",
    "amplitudes": "amplitude [V]",
    "gradient": "gradient",
    "noise_density": "noise density",
    "predicted_se": "predicted SE",
    "predicted_snr": "predicted SNR",
}
PLAN_SETTINGS = {
    "target_snr": "target SNR per coordinate",
    "window": "window T [s]",
    "device_seconds_per_gradient": "device seconds per gradient",
}


def _per_control(data: JSONDict, key: str, n: int) -> list[Any]:
    """One value per control: a required field must have them, another may be absent."""
    if key in ("tones", "amplitudes", "predicted_se", "measured_se"):
        values = data[key]
    elif (values := data.get(key)) is None:
        return [None] * n
    if not isinstance(values, list) or len(values) != n:
        raise ValueError(f"{key!r} does not have one value per control")
    return values


CHECK_KNOWN = {"repeats", "measured_se", "ratio_per_control", "ratio", "ratio_se", "predicted_se"}


def _parse_plan(record: JSONDict) -> tuple[list[str], list[str], list[Any]]:
    """The plan's HTML, its controls and the check's measured SE per control (or [])."""
    controls = [str(c) for c in record["controls"]]
    n = len(controls)
    columns = [_per_control(record, key, n) for key in PLAN_COLUMNS]
    head = ["control", *PLAN_COLUMNS.values()]
    extra = _extra(record, {*PLAN_COLUMNS, *PLAN_SETTINGS, "controls", "check"})
    check = record.get("check") if isinstance(record.get("check"), dict) else None
    measured = _per_control(check, "measured_se", n) if check else []
    if check:
        columns += [measured, _per_control(check, "ratio_per_control", n)]
        head += ["measured SE", "measured / predicted"]
        extra += [(f"check: {k}", v) for k, v in _extra(check, CHECK_KNOWN)]
    per_control = [(k, v) for k, v in extra if isinstance(v, list) and len(v) == n]
    columns += [v for _, v in per_control]
    head += [k for k, _ in per_control]
    settings = [(label, record.get(key)) for key, label in PLAN_SETTINGS.items()]
    settings += [
        ("check: repeats", check.get("repeats") if check else "not run"),
        (
            "check: measured / predicted, pooled ± SE",
            plus_minus(check.get("ratio"), check.get("ratio_se")) if check else None,
        ),
    ]
    settings += [(k, v) for k, v in extra if (k, v) not in per_control]
    rows = [[name, *(column[j] for column in columns)] for j, name in enumerate(controls)]
    return [grid(head, rows), grid(["setting", "value"], settings)], controls, measured


def _plan_chart(record: JSONDict, controls: list[str], measured: list[Any], section: str) -> Figure:
    x = np.arange(len(controls))
    fig, ax = pyplot().subplots(1, 1, figsize=(8, 3.2))
    ax.bar(x - 0.2, np.asarray(record["predicted_se"], dtype=float), width=0.4, label="predicted")
    ax.bar(x + 0.2, np.asarray(measured, dtype=float), width=0.4, label="measured")
    ax.set_xticks(x, controls, rotation=45 if len(controls) > 8 else 0)
    ax.set_ylabel("gradient standard error")
    ax.legend(fontsize="small")
    repeats = record["check"].get("repeats")
    caption = f"HGE plan check: predicted and measured gradient SE per control ({repeats} repeats)"
    return Figure(section, caption, png(fig))


def _with_checks(records: Sequence[JSONDict]) -> tuple[list[JSONDict], list[str]]:
    """The plan records, each with the `check` record that played it merged in."""
    plans = {r.get("step"): dict(r) for r in records if r.get("measurement") == "plan"}
    notes = []
    for r in records:
        if r.get("measurement") != "check":
            continue
        plan = plans.get(r.get("plan_step"))
        if plan is not None and isinstance(r.get("check"), dict):
            plan["check"] = r["check"]
        else:
            problem = "no result" if plan is not None else f"no plan at step {r.get('plan_step')}"
            notes.append(note(f"{_where(r)}: a check of the plan with {problem}; left out"))
    return list(plans.values()), notes


def _plan(records: Sequence[JSONDict], section: str, units: Units) -> Rendered:
    """The plans (and the checks of them) as tables, a bar chart for each checked plan."""
    plans, notes = _with_checks(records)
    figures, parts = [], []
    for record in plans:
        try:
            html, controls, measured = _parse_plan(record)
            figures += [_plan_chart(record, controls, measured, section)] if measured else []
            parts += html
        except DAMAGE as exc:
            notes.append(note(f"{_where(record)}: record damaged ({_why(exc)}); left out"))
    return figures, parts + notes


# -- crossbars (their maps are parsed and drawn in hil.report_crossbar) ----------------------------


def _scalars(record: JSONDict) -> list[tuple[str, Any]]:
    """A record's single values (settings, counts, medians); its maps are in the figures."""
    return [(key, value) for key, value in _extra(record, set()) if not isinstance(value, list)]


def _conductance(records: Sequence[JSONDict], section: str, units: Units) -> Rendered:
    parsed, notes = _parsed(records, crossbar.parse_conductance)
    figures, parts = [], []
    for record, mean, noise in parsed:
        caption = f"Conductance map ({_where(record)}): mean of the reads and their spread"
        fig = crossbar.draw_conductance(record, mean, noise)
        figures.append(Figure(section, caption, png(fig)))
        parts.append(grid(["quantity", "value"], _scalars(record)))
    return figures, parts + notes


def _pulses(records: Sequence[JSONDict], section: str, units: Units) -> Rendered:
    parsed, notes = _parsed(records, crossbar.parse_pulses)
    figures, parts = [], []
    for s in parsed:
        r = s.record
        caption = f"Pulse response ({_where(r)}): ΔG per pulse against G, and the stuck devices"
        figures.append(Figure(section, caption, png(crossbar.draw_pulses(s))))
        rows = [*_scalars(r), ("stuck devices (row, col)", crossbar.stuck_list(s))]
        parts.append(grid(["quantity", "value"], rows))
    return figures, parts + notes


# -- the page ------------------------------------------------------------------------------------

RENDERERS: dict[str, Callable[[Sequence[JSONDict], str, Units], Rendered]] = {
    "iv": _iv,
    "offset": _offset,
    "noise": _noise,
    "step": _step,
    "plan": _plan,
    "conductance": _conductance,
    "pulses": _pulses,
}


def _by_kind(records: Sequence[JSONDict], fold: bool = False) -> dict[str, list[JSONDict]]:
    """Records per measurement in the order first measured; `fold`: checks with their plans."""
    kinds: dict[str, list[JSONDict]] = {}
    for record in records:
        kind = str(record.get("measurement"))
        kinds.setdefault("plan" if fold and kind == "check" else kind, []).append(record)
    return kinds


def measurements(records: Sequence[JSONDict]) -> list[MeasurementSummary]:
    """Per kind of measurement, in the order first measured: steps, channels, device seconds."""
    return [
        MeasurementSummary(
            kind,
            len(group),
            list(dict.fromkeys(str(r["channel"]) for r in group if r.get("channel"))),
            sum(_num(r.get("device_seconds")) or 0.0 for r in group),
        )
        for kind, group in _by_kind(records).items()
    ]


def _overview(records: Sequence[JSONDict]) -> str:
    rows = []
    for m in measurements(records):
        more = f" … ({len(m.channels)})" if len(m.channels) > 8 else ""
        shown = ", ".join(m.channels[:8]) + more
        rows.append([TITLES.get(m.kind, m.kind), m.steps, shown or "—", m.device_seconds])
    device_time = _num(records[-1].get("device_time")) if records else None
    head = ["measurement", "steps", "channels", "device time [s]"]
    return grid(head, rows) + note(f"device clock at the last step: {number(device_time)} s")


def calibration_report(
    records: Sequence[JSONDict], units: Units | None = None
) -> tuple[list[Figure], dict[str, str]]:
    """The figures of a calibration run and, per section title in page order, its HTML (tables
    and notes); the first section is the overview of what was measured. `units`: the unit of
    each channel, for the axes (unlabelled without)."""
    figures: list[Figure] = []
    sections = {OVERVIEW: _overview(records)}
    for kind, group in _by_kind(records, fold=True).items():
        section = TITLES.get(kind, f"Other records: {kind}")
        renderer = RENDERERS.get(kind)
        journaled = details(f"the {len(group)} records as journaled", group)
        if renderer is None:
            parts = [note(f"a measurement this report does not know ({kind})"), journaled]
        else:
            try:
                drawn, parts = renderer(group, section, units or {})
                figures += drawn
            except DAMAGE as exc:  # a damage the parsers did not foresee
                parts = [note(f"{section} could not be shown ({_why(exc)})"), journaled]
        sections[section] = "".join(parts)
    return figures, sections
