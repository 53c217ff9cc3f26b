"""Read a run's raw data (traces.h5) as numpy arrays, and export it for other tools.

    traces = open_traces("runs/2026-..._small_ab12")
    p = traces.plateaus                      # one row per DC plateau
    p.columns["outputs"][p.step == 3]        # what the device answered in step 3
    traces.channels["inputs"]                # the column names
    s = traces.streams                       # one row per stream: ragged waveforms
    s.ragged["received"][0]                  # n_samples × n_outputs of the first stream

The file is closed between steps while a run writes it, so it can be read while the run goes on
(a read that meets a step being written fails: read again). Export: `export_csv` (one CSV per
dataset) and `export_netcdf` (NetCDF3 via scipy, one variable per dataset).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from scipy.io import netcdf_file

from hil.core.types import JSONDict
from hil.traces import PAD_STEP, TRACES_FILE, readable

TABLES = ("plateaus", "controls", "streams", "pulses", "states", "demodulation")


@dataclass(frozen=True)
class Table:
    """One table of traces.h5: `step` and `time` (device clock, s) per row, fixed-width
    `columns` (numbers, rows × channels) and `text` (JSON strings), and `ragged` arrays (one
    per row, each in its own shape)."""

    name: str
    step: np.ndarray
    time: np.ndarray
    columns: dict[str, np.ndarray] = field(default_factory=dict)
    text: dict[str, list[str]] = field(default_factory=dict)
    ragged: dict[str, list[np.ndarray]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.step)

    def at(self, step: int) -> Table:
        """The rows of one step."""
        rows = np.flatnonzero(self.step == step)
        return Table(
            self.name,
            self.step[rows],
            self.time[rows],
            {k: v[rows] for k, v in self.columns.items()},
            {k: [v[i] for i in rows] for k, v in self.text.items()},
            {k: [v[i] for i in rows] for k, v in self.ragged.items()},
        )


@dataclass(frozen=True)
class Traces:
    """A run's traces: schema, config, channel names and the tables (empty when not recorded)."""

    path: Path
    schema_version: int
    config: JSONDict
    channels: dict[str, tuple[str, ...]]
    tables: dict[str, Table]
    recording_stopped: str | None = None

    @property
    def plateaus(self) -> Table:
        return self.tables["plateaus"]

    @property
    def streams(self) -> Table:
        return self.tables["streams"]

    @property
    def steps(self) -> np.ndarray:
        """Every step number with a recorded request, in order (the final measurement is -1)."""
        return np.unique(np.concatenate([t.step for t in self.tables.values()]))


def _table(name: str, group: h5py.Group | None) -> Table:
    """A table's rows: every column read up to the first damaged chunk (a step a kill -9 cut
    short), cut to the rows all columns have, padding rows dropped."""
    if group is None or "step" not in group:
        return Table(name, np.zeros(0, dtype=np.int64), np.zeros(0))
    flats = {key.removesuffix("_index") for key in group if key.endswith("_index")}
    read = {
        key: readable(dataset)
        for key, dataset in group.items()
        if isinstance(dataset, h5py.Dataset) and key not in flats
    }
    n = min(len(values) for values in read.values())
    ragged: dict[str, list[np.ndarray]] = {}
    for key in sorted(flats):
        ragged[key], n = _ragged(group[key], read[f"{key}_index"][:n])
    keep = np.flatnonzero(read["step"][:n] != PAD_STEP)
    columns: dict[str, np.ndarray] = {}
    text: dict[str, list[str]] = {}
    for key, values in read.items():
        if key in ("step", "time") or key.endswith("_index"):
            continue
        if h5py.check_string_dtype(group[key].dtype) is not None:
            text[key] = [v.decode() if isinstance(v, bytes) else str(v) for v in values[keep]]
        else:
            columns[key] = values[keep]
    return Table(
        name,
        read["step"][keep],
        read["time"][keep],
        columns,
        text,
        {key: [rows[i] for i in keep] for key, rows in ragged.items()},
    )


def _ragged(flat: h5py.Dataset, index: np.ndarray) -> tuple[list[np.ndarray], int]:
    """Each index row's array from the flat data, up to the first that cannot be read; returns
    them and how many rows could."""
    arrays: list[np.ndarray] = []
    for r in index:
        start, shape = int(r[0]), tuple(int(v) for v in r[1:])
        try:
            arrays.append(np.asarray(flat[start : start + int(np.prod(shape))]).reshape(shape))
        except (OSError, ValueError):
            break
    return arrays, len(arrays)


def open_traces(run_dir: Path | str) -> Traces:
    """Read `run_dir`/traces.h5 (or a traces file given directly) into memory."""
    path = Path(run_dir)
    if path.is_dir():
        path = path / TRACES_FILE
    with h5py.File(path, "r", locking=False) as f:
        config_text = str(f["config"].asstr()[()]) if "config" in f else str(f.attrs["config"])
        channels = {
            key: tuple(str(c) for c in dataset.asstr()[()])
            for key, dataset in f.get("channels", {}).items()
        }
        stopped = f.attrs.get("recording_stopped")
        tables = {name: _table(name, f.get(name)) for name in TABLES}
        return Traces(
            path=path,
            schema_version=int(f.attrs["schema_version"]),
            config=json.loads(config_text),
            channels=channels,
            tables=tables,
            recording_stopped=None if stopped is None else str(stopped),
        )


def _datasets(f: h5py.File) -> Iterator[tuple[str, h5py.Dataset]]:
    """Every dataset of a traces file as (`group_name`, dataset), in file order."""
    found: list[tuple[str, h5py.Dataset]] = []
    f.visititems(
        lambda name, obj: (
            found.append((name.replace("/", "_"), obj)) if isinstance(obj, h5py.Dataset) else None
        )
    )
    return iter(found)


def _values(dataset: h5py.Dataset) -> np.ndarray:
    """A dataset's readable rows, without the padding rows of its table (see hil.traces)."""
    values = readable(dataset)
    parent = dataset.parent
    name = dataset.name.rsplit("/", 1)[-1]
    flat = f"{name}_index" in parent
    if "step" in parent and not flat:
        steps = readable(parent["step"])
        n = min(len(values), len(steps))
        values = values[:n][steps[:n] != PAD_STEP]
    if h5py.check_string_dtype(dataset.dtype) is not None:
        return np.array(
            [v.decode() if isinstance(v, bytes) else str(v) for v in values], dtype=object
        )
    return np.asarray(values)


def export_csv(run_dir: Path, out: Path) -> list[Path]:
    """One CSV per dataset of traces.h5 in `out` (rows as in the file; a header of channel
    names where the dataset has them); returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    with h5py.File(Path(run_dir) / TRACES_FILE, "r", locking=False) as f:
        for name, dataset in _datasets(f):
            values = _values(dataset)
            if values.ndim == 0:
                values = values.reshape(1)
            rows = values.reshape(len(values), int(np.prod(values.shape[1:])))
            header: list[Any] = [str(c) for c in dataset.attrs.get("channels", [])]
            if len(header) != rows.shape[1]:
                header = (
                    [name] if rows.shape[1] == 1 else [f"{name}_{i}" for i in range(rows.shape[1])]
                )
            path = out / f"{name}.csv"
            with path.open("w", newline="", encoding="utf-8") as handle:
                writer = csv.writer(handle)
                writer.writerow(header)
                writer.writerows(rows.tolist())
            written.append(path)
    return written


def _chars(values: np.ndarray) -> np.ndarray:
    """Strings as a NetCDF3 char array (rows × longest)."""
    encoded = [str(v).encode("utf-8") for v in values.ravel()]
    width = max([1, *(len(e) for e in encoded)])
    return np.array([list(e.ljust(width, b"\0")) for e in encoded], dtype=np.uint8).view("S1")


def export_netcdf(run_dir: Path, out: Path) -> Path:
    """traces.h5 as one NetCDF3 file: a variable per dataset (strings as char arrays, dimensions
    `<variable>_<axis>`), channel names in each variable's `channels` attribute, the schema
    version and the config as global attributes."""
    with (
        h5py.File(Path(run_dir) / TRACES_FILE, "r", locking=False) as f,
        netcdf_file(out, "w", version=2) as nc,
    ):
        nc.schema_version = int(f.attrs["schema_version"])
        nc.run_id = str(f.attrs["run_id"])
        nc.config = str(f.attrs["config"])
        for name, dataset in _datasets(f):
            values = _values(dataset)
            if values.dtype == object:
                values = _chars(values)
            if values.ndim == 0:
                values = values.reshape(1)
            if values.size == 0:  # NetCDF3 has one unlimited dimension only: left out
                continue
            dims = tuple(f"{name}_{axis}" for axis in range(values.ndim))
            for dim, size in zip(dims, values.shape, strict=True):
                nc.createDimension(dim, size)
            dtype = np.int32 if values.dtype.kind in "iu" else values.dtype
            variable = nc.createVariable(name, dtype, dims)
            variable[...] = values.astype(dtype)
            if "channels" in dataset.attrs:
                variable.channels = ",".join(str(c) for c in dataset.attrs["channels"])
    return out
