"""A station's calibration file: what its bring-up measured, versioned, and used by later runs.

A completed `calibrate` run publishes its results beside the station file, as
`<station>.calibration.json` (`publish`); the one it replaces is kept as
`<station>.calibration.v<N>.json`. The file holds a schema tag, a version (1, 2, …), the date,
the run it came from, the station's identity (name, device type and a digest of the device
section: another instrument, address or simulator is another station) and the results, plus a
digest of what later runs use:

- `noise`: per output, the fitted white floor, 1/f part and corner;
- `settling`: the longest settling time and the lowest bandwidth of the step responses;
- `plan`: the HGE plan (window, tones, amplitudes, timing) and its check.

Each part carries its own date: a calibration of some measurements (`--what step`) keeps the
other parts of the previous file of the same station, and a run's age is its oldest part's.

`hil run` loads the file of its station by default (`calibration:` in the experiment chooses
another file, a maximum age, or none), shows its age, and warns when it is stale or was made on
another station (`Loaded.warnings`). A homodyne estimator takes the plan's window, tones and
amplitudes, and twice the measured settling time as its settle time, for every one of these
settings the experiment leaves unset (`apply`); a station whose plateaus wait less than its
outputs took to settle is warned about. What was taken is listed in run.json, so a resumed run
repeats it exactly.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel
from rich.table import Table

from hil.config import (
    MAX_NAME,
    ResolvedComponent,
    ResolvedExperiment,
    ResolvedStation,
    load_station,
)
from hil.core import ConfigError, DeviceSpec, FloatArray, JSONDict, Role, RunError
from hil.rundir import RunDirectory, digest, file_error, write_json_atomic
from hil.yamlfile import KeyPath, YamlDocument, load_yaml

log = logging.getLogger(__name__)

SCHEMA = "hil.calibration/1"
SUFFIX = ".calibration.json"
SECONDS_PER_DAY = 86_400.0
SETTLE_MARGIN = 2.0
"""A homodyne window starts this many measured settling times after the ramp."""
HOMODYNE = "protocols.homodyne.Homodyne"


def experiment(
    station_file: Path, what: list[str] | None, settings_file: Path | None, seed: int | None
) -> YamlDocument:
    """The experiment `hil calibrate` runs: the station, the `calibrate` procedure with the
    settings file's keys (iv:, noise:, plan: …) and `what`. Errors in the settings point into
    the settings file; the station's own calibration is not loaded by a calibration."""
    station = load_station(station_file)
    procedure: dict[str, Any] = {"type": "calibrate"}
    lines: dict[KeyPath, int] = {}
    source = Path("hil calibrate")
    if settings_file is not None:
        doc = load_yaml(settings_file, what="calibration settings file")
        if doc.data is not None and not isinstance(doc.data, dict):
            raise ConfigError(
                f"{doc.where(())}: expected the calibrate procedure's settings as a mapping "
                "(iv:, offset:, noise:, step:, plan:, conductance:, pulses:, what:)"
            )
        if isinstance(doc.data, dict) and "type" in doc.data:
            raise ConfigError(f"{doc.where(('type',))}: type: not a setting here; remove it")
        procedure.update(doc.data or {})
        lines = {("procedure", *key): line for key, line in doc.lines.items()}
        source = doc.path
    if what is not None:
        procedure["what"] = what
    _known_bandwidth(station_file, station, procedure)
    data = {
        "name": f"calibrate-{station.config.name}"[:MAX_NAME],
        "description": f"bring-up of station {station.config.name}",
        "station": str(station_file.resolve()),
        "procedure": procedure,
        "calibration": {"use": False},
        **({} if seed is None else {"seed": seed}),
    }
    return YamlDocument(path=source, data=data, lines=lines, strict=True)


def _known_bandwidth(
    station_file: Path, station: ResolvedStation, procedure: dict[str, Any]
) -> None:
    """The output bandwidth the station's calibration file measured, for a plan made without
    step responses (its tones stay below it), unless the settings give one."""
    plan = procedure.get("plan")
    if isinstance(plan, dict) and "output_bandwidth" in plan:
        return
    path = path_for(station_file)
    try:
        data = _checked(json.loads(path.read_text(encoding="utf-8")))
        bandwidth = float(data["use"]["settling"]["bandwidth"])
    except (OSError, ValueError, KeyError, TypeError):
        return
    if data["station"] == identity(station) and bandwidth > 0:
        procedure["plan"] = {
            **(plan if isinstance(plan, dict) else {}),
            "output_bandwidth": bandwidth,
        }


def path_for(station_file: Path) -> Path:
    """Where the calibration of the station in `station_file` lives."""
    return station_file.with_name(station_file.stem + SUFFIX)


def identity(station: ResolvedStation | JSONDict) -> JSONDict:
    """Name, device type and a digest of the device (and simulator) settings of a station."""
    data = station.as_dict() if isinstance(station, ResolvedStation) else station
    device = {"device": data["device"], "virtual": data.get("virtual")}
    return {"name": data["name"], "device": data["device"]["type"], "digest": digest(device)}


def _last(results: list[JSONDict], measurement: str) -> JSONDict | None:
    return next((r for r in reversed(results) if r.get("measurement") == measurement), None)


def _digest(results: list[JSONDict]) -> JSONDict:
    """What later runs use, from the step records of one calibration."""
    out: JSONDict = {}
    noise = _last(results, "noise")
    if noise is not None:
        keys = ("white", "white_se", "flicker", "alpha", "f_ref", "corner", "corner_se")
        out["noise"] = {name: {k: fit.get(k) for k in keys} for name, fit in noise["noise"].items()}
    steps = [r for r in results if r.get("measurement") == "step"]
    fits = [(r["channel"], f) for r in steps for f in r["response"].values()]
    measured = [(channel, f) for channel, f in fits if f.get("resolved", True)]
    if measured:
        settling = [f["settling_time"] for _, f in measured]
        out["settling"] = {
            "settling_time": None if None in settling else max(settling),
            "bandwidth": min(f["bandwidth"] for _, f in measured),
            "unsettled": sorted({c for c, f in measured if f["settling_time"] is None}),
            "not_resolved": sorted({c for c, f in fits if not f.get("resolved", True)}),
        }
    plan = _last(results, "plan")
    if plan is not None:
        kept = ("controls", "window", "tones", "amplitudes", "target_snr", "predicted_se")
        out["plan"] = {k: plan[k] for k in kept}
        out["plan"]["settings"] = plan.get("settings")
        check = _last(results, "check")
        out["plan"]["check"] = None if check is None else check["check"]
    pulses = _last(results, "pulses")
    if pulses is not None:
        out["stuck"] = {"devices": pulses.get("stuck"), "count": pulses.get("stuck_count")}
    return out


def publish(run_path: Path) -> Path:
    """Write the calibration file of a completed calibration run's station; returns its path."""
    rundir = RunDirectory.open(run_path)
    info, summary = rundir.run_info(), rundir.summary()
    config = info.get("config", {})
    if config.get("procedure", {}).get("type") != "calibrate":
        raise RunError(f"{run_path}: not a calibration run (procedure {config.get('procedure')})")
    if summary is None or summary.get("status") != "completed":
        raise RunError(f"{run_path}: the calibration is not complete; finish it with hil resume")
    station_file = info.get("station_file")
    if not station_file:
        raise RunError(
            f"{run_path}: the station is inline in the experiment, so there is no station file "
            "to calibrate; write the station to its own file"
        )
    results = summary.get("calibration")
    if not isinstance(results, list):
        raise RunError(f"{run_path}: summary.json holds no calibration results (damaged)")
    path = path_for(Path(station_file))
    station = identity(config["station"])
    now = time.time()
    stamp = {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "created_unix": now}
    use = {part: {**value, **stamp} for part, value in _digest(results).items()}
    version, kept = 1, {}
    if path.exists():
        old = _readable(path)
        version = 1 + (int(old["version"]) if old else max(_versions(path), default=0))
        if old and old.get("station") == station:
            kept = {k: v for k, v in old.get("use", {}).items() if k not in use}
        kept_as = path.with_name(
            f"{path.name.removesuffix(SUFFIX)}.calibration.v{version - 1}.json"
        )
        try:  # a copy, not a rename: the current file stays until the new one replaces it
            shutil.copy2(path, kept_as)
        except OSError as exc:
            raise file_error(kept_as, exc, "keep the previous calibration as") from None
    data: JSONDict = {
        "schema": SCHEMA,
        "version": version,
        **stamp,
        "run": str(rundir.path.resolve()),
        "station": station,
        "station_file": station_file,
        "procedure": config["procedure"],
        "use": {**kept, **use},
        "results": results,
    }
    write_json_atomic(path, data)
    return path


def _readable(path: Path) -> JSONDict | None:
    """A previous calibration file's content, or None when it cannot be read (it is kept as a
    numbered version all the same)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        int(data["version"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return data if isinstance(data, dict) else None


def _versions(path: Path) -> list[int]:
    prefix = path.name.removesuffix(SUFFIX) + ".calibration.v"
    found = []
    for p in path.parent.glob(prefix + "*.json"):
        number = p.name.removeprefix(prefix).removesuffix(".json")
        if number.isdigit():
            found.append(int(number))
    return found


@dataclass
class Loaded:
    """A calibration file found for a run, with what the run should be told about it."""

    path: Path
    data: JSONDict
    age_days: float
    same_station: bool
    warnings: list[str] = field(default_factory=list)
    applied: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (
            f"calibration v{self.data['version']} of {self.data['created']} "
            f"({self.age_days:.1f} days old): {self.path}"
        )

    def record(self) -> JSONDict:
        """What run.json keeps of it."""
        return {
            "path": str(self.path),
            "version": self.data["version"],
            "created": self.data["created"],
            "age_days": self.age_days,
            "same_station": self.same_station,
            "warnings": self.warnings,
            "applied": self.applied,
        }


def load(resolved: ResolvedExperiment, station_file: str | None) -> Loaded | None:
    """The calibration a run uses (None: none wanted, none made yet, or the station's own file
    is damaged — a warning then, not a failed run; a damaged file the experiment names is a
    ConfigError)."""
    use = resolved.config.calibration
    if not use.use:
        return None
    path = (
        use.file
        if use.file is not None
        else (path_for(Path(station_file)) if station_file else None)
    )
    if path is None or (use.file is None and not path.exists()):
        return None
    try:
        data = _checked(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        problem = f"{path}: cannot use this calibration file ({exc})"
        if use.file is not None:
            raise ConfigError(
                f"{problem}; name another file in calibration.file, recalibrate with hil "
                "calibrate, or set calibration.use: false",
                key=("calibration", "file"),
            ) from None
        log.warning("%s; the run goes on without it: recalibrate with hil calibrate", problem)
        return None
    created = float(data["created_unix"])
    parts = [p.get("created_unix", created) for p in data["use"].values()]
    oldest = min([created, *[float(p) for p in parts if isinstance(p, int | float)]])
    age = max(0.0, (time.time() - oldest) / SECONDS_PER_DAY)
    mine = identity(resolved.station)
    same = data.get("station") == mine
    loaded = Loaded(path=path, data=data, age_days=age, same_station=same)
    if not same:
        theirs = data["station"]
        loaded.warnings.append(
            f"{path} was made on another station ({theirs.get('name')!r}, "
            f"{str(theirs.get('digest', '?'))[:15]}…) than this one ({mine['name']!r}, "
            f"{mine['digest'][:15]}…): its settings are not used; recalibrate with "
            "hil calibrate"
        )
    if age > use.max_age_days:
        loaded.warnings.append(
            f"{path} is {age:.1f} days old, older than calibration.max_age_days "
            f"{use.max_age_days:g}: recalibrate with hil calibrate"
        )
    return loaded


def _checked(data: Any) -> JSONDict:
    """`data` if it has the shape of a calibration file (else ValueError, KeyError, TypeError)."""
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise ValueError(f"not a {SCHEMA} file")
    float(data["created_unix"])
    int(data["version"])
    station, use = data["station"], data["use"]
    if not isinstance(station, dict) or not isinstance(use, dict):
        raise TypeError("station and use must be mappings")
    if not all(isinstance(part, dict) for part in use.values()):
        raise TypeError("every part of use must be a mapping")
    return data


def _set(component: ResolvedComponent, values: dict[str, Any]) -> ResolvedComponent:
    settings = component.settings.model_validate({**component.settings.model_dump(), **values})
    return ResolvedComponent(name=component.name, cls=component.cls, settings=settings)


def apply(resolved: ResolvedExperiment, loaded: Loaded, spec: DeviceSpec) -> ResolvedExperiment:
    """The experiment with the plan's homodyne settings where the experiment leaves them unset
    (listed in `loaded.applied`); unchanged for another station, another estimator, other
    controls or a plan that did not check out."""
    if not loaded.same_station:
        return resolved
    _check_settling(loaded, spec)
    estimator = resolved.components.get("estimator")
    plan = loaded.data["use"].get("plan")
    if estimator is None or plan is None:
        return resolved
    lower, upper = spec.bounds(Role.CONTROL)
    controls = [c.name for c in spec.controls]
    try:
        return _applied(resolved, loaded, plan, estimator, upper - lower, controls)
    except (KeyError, TypeError, ValueError) as exc:
        loaded.applied = []
        loaded.warnings.append(f"the plan in {loaded.path} is damaged ({exc!r}): not used")
        return resolved


def _check_settling(loaded: Loaded, spec: DeviceSpec) -> None:
    """A warning when the station waits less after a level change than its outputs took to
    settle in the calibration's step responses (plateaus read before the output settles)."""
    settling = loaded.data["use"].get("settling") or {}
    measured = settling.get("settling_time")
    if isinstance(measured, int | float) and measured > spec.settle_time:
        loaded.warnings.append(
            f"the station settles {spec.settle_time:g} s after a level change, but its outputs "
            f"took {measured:g} s to settle in the calibration ({loaded.path}): plateaus are read "
            "before they settle; raise the device's settle_time in the station file"
        )


def _applied(
    resolved: ResolvedExperiment,
    loaded: Loaded,
    plan: JSONDict,
    estimator: ResolvedComponent,
    control_spans: FloatArray,
    controls: list[str],
) -> ResolvedExperiment:
    """`apply` once its inputs are there."""
    cls = estimator.cls
    if f"{cls.__module__}.{cls.__qualname__}" != HOMODYNE:
        return resolved
    if plan["controls"] != controls:
        loaded.warnings.append(
            f"the plan in {loaded.path} is for controls {plan['controls']}, this run has "
            f"{controls}: not used"
        )
        return resolved
    given = estimator.settings.model_fields_set
    values: dict[str, Any] = {}
    if "window" not in given:
        values["window"] = plan["window"]
    settings = estimator.settings
    mode_ok = getattr(settings, "mode", None) == (plan.get("settings") or {}).get(
        "mode", "parallel"
    )
    if "tones" not in given and "window" not in given and mode_ok:
        values["tones"] = plan["tones"]
    if "amplitudes" not in given:
        scale = _parameter_scale(resolved, control_spans)
        values["amplitudes"] = [a / s for a, s in zip(plan["amplitudes"], scale, strict=True)]
    if "settle_time" not in given:
        settle = _settle_time(loaded, plan)
        if settle is not None:
            values["settle_time"] = settle
    if not values:
        return resolved
    components = {**resolved.components, "estimator": _set(estimator, values)}
    loaded.applied = sorted(values)
    return ResolvedExperiment(
        doc=resolved.doc, config=resolved.config, station=resolved.station, components=components
    )


def _settle_time(loaded: Loaded, plan: JSONDict) -> float | None:
    """The wait before a homodyne window: twice the longest settling the step responses
    measured (to their tolerance), else the plan's own."""
    measured = (loaded.data["use"].get("settling") or {}).get("settling_time")
    if isinstance(measured, int | float) and measured > 0:
        return SETTLE_MARGIN * float(measured)
    value = (plan.get("settings") or {}).get("settle_time")
    return float(value) if isinstance(value, int | float) else None


def _parameter_scale(resolved: ResolvedExperiment, spans: FloatArray) -> list[float]:
    """Volts per parameter unit: half the span of each control when the procedure trains
    normalized parameters, else 1."""
    procedure: BaseModel = resolved.components["procedure"].settings
    if getattr(procedure, "parameters", "physical") == "normalized":
        return [float(s) / 2.0 for s in np.asarray(spans, dtype=float)]
    return [1.0] * len(spans)


def _g(value: Any) -> str:
    return "—" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def tables(results: list[JSONDict]) -> list[Table]:
    """What the operator reads at the end of `hil calibrate`: the fitted figures per output
    and the HGE plan with its predicted (and, checked, measured) error per control."""
    out: list[Table] = []
    figures = Table(title="station figures", title_justify="left")
    for column in ("measurement", "channel", "output", "figure", "value", "± se"):
        figures.add_column(column)
    for r in results:
        kind, channel = r.get("measurement"), r.get("channel") or ""
        if kind == "noise":
            for name, fit in r["noise"].items():
                figures.add_row(
                    kind, "", name, "white floor", _g(fit["white"]), _g(fit["white_se"])
                )
                figures.add_row(
                    kind, "", name, "1/f corner Hz", _g(fit["corner"]), _g(fit["corner_se"])
                )
        elif kind == "step":
            for name, fit in r["response"].items():
                if not fit.get("resolved", True):
                    figures.add_row(kind, channel, name, "bandwidth Hz", "not resolved", "")
                    continue
                bandwidth, se = _g(fit["bandwidth"]), _g(fit["bandwidth_se"])
                figures.add_row(kind, channel, name, "bandwidth Hz", bandwidth, se)
                settling = _g(fit["settling_time"])
                figures.add_row(kind, channel, name, "settling s", settling, "")
        elif kind == "offset":
            for name, fit in r["offset"].items():
                figures.add_row(kind, "", name, "offset", _g(fit["mean"]), _g(fit["se"]))
            for source, outputs in r["transfer"].items():
                for name, fit in outputs.items():
                    figures.add_row(kind, source, name, "gain", _g(fit["gain"]), _g(fit["gain_se"]))
        elif kind == "pulses":
            figures.add_row(kind, "", "", "stuck devices", _g(r.get("stuck_count")), "")
    if figures.row_count:
        out.append(figures)
    plan = _last(results, "plan")
    if plan is not None:
        check = _last(results, "check")
        measured = None if check is None else check["check"]
        table = Table(
            title=f"HGE plan: window {plan['window']:.4g} s, target SNR {plan['target_snr']:g}"
            + (
                ""
                if measured is None
                else f"; measured/predicted {measured['ratio']:.3f} ± {measured['ratio_se']:.3f}"
            ),
            title_justify="left",
        )
        for column in ("control", "tone Hz", "amplitude V", "∂y/∂V", "predicted se", "snr"):
            table.add_column(column)
        if measured is not None:
            table.add_column("measured se")
            table.add_column("ratio")
        for i, name in enumerate(plan["controls"]):
            row = [
                name,
                _g(plan["tones"][i]),
                _g(plan["amplitudes"][i]),
                _g(plan["gradient"][i]),
                _g(plan["predicted_se"][i]),
                _g(plan["predicted_snr"][i]),
            ]
            if measured is not None:
                row += [_g(measured["measured_se"][i]), _g(measured["ratio_per_control"][i])]
            table.add_row(*row)
        out.append(table)
    return out
