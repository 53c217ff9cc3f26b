"""Config fuzzer: every malformed input gets one clean line and exit code 2, fast.

(a) A list of malformed inputs — unreadable files, hostile YAML, wrong types and values, bad
    paths and cross-check failures. For each, `hil config check FILE` and `hil run FILE --out DIR`
    exit with 2 and print exactly one line naming the file, no traceback, and `run` leaves no run
    directory.
(b) Seeded mutations of the shipped configs: each mutant either passes `config check` — and then
    the build of `hil run` accepts it too — or gets that same kind of clean one-line error.

Every case runs under an alarm, so a hang fails the case instead of the suite. Run with -s to see
the counts (tried / clean).
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import signal
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from hil.build import build_device, build_run
from hil.cli import app
from hil.config import load_experiment, load_station
from hil.yamlfile import MAX_DEPTH

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"
CASE_SECONDS = 10  # a case that takes longer counts as a hang

STATION = """\
name: fuzz-station
device:
  type: analytic
  n_inputs: 2
  n_controls: 3
  noise: {white: 0.001}
  timing: {samples_per_plateau: 2, settle_time: 0.001}
limits:
  max_abs_voltage: 1.0
  channels:
    ctrl0: {min: -0.8, max: 0.8}
"""

EXPERIMENT = """\
name: fuzz
station: station.yaml
seed: 3
procedure:
  type: train
  steps: 2
  initial_controls: [0.1, 0.0, -0.1]
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

CROSSBAR_STATION = """\
name: fuzz-crossbar
device: {type: crossbar, rows: 4, cols: 2, construction_seed: 0}
limits: {max_abs_voltage: 1.0, max_pulses_per_device: 4}
"""

PULSE_EXPERIMENT = """\
name: fuzz-pulses
station: crossbar.yaml
seed: 1
procedure: {type: pulse-train, steps: 2, pulse_step: 0.001, max_pulses: 4}
task:
  type: regression
  inputs: [[0.1, 0.2, -0.1, 0.0], [0.3, -0.2, 0.1, 0.2]]
  targets: [[0.01, 0.02], [0.0, -0.01]]
estimator: {type: intrinsic-node-perturbation, passes: 4}
optimizer: {type: sgd, lr: 0.05}
"""

ANALOG_STATION = """\
name: fuzz-analog
device: {type: analog-mlp, layers: [2, 3, 1]}
limits: {max_abs_voltage: 1.0}
"""

NODE_EXPERIMENT = """\
name: fuzz-nodes
station: analog.yaml
seed: 1
procedure: {type: train, steps: 2}
task: {type: regression, inputs: [[1.0, 2.0], [3.0, 4.0]], targets: [1.0, -1.0]}
estimator: {type: node-perturbation, perturbations: 2}
optimizer: {type: sgd, lr: 0.1}
"""

TASK = "  inputs: [[-0.5, 0.5], [0.0, 0.0], [0.5, -0.5]]\n  targets: [0.3, -0.2, 0.8]\n"


def dnpu(settings: str) -> str:
    """The experiment on an inline DNPU station with extra device `settings`."""
    device = f"{{type: dnpu, {settings}}}"
    station = f"station: {{name: d, device: {device}, limits: {{max_abs_voltage: 1.6}}}}"
    return EXPERIMENT.replace("station: station.yaml", station).replace(
        "initial_controls: [0.1, 0.0, -0.1]", "initial_controls: null"
    )


HOMODYNE = """\
estimator:
  type: homodyne
  window: 0.2
  amplitudes: 0.02
  bandwidth: 150.0
  f_min: 40.0
  settle_time: 0.01
  ramp_time: 0.01
"""


@dataclass(frozen=True)
class Case:
    """A malformed input: `make` writes files into a folder and returns the path to check."""

    name: str
    make: Callable[[Path], Path]
    expect: str = ""  # a fragment the error line must contain, where it matters


def _files(folder: Path) -> None:
    (folder / "station.yaml").write_text(STATION)
    (folder / "crossbar.yaml").write_text(CROSSBAR_STATION)
    (folder / "analog.yaml").write_text(ANALOG_STATION)


def _write(folder: Path, content: str | bytes, name: str = "exp.yaml") -> Path:
    _files(folder)
    path = folder / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def text(name: str, content: str | bytes, expect: str = "") -> Case:
    return Case(name, lambda d: _write(d, content), expect)


def edit(name: str, old: str, new: str, expect: str = "", base: str = EXPERIMENT) -> Case:
    assert old in base, (name, old)
    return text(name, base.replace(old, new, 1), expect)


def station_edit(name: str, old: str, new: str, expect: str = "", *, direct: bool = False) -> Case:
    """A bad station file, checked through the experiment (or directly with `direct`)."""
    assert old in STATION, (name, old)

    def make(folder: Path) -> Path:
        exp = _write(folder, EXPERIMENT)
        (folder / "station.yaml").write_text(STATION.replace(old, new, 1))
        return folder / "station.yaml" if direct else exp

    return Case(name, make, expect)


def with_station_path(name: str, target: Callable[[Path], str], expect: str = "") -> Case:
    """The experiment's `station:` points at whatever `target` makes."""

    def make(folder: Path) -> Path:
        exp = _write(folder, EXPERIMENT)
        exp.write_text(EXPERIMENT.replace("station: station.yaml", f"station: '{target(folder)}'"))
        return exp

    return Case(name, make, expect)


def with_data(name: str, target: Callable[[Path], str], expect: str = "") -> Case:
    """The task reads `data:` from whatever `target` makes."""
    task = "  inputs: [[-0.5, 0.5], [0.0, 0.0], [0.5, -0.5]]\n  targets: [0.3, -0.2, 0.8]\n"

    def make(folder: Path) -> Path:
        exp = _write(folder, EXPERIMENT)
        exp.write_text(EXPERIMENT.replace(task, f"  data: '{target(folder)}'\n"))
        return exp

    return Case(name, make, expect)


def fifo(folder: Path) -> str:
    path = folder / "pipe.yaml"
    os.mkfifo(path)
    return str(path)


def loop(folder: Path) -> str:
    (folder / "a.yaml").symlink_to(folder / "b.yaml")
    (folder / "b.yaml").symlink_to(folder / "a.yaml")
    return str(folder / "a.yaml")


def dangling(folder: Path) -> str:
    (folder / "gone.yaml").symlink_to(folder / "nowhere.yaml")
    return str(folder / "gone.yaml")


def subdir(folder: Path) -> str:
    (folder / "sub").mkdir()
    return str(folder / "sub")


def npz(**arrays: Any) -> Callable[[Path], str]:
    def make(folder: Path) -> str:
        np.savez(folder / "data.npz", **arrays)
        return str(folder / "data.npz")

    return make


def file_with(content: bytes, name: str = "data.npz") -> Callable[[Path], str]:
    def make(folder: Path) -> str:
        (folder / name).write_bytes(content)
        return str(folder / name)

    return make


def zip_bomb(folder: Path) -> str:
    """An .npz whose arrays unpack to 80 MiB (a few hundred kB on disk)."""
    path = folder / "bomb.npz"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        header = b"\x93NUMPY\x01\x00v\x00{'descr': '<f8', 'fortran_order': False, "
        header += b"'shape': (10485760,), }"
        header += b" " * (127 - len(header)) + b"\n"
        archive.writestr("inputs.npy", header + bytes(80 << 20))
        archive.writestr("targets.npy", header + bytes(8))
    return str(path)


def special(name: str, path: Callable[[Path], str], expect: str = "") -> Case:
    """The file given on the command line is whatever `path` makes."""

    def make(folder: Path) -> Path:
        _files(folder)
        return Path(path(folder))

    return Case(name, make, expect)


def nested(depth: int, *, block: bool) -> str:
    if block:
        return "".join(f"{' ' * i}k:\n" for i in range(depth)) + " " * depth + "v\n"
    return "name: " + "[" * depth + "]" * depth + "\n"


BOMB = "".join(
    [
        "a: &a [x, x, x, x, x, x, x, x, x, x]\n",
        *(
            f"{c}: &{c} [{', '.join([f'*{p}'] * 10)}]\n"
            for p, c in zip("abcdefgh", "bcdefghi", strict=True)
        ),
        "name: *i\n",
    ]
)

CASES: list[Case] = [
    # -- the file itself ------------------------------------------------------------------------
    text("empty file", "", "empty"),
    text("comments only", "# nothing here\n", "empty"),
    text("whitespace only", "   \n\n  \n", "empty"),
    text("binary", bytes(range(256)) * 4, "not UTF-8 text"),
    text("utf-16 without BOM", EXPERIMENT.encode("utf-16-le"), "not UTF-8 text"),
    text("utf-16 with BOM", EXPERIMENT.encode("utf-16"), "not UTF-8 text"),
    text("NUL in the text", EXPERIMENT.replace("seed: 3", "seed: 3\x00"), "not UTF-8 text"),
    text("latin-1 text", EXPERIMENT.replace("fuzz", "fuzzé").encode("latin-1"), "not UTF-8"),
    text("control character", EXPERIMENT.replace("fuzz", "fu\x07zz"), "not UTF-8 text"),
    text("too large", "# " + "x" * (1 << 20) + "\n", "above the limit"),
    special("a directory", subdir, "directory"),
    special("a FIFO", fifo, "FIFO"),
    special("a symlink loop", loop, "symlink loop"),
    special("a dangling symlink", dangling, "does not exist"),
    special("a missing file", lambda d: str(d / "missing.yaml"), "does not exist"),
    special("/dev/zero", lambda d: "/dev/zero", "character device"),
    special("/dev/null", lambda d: "/dev/null", "character device"),
    text("a list at the top", "- name: x\n- seed: 1\n", "mapping"),
    text("a string at the top", "just some text\n", "mapping"),
    text("a number at the top", "42\n", "mapping"),
    text("two documents", EXPERIMENT + "---\n" + EXPERIMENT, "single document"),
    text("alias bomb", BOMB, "alias"),
    text("recursive alias", "name: &a [1, *a]\n", "recursive alias"),
    text("recursive alias in a mapping", "name: &a {x: *a}\n", "recursive alias"),
    text("5000-deep flow nesting", nested(5000, block=False), "nested"),
    text("1000-deep block nesting", nested(1000, block=True), "nested"),
    text(f"{MAX_DEPTH + 1}-deep nesting", nested(MAX_DEPTH + 1, block=False), "nested"),
    text("undefined alias", EXPERIMENT.replace("seed: 3", "seed: *nothing"), "alias"),
    text("duplicate anchor", "a: &x 1\nb: &x 2\nname: *x\n", "anchor"),
    text("tab indentation", EXPERIMENT.replace("  steps: 2", "\tsteps: 2"), "invalid YAML"),
    text("unclosed bracket", EXPERIMENT.replace("[0.3, -0.2, 0.8]", "[0.3, -0.2"), "invalid YAML"),
    text("unclosed quote", EXPERIMENT.replace("name: fuzz", "name: 'fuzz"), "invalid YAML"),
    text("bad indentation", EXPERIMENT.replace("  c: 0.05", "    c: 0.05\n  h: 1"), "invalid YAML"),
    text("python object tag", "name: !!python/object/apply:os.system ['true']\n", "invalid YAML"),
    text("unknown tag", EXPERIMENT.replace("seed: 3", "seed: !secret 3"), "invalid YAML"),
    text("merge of a scalar", EXPERIMENT.replace("  c: 0.05", "  <<: 5"), "invalid YAML"),
    text("complex key", EXPERIMENT + "? [a, b]\n: 1\n", "invalid YAML"),
    text("5000-digit integer", EXPERIMENT.replace("seed: 3", "seed: " + "9" * 5000)),
    edit("integer above 64 bits", "seed: 3", "seed: 100000000000000000000", "too large"),
    edit("float overflow 1e400", "  lr: 0.03", "  lr: 1e400", "finite"),
    edit("a date", "seed: 3", "seed: 2024-01-01", "date"),
    edit("binary value", "seed: 3", "seed: !!binary aGVsbG8=", "binary"),
    edit("a set", "seed: 3", "seed: !!set {a, b}", "set"),
    edit("integer key at the top", "seed: 3", "seed: 3\n1: one", "exp.yaml:4: [1]: Keys"),
    edit("null key at the top", "seed: 3", "seed: 3\n~: one", "Keys should be strings"),
    edit("bool key at the top", "seed: 3", "seed: 3\ntrue: one"),
    edit("duplicate top key", "seed: 3", "seed: 3\nseed: 4", "appears twice"),
    edit("duplicate nested key", "  c: 0.05", "  c: 0.05\n  c: 0.06", "appears twice"),
    # -- experiment keys ------------------------------------------------------------------------
    edit("unknown top key", "seed: 3", "seed: 3\nsteps: 5", "unknown key"),
    edit("missing name", "name: fuzz\n", "", "name"),
    edit("missing station", "station: station.yaml\n", "", "station"),
    edit("missing task", "task:\n  type: regression\n", "other:\n  type: regression\n"),
    edit("missing estimator", "estimator:\n  type: spsa\n  c: 0.05\n", "", "estimator"),
    edit("missing optimizer", "optimizer:\n  type: adam\n  lr: 0.03\n", "", "optimizer"),
    edit("name with a space", "name: fuzz", "name: fuzz run", "name"),
    edit("name too long", "name: fuzz", "name: " + "n" * 300, "name"),
    edit("name as a number", "name: fuzz", "name: 12", "name"),
    edit("name empty", "name: fuzz", "name: ''", "name"),
    edit("name as a list", "name: fuzz", "name: [a]", "name"),
    edit("description as a list", "seed: 3", "seed: 3\ndescription: [a, b]", "description"),
    edit("negative seed", "seed: 3", "seed: -3", "seed"),
    edit("float seed", "seed: 3", "seed: 3.5", "seed"),
    edit("string seed", "seed: 3", "seed: 'three'", "seed"),
    edit("bool seed", "seed: 3", "seed: true", "seed"),
    edit("seed as a list", "seed: 3", "seed: [1, 2]", "seed"),
    # -- station path ---------------------------------------------------------------------------
    edit("station as a number", "station: station.yaml", "station: 5", "station"),
    edit("station as a list", "station: station.yaml", "station: [a]", "station"),
    edit("station as a bool", "station: station.yaml", "station: true", "station"),
    edit("station empty string", "station: station.yaml", "station: ''", "directory"),
    edit("station missing file", "station: station.yaml", "station: none.yaml", "does not exist"),
    edit("station is the folder", "station: station.yaml", "station: .", "directory"),
    edit("station /dev/zero", "station: station.yaml", "station: /dev/zero", "character device"),
    edit("station with a NUL", "station: station.yaml", 'station: "a\\0b.yaml"', "path"),
    edit("station path too long", "station: station.yaml", "station: " + "s" * 5000, "station"),
    with_station_path("station FIFO", fifo, "FIFO"),
    with_station_path("station symlink loop", loop, "symlink loop"),
    with_station_path("station dangling symlink", dangling, "does not exist"),
    with_station_path("station binary", file_with(bytes(range(256)), "st.yaml"), "not UTF-8"),
    with_station_path("station UTF-16", file_with(STATION.encode("utf-16-le"), "st.yaml")),
    with_station_path("station empty", file_with(b"", "st.yaml"), "empty"),
    with_station_path("station a list", file_with(b"- a\n- b\n", "st.yaml"), "mapping"),
    with_station_path("station is an experiment", lambda d: str(d / "exp.yaml"), "unknown key"),
    with_station_path("station alias bomb", file_with(BOMB.encode(), "st.yaml"), "alias"),
    with_station_path("station deep", file_with(nested(5000, block=False).encode(), "st.yaml")),
    # -- station contents -----------------------------------------------------------------------
    station_edit("station missing device", "device:\n  type: analytic\n", "dev:\n  type: a\n"),
    station_edit("station missing limits", "limits:\n", "limitz:\n"),
    station_edit("station unknown key", "name: fuzz-station", "name: fuzz-station\ncolour: red"),
    station_edit("station bad name", "name: fuzz-station", "name: 'fuzz station'", "name"),
    station_edit("device type unknown", "type: analytic", "type: analytik", "unknown device"),
    station_edit("device type empty", "type: analytic", "type: ''", "type"),
    station_edit("device type a number", "type: analytic", "type: 7", "type"),
    station_edit("device type missing module", "type: analytic", "type: no.such:Device"),
    station_edit("device type relative import", "type: analytic", "type: '.sim:Device'"),
    station_edit("device type a function", "type: analytic", "type: 'os.path:join'", "class"),
    station_edit("device type without Settings", "type: analytic", "type: 'pathlib:Path'"),
    station_edit("device type not a device", "type: analytic", "type: spsa_x.y:Z"),
    station_edit(
        "device type an estimator",
        STATION[STATION.index("device:") : STATION.index("limits:")],
        "device: {type: 'protocols.estimators:SPSA'}\n",
        "Device",
    ),
    station_edit("device as a string", "device:\n  type: analytic\n", "device: analytic\nx:\n"),
    station_edit("device unknown setting", "n_inputs: 2", "n_inputs: 2\n  colour: red", "unknown"),
    station_edit("n_controls zero", "n_controls: 3", "n_controls: 0", "n_controls"),
    station_edit("n_controls 1e8 float", "n_controls: 3", "n_controls: 1e8", "n_controls"),
    station_edit("n_controls huge int", "n_controls: 3", "n_controls: 100000000", "n_controls"),
    station_edit("n_controls bool", "n_controls: 3", "n_controls: true", "whole number"),
    station_edit("n_controls string", "n_controls: 3", "n_controls: '3'", "whole number"),
    station_edit("n_controls 3.0", "n_controls: 3", "n_controls: 3.0", "whole number"),
    station_edit("n_inputs negative", "n_inputs: 2", "n_inputs: -2", "n_inputs"),
    station_edit("offset nan", "n_inputs: 2", "n_inputs: 2\n  offset: .nan", "finite"),
    station_edit("offset inf", "n_inputs: 2", "n_inputs: 2\n  offset: .inf", "finite"),
    station_edit("settle_time 1e308", "settle_time: 0.001", "settle_time: 1.0e308", "too large"),
    station_edit("settle_time a day", "settle_time: 0.001", "settle_time: 86400.0"),
    station_edit("settle_time negative", "settle_time: 0.001", "settle_time: -0.001"),
    station_edit(
        "samples_per_plateau huge", "samples_per_plateau: 2", "samples_per_plateau: 10000000"
    ),
    station_edit(
        "sample_rate zero", "samples_per_plateau: 2", "samples_per_plateau: 2, sample_rate: 0"
    ),
    station_edit(
        "sample_rate huge", "samples_per_plateau: 2", "samples_per_plateau: 2, sample_rate: 1.0e12"
    ),
    station_edit("noise negative", "white: 0.001", "white: -0.001", "white"),
    station_edit("noise as a list", "noise: {white: 0.001}", "noise: [0.001]", "noise"),
    station_edit(
        "flicker poles huge", "white: 0.001", "white: 0.001, flicker_poles_per_decade: 1.0e9"
    ),
    station_edit("n_terms huge", "n_inputs: 2", "n_inputs: 2\n  n_terms: 1000000000"),
    station_edit("max_abs_voltage zero", "max_abs_voltage: 1.0", "max_abs_voltage: 0", "max_abs"),
    station_edit("max_abs_voltage negative", "max_abs_voltage: 1.0", "max_abs_voltage: -1.0"),
    station_edit("max_abs_voltage string", "max_abs_voltage: 1.0", "max_abs_voltage: high"),
    station_edit("max_abs_voltage inf", "max_abs_voltage: 1.0", "max_abs_voltage: .inf", "finite"),
    station_edit("limit on an unknown channel", "ctrl0:", "ctrl9:", "ctrl9"),
    station_edit("limit min above max", "{min: -0.8, max: 0.8}", "{min: 0.8, max: -0.8}"),
    station_edit(
        "limit excludes zero", "{min: -0.8, max: 0.8}", "{min: 0.2, max: 0.8}", "excludes 0"
    ),
    station_edit("limit unknown key", "{min: -0.8, max: 0.8}", "{min: -0.8, maximum: 0.8}"),
    station_edit("limit slew zero", "{min: -0.8, max: 0.8}", "{min: -0.8, max: 0.8, max_slew: 0}"),
    station_edit("channels as a list", "  channels:\n", "  channels: []\n  x:\n"),
    station_edit("direct: unknown device", "type: analytic", "type: nope", direct=True),
    station_edit("direct: missing limits", "limits:\n", "limitz:\n", direct=True),
    station_edit("direct: unknown channel", "ctrl0:", "ctrl9:", "ctrl9", direct=True),
    station_edit("direct: bool n_controls", "n_controls: 3", "n_controls: yes", direct=True),
    station_edit("direct: nan offset", "n_inputs: 2", "n_inputs: 2\n  offset: .nan", direct=True),
    # -- procedure ------------------------------------------------------------------------------
    edit("procedure type unknown", "type: train", "type: trian", "unknown procedure"),
    edit("procedure type an estimator", "type: train", "type: 'protocols.estimators:SPSA'"),
    edit("steps zero", "steps: 2", "steps: 0", "steps"),
    edit("steps negative", "steps: 2", "steps: -1", "steps"),
    edit("steps true", "steps: 2", "steps: true", "whole number"),
    edit("steps 2.5", "steps: 2", "steps: 2.5", "whole number"),
    edit("steps '2'", "steps: 2", "steps: '2'", "whole number"),
    edit("steps 1e8", "steps: 2", "steps: 1e8", "whole number"),
    edit("steps ten million", "steps: 2", "steps: 10000000", "steps"),
    edit("steps missing", "  steps: 2\n", "", "steps"),
    edit("initial too short", "[0.1, 0.0, -0.1]", "[0.1, 0.0]", "3 controls"),
    edit("initial outside range", "[0.1, 0.0, -0.1]", "[0.95, 0.0, 0.0]", "outside the allowed"),
    edit("initial unknown name", "[0.1, 0.0, -0.1]", "{ctrl7: 0.1}", "unknown control"),
    edit("initial a string", "[0.1, 0.0, -0.1]", "zeros", "initial_controls"),
    edit("initial nan", "[0.1, 0.0, -0.1]", "[.nan, 0.0, 0.0]", "finite"),
    edit("final_repeats zero", "steps: 2", "steps: 2\n  final_repeats: 0", "final_repeats"),
    edit("parameters unknown", "steps: 2", "steps: 2\n  parameters: volts", "parameters"),
    edit("calibration a string", "steps: 2", "steps: 2\n  calibration: yes please"),
    edit("blocking a number", "steps: 2", "steps: 2\n  blocking: 5", "blocking"),
    edit("recommend unknown", "steps: 2", "steps: 2\n  recommend: best", "recommend"),
    edit(
        "calibrating a perturbation the estimator lacks",
        "type: spsa\n  c: 0.05",
        "type: gaussian-smoothing",
        "perturbation",
        base=EXPERIMENT.replace("steps: 2", "steps: 2\n  calibration: {perturbation: true}"),
    ),
    edit("pulse-train on a plateau device", "type: train", "type: pulse-train\n  pulse_step: 0.01"),
    edit("procedure as a string", "procedure:\n  type: train\n", "procedure: train\nx:\n"),
    # -- task -----------------------------------------------------------------------------------
    edit("task type unknown", "type: regression", "type: regresion", "unknown task"),
    edit("task type an optimizer", "type: regression", "type: 'protocols.optimizers:SGD'"),
    edit("targets missing", "  targets: [0.3, -0.2, 0.8]\n", "", "targets"),
    edit("inputs missing", "  inputs: [[-0.5, 0.5], [0.0, 0.0], [0.5, -0.5]]\n", "", "inputs"),
    edit("too few targets", "[0.3, -0.2, 0.8]", "[0.3, -0.2]", "targets"),
    edit("ragged inputs", "[0.0, 0.0]", "[0.0]", "different lengths"),
    edit("empty inputs", "[[-0.5, 0.5], [0.0, 0.0], [0.5, -0.5]]", "[]", "inputs"),
    edit("inputs outside the range", "[-0.5, 0.5]", "[-5.0, 0.5]", "outside the allowed range"),
    edit("inputs as strings", "[-0.5, 0.5]", "['a', 'b']", "inputs"),
    edit("inputs nan", "[-0.5, 0.5]", "[.nan, 0.5]", "finite"),
    edit("targets inf", "[0.3, -0.2, 0.8]", "[0.3, -0.2, .inf]", "finite"),
    edit("more columns than inputs", "[0.0, 0.0]", "[0.0, 0.0, 0.0]", "different lengths"),
    edit(
        "three input columns",
        "[[-0.5, 0.5], [0.0, 0.0], [0.5, -0.5]]",
        "[[0, 0, 0], [0, 0, 0], [0, 0, 0]]",
        "only 2 inputs",
    ),
    edit(
        "unknown input channel", "type: regression", "type: regression\n  input_channels: [in0, x]"
    ),
    edit("unknown output channel", "type: regression", "type: regression\n  output_channels: [y9]"),
    edit("input_scaling unknown", "type: regression", "type: regression\n  input_scaling: db"),
    edit(
        "range-scaled data beyond 1",
        "type: regression",
        "type: regression\n  input_scaling: range",
        base=EXPERIMENT.replace("[-0.5, 0.5]", "[-1.5, 0.5]"),
    ),
    edit("both data and inline", "type: regression", "type: regression\n  data: x.npz"),
    with_data("data missing", lambda d: str(d / "none.npz"), "does not exist"),
    with_data("data a folder", subdir, "directory"),
    with_data("data /dev/zero", lambda d: "/dev/zero", "character device"),
    with_data("data FIFO", fifo, "FIFO"),
    with_data("data symlink loop", loop, "symlink loop"),
    with_data("data a text file", file_with(b"inputs: [1]\n"), "not a readable .npz"),
    with_data("data empty file", file_with(b""), "not a readable .npz"),
    with_data("data without targets", npz(inputs=np.zeros((3, 2))), "targets"),
    with_data("data with strings", npz(inputs=np.array(["a", "b"]), targets=np.zeros(2))),
    with_data("data pickled objects", npz(inputs=np.array([{}], dtype=object), targets=[1.0])),
    with_data("data with nan", npz(inputs=np.full((3, 2), np.nan), targets=np.zeros(3)), "NaN"),
    with_data("data mismatched rows", npz(inputs=np.zeros((3, 2)), targets=np.zeros(2)), "rows"),
    with_data("data 3-d inputs", npz(inputs=np.zeros((3, 2, 2)), targets=np.zeros(3))),
    with_data("data outside the range", npz(inputs=np.full((3, 2), 9.0), targets=np.zeros(3))),
    with_data("data zip bomb", zip_bomb, "above the limit"),
    with_data("data of another kind", npz(inputs=np.zeros((3, 2)), target=np.zeros(3)), "targets"),
    edit("targets without columns", TASK, "  inputs: [[0.0, 0.0]]\n  targets: [[]]\n", "targets"),
    edit("targets nested too deep", TASK, "  inputs: [[0.0, 0.0]]\n  targets: [[[1.0]]]\n"),
    edit("empty input_channels", "type: regression", "type: regression\n  input_channels: []"),
    edit(
        "min-output of 5 outputs",
        "type: regression\n" + TASK,
        "type: minimize-output\n  outputs: 5\n",
    ),
    # -- surrogate weights and other device settings ----------------------------------------------
    text("weights_file a number", dnpu("weights_file: 5"), "file path"),
    text("weights_file empty", dnpu("weights_file: ''"), "file path"),
    text("weights_file a folder", dnpu("weights_file: /tmp"), "directory"),
    text("weights_file /dev/zero", dnpu("weights_file: /dev/zero"), "character device"),
    Case(
        "weights_file of a task",
        lambda d: _write(d, dnpu(f"weights_file: {npz(inputs=np.zeros((3, 7)))(d)}")),
        "weight_0",
    ),
    text("electrode range of 3", dnpu("electrode_ranges: [[0, 1, 2]]"), "electrode_ranges"),
    text("input electrode 1.5", dnpu("input_electrodes: [1.5, 2]"), "whole number"),
    text("hidden width huge", dnpu("hidden: [100000]"), "hidden"),
    text("timing null", dnpu("timing: null"), "timing"),
    edit("integer key in a component", "c: 0.05", "c: 0.05\n  1: 2", "Keys should be strings"),
    # -- estimator ------------------------------------------------------------------------------
    edit("estimator type unknown", "type: spsa", "type: sgpa", "unknown estimator"),
    edit("estimator type an optimizer", "type: spsa", "type: 'protocols.optimizers:SGD'"),
    edit("estimator type a task", "type: spsa", "type: minimize-output"),
    edit("estimator for pulses", "type: spsa\n  c: 0.05", "type: delta-rule", "gradient estimator"),
    edit("c zero", "c: 0.05", "c: 0", "c"),
    edit("c negative", "c: 0.05", "c: -0.05", "c"),
    edit("c inf", "c: 0.05", "c: .inf", "finite"),
    edit("c string", "c: 0.05", "c: '0.05'", "number"),
    edit("c bool", "c: 0.05", "c: true", "number"),
    edit("c as a list", "c: 0.05", "c: [0.05]", "c"),
    edit("gamma above 1", "c: 0.05", "c: 0.05\n  gamma: 7.0", "gamma"),
    edit("resamples zero", "c: 0.05", "c: 0.05\n  resamples: 0", "resamples"),
    edit("resamples huge", "c: 0.05", "c: 0.05\n  resamples: 100000000", "resamples"),
    edit("resamples without 0", "c: 0.05", "c: 0.05\n  resamples: {5: 2}", "resamples"),
    edit("resamples string keys", "c: 0.05", "c: 0.05\n  resamples: {a: 2}", "resamples"),
    edit("directions unknown", "c: 0.05", "c: 0.05\n  directions: gaussian", "directions"),
    edit("estimator unknown key", "c: 0.05", "c: 0.05\n  colour: red", "unknown key"),
    edit("estimator as a list", "estimator:\n  type: spsa\n  c: 0.05\n", "estimator: [spsa]\n"),
    edit("node perturbation on a plain device", "type: spsa\n  c: 0.05", "type: node-perturbation"),
    edit(
        "homodyne amplitudes too large",
        "estimator:\n  type: spsa\n  c: 0.05\n",
        HOMODYNE.replace("amplitudes: 0.02", "amplitudes: 0.9"),
        "amplitudes",
    ),
    edit(
        "homodyne amplitudes wrong count",
        "estimator:\n  type: spsa\n  c: 0.05\n",
        HOMODYNE.replace("amplitudes: 0.02", "amplitudes: [0.02, 0.02]"),
        "amplitudes",
    ),
    edit(
        "homodyne amplitude negative",
        "estimator:\n  type: spsa\n  c: 0.05\n",
        HOMODYNE.replace("amplitudes: 0.02", "amplitudes: -0.02"),
        "amplitudes",
    ),
    edit(
        "homodyne window huge",
        "estimator:\n  type: spsa\n  c: 0.05\n",
        HOMODYNE.replace("window: 0.2", "window: 100000.0"),
        "window",
    ),
    edit(
        "homodyne long stream",
        "estimator:\n  type: spsa\n  c: 0.05\n",
        HOMODYNE.replace("window: 0.2", "window: 3000.0"),
        "samples",
    ),
    edit(
        "homodyne negative tone",
        "estimator:\n  type: spsa\n  c: 0.05\n",
        HOMODYNE + "  tones: [-5.0, 10.0, 20.0]\n",
        "tones",
    ),
    edit(
        "homodyne tone count",
        "estimator:\n  type: spsa\n  c: 0.05\n",
        HOMODYNE + "  tones: [10.0]\n",
        "tones",
    ),
    edit(
        "homodyne window not whole samples",
        "estimator:\n  type: spsa\n  c: 0.05\n",
        HOMODYNE.replace("window: 0.2", "window: 0.2005"),
        "sample",
    ),
    edit(
        "homodyne bandwidth too small",
        "estimator:\n  type: spsa\n  c: 0.05\n",
        HOMODYNE.replace("bandwidth: 150.0", "bandwidth: 1.0"),
        "homodyne",
    ),
    text(
        "node layers beyond the device", NODE_EXPERIMENT.replace("perturbations: 2", "layers: [5]")
    ),
    text(
        "node layer gains count", NODE_EXPERIMENT.replace("perturbations: 2", "layer_gains: [1.0]")
    ),
    # -- optimizer ------------------------------------------------------------------------------
    edit("optimizer type unknown", "type: adam", "type: adamw", "unknown optimizer"),
    edit(
        "optimizer CMA adapter",
        "type: adam\n  lr: 0.03",
        "type: 'protocols.external:CMAAdapter'",
        "Optimizer",
    ),
    edit(
        "optimizer nevergrad adapter",
        "type: adam\n  lr: 0.03",
        "type: 'protocols.external:NevergradAdapter'",
        "Optimizer",
    ),
    edit(
        "optimizer a procedure",
        "type: adam\n  lr: 0.03",
        "type: 'protocols.training:TrainingProcedure'",
    ),
    edit("optimizer a device", "type: adam\n  lr: 0.03", "type: analytic_x.y:Z"),
    edit("lr zero", "lr: 0.03", "lr: 0", "lr"),
    edit("lr negative", "lr: 0.03", "lr: -0.03", "lr"),
    edit("lr inf", "lr: 0.03", "lr: .inf", "finite"),
    edit("lr nan", "lr: 0.03", "lr: .nan", "finite"),
    edit("lr fast", "lr: 0.03", "lr: fast", "number"),
    edit("lr bool", "lr: 0.03", "lr: false", "number"),
    edit("lr 1e300", "lr: 0.03", "lr: 1.0e300", "too large"),
    edit("beta1 one", "lr: 0.03", "lr: 0.03\n  beta1: 1.0", "beta1"),
    edit("schedule unknown", "lr: 0.03", "lr: 0.03\n  schedule: {type: wobbly}", "schedule"),
    edit("schedule step every 0", "lr: 0.03", "lr: 0.03\n  schedule: {type: step, every: 0}"),
    edit("schedule decay 2", "lr: 0.03", "lr: 0.03\n  schedule: {type: exponential, decay: 2.0}"),
    edit("schedule without a type", "lr: 0.03", "lr: 0.03\n  schedule: {warmup: 1}", "type"),
    edit(
        "schedule warmup huge",
        "lr: 0.03",
        "lr: 0.03\n  schedule: {type: constant, warmup: 100000000}",
        "warmup",
    ),
    edit("schedule a string", "lr: 0.03", "lr: 0.03\n  schedule: spall", "schedule"),
    edit(
        "nesterov without momentum",
        "type: adam\n  lr: 0.03",
        "type: sgd\n  lr: 0.03\n  nesterov: true",
        "nesterov",
    ),
    edit("momentum one", "type: adam\n  lr: 0.03", "type: sgd\n  lr: 0.03\n  momentum: 1.0"),
    edit("optimizer as a string", "optimizer:\n  type: adam\n  lr: 0.03\n", "optimizer: adam\n"),
    # -- cross-checks with other stations -------------------------------------------------------
    text(
        "max_pulses above the station's limit",
        PULSE_EXPERIMENT.replace("max_pulses: 4", "max_pulses: 8"),
        "max_pulses_per_device",
    ),
    text(
        "pulse-train with a gradient estimator",
        PULSE_EXPERIMENT.replace("type: intrinsic-node-perturbation, passes: 4", "type: spsa"),
    ),
    text(
        "pulse-train weight box reversed",
        PULSE_EXPERIMENT.replace(
            "max_pulses: 4", "max_pulses: 4, weight_min: 1.0, weight_max: -1.0"
        ),
    ),
    text(
        "pulse-train without pulse_step",
        PULSE_EXPERIMENT.replace("pulse_step: 0.001, ", ""),
        "pulse_step",
    ),
    text(
        "train on a crossbar",
        PULSE_EXPERIMENT.replace(
            "type: pulse-train, steps: 2, pulse_step: 0.001, max_pulses: 4", "type: train, steps: 2"
        ),
    ),
    text(
        "crossbar rows huge",
        PULSE_EXPERIMENT.replace(
            "station: crossbar.yaml",
            "station: {name: x, device: {type: crossbar, rows: 100000}, "
            "limits: {max_abs_voltage: 1.0}}",
        ),
        "rows",
    ),
    text(
        "crossbar task too wide",
        PULSE_EXPERIMENT.replace("-0.1, 0.0]", "-0.1, 0.0, 0.0]").replace(
            "0.1, 0.2]", "0.1, 0.2, 0.0]"
        ),
        "only 4 inputs",
    ),
    text(
        "analog layers huge",
        NODE_EXPERIMENT.replace(
            "station: analog.yaml",
            "station: {name: x, device: {type: analog-mlp, layers: [4096, 4096]}, "
            "limits: {max_abs_voltage: 1.0}}",
        ),
        "weights",
    ),
]


@pytest.fixture(autouse=True)
def _quiet_root_logger() -> Iterator[None]:
    """The CLI adds a console handler per invocation; keep the root logger as it was."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:], root.level = handlers, level


class Hang(Exception):
    """A case took longer than CASE_SECONDS."""


def _alarm(signum: int, frame: FrameType | None) -> None:
    raise Hang


def _invoke(args: list[str]) -> Any:
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, CASE_SECONDS)
    try:
        return CliRunner().invoke(app, args)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _clean_error(result: Any, names: str) -> str | None:
    """Why `result` is not one clean error line naming `names` with exit code 2, or None."""
    if isinstance(result.exception, Hang):
        return "hang"
    if result.exit_code != 2:
        return f"exit code {result.exit_code} ({result.exception!r})"
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    if len(lines) != 1:
        return f"{len(lines)} lines: {result.stderr!r}"
    line = lines[0]
    if "Traceback" in result.output or "--debug" in line:  # the CLI's words for a bug
        return f"not clean: {line!r}"
    if not line.startswith("error: ") or names not in line:
        return f"does not name {names}: {line!r}"
    return None


def _problems(case: Case, folder: Path) -> list[str]:
    folder.mkdir()
    path = case.make(folder)
    names = str(path) if str(path).startswith("/dev/") else str(folder)
    check = _invoke(["config", "check", str(path)])
    out = folder / "runs"
    run = _invoke(["run", str(path), "--out", str(out), "-q"])
    problems = [
        f"{what}: {why}"
        for what, result in (("check", check), ("run", run))
        if (why := _clean_error(result, names)) is not None
    ]
    if not problems and case.expect and case.expect not in check.stderr:
        problems.append(f"check: expected {case.expect!r} in {check.stderr!r}")
    if out.exists() and any(out.iterdir()):
        problems.append("run left a run directory")
    return problems


def test_malformed_inputs_get_one_clean_line(tmp_path: Path) -> None:
    names = [case.name for case in CASES]
    assert len(set(names)) == len(names), "case names must be distinct"
    failures = {}
    for i, case in enumerate(CASES):
        problems = _problems(case, tmp_path / f"case{i}")
        if problems:
            failures[case.name] = problems
    print(f"\nmalformed inputs: tried {len(CASES)}, clean {len(CASES) - len(failures)}")
    assert len(CASES) >= 170
    assert not failures, "\n".join(f"{k}: {v}" for k, v in failures.items())


# -- (b) mutated shipped configs ------------------------------------------------------------------

MUTANTS_PER_FILE = 40
SEED = 20261203

REPLACEMENTS: list[Any] = [
    None,
    True,
    False,
    "text",
    "1e3",
    "",
    [],
    {},
    [1, 2],
    {"x": 1},
    0,
    -1,
    1,
    3,
    0.0,
    -0.5,
    1e-12,
    1e9,
    1e15,
    -1e15,
    2**40,
    10**30,
    float("inf"),
    float("-inf"),
    float("nan"),
]


def _paths(data: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path in the data (mapping keys and list indices)."""
    out = [prefix] if prefix else []
    if isinstance(data, dict):
        for key, value in data.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            out += _paths(value, (*prefix, i))
    return out


def _mutate(data: Any, rng: np.random.Generator) -> Any:
    """One random mutation: delete a key, replace a value, scale or retype a number, add a key."""
    mutant = copy.deepcopy(data)
    paths = _paths(mutant)
    path = paths[int(rng.integers(len(paths)))]
    parent = mutant
    for part in path[:-1]:
        parent = parent[part]
    key = path[-1]
    value = parent[key]
    kind = int(rng.integers(7))
    if kind == 0 and isinstance(parent, dict):
        del parent[key]
    elif kind == 1 and isinstance(parent, dict):
        parent[f"extra_{int(rng.integers(100))}"] = 1
    elif kind in (2, 6) and isinstance(value, bool | int | float):
        factor = float(rng.choice([-1.0, 0.0, 1e-9, 0.5, 2.0, 10.0, 1e6, 1e12]))
        parent[key] = type(value)(value * factor) if not isinstance(value, bool) else not value
    elif kind == 3 and isinstance(value, bool | int | float):
        parent[key] = float(value) if isinstance(value, int) else str(value)
    elif kind == 4 and isinstance(value, list | dict):
        parent[key] = value[0] if isinstance(value, list) and value else "x"
    else:
        parent[key] = copy.deepcopy(REPLACEMENTS[int(rng.integers(len(REPLACEMENTS)))])
    return mutant


@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of configs/, so mutants sit next to the station and data files they name."""
    target = tmp_path_factory.mktemp("configs") / "configs"
    shutil.copytree(CONFIGS, target)
    return target


def _build(path: Path) -> None:
    """What `hil run` builds before it creates a run directory (a station: its guarded device)."""
    if path.parent.name == "stations":
        build_device(load_station(path), np.random.SeedSequence(0)).close()
        return
    resolved = load_experiment(path)
    build_run(resolved, resolved.config.seed or 0).guard.close()


# Bench templates name placeholder instrument addresses: a mutant that validates would spend its
# time trying to reach them. Their settings models are the virtual twins' (mutated here) and the
# templates themselves are validated in tests/sim/test_virtual_stations.py.
SHIPPED = sorted(
    str(p.relative_to(CONFIGS))
    for p in CONFIGS.rglob("*.yaml")
    if not p.name.endswith("-bench.yaml")
)


@pytest.mark.parametrize("name", SHIPPED)
def test_mutated_configs_pass_or_fail_cleanly(shipped: Path, name: str) -> None:
    original = yaml.safe_load((CONFIGS / name).read_text())
    rng = np.random.default_rng([SEED, *name.encode()])
    inline = "station" in original and isinstance(original["station"], str)
    station = yaml.safe_load((CONFIGS / original["station"]).read_text()) if inline else None
    failures, accepted = [], 0
    for i in range(MUTANTS_PER_FILE):
        # experiments: half the mutants change the experiment, half its station (then inline)
        data = copy.deepcopy(original)
        if i % 2 and station is not None:
            data["station"] = _mutate(station, rng)
        else:
            data = _mutate(data, rng)
        path = (shipped / name).with_name(f"mutant-{Path(name).stem}-{i}.yaml")
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        result = _invoke(["config", "check", str(path)])
        if result.exit_code == 0:
            accepted += 1
            try:
                _build(path)
            except Exception as exc:
                failures.append(f"{path.name}: check passed, build failed: {exc!r}")
        elif (why := _clean_error(result, str(path))) is not None:
            failures.append(f"{path.name}: {why}\n{yaml.safe_dump(data)}")
    print(
        f"\nmutants of {name}: tried {MUTANTS_PER_FILE}, clean {MUTANTS_PER_FILE - len(failures)} "
        f"({accepted} accepted)"
    )
    assert not failures, "\n".join(failures)
