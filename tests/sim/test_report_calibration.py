"""report.html of a calibration run: every measurement's figures and tables with the journaled
values, damaged and unknown records noted instead of crashing, and the page renders in a real
headless browser with no errors and every image loaded."""

from __future__ import annotations

import base64
import copy
import html
import json
import math
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_report_html import PNG_SIGNATURE, Page, assert_renders

import hil.report_calibration as report_calibration
from hil.core import JSONDict
from hil.report import write_report
from hil.report_html import number, pyplot
from hil.rundir import RunDirectory
from hil.runner import RunStatus, start_run
from hil.safety import SafetyGuard, SafetyLimits
from protocols import bringup_crossbar as bringup
from simulators.crossbar import CrossbarDevice, CrossbarSettings

pytestmark = pytest.mark.timeout(120)

SNEAKY = "<i>E1</i>"  # an electrode name that must stay text
OUTPUTS = ["Iout", "Vmon"]
F_REF, WHITE, FLICKER, ALPHA = 1.0, 1.0e-6, 3.0e-4, 1.1
CORNER = F_REF * (FLICKER / WHITE) ** (1 / ALPHA)
TAU = 1.0e-3
CHANNELS = [
    {"name": "E0", "role": "control", "unit": "V"},
    {"name": "Iout", "role": "output", "unit": "nA"},
]


def _iv(channel: str, slopes: list[float]) -> JSONDict:
    levels = [0.0, 0.5, 1.0, 0.5, 0.0, -0.5, -1.0, -0.5, 0.0]
    outputs = [[s * v + 0.1 * k for k, s in enumerate(slopes)] for v in levels]
    return {
        "measurement": "iv",
        "channel": channel,
        "levels": levels,
        "outputs": outputs,
        "slope_at_zero": slopes,
    }


def _noise() -> JSONDict:
    f = np.geomspace(1.0, 5000.0, 300)
    psd = WHITE + FLICKER * (F_REF / f) ** ALPHA
    psd[np.argmin(np.abs(f - 50.0))] += 3.0e-5  # a mains line
    fit = {
        "white": WHITE,
        "white_se": 2.0e-8,
        "flicker": FLICKER,
        "flicker_se": 1.5e-5,
        "alpha": ALPHA,
        "alpha_se": 0.02,
        "corner": CORNER,
        "corner_se": 12.5,
        "f_ref": F_REF,
        "lines": [[50.0, 3.0e-5]],
    }
    spectrum = {"frequencies": f.tolist(), "psd": psd.tolist()}
    fit_only = {**fit, "lines": [], "corner": None, "corner_se": None}  # no flicker found
    return {
        "measurement": "noise",
        "channel": None,
        "samples": 40000,
        "sample_rate": 10000.0,
        "noise": {"Iout": {**fit, **spectrum}, "Vmon": fit_only},
    }


def _step() -> JSONDict:
    t = np.linspace(0.0, 0.02, 200)
    fit = 0.2 * (1 - np.exp(-t / TAU))
    y = fit + np.random.default_rng(3).normal(0.0, 0.002, t.size)
    response = {
        "tau": TAU,
        "bandwidth": 1 / (2 * math.pi * TAU),
        "bandwidth_se": 2.5,
        "settling_time": 4.6e-3,
        "gain": 2.0,
        "residual_rms": 0.002,
        "resolved": True,  # a field this report does not know: a column of its own
        "t": t.tolist(),
        "y": y.tolist(),
        "fit": fit.tolist(),
    }
    no_trace = {**response, "settling_time": None, "gain": -0.5}
    for key in ("t", "y", "fit"):
        del no_trace[key]
    return {
        "measurement": "step",
        "channel": "E0",
        "step_size": 0.1,
        "repeats": 4,
        "response": {"Iout": response, "Vmon": no_trace},
    }


PLAN: JSONDict = {
    "measurement": "plan",
    "channel": None,
    "controls": ["E0", "E2", "E3"],
    "operating_point": [0.0, 0.1, -0.1],
    "target_snr": 10.0,
    "window": 0.4,
    "tones": [52.5, 55.0, 60.0],
    "amplitudes": [0.05, 0.05, 0.03125],
    "gradient": [1.5, -2.0, 0.5],
    "noise_density": [2.1e-4, 2.0e-4, 1.8e-4],
    "predicted_se": [0.101, 0.121, 0.111],
    "predicted_snr": [14.85, 16.53, 4.5],
    "device_seconds_per_gradient": 0.6,
    "pilot_se": [0.27, 0.28, 0.5],
    "noise_model": {"white": 4.47e-6, "alpha": 1.03},
    "check": None,
}
CHECK: JSONDict = {  # the plan played `repeats` times: a record of its own, naming the plan's step
    "measurement": "check",
    "channel": None,
    "plan_step": 7,
    "check": {
        "repeats": 8,
        "measured_se": [0.113, 0.117, 0.0987],
        "reported_se": [0.1, 0.12, 0.1],
        "predicted_se": [0.101, 0.121, 0.111],
        "ratio_per_control": [1.119, 0.967, 0.889],
        "ratio": 1.023,
        "ratio_se": 0.09,
        "device_seconds_per_gradient": 0.61,
    },
}


def _crossbar() -> list[JSONDict]:
    rows, cols, stuck = 3, 4, (1, 2)
    step = np.full((rows, cols), 0.01)
    step[stuck] = 0.0
    g0 = np.linspace(0.1, 0.3, rows * cols).reshape(rows, cols)
    counts = [10, 10, -10, -10, -10, -10, 10, 10]
    states = [g0]
    for count in counts:
        states.append(states[-1] + step * count / 10)
    response = (step * 20).tolist()
    side = {"g": [0.15, 0.25], "dg": [0.001, 0.0009], "dg_se": [1e-5, 2e-5], "n": [10, 12]}
    conductance = {
        "measurement": "conductance",
        "channel": None,
        "rows": rows,
        "cols": cols,
        "reads": 5,
        "mean": g0.tolist(),
        "read_noise": np.full((rows, cols), 1e-4).tolist(),
        "min": 0.1,
        "max": 0.3,
        "median": 0.2,
        "read_noise_median": 1e-4,
    }
    pulses = {
        "measurement": "pulses",
        "channel": None,
        "rows": rows,
        "cols": cols,
        "reads": 5,
        "pulses": 10,
        "rounds": 2,
        "threshold": 0.1,
        "sigmas": 5.0,
        "counts": counts,
        "states": np.stack(states).tolist(),
        "read_noise": np.zeros((rows, cols)).tolist(),
        "read_noise_median": 0.0,
        "up": {**side, "step": (step / 10).tolist(), "response": response, "median_response": 0.2},
        "down": {
            **side,
            "dg": [-0.001, -0.0011],
            "step": (step / 10).tolist(),
            "response": response,
            "median_response": 0.2,
        },
        "stuck": [list(stuck)],
        "stuck_count": 1,
        "requests": 8,
        "max_pulses": None,
        "return_offset_median": 0.0,
    }
    return [conductance, pulses]


def calibration_records() -> list[JSONDict]:
    """One record of every kind (formats of protocols.bringup and bringup_crossbar), a damaged
    IV record and a measurement the report does not know, numbered as the journal would."""
    offset = {
        "measurement": "offset",
        "channel": None,
        "offset": {
            "Iout": {"mean": 0.0123, "se": 0.0004, "sigma": 0.0021},
            "Vmon": {"mean": -0.5, "se": 0.01, "sigma": 0.05},
        },
        "transfer": {"E0": {"Iout": {"gain": 2.01, "gain_se": 0.03}}},
        "levels": {"E0": 0.1},
    }
    damaged = _iv("E9", [1.0, 1.0])
    del damaged["outputs"]
    unknown = {"measurement": "thermal", "channel": None, "temperature": 301.5}
    raw = [_iv("E0", [2.0, -1.0]), _iv(SNEAKY, [0.5, 0.25]), damaged, offset, _noise(), _step()]
    raw += [PLAN, CHECK, *_crossbar(), unknown]
    return [
        {
            "event": "step",
            "step": k,
            "output_names": OUTPUTS,
            "device_seconds": 0.5,
            "device_time": 0.5 * k,
            **record,
        }
        for k, record in enumerate(raw, 1)
    ]


def write_calibration_run(parent: Path, records: list[JSONDict]) -> Path:
    """A run directory as `hil calibrate` leaves it: run.json, the journal, summary.json."""
    rundir = RunDirectory.create(parent, "bringup")
    station = {"name": "bench-3", "device": {"type": "dnpu"}}
    rundir.write_run_info(
        {
            "run_id": rundir.path.name,
            "name": "bringup",
            "created": "2026-12-03T15:00:00+0000",
            "config": {
                "name": "bringup",
                "station": station,
                "procedure": {"type": "calibrate", "what": ["iv", "noise"]},
                "task": None,
                "estimator": None,
                "optimizer": None,
            },
            "seed_entropy": 1,
            "station_snapshot": {"name": "bench-3", "channels": CHANNELS},
        }
    )
    journal = rundir.journal()
    for record in records:
        journal.append(record)
    n = len(records)
    rundir.write_summary(
        {
            "status": "completed",
            "reason": f"all {n} steps done",
            "steps_done": n,
            "total_steps": n,
            "calibration": records,
        }
    )
    return rundir.path


class Sections(HTMLParser):
    """The page's text per h2 section, its tags and how many images each section holds."""

    def __init__(self) -> None:
        super().__init__()
        self.text: dict[str, str] = {"": ""}
        self.images: dict[str, int] = {}
        self.tags: set[str] = set()
        self._current, self._in_h2 = "", False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        if tag == "h2":
            self._in_h2, self._current = True, ""
        elif tag == "img":
            self.images[self._current] = self.images.get(self._current, 0) + 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "h2":
            self._in_h2 = False
            self.text[self._current] = ""
        elif tag in ("td", "th", "p", "summary", "figcaption"):
            self.text[self._current] += " | "

    def handle_data(self, data: str) -> None:
        if self._in_h2:
            self._current += data
        else:
            self.text[self._current] += data


def sections(run: Path) -> Sections:
    parser = Sections()
    parser.feed((run / "report" / "report.html").read_text(encoding="utf-8"))
    parser.close()
    return parser


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = write_calibration_run(tmp_path_factory.mktemp("calibration"), calibration_records())
    write_report(path)
    return path


def test_every_measurement_has_its_section_in_page_order(run: Path) -> None:
    page = sections(run)
    titles = [t for t in page.text if t]
    assert titles == [
        "Outcome",
        "Calibration",
        "IV sweeps",
        "Offset and gain",
        "Output noise",
        "Step response",
        "HGE plan",
        "Conductance map",
        "Pulse response",
        "Other records: thermal",
        "Procedure",
        "Configuration",
    ]
    overview = page.text["Calibration"]
    assert "IV sweeps | 3 | E0, <i>E1</i>, E9 | 1.5" in overview  # steps, channels, device s
    n = len(calibration_records())
    assert f"device clock at the last step: {number(0.5 * n)} s" in overview
    assert f"{n} of {n}" in page.text["Outcome"]
    assert "calibrate" in page.text["Procedure"]


def test_tables_show_the_journaled_values(run: Path) -> None:
    text = sections(run).text
    iv = text["IV sweeps"]
    assert "E0 | -1 to 1 [V] | 2 | -1 |" in iv  # slope of each output at 0 V
    assert "| slope of Iout at 0 [nA/V] | slope of Vmon at 0 |" in iv  # Vmon: unit unknown
    assert f"{SNEAKY} | -1 to 1 | 0.5 | 0.25 |" in iv
    offset = text["Offset and gain"]
    assert "Iout | 0.0123 ± 0.0004 | 0.0021 |" in offset
    assert "E0 | Iout | 2.01 ± 0.03 | 0.1 |" in offset
    noise = text["Output noise"]
    assert (
        f"Iout | 1e-06 ± 2e-08 | 0.0003 ± 1.5e-05 | 1 | 1.1 ± 0.02 | {number(CORNER)} ± 12.5 | "
        "50 (3e-05) |" in noise
    )
    assert "Vmon | 1e-06 ± 2e-08" in noise
    assert "| — |" in noise
    assert "no spectrum recorded for Vmon" in noise
    assert "40000 samples at 10000 Hz (4 s)" in noise
    step = text["Step response"]
    assert (
        f"E0 | Iout | 0.1 | {number(1 / (2 * math.pi * TAU))} ± 2.5 | 0.001 | 0.0046 | 2 | "
        "0.002 | 4 | True |" in step
    )
    assert "residual rms | repeats | resolved |" in step
    assert "E0 | Vmon | 0.1 |" in step
    assert "1 responses have no recorded trace" in step
    plan = text["HGE plan"]
    assert (
        "E2 | 0.1 | 55 | 0.05 | -2 | 0.0002 | 0.121 | 16.53 | 0.117 | 0.967 | 0.28 | 0.12 |" in plan
    )
    assert "check: measured / predicted, pooled ± SE | 1.023 ± 0.09" in plan
    assert "check: device seconds per gradient | 0.61" in plan
    assert "window T [s] | 0.4" in plan
    assert "noise model: alpha | 1.03" in plan
    assert "rows | 3 | cols | 4 | reads | 5 |" in text["Conductance map"]
    assert "read noise median | 0.0001" in text["Conductance map"]
    pulses = text["Pulse response"]
    assert "stuck devices (row, col) | (1, 2)" in pulses
    assert "stuck count | 1" in pulses
    assert "up: median response | 0.2" in pulses


def test_figures_are_embedded_and_written_beside_the_page(run: Path) -> None:
    page = sections(run)
    assert page.images == {
        "IV sweeps": 1,
        "Output noise": 1,
        "Step response": 1,
        "HGE plan": 1,
        "Conductance map": 1,
        "Pulse response": 1,
    }
    names = sorted(p.name for p in (run / "report").glob("*.png"))
    assert names == [
        "01-iv-sweeps.png",
        "02-output-noise.png",
        "03-step-response.png",
        "04-hge-plan.png",
        "05-conductance-map.png",
        "06-pulse-response.png",
    ]
    html_text = (run / "report" / "report.html").read_text(encoding="utf-8")
    embedded = re.findall(r'src="data:image/png;base64,([^"]+)"', html_text)
    for name, data in zip(names, embedded, strict=True):
        assert base64.b64decode(data) == (run / "report" / name).read_bytes()
    summary = (run / "report" / "summary.md").read_text(encoding="utf-8")
    assert all(f"({name})" in summary for name in names)
    assert "| iv | 3 | 1.5 |" in summary
    assert not (run / "report" / "training.png").exists()


def test_damaged_and_unknown_records_are_noted_not_fatal(run: Path) -> None:
    text = sections(run).text
    assert "step 3 (E9): record damaged (missing 'outputs'); left out" in text["IV sweeps"]
    other = text["Other records: thermal"]
    assert "a measurement this report does not know (thermal)" in other
    assert "temperature: 301.5" in other  # the record itself, collapsed


def test_a_calibration_without_a_summary_is_running_or_killed(tmp_path: Path) -> None:
    records = [r for r in calibration_records() if r["measurement"] in ("offset", "thermal")]
    path = write_calibration_run(tmp_path, records)
    (path / "summary.json").unlink()
    write_report(path)
    page = sections(path)
    assert "running or killed" in page.text["Outcome"]
    assert "Offset and gain | 1 |" in page.text["Calibration"]
    assert "running or killed" in (path / "report" / "summary.md").read_text(encoding="utf-8")


def test_a_new_report_removes_the_figures_the_last_one_had_beyond_its_own(tmp_path: Path) -> None:
    records = [r for r in calibration_records() if r["measurement"] == "conductance"]
    path = write_calibration_run(tmp_path, records)
    (path / "report").mkdir()
    for name in ("02-output-noise.png", "operator-notes.png"):
        (path / "report" / name).write_bytes(PNG_SIGNATURE)
    write_report(path)
    pngs = sorted(p.name for p in (path / "report").glob("*.png"))
    assert pngs == ["01-conductance-map.png", "operator-notes.png"]


def test_the_page_stays_self_contained_and_escaped(run: Path) -> None:
    text = (run / "report" / "report.html").read_text(encoding="utf-8")
    page = Page()
    page.feed(text)
    assert not {"script", "link", "iframe", "object", "embed", "base", "i"} & set(page.tags)
    assert all(url.startswith("data:") for url in page.urls)
    assert not re.search(r"https?:", text)
    assert SNEAKY in "".join(page.text)


REQUIRED = {
    "iv": ("levels", "outputs", "slope_at_zero"),
    "offset": ("offset",),
    "noise": ("noise",),
    "step": ("response",),
    "plan": ("controls", "tones", "amplitudes", "predicted_se"),
    "conductance": ("rows", "cols", "mean", "read_noise"),
    "pulses": ("rows", "cols", "states", "counts", "up", "down", "stuck"),
}
"""The fields without which a measurement's figure and table are left out."""


def _fast_png(fig: Any) -> bytes:
    pyplot().close(fig)
    return PNG_SIGNATURE


def test_no_damage_to_a_record_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each field of each record removed, nulled or replaced by text: the report still builds
    and says what it left out."""
    monkeypatch.setattr(report_calibration, "png", _fast_png)
    records = calibration_records()
    for record in (r for r in records if r["channel"] != "E9"):  # E9: damaged already
        kind = record["measurement"]
        title = report_calibration.TITLES.get(kind, f"Other records: {kind}")
        title = "HGE plan" if kind == "check" else title  # shown with the plan it checked
        for key in set(record) - {"event", "step", "measurement"}:
            scalar = not isinstance(record[key], list | dict)
            for damage in ("remove", "garbage", *([None] if scalar else [])):
                broken = copy.deepcopy(record)
                if damage == "remove":
                    del broken[key]
                else:
                    broken[key] = damage
                _, html_sections = report_calibration.calibration_report([broken])
                if damage == "remove" and key in REQUIRED.get(kind, ()):
                    text = html.unescape(html_sections[title])
                    assert f"step {record['step']}" in text
                    assert f"record damaged (missing '{key}'); left out" in text
                assert title in html_sections, (kind, key, damage)
    nested = copy.deepcopy(records)
    nested[4]["noise"]["Iout"]["psd"] = [1.0]  # a spectrum shorter than its frequencies
    nested[9]["up"]["g"] = [0.1]  # binned curve lengths disagree
    nested[7]["plan_step"] = 99  # a check whose plan is not in the journal
    _, html_sections = report_calibration.calibration_report(nested)
    noise, pulses = (html.unescape(html_sections[t]) for t in ("Output noise", "Pulse response"))
    assert "step 5: record damaged (ValueError: frequencies and psd differ in length)" in noise
    assert "step 10: record damaged (ValueError: binned g, dg and dg_se differ" in pulses
    plan = html.unescape(html_sections["HGE plan"])
    assert "step 8: a check of the plan with no plan at step 99; left out" in plan


def test_many_electrodes_are_drawn_as_a_map() -> None:
    """An analog chip's 48 weights: one map per output (electrode × sweep point), every slope
    in the table."""
    records = [{**_iv(f"w{k}", [0.1 * k, -0.1]), "step": k + 1} for k in range(48)]
    figures, page = report_calibration.calibration_report(records)
    assert len(figures) == 1
    assert figures[0].png.startswith(PNG_SIGNATURE)
    text = html.unescape(page["IV sweeps"])
    assert all(f">w{k}</th>" in text for k in range(48))
    assert f">{number(0.1 * 47)}</td>" in text


def test_a_crossbar_gain_matrix_is_drawn_and_its_table_collapsed() -> None:
    transfer = {
        f"row{i}": {f"col{j}": {"gain": i - j, "gain_se": 0.1} for j in range(8)} for i in range(10)
    }
    record = {
        "step": 1,
        "measurement": "offset",
        "channel": None,
        "offset": {},
        "transfer": transfer,
    }
    figures, page = report_calibration.calibration_report([record])
    assert [f.caption for f in figures] == ["Gains of a known input, input × output"]
    text = html.unescape(page["Offset and gain"])
    assert "<details><summary>all 80 gains</summary>" in text
    assert '>row9</th><td class="num">col0</td><td class="num">9 ± 0.1</td>' in text


def test_a_check_inside_its_plan_record_reads_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check as a record of its own (`hil calibrate`) or inside the plan's record."""
    monkeypatch.setattr(report_calibration, "png", _fast_png)
    inline = [{**PLAN, "step": 7, "check": CHECK["check"]}]
    separate = [{**PLAN, "step": 7}, {**CHECK, "step": 8}]
    figures, page = report_calibration.calibration_report(inline)
    assert [f.section for f in figures] == ["HGE plan"]  # predicted against measured
    assert page["HGE plan"] == report_calibration.calibration_report(separate)[1]["HGE plan"]


def test_crossbar_records_of_the_bring_up_helper_are_drawn(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The records protocols.bringup_crossbar makes (not hand-written ones) fit this report."""
    monkeypatch.setattr(report_calibration, "png", _fast_png)
    settings = CrossbarSettings.model_validate(
        {"rows": 8, "cols": 6, "construction_seed": 3, "corrupt_devices_prob": 0.1}
    )
    device = SafetyGuard(CrossbarDevice(settings, seed=1), SafetyLimits(max_abs_voltage=1.0))
    conductance = bringup.conductance_map(device, bringup.ConductanceSettings())
    pulses = bringup.pulse_response(device, bringup.PulseSettings(rounds=4, bins=4))
    records = [
        {"step": 1, "measurement": "conductance", "channel": None, **conductance},
        {"step": 2, "measurement": "pulses", "channel": None, **pulses},
    ]
    figures, html_sections = report_calibration.calibration_report(records)
    assert [f.section for f in figures] == ["Conductance map", "Pulse response"]
    assert "damaged" not in "".join(html_sections.values())
    listed = ", ".join(f"({i}, {j})" for i, j in pulses["stuck"])
    assert pulses["stuck_count"] > 0
    assert html.escape(listed) in html_sections["Pulse response"]


def test_a_real_calibration_run_is_reported(tmp_path: Path) -> None:
    """`hil calibrate`'s procedure on the simulated DNPU station, reported: each measured
    value of the journal appears in its table."""
    station = Path(__file__).resolve().parents[2] / "configs" / "stations" / "sim-dnpu.yaml"
    config = tmp_path / "cal.yaml"
    config.write_text(
        f"name: cal\nseed: 5\nstation: {station}\n"
        "procedure:\n  type: calibrate\n  what: [iv, offset, noise, step]\n"
    )
    outcome = start_run(config, tmp_path / "runs")
    assert outcome.status is RunStatus.COMPLETED, outcome.reason
    write_report(outcome.path)
    text = sections(outcome.path).text
    steps = [
        json.loads(line)
        for line in (outcome.path / "events.jsonl").read_text().splitlines()
        if '"event": "step"' in line
    ]
    for record in steps:
        if record["measurement"] == "iv":
            slope = number(record["slope_at_zero"][0])
            assert f"{record['channel']} |" in text["IV sweeps"]
            assert slope in text["IV sweeps"]
        elif record["measurement"] == "noise":
            for fit in record["noise"].values():
                assert f"{number(fit['white'])} ± {number(fit['white_se'])}" in text["Output noise"]
        elif record["measurement"] == "step":
            for fit in record["response"].values():
                assert number(fit["bandwidth"]) in text["Step response"]
    assert "damaged" not in "".join(text.values())
    assert sections(outcome.path).images.keys() >= {"IV sweeps", "Output noise", "Step response"}


def test_the_calibration_page_renders_in_a_headless_browser(run: Path, tmp_path: Path) -> None:
    assert_renders(run / "report" / "report.html", tmp_path, title="Run bringup", images=6)
