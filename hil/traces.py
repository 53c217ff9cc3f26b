"""traces.h5: the raw data of a run — every request the guard passed and what the device answered.

The writer observes the safety guard (`SafetyGuard.observe`), buffers one step's requests in memory
and appends them at the step boundary, before the checkpoint: the file is opened, appended to,
flushed and closed again per step, so between steps it is a closed, consistent HDF5 file that any
reader can open, and a kill -9 can only hit the step being written. Rows carry their step number,
and `reopen` (resume) drops the rows of steps after the checkpoint, so a step that was written
but not checkpointed is recorded again, once. Recording never fails a run: an error or the size
cap (`record.max_mb`) stops it, logged once and noted in the `recording_stopped` attribute.

Layout (schema 1), every dataset append-only along its first axis, chunked and gzip-compressed:

- `/` attributes `schema_version`, `run_id`, `config` (the resolved config, JSON), `record_mode`;
  `/channels/{inputs,outputs,controls}` the channel names (dimension scales of the columns);
- `/plateaus` one row per DC plateau (`measure`, `measure_nodes`): `step`, `time` (device clock,
  s, when the request ended), `request` (its number within the step), `inputs`, `outputs`,
  `controls` (the levels held);
- `/controls` one row per `set_controls`: `step`, `time`, `controls`;
- `/streams` one row per `stream`: `step`, `time`, `channels` (JSON), and the ragged `waveform`
  (sent) and `received`: a flat float dataset plus `<name>_index` rows (start, shape...);
- `/pulses` (`counts`), `/states` (`state`, from `read_state`), `/demodulation` (`inputs`,
  `controls`, `dithers` JSON, ragged `xy`: dithers × reads × (X, Y)).

Steps are numbered from 1 as in the journal; the final measurement after the last step is
recorded as step `FINAL_STEP` (-1). Each step's rows start on a fresh chunk: the columns of a
table are padded to a chunk boundary first (`align`; padding rows have step `PAD_STEP`, 0, and
the readers drop them), so a step never rewrites a chunk holding an earlier one, and a kill -9
in the middle of a step can only damage that step's chunks; the readers (`readable`) stop at the
first chunk they cannot read.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import h5py
import numpy as np

from hil.config import RecordPolicy
from hil.core.channels import DeviceSpec, Role
from hil.core.types import JSONDict
from hil.safety.guard import DeviceRequest, SafetyGuard

log = logging.getLogger(__name__)

TRACES_FILE = "traces.h5"
TRACES_SCHEMA = 1
FINAL_STEP = -1
MB = 1_000_000
ROLES = {"inputs": Role.INPUT, "outputs": Role.OUTPUT, "controls": Role.CONTROL}
STRING = h5py.string_dtype()
TABLE_CHUNK_ROWS = 64  # rows per chunk of every table column
FLAT_CHUNK = 8192  # values per chunk of a ragged column's flat data (64 kB of float64)
PAD_STEP = 0
"""The step number of padding rows (steps count from 1; the final measurement is -1)."""
_NEW_COLUMN_BYTES = 4096  # allowance for a new dataset's header and first chunk index
_NEW_FILE_BYTES = 256 * 1024  # a new file's header, attributes and channel scales, generously
DISK_RESERVE = 8 * MB
"""Free space recording never takes: the journal, checkpoint and summary must still fit."""
_STREAMED = {"stream"}  # left out by record mode "plateaus"

T = TypeVar("T")


@dataclass
class Rows:
    """Rows for one table: `fixed` columns (k rows each) and `ragged` ones (one array, k == 1)."""

    table: str
    fixed: dict[str, np.ndarray]
    ragged: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (*self.fixed.values(), *self.ragged.values()))


def _copy(value: Any, dtype: type = np.float64) -> np.ndarray:
    return np.array(value, dtype=dtype, copy=True)


def _head(step: int, request: DeviceRequest, k: int = 1) -> dict[str, np.ndarray]:
    return {"step": np.full(k, step, dtype=np.int64), "time": np.full(k, request.time)}


def rows_of(step: int, number: int, request: DeviceRequest) -> Rows:
    """The rows one request adds (copies: the caller may change its arrays afterwards)."""
    sent, got = request.sent, request.received
    if request.kind in ("measure", "measure_nodes"):
        inputs = _copy(sent["inputs"])
        outputs = _copy(got[0] if request.kind == "measure_nodes" else got)
        k = len(inputs)
        controls = np.repeat(_copy(sent["controls"])[np.newaxis, :], k, axis=0)
        fixed = {**_head(step, request, k), "request": np.full(k, number, dtype=np.int64)}
        return Rows(
            "plateaus", {**fixed, "inputs": inputs, "outputs": outputs, "controls": controls}
        )
    if request.kind == "set_controls":
        return Rows("controls", {**_head(step, request), "controls": _copy([sent["controls"]])})
    if request.kind == "stream":
        channels = np.array([json.dumps(list(sent["channels"]))], dtype=object)
        ragged = {"waveform": _copy(sent["waveform"]), "received": _copy(got)}
        return Rows("streams", {**_head(step, request), "channels": channels}, ragged)
    if request.kind == "apply_pulses":
        return Rows("pulses", _head(step, request), {"counts": _copy(sent["counts"], np.int64)})
    if request.kind == "read_state":
        return Rows("states", _head(step, request), {"state": _copy(got)})
    if request.kind == "demodulate":
        dithers = {name: list(pair) for name, pair in sent["dithers"].items()}
        fixed = {
            **_head(step, request),
            "inputs": _copy([sent["inputs"]]),
            "controls": _copy([sent["controls"]]),
            "dithers": np.array([json.dumps(dithers)], dtype=object),
        }
        return Rows("demodulation", fixed, {"xy": _copy(got)})
    raise ValueError(f"no trace layout for a {request.kind!r} request")


def _chunks(trailing: tuple[int, ...], flat: bool) -> tuple[int, ...]:
    """Chunk shape: a table's columns all share TABLE_CHUNK_ROWS rows per chunk (so one padding
    aligns them all); a flat ragged column FLAT_CHUNK values."""
    return (FLAT_CHUNK if flat else TABLE_CHUNK_ROWS, *trailing)


def readable(dataset: h5py.Dataset) -> np.ndarray:
    """The dataset's rows up to the first chunk that cannot be read (a step a kill -9 cut short
    writes only fresh chunks, see `align`); everything when all can."""
    try:
        return np.asarray(dataset[()])
    except OSError:
        pass
    step = dataset.chunks[0] if dataset.chunks else len(dataset)
    parts = []
    for start in range(0, len(dataset), step):
        try:
            parts.append(np.asarray(dataset[start : start + step]))
        except OSError:
            break
    empty = np.zeros((0, *dataset.shape[1:]), dtype=dataset.dtype)
    return np.concatenate(parts) if parts else empty


def align(group: h5py.Group) -> None:
    """Pad every column of a table to a chunk boundary before a step's rows (pad rows have
    step PAD_STEP): a step then writes only fresh chunks and never rewrites one that holds an
    earlier step, so a kill -9 during a step cannot damage the steps before it (a rewritten
    compressed chunk moves, and its old place may be reused before the index that points to it
    is written). Tables of files written before this rule (other chunk shapes) are left as
    they are."""
    if "step" not in group:
        return
    columns = [d for d in group.values() if isinstance(d, h5py.Dataset)]
    flats = {name.removesuffix("_index") for name in group if name.endswith("_index")}
    rows = [d for d in columns if d.name.rsplit("/", 1)[-1] not in flats]
    if any(d.chunks is None or d.chunks[0] != TABLE_CHUNK_ROWS for d in rows):
        return
    n = len(group["step"])
    pad = -n % TABLE_CHUNK_ROWS
    for dataset in rows:
        if pad:
            dataset.resize(n + pad, axis=0)
            if dataset.name.endswith("/step"):
                dataset[n:] = PAD_STEP
    for name in flats:
        flat = group[name]
        if flat.chunks is not None and flat.chunks[0] == FLAT_CHUNK:
            flat.resize(len(flat) + (-len(flat) % FLAT_CHUNK), axis=0)


def _append(group: h5py.Group, name: str, rows: np.ndarray, *, flat: bool = False) -> int:
    """Append `rows` along the first axis of `group[name]` (created on first use; `flat`: the
    values of a ragged column); returns the row count before."""
    if name not in group:
        trailing = tuple(rows.shape[1:])
        dtype = STRING if rows.dtype == object else rows.dtype
        group.create_dataset(
            name,
            shape=(0, *trailing),
            maxshape=(None, *trailing),
            dtype=dtype,
            chunks=_chunks(trailing, flat),
            compression="gzip",
            compression_opts=4,
            shuffle=rows.dtype != object,
        )
        scale = f"/channels/{name}"
        if name in ROLES and len(trailing) == 1 and scale in group.file:
            group[name].dims[1].attach_scale(group.file[scale])
            group[name].attrs["channels"] = [str(c) for c in group.file[scale].asstr()[()]]
    dataset = group[name]
    before = int(dataset.shape[0])
    dataset.resize(before + len(rows), axis=0)
    dataset[before:] = rows
    return before


def write_rows(file: h5py.File, rows: Rows) -> None:
    """Append one request's rows; a column without channels (width 0) is left out."""
    group = file.require_group(rows.table)
    for name, values in rows.fixed.items():
        if values.ndim == 1 or math.prod(values.shape[1:]) > 0:
            _append(group, name, values)
    for name, values in rows.ragged.items():
        start = _append(group, name, values.ravel(), flat=True)
        _append(group, f"{name}_index", np.array([[start, *values.shape]], dtype=np.int64))


def _keep_steps(group: h5py.Group, last_step: int) -> None:
    """Cut every column of a table after the last row of steps 1..last_step (rows are in step
    order with padding between steps, and the final measurement comes last; rows past a chunk
    a kill damaged are cut too)."""
    steps = readable(group["step"])
    kept = np.flatnonzero((steps >= 1) & (steps <= last_step))
    keep = int(kept[-1]) + 1 if kept.size else 0
    for name in list(group):
        if name.endswith("_index") or name == "step" or f"{name}_index" in group:
            continue
        group[name].resize(keep, axis=0)
    for name in [n for n in group if n.endswith("_index")]:
        index = group[name]
        flat = name.removesuffix("_index")
        end = 0 if keep == 0 else int(index[keep - 1, 0] + math.prod(index[keep - 1, 1:]))
        index.resize(keep, axis=0)
        group[flat].resize(end, axis=0)
    group["step"].resize(keep, axis=0)


class TraceWriter:
    """Records the guard's requests into `path`, one step at a time (see the module doc)."""

    def __init__(self, path: Path, policy: RecordPolicy, spec: DeviceSpec) -> None:
        self.path = path
        self.policy = policy
        self._spec = spec
        self._step: int | None = None
        self._buffer: list[Rows] = []
        self._growth = 0  # the largest growth of the file by one step so far (bytes)
        self._stopped: str | None = None if policy.mode != "none" else "record mode none"

    @property
    def stopped(self) -> str | None:
        """Why recording stopped (None while it records)."""
        return self._stopped

    def create(self, run_id: str, config: JSONDict) -> None:
        """A new file with the schema, the run's identity, config and channel names."""
        if self._room(_NEW_FILE_BYTES):
            self._guarded(lambda: self._create(run_id, config))

    def _create(self, run_id: str, config: JSONDict) -> None:
        with h5py.File(self.path, "w", locking=False) as f:
            f.attrs["schema_version"] = TRACES_SCHEMA
            f.attrs["run_id"] = run_id
            f.attrs["record_mode"] = self.policy.mode
            f.attrs["max_mb"] = self.policy.max_mb
            f.attrs["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            text = json.dumps(config, sort_keys=True)
            if len(text) < 60_000:  # compact attributes hold up to 64 kB
                f.attrs["config"] = text
            else:
                f.create_dataset("config", data=text, dtype=STRING)
                f.attrs["config"] = "see the /config dataset"
            channels = f.create_group("channels")
            for name, role in ROLES.items():
                names = [c.name for c in self._spec.channels if c.role is role]
                if names:
                    channels.create_dataset(name, data=names, dtype=STRING).make_scale(name)
            if self._stopped:
                f.attrs["recording_stopped"] = self._stopped

    def reopen(self, steps_done: int, run_id: str, config: JSONDict) -> None:
        """Continue the file of a resumed run: rows of steps after `steps_done` (written before
        a kill, not checkpointed) are dropped; a missing or unreadable file is set aside and a
        new one started."""
        if not self.path.is_file():
            log.warning("%s is missing; recording starts again at this resume", self.path)
            self.create(run_id, config)
            return
        if not self._room(_NEW_FILE_BYTES):
            return
        try:
            with h5py.File(self.path, "a", locking=False) as f:
                if f.attrs.get("recording_stopped"):
                    self._stopped = str(f.attrs["recording_stopped"])
                for table in f.values():
                    if isinstance(table, h5py.Group) and "step" in table:
                        _keep_steps(table, steps_done)
        except Exception as exc:
            aside = self.path.with_name(f"{self.path.name}.damaged-{int(time.time())}")
            log.warning("%s could not be repaired (%s); moved to %s", self.path, exc, aside.name)
            self._guarded(lambda: os.replace(self.path, aside))
            if not self._stopped:
                self.create(run_id, config)

    def attach(self, guard: SafetyGuard) -> Callable[[], None]:
        """Observe `guard`; returns the detach."""
        return guard.observe(self._on_request)

    def recording(self, step: int, call: Callable[[], T]) -> Callable[[], T]:
        """`call` with its requests buffered as `step`; each attempt (a retry) starts afresh."""

        def attempt() -> T:
            self._step, self._buffer = step, []
            return call()

        return attempt

    def _on_request(self, request: DeviceRequest) -> None:
        if self._stopped or self._step is None:
            return
        if self.policy.mode == "plateaus" and request.kind in _STREAMED:
            return
        self._buffer.append(rows_of(self._step, len(self._buffer), request))

    def write_step(self) -> None:
        """Append the buffered step and close the file (readable, and safe from a later kill)."""
        rows, self._buffer, self._step = self._buffer, [], None
        if self._stopped or not rows:
            return
        size = self.path.stat().st_size if self.path.exists() else 0
        if size + self._estimate(rows) > self.policy.max_mb * MB:
            self._stop(f"the size cap record.max_mb {self.policy.max_mb:g} MB was reached")
            return
        if not self._room(self._estimate(rows)):
            return

        def append() -> None:
            with h5py.File(self.path, "a", locking=False) as f:
                for table in dict.fromkeys(r.table for r in rows):
                    if table in f:
                        align(f[table])
                for r in rows:
                    write_rows(f, r)
                f.flush()
            self._growth = max(self._growth, self.path.stat().st_size - size)

        self._guarded(append)

    def _estimate(self, rows: list[Rows]) -> int:
        """What appending `rows` may add to the file: their raw size, or the largest growth
        seen so far (chunks and HDF5 metadata), or on the first write a per-column allowance."""
        raw = sum(r.nbytes for r in rows)
        if self._growth == 0:
            names = [(r.table, c) for r in rows for c in (*r.fixed, *r.ragged)]
            names += [(r.table, f"{c}_index") for r in rows for c in r.ragged]
            columns = set(names)
            return raw + _NEW_COLUMN_BYTES * len(columns)
        return max(raw, self._growth)

    def _room(self, need: int) -> bool:
        """Whether the disk has `need` bytes and the reserve the run's own files need. HDF5
        must not meet a full disk: a write that fails part-way can leave the library in a state
        where the next one crashes the process. Without room, recording stops untouched."""
        try:
            free = shutil.disk_usage(self.path.parent).free
        except OSError as exc:
            self._stop(f"the free space of {self.path.parent} is unknown ({exc})", note=False)
            return False
        if free < need + DISK_RESERVE:
            self._stop(
                f"the disk has {free / MB:.3g} MB free, less than this step needs and the "
                f"{DISK_RESERVE / MB:g} MB kept for the run's journal and checkpoint",
                note=False,
            )
            return False
        return True

    def _guarded(self, action: Callable[[], None]) -> None:
        """Run a file action; an error stops recording instead of failing the run."""
        try:
            action()
        except Exception as exc:
            self._stop(f"writing {self.path.name} failed ({type(exc).__name__}: {exc})")

    def _stop(self, reason: str, *, note: bool = True) -> None:
        """Stop recording; `note` it in the file too (not when the disk is full)."""
        self._stopped = reason
        log.warning("recording stopped: %s; the run goes on", reason)
        if not note:
            return
        try:
            with h5py.File(self.path, "a", locking=False) as f:
                f.attrs["recording_stopped"] = reason
        except Exception as exc:
            log.warning("%s: could not note that recording stopped (%s)", self.path, exc)
