"""`hil watch RUN`: follow a run's journal (events.jsonl) in the terminal while the run goes on.

Reading only: the watcher never takes the run lock and never writes in the run directory, so it
may watch a run from any process (or a copy of the run). It reads what was appended since the
last look and leaves a partial last line (a record being written) for the next look. A run has
ended when its journal's latest record is a `stop` event; a run whose process is gone without
one (killed) is reported as such, with the way to continue it.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from hil.core import JSONDict, RunError
from hil.rundir import EVENTS_FILE, LOCK_FILE, RunDirectory, file_error


class JournalTail:
    """The complete records appended to a journal since the last `read()`; a partial last line
    (being written) is left for the next read, a missing file reads as no records."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def read(self) -> tuple[list[JSONDict], bool]:
        """New records, and whether the file shrank below what was read (replaced: start over)."""
        try:
            with self.path.open("rb") as fh:
                restarted = os.fstat(fh.fileno()).st_size < self.offset
                if restarted:
                    self.offset = 0
                fh.seek(self.offset)
                data = fh.read()
        except FileNotFoundError:
            return [], False
        except OSError as exc:
            raise file_error(self.path, exc, "read") from None
        head, newline, _ = data.rpartition(b"\n")
        if not newline:
            return [], restarted
        self.offset += len(head) + 1
        records = []
        for line in head.split(b"\n"):
            try:
                record = json.loads(line)
            except (UnicodeDecodeError, json.JSONDecodeError):
                continue  # a damaged line: `hil resume` judges it, the watcher shows the rest
            if isinstance(record, dict):
                records.append(record)
        return records, restarted


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _mapping(value: Any) -> JSONDict:
    return value if isinstance(value, dict) else {}


@dataclass
class RunProgress:
    """Where a run stands, from its journal records in order: steps, the last step's record,
    active wall time (start or resume to stop, summed) and the current segment's step rate."""

    total: int | None = None
    steps: int = 0
    last: JSONDict | None = None
    stop: JSONDict | None = None
    records: int = 0
    active: float = 0.0  # wall seconds of the segments that ended
    segment_start: float | None = None  # start/resume time of the segment going on
    segment_steps: int = 0
    segment_last: float | None = None  # time of the segment's latest step
    latest: float | None = None  # time of the latest record

    def add(self, record: JSONDict) -> None:
        self.records += 1
        event, when = record.get("event"), _number(record.get("time"))
        if event in ("start", "resume"):
            if self.segment_start is not None and self.latest is not None:  # killed, no stop
                self.active += max(0.0, self.latest - self.segment_start)
            self.stop, self.segment_start, self.segment_steps = None, when, 0
            self.segment_last = None
            if isinstance(record.get("total_steps"), int):
                self.total = int(record["total_steps"])
        elif event == "step":
            number = _number(record.get("step"))
            self.steps = self.steps + 1 if number is None else int(number)
            self.last = record
            self.segment_steps += 1
            self.segment_last = when
        elif event == "stop":
            self.stop = record
            if self.segment_start is not None and when is not None:
                self.active += max(0.0, when - self.segment_start)
            self.segment_start = None
        if when is not None:
            self.latest = when

    def elapsed(self, now: float) -> float:
        """Wall seconds the run has been running (pauses between segments not counted)."""
        going = 0.0 if self.segment_start is None else max(0.0, now - self.segment_start)
        return self.active + going

    def eta(self) -> float | None:
        """Wall seconds to the last step at the current segment's step rate (None if unknown)."""
        if self.total is None or self.segment_start is None or self.segment_last is None:
            return None
        spent = self.segment_last - self.segment_start
        if self.segment_steps == 0 or spent <= 0:
            return None
        return max(0, self.total - self.steps) * spent / self.segment_steps

    def device_remaining(self) -> float | None:
        """Device seconds the remaining steps take at the mean device time per step so far."""
        device = _number((self.last or {}).get("device_time"))
        if self.total is None or device is None or self.steps == 0:
            return None
        return max(0, self.total - self.steps) * device / self.steps


@dataclass
class Snapshot:
    """One look at a run: what the watcher shows, and whether (and how) the run has ended."""

    path: Path
    name: str
    procedure: str
    progress: RunProgress
    now: float
    status: str  # running | waiting | completed | paused | aborted | failed | gone
    reason: str = ""
    ended: bool = False


class RunWatch:
    """Follows one run directory: each `look()` reads what the journal gained since the last."""

    def __init__(self, path: Path) -> None:
        self.rundir = RunDirectory.open(path)
        info = self.rundir.run_info()
        config = _mapping(info.get("config"))
        procedure = _mapping(config.get("procedure"))
        self.name = str(info.get("name") or path.name)
        self.procedure = str(procedure.get("type") or "?")
        steps = procedure.get("steps")
        self._configured_total = steps if isinstance(steps, int) else None
        self._tail = JournalTail(self.rundir.file(EVENTS_FILE))
        self.progress = self._fresh()

    def _fresh(self) -> RunProgress:
        return RunProgress(total=self._configured_total)

    def look(self) -> Snapshot:
        records, restarted = self._tail.read()
        if restarted:
            self.progress = self._fresh()
        for record in records:
            self.progress.add(record)
        return self._snapshot(time.time())

    def _snapshot(self, now: float) -> Snapshot:
        progress = self.progress
        snap = Snapshot(self.rundir.path, self.name, self.procedure, progress, now, "running")
        if progress.stop is not None:
            snap.status = str(progress.stop.get("status") or "stopped")
            snap.reason = str(progress.stop.get("reason") or "")
            snap.ended = True
        elif progress.records == 0:
            snap.status = "waiting"
            snap.reason = "no journal record yet"
        if snap.ended or not self._process_gone():
            return self._with_total(snap)
        summary = self._latest_summary()  # the stop event may fail where the summary did not
        if summary is not None:
            snap.status, snap.reason = str(summary["status"]), str(summary.get("reason") or "")
        else:
            snap.status = "gone"
            snap.reason = (
                "the run's process is gone without recording an outcome (killed?); continue "
                f"with: hil resume {self.rundir.path}"
            )
        snap.ended = True
        return self._with_total(snap)

    def _with_total(self, snap: Snapshot) -> Snapshot:
        """An ended run's step total from its summary where the journal did not give one."""
        if snap.ended and snap.progress.total is None:
            total = _number((self._summary() or {}).get("total_steps"))
            snap.progress.total = None if total is None else int(total)
        return snap

    def _summary(self) -> JSONDict | None:
        try:
            return self.rundir.summary()
        except RunError:
            return None  # damaged: the journal still tells the story

    def _latest_summary(self) -> JSONDict | None:
        """summary.json if it tells how the latest segment ended (not an earlier pause)."""
        summary = self._summary()
        if summary is None or not summary.get("status"):
            return None
        ended, latest = _number(summary.get("ended_at")), self.progress.latest
        return summary if ended is not None and (latest is None or ended >= latest) else None

    def _process_gone(self) -> bool:
        """Whether the process named in the run's lock file no longer exists (read, not locked)."""
        try:
            owner = self.rundir.file(LOCK_FILE).read_text(encoding="utf-8").split()
        except OSError:
            return False
        if len(owner) != 2 or owner[0] != "pid" or not owner[1].isdigit():
            return False
        try:
            os.kill(int(owner[1]), 0)
        except ProcessLookupError:
            return True
        except OSError:
            return False  # alive, owned by another user
        return False


# -- showing -------------------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    number = _number(value)
    return "—" if number is None else f"{number:.4g}"


def duration(seconds: float | None) -> str:
    """Seconds as h:mm:ss (or m:ss)."""
    if seconds is None:
        return "—"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _step_text(progress: RunProgress) -> str:
    if progress.total is None:
        return str(progress.steps)
    share = f" ({100 * progress.steps / progress.total:.0f} %)" if progress.total else ""
    return f"{progress.steps}/{progress.total}{share}"


def fields(snap: Snapshot) -> list[tuple[str, str]]:
    """The snapshot as (label, plain text) pairs, in the order shown."""
    progress, last = snap.progress, snap.progress.last or {}
    rows = [
        ("run", f"{snap.name} ({snap.procedure}) {snap.path}"),
        ("status", snap.status + (f": {snap.reason}" if snap.reason else "")),
        ("step", _step_text(progress)),
    ]
    if "measurement" in last and last.get("loss") is None:  # a calibration step
        channel = last.get("channel")
        rows.append(
            ("measurement", f"{last['measurement']}" + (f" on {channel}" if channel else ""))
        )
    else:
        rows.append(("loss", f"{_fmt(last.get('loss'))}  best {_fmt(last.get('best_loss'))}"))
    device, remaining = last.get("device_time"), progress.device_remaining()
    more = f"  (~{_fmt(remaining)} s more)" if remaining is not None and not snap.ended else ""
    rows.append(("device time", f"{_fmt(device)} s{more}"))
    eta = None if snap.ended else progress.eta()
    rows.append(("elapsed", duration(progress.elapsed(snap.now)) + f"  ETA {duration(eta)}"))
    return rows


_COLOURS = {"completed": "green", "running": "cyan", "waiting": "cyan", "paused": "yellow"}


def table(snap: Snapshot) -> Table:
    """The snapshot as a two-column rich grid."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    colour = _COLOURS.get(snap.status, "red")
    for label, text in fields(snap):
        shown = f"[{colour}]{escape(text)}[/]" if label == "status" else escape(text)
        grid.add_row(label, shown)
    return grid


def line(snap: Snapshot) -> str:
    """The snapshot on one line (for logs: output that is not a terminal)."""
    return "; ".join(f"{label} {text}" for label, text in fields(snap)[1:])


def follow(path: Path, console: Console, *, interval: float = 1.0, once: bool = False) -> Snapshot:
    """Show the run at `path` until it ends (or once); returns the last snapshot.

    On a terminal a live table is redrawn every `interval` seconds; elsewhere one line is printed
    per change. Ctrl-C (KeyboardInterrupt) reaches the caller, the run itself is untouched.
    """
    if interval <= 0:
        raise RunError(f"--interval {interval}: give a positive number of seconds")
    watch = RunWatch(path)
    snap = watch.look()
    if once:
        console.print(table(snap))
        return snap
    if console.is_terminal:
        with Live(table(snap), console=console, auto_refresh=False) as live:
            while not snap.ended:
                time.sleep(interval)
                snap = watch.look()
                live.update(table(snap), refresh=True)
        return snap
    shown: list[tuple[str, str]] = []
    while True:
        now_shown = [row for row in fields(snap) if row[0] != "elapsed"]
        if now_shown != shown:  # a new line when more than the clock changed
            console.print(line(snap), highlight=False, soft_wrap=True)
            shown = now_shown
        if snap.ended:
            return snap
        time.sleep(interval)
        snap = watch.look()
