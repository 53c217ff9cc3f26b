"""The run directory: run.json, the events journal, the atomic checkpoint and the summary.

Everything is plain JSON so a run is readable without this package. Each of run.json, the
checkpoint and every journal line carries a sha256 over its own canonical JSON, so an edited or
damaged file is recognised instead of silently resumed from. The journal is append-only: a
resume may drop only a torn last line (a kill mid-write) and append the step the checkpoint
already holds. `verify()` checks that run.json, journal and checkpoint agree before anything is
changed; a failing check is a `RunError` that says what disagrees and what to do.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import math
import os
import secrets
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hil.core import JSONDict, RunError

log = logging.getLogger(__name__)

RUN_FILE = "run.json"
EVENTS_FILE = "events.jsonl"
CHECKPOINT_FILE = "checkpoint.json"
SUMMARY_FILE = "summary.json"
LOG_FILE = "run.log"
LOCK_FILE = ".lock"
RESERVE_FILE = ".reserve"
REPORT_DIR = "report"
SCHEMA_VERSION = 2
SEAL = "sha256"
RESERVE_BYTES = 32 * 1024  # room for summary.json, the stop event and run.log on a full disk

_HINTS = {
    errno.ENOSPC: "the disk is full; free space first",
    errno.EDQUOT: "the disk quota is used up; free space first",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "no permission to write there",
    errno.EPERM: "no permission to write there",
}


class RunFileError(RunError):
    """A run file could not be read or written (disk full, read-only, no permission)."""


def file_error(path: Path, exc: OSError, doing: str) -> RunFileError:
    """One line for an OSError on a run file: which file, what failed, and what to do."""
    hint = _HINTS.get(exc.errno or 0)
    reason = exc.strerror or str(exc)
    return RunFileError(f"{path}: cannot {doing} ({reason})" + (f"; {hint}" if hint else ""))


def plain(value: Any) -> Any:
    """JSON-safe copy: non-finite floats become null (strict JSON has no NaN or Infinity)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def _dumps(value: Any, **options: Any) -> str:
    """json.dumps, strict: non-finite floats become null (the copy is made only if needed)."""
    try:
        return json.dumps(value, allow_nan=False, **options)
    except ValueError:
        return json.dumps(plain(value), allow_nan=False, **options)


def canonical(value: Any) -> str:
    """The canonical JSON text of `value` (sorted keys, no spaces): what checksums are taken of."""
    return _dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _sha(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def digest(value: Any) -> str:
    """`sha256:<hex>` of the canonical JSON of `value`."""
    return _sha(canonical(value))


def seal(data: JSONDict) -> JSONDict:
    """`data` (made JSON-safe) plus its own checksum under the key "sha256"."""
    body = {k: v for k, v in plain(data).items() if k != SEAL}
    return {**body, SEAL: digest(body)}


def sealed_text(data: JSONDict) -> str:
    """The canonical JSON of `data` with its checksum added, serialised once (large states)."""
    text = canonical({k: v for k, v in data.items() if k != SEAL})
    tag = f'"{SEAL}":"{_sha(text)}"}}'
    return text[:-1] + ("," if text != "{}" else "") + tag


def seal_intact(data: JSONDict) -> bool:
    """Whether `data` carries a checksum and it matches the rest of `data`."""
    body = {k: v for k, v in data.items() if k != SEAL}
    return data.get(SEAL) == digest(body)


def unsealed(record: JSONDict) -> JSONDict:
    """A journal record without its bookkeeping (line number and checksum)."""
    return {k: v for k, v in record.items() if k not in (SEAL, "seq")}


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write to a temporary file, fsync, then rename over `path`: readers never see half a file."""
    write_text_atomic(path, _dumps(data, indent=2) + "\n")


def write_text_atomic(path: Path, text: str) -> None:
    """Atomic replace of `path` by `text`; on any failure the temporary file is removed."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with tmp.open("w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException as exc:
        with suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise file_error(path, exc, "write") from None
        raise


def read_json(path: Path) -> Any:
    try:
        with path.open(encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise RunError(f"{path}: missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RunError(
            f"{path}: not valid JSON ({exc}); the file is damaged: restore it from a backup"
        ) from None
    except OSError as exc:
        raise file_error(path, exc, "read") from None


@dataclass
class JournalScan:
    """The journal as read: its complete records and a torn last line, if any."""

    records: list[JSONDict]
    complete_bytes: int  # length of the file up to and including the last newline
    torn: bytes  # a partial last line (a kill mid-write); empty if none

    def steps(self) -> list[JSONDict]:
        return [r for r in self.records if r.get("event") == "step"]


@dataclass
class VerifiedRun:
    """A run whose run.json, journal and checkpoint agree: what resume continues from."""

    info: JSONDict
    journal: JournalScan
    checkpoint: JSONDict | None
    steps_done: int
    missing_step: JSONDict | None  # the checkpoint's last step, not yet in the journal


class Journal:
    """Appends sealed, numbered records to events.jsonl; never rewrites what is there.

    A record whose write failed stays pending and is written before the next one, so the
    journal keeps its order; a failed write is cut back so no partial line is left.
    """

    def __init__(self, path: Path, next_seq: int) -> None:
        self.path = path
        self.next_seq = next_seq
        self._pending: list[bytes] = []

    def append(self, record: JSONDict) -> None:
        line = _dumps(seal({**record, "seq": self.next_seq})) + "\n"
        self._pending.append(line.encode("utf-8"))
        self.next_seq += 1
        self.flush()

    def flush(self) -> None:
        """Write what is pending (appended and fsynced). Ctrl-C and SIGTERM wait until it is
        done: their handlers raise, and a raise between the write and forgetting what was
        written would write a record twice."""
        if not self._pending:
            return
        with _signals_deferred():
            self._flush()

    def _flush(self) -> None:
        data = b"".join(self._pending)
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as exc:
            raise file_error(self.path, exc, "append to the journal") from None
        try:
            start = os.fstat(fd).st_size
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            except BaseException as exc:
                try:
                    os.ftruncate(fd, start)  # no partial line stays behind
                except OSError:
                    log.warning("%s: could not cut back a partial write", self.path)
                if isinstance(exc, OSError):
                    raise file_error(self.path, exc, "append to the journal") from None
                raise
        finally:
            os.close(fd)
        self._pending.clear()


@contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM (delivered when the block ends) in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class RunDirectory:
    """One run's files."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def create(cls, parent: Path, name: str) -> RunDirectory:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = parent / f"{stamp}_{name}_{secrets.token_hex(3)}"
        try:
            path.mkdir(parents=True, exist_ok=False)
        except OSError as exc:
            raise file_error(parent, exc, "create the run directory") from None
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
        path = self.file(LOCK_FILE)
        try:
            fh = path.open("a+", encoding="utf-8")
        except OSError as exc:
            raise RunFileError(
                f"{self.path}: the run directory is not writable ({exc.strerror}); a run can only "
                "be continued where it can record what it does (copy it somewhere writable)"
            ) from None
        with fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.seek(0)
                owner = fh.read().strip() or "another process"
                raise RunError(
                    f"{self.path}: the run is in use by {owner}; wait for it to stop "
                    "(Ctrl-C pauses it) before resuming"
                ) from None
            try:
                fh.seek(0)
                fh.truncate()
                fh.write(f"pid {os.getpid()}\n")
                fh.flush()
            except OSError as exc:
                raise file_error(path, exc, "write") from None
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    # space and temporary files ------------------------------------------------------------------
    def reserve_space(self) -> None:
        """Set a little disk space aside, so a run stopped by a full disk can still say so."""
        path = self.file(RESERVE_FILE)
        try:
            with path.open("wb") as fh:
                fh.write(bytes(RESERVE_BYTES))
                fh.flush()
                os.fsync(fh.fileno())
        except OSError:
            path.unlink(missing_ok=True)

    def release_space(self) -> None:
        try:
            self.file(RESERVE_FILE).unlink(missing_ok=True)
        except OSError as exc:
            log.warning("%s: could not remove the space reserve: %s", self.path, exc.strerror)

    def remove_temporaries(self) -> list[str]:
        """Delete temporary files a killed process left behind; returns their names."""
        removed = []
        for path in self.path.glob(".*.tmp"):
            path.unlink(missing_ok=True)
            removed.append(path.name)
        self.file(RESERVE_FILE).unlink(missing_ok=True)
        return removed

    # run.json -----------------------------------------------------------------------------
    def write_run_info(self, info: JSONDict) -> None:
        write_json_atomic(self.file(RUN_FILE), seal({"schema_version": SCHEMA_VERSION, **info}))

    def run_info(self) -> JSONDict:
        info = read_json(self.file(RUN_FILE))
        if not isinstance(info, dict):
            raise RunError(f"{self.file(RUN_FILE)}: not a run record (damaged)")
        return info

    # events.jsonl ---------------------------------------------------------------------------
    def journal(self, next_seq: int = 0) -> Journal:
        return Journal(self.file(EVENTS_FILE), next_seq)

    def events(self) -> list[JSONDict]:
        """Journal records, leniently (for reading and reports): unreadable lines are skipped."""
        path = self.file(EVENTS_FILE)
        if not path.exists():
            return []
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            raise file_error(path, exc, "read") from None
        records = []
        for line in text.splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict):
                records.append(record)
        return records

    def scan_journal(self) -> JournalScan:
        """Every complete line must be a sealed record numbered in order; a torn tail is kept
        apart. Raises RunError naming the first bad line."""
        path = self.file(EVENTS_FILE)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return JournalScan(records=[], complete_bytes=0, torn=b"")
        except OSError as exc:
            raise file_error(path, exc, "read") from None
        head, newline, torn = data.rpartition(b"\n")
        records: list[JSONDict] = []
        for number, line in enumerate(head.split(b"\n") if newline else [], start=1):
            records.append(_journal_record(path, number, line))
        return JournalScan(records=records, complete_bytes=len(head) + len(newline), torn=torn)

    def drop_torn_line(self, scan: JournalScan) -> None:
        """Cut a partial last line off the journal (the only change to it ever made)."""
        path = self.file(EVENTS_FILE)
        try:
            os.truncate(path, scan.complete_bytes)
        except OSError as exc:
            raise file_error(path, exc, "drop the torn last line of") from None

    # checkpoint.json and summary.json ----------------------------------------------------------
    def write_checkpoint(self, state: JSONDict) -> None:
        write_text_atomic(self.file(CHECKPOINT_FILE), sealed_text(state) + "\n")

    def checkpoint(self) -> Any:
        """The checkpoint as stored (None if there is none); `verify()` checks it."""
        path = self.file(CHECKPOINT_FILE)
        if not path.exists():
            return None
        return read_json(path)

    def write_summary(self, summary: JSONDict) -> None:
        write_json_atomic(self.file(SUMMARY_FILE), summary)

    def summary(self) -> JSONDict | None:
        path = self.file(SUMMARY_FILE)
        if not path.exists():
            return None
        summary = read_json(path)
        if not isinstance(summary, dict):
            raise RunError(f"{path}: not a run summary (damaged)")
        return summary

    # resume -----------------------------------------------------------------------------------
    def verify(self) -> VerifiedRun:
        """Check that run.json, journal and checkpoint agree; read only, change nothing."""
        info = _verified_info(self.file(RUN_FILE), self.run_info())
        scan = self.scan_journal()
        _check_journal(self.file(EVENTS_FILE), scan, info)
        steps = scan.steps()
        path = self.file(CHECKPOINT_FILE)
        state = self.checkpoint() if path.exists() else _NO_FILE
        if state is _NO_FILE:
            if steps:
                raise RunError(
                    f"{path}: missing, but the journal records {len(steps)} steps; resuming would "
                    "start again from step 0: restore checkpoint.json from a backup, or start a "
                    "new run with `hil run`"
                )
            return VerifiedRun(info, scan, None, 0, None)
        checkpoint = _verified_checkpoint(path, state, info)
        steps_done = int(checkpoint["steps_done"])
        last = checkpoint.get("last_step")
        if steps_done == len(steps) and (
            steps_done == 0 or (last is not None and unsealed(steps[-1]) == last)
        ):
            return VerifiedRun(info, scan, checkpoint, steps_done, None)
        if steps_done == len(steps) + 1:  # killed between the checkpoint and the journal append
            return VerifiedRun(info, scan, checkpoint, steps_done, last)
        raise RunError(
            f"{path}: at step {steps_done}, but the journal records {len(steps)} steps"
            + (" with a different last step" if steps_done == len(steps) else "")
            + "; checkpoint and journal must come from the same moment of one run: restore "
            "both from one backup, or start a new run with `hil run`"
        )


_NO_FILE: Any = object()


def _journal_record(path: Path, number: int, line: bytes) -> JSONDict:
    where = f"{path}:{number}"
    advice = (
        "the journal is append-only and must not be edited: restore events.jsonl from a backup "
        "or start a new run with `hil run`"
    )
    try:
        record = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        shown = line[:40].decode("utf-8", errors="replace")
        raise RunError(f"{where}: not a journal record ({shown!r}); {advice}") from None
    if not isinstance(record, dict):
        raise RunError(f"{where}: not a journal record; {advice}")
    if SEAL not in record:
        raise RunError(f"{where}: no checksum (written by an older hil?); {advice}")
    if not seal_intact(record):
        raise RunError(f"{where}: checksum mismatch (edited or damaged); {advice}")
    if record.get("seq") != number - 1:
        raise RunError(
            f"{where}: record number {record.get('seq')}, expected {number - 1} "
            f"(lines missing, duplicated or reordered); {advice}"
        )
    return record


def _check_version(path: Path, version: Any, what: str) -> None:
    if version == SCHEMA_VERSION:
        return
    if isinstance(version, int) and version > SCHEMA_VERSION:
        raise RunError(
            f"{path}: {what} schema version {version} is newer than this hil understands "
            f"({SCHEMA_VERSION}); continue the run with the hil version that started it"
        )
    raise RunError(
        f"{path}: {what} schema version {version} was written by an older hil without integrity "
        f"checks (this one needs {SCHEMA_VERSION}); it cannot be resumed safely — `hil report` "
        "still reads it; start a new run with `hil run`"
    )


def _verified_info(path: Path, info: JSONDict) -> JSONDict:
    _check_version(path, info.get("schema_version"), "run")
    if not seal_intact(info):
        raise RunError(
            f"{path}: checksum mismatch: run.json was edited or damaged after the run started; "
            "restore the original, or start a new run with `hil run` (edit the experiment file "
            "instead)"
        )
    if digest(info.get("config")) != info.get("config_digest"):
        raise RunError(
            f"{path}: the recorded config does not match its config digest (edited?); restore "
            "the original run.json, or start a new run with `hil run`"
        )
    return info


def _check_journal(path: Path, scan: JournalScan, info: JSONDict) -> None:
    records = scan.records
    if not records:
        return
    start = records[0]
    if start.get("event") != "start":
        raise RunError(f"{path}:1: the journal does not begin with the start event (damaged)")
    _check_version(path, start.get("schema_version"), "journal")
    if start.get("run_id") != info.get("run_id"):
        raise RunError(
            f"{path}: the journal belongs to run {start.get('run_id')!r}, not to "
            f"{info.get('run_id')!r} of run.json; put back this run's own events.jsonl"
        )
    if start.get("config_digest") != info.get("config_digest"):
        raise RunError(
            f"{path}: the journal was started with config {start.get('config_digest')}, run.json "
            f"now has {info.get('config_digest')}; restore the original run.json, or start a "
            "new run with `hil run`"
        )
    for expected, record in enumerate((r for r in records if r.get("event") == "step"), 1):
        if record.get("step") != expected:
            raise RunError(
                f"{path}:{int(record['seq']) + 1}: step {record.get('step')} where step "
                f"{expected} was expected (a step is missing or doubled); restore events.jsonl "
                "from a backup, or start a new run with `hil run`"
            )


def _verified_checkpoint(path: Path, state: Any, info: JSONDict) -> JSONDict:
    if not isinstance(state, dict):
        raise RunError(
            f"{path}: holds {json.dumps(state)[:20]}, not a checkpoint; resuming would start "
            "again from step 0 and lose the recorded steps: restore checkpoint.json from a "
            "backup, or start a new run with `hil run`"
        )
    _check_version(path, state.get("schema_version"), "checkpoint")
    if not seal_intact(state):
        raise RunError(
            f"{path}: checksum mismatch: the checkpoint was edited or damaged; restore it from a "
            "backup, or start a new run with `hil run`"
        )
    if state.get("run_id") != info.get("run_id"):
        raise RunError(
            f"{path}: belongs to run {state.get('run_id')!r}, not to {info.get('run_id')!r} of "
            "run.json; put back this run's own checkpoint"
        )
    if state.get("config_digest") != info.get("config_digest"):
        raise RunError(
            f"{path}: saved with config {state.get('config_digest')}, but run.json has "
            f"{info.get('config_digest')}; restore the original run.json, or start a new run"
        )
    steps_done = state.get("steps_done")
    if not isinstance(steps_done, int) or isinstance(steps_done, bool) or steps_done < 0:
        raise RunError(f"{path}: steps_done is {steps_done!r}, not a step count (damaged)")
    if not isinstance(state.get("procedure"), dict):
        raise RunError(f"{path}: no procedure state; restore checkpoint.json from a backup")
    if not isinstance(state.get("device"), dict):
        found = f"device: {json.dumps(state['device'])}" if "device" in state else "no device part"
        raise RunError(
            f"{path}: no device state ({found}); resuming would continue from a different "
            "device state: restore checkpoint.json from a backup"
        )
    last = state.get("last_step")
    if steps_done > 0 and not (
        isinstance(last, dict) and last.get("event") == "step" and last.get("step") == steps_done
    ):
        holds = last.get("step") if isinstance(last, dict) else None
        raise RunError(
            f"{path}: steps_done is {steps_done} but the step record it holds is for step "
            f"{holds} (edited or damaged); restore checkpoint.json from a backup"
        )
    return state
