"""The run directory: run.json, the events journal, the atomic checkpoint and the summary.

Everything is plain JSON so a run is readable without this package. The journal is appended and
flushed per step; the checkpoint is replaced atomically, so a process killed at any moment loses at
most the step in flight.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hil.core import JSONDict, RunError

RUN_FILE = "run.json"
EVENTS_FILE = "events.jsonl"
CHECKPOINT_FILE = "checkpoint.json"
SUMMARY_FILE = "summary.json"
LOG_FILE = "run.log"
LOCK_FILE = ".lock"
REPORT_DIR = "report"
SCHEMA_VERSION = 1


def plain(value: Any) -> Any:
    """JSON-safe copy: non-finite floats become null (strict JSON has no NaN or Infinity)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def write_json_atomic(path: Path, data: Any) -> None:
    """Write to a temporary file, fsync, then rename over `path`: readers never see half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        json.dump(plain(data), fh, indent=2, allow_nan=False)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    try:
        with path.open(encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise RunError(f"{path}: missing") from None
    except json.JSONDecodeError as exc:
        raise RunError(f"{path}: not valid JSON ({exc}); the file is damaged") from None


class RunDirectory:
    """One run's files."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def create(cls, parent: Path, name: str) -> RunDirectory:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = parent / f"{stamp}_{name}_{secrets.token_hex(3)}"
        path.mkdir(parents=True, exist_ok=False)
        return cls(path)

    @classmethod
    def open(cls, path: Path) -> RunDirectory:
        """An existing run; a clear error if `path` is not one."""
        if not path.is_dir():
            raise RunError(f"{path}: no such run directory; give the path of a run under runs/")
        if not (path / RUN_FILE).is_file():
            raise RunError(f"{path}: not a run directory (no {RUN_FILE})")
        return cls(path)

    def file(self, name: str) -> Path:
        return self.path / name

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive use of the run: two processes must never drive one run (or one device)."""
        with self.file(LOCK_FILE).open("a+", encoding="utf-8") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.seek(0)
                owner = fh.read().strip() or "another process"
                raise RunError(
                    f"{self.path}: the run is in use by {owner}; wait for it to stop "
                    "(Ctrl-C pauses it) before resuming"
                ) from None
            fh.seek(0)
            fh.truncate()
            fh.write(f"pid {os.getpid()}\n")
            fh.flush()
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    # run.json -----------------------------------------------------------------------------
    def write_run_info(self, info: JSONDict) -> None:
        write_json_atomic(self.file(RUN_FILE), {"schema_version": SCHEMA_VERSION, **info})

    def run_info(self) -> JSONDict:
        info: JSONDict = read_json(self.file(RUN_FILE))
        return info

    # events.jsonl ---------------------------------------------------------------------------
    def append_event(self, record: JSONDict) -> None:
        line = json.dumps(plain(record), allow_nan=False)
        with self.file(EVENTS_FILE).open("a", encoding="utf-8") as fh:
            fh.write(line + "\n")
            fh.flush()

    def events(self) -> list[JSONDict]:
        """Complete journal records; a torn last line (killed mid-write) is skipped."""
        path = self.file(EVENTS_FILE)
        if not path.exists():
            return []
        records = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return records

    def truncate_events(self, steps_done: int) -> None:
        """Keep only the step records up to the checkpoint (drop what a resume will redo)."""
        kept = [
            r for r in self.events() if r.get("event") != "step" or int(r["step"]) <= steps_done
        ]
        tmp = self.file(f".{EVENTS_FILE}.tmp")
        with tmp.open("w", encoding="utf-8") as fh:
            fh.writelines(json.dumps(r, allow_nan=False) + "\n" for r in kept)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.file(EVENTS_FILE))

    # checkpoint.json and summary.json ----------------------------------------------------------
    def write_checkpoint(self, state: JSONDict) -> None:
        write_json_atomic(self.file(CHECKPOINT_FILE), state)

    def checkpoint(self) -> JSONDict | None:
        path = self.file(CHECKPOINT_FILE)
        if not path.exists():
            return None
        state: JSONDict = read_json(path)
        return state

    def write_summary(self, summary: JSONDict) -> None:
        write_json_atomic(self.file(SUMMARY_FILE), summary)

    def summary(self) -> JSONDict | None:
        path = self.file(SUMMARY_FILE)
        if not path.exists():
            return None
        summary: JSONDict = read_json(path)
        return summary
