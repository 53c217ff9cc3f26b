"""Instrument sessions on PyMeasure, and the source-measure channel built on them.

`PyMeasureSession` is the one session base of every VISA driver here (source-measure channels,
lock-ins, the AWG, the DAQ board): open or adopt, identify, configure with settings read back
(`check_readback`, one rule set), fault translation, retried queries, `sync`, safe release.
`SourceMeasureChannel` is the interface rigs build on; `PyMeasureChannel` adds what every
implementation of it shares: the instrument-range check before anything is sent, the
slew-limited ramp and the safe state.
"""

from __future__ import annotations

import contextlib
import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, Literal, Protocol, TypeVar, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from drivers.faults import RetrySettings, Transcript, drain_input, translated, with_retry
from hil.core import Clock, Closing, InstrumentError, SafetyViolation, WallClock

log = logging.getLogger(__name__)

T = TypeVar("T")


@runtime_checkable
class SourceMeasureChannel(Protocol):
    """A channel that sources a DC voltage and measures the current through it."""

    @property
    def name(self) -> str: ...

    @property
    def level(self) -> float:
        """The voltage last set, V."""
        ...

    @property
    def enabled(self) -> bool: ...

    def connect(self, instrument: Any | None = None) -> None:
        """Open the instrument (or adopt `instrument`), write the limits and read them back."""
        ...

    def identify(self) -> str:
        """The instrument's identification string."""
        ...

    def sent_level(self, volts: float) -> float:
        """The level the instrument receives for `volts` (after the command's number format)."""
        ...

    def set_level(self, volts: float) -> None: ...

    def ramp_to(self, volts: float) -> None:
        """Move to `volts` in steps no larger than the ramp step, at no more than the slew."""
        ...

    def read(self) -> float:
        """The measured current, A."""
        ...

    def sync(self) -> None:
        """Return once every command sent so far has been carried out."""
        ...

    def enable(self) -> None: ...

    def disable(self) -> None: ...

    def go_safe(self) -> None:
        """Ramp to 0 V within the slew limit, then switch the output off."""
        ...

    def close(self) -> None: ...


class InstrumentSettings(BaseModel):
    """What every instrument channel needs from the station file."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: str = Field(min_length=1, description="channel name in the station")
    address: str = Field(min_length=1, description="VISA resource, e.g. GPIB0::24::INSTR")
    timeout: float = Field(default=2.0, gt=0, le=60, description="s per I/O operation")
    read_termination: str | None = "\n"
    write_termination: str | None = "\n"
    visa_library: str = Field(default="", description='"" for the default, "@py" for pyvisa-py')
    retry: RetrySettings = RetrySettings()
    ramp_step: float = Field(default=0.1, gt=0, description="largest step of a ramp, V")
    max_slew: float = Field(default=1.0, gt=0, description="fastest ramp, V/s")
    readback_rtol: float = Field(default=1e-4, gt=0, lt=0.1, description="readback tolerance")
    sync_query: str | None = Field(
        default="*OPC?",
        description="query answered once every command sent before it is done (null: none)",
    )

    def adapter_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for PyMeasure's VISA adapter; the timeout is always set (ms)."""
        kwargs: dict[str, Any] = {
            "timeout": int(self.timeout * 1000),
            "visa_library": self.visa_library,
        }
        if self.read_termination is not None:
            kwargs["read_termination"] = self.read_termination
        if self.write_termination is not None:
            kwargs["write_termination"] = self.write_termination
        return kwargs


def ramp_levels(start: float, stop: float, max_step: float) -> list[float]:
    """Equal steps from `start` (excluded) to `stop` (included), none larger than `max_step`."""
    distance = abs(stop - start)
    if distance == 0:
        return []
    n = math.ceil(distance / max_step - 1e-12)
    return [start + (stop - start) * k / n for k in range(1, n)] + [stop]


def as_float(value: Any) -> float:
    """A number from an instrument reply; a garbled reply raises ValueError (a protocol fault)."""
    if isinstance(value, list | tuple):
        if len(value) != 1:
            raise ValueError(f"expected one number, got {value!r}")
        value = value[0]
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"expected a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"expected a finite number, got {value!r}")
    return number


Readback = Literal["equal", "range"]


def readback_matches(written: object, read: object, rule: Readback, rtol: float) -> bool:
    """Whether a setting read back as `read` holds what was written as `written`.

    Rule "equal": numbers within `rtol`, anything else exactly. Rule "range": an auto-selecting
    range reads back as the smallest range that holds the written value: at least the value (less
    a 5 % over-range) and below the next decade (2 V must not read 20 V; 2.1 V may).
    """
    if rule == "range":
        w, r = abs(as_float(written)), abs(as_float(read))
        return w / 1.05 * (1 - rtol) <= r < 10 * w * (1 - rtol)
    if isinstance(written, int | float) and not isinstance(written, bool):
        return math.isclose(as_float(read), written, rel_tol=rtol, abs_tol=1e-15)
    return read == written


class PyMeasureSession(Closing, ABC):
    """One session with a PyMeasure instrument: the plumbing every driver here shares.

    Open (or adopt) the instrument, identify it, configure it (subclasses write their settings
    and read them back with `check_readback`), translate faults into `InstrumentError`s naming
    instrument, command and reply, retry idempotent queries, wait for execution (`sync`), and
    release the session on a refused connect and on close (after `go_safe`).
    """

    def __init__(self, settings: InstrumentSettings, clock: Clock | None = None) -> None:
        self.settings = settings
        self.clock: Clock = clock if clock is not None else WallClock()
        self.instrument: Any = None
        self._transcript: Transcript | None = None
        self._identity = ""

    # -- what a concrete instrument provides -------------------------------------------------
    @abstractmethod
    def _open(self) -> Any:
        """Open the PyMeasure instrument at the configured address."""

    @abstractmethod
    def _configure(self) -> None:
        """Write the settings and check them with `read_back()`; raise to refuse."""

    @abstractmethod
    def go_safe(self) -> None:
        """Bring the instrument to its safe state (outputs at 0, off) before it is released."""

    def _adopt(self, instrument: Any) -> Any:
        """The PyMeasure instrument for what was passed to `connect` (by default: itself)."""
        return instrument

    def _query_identity(self) -> str:
        return str(self.instrument.id)

    # -- the session ---------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.settings.name

    @property
    def who(self) -> str:
        """How errors name this instrument: channel, identity (or address)."""
        return f"{self.name} ({self._identity or self.settings.address})"

    def connect(self, instrument: Any | None = None) -> None:
        """Open (or adopt) the instrument, identify it, configure it and read the settings back.

        A refused or failed configuration releases the session, so no later command is sent.
        """
        with translated(self.who, "connect", None):
            raw = self._open() if instrument is None else self._adopt(instrument)
        self._attach(raw, "configure", self._configure)
        log.info("%s connected and configured", self.who)

    def read_back(self, *, live: bool = False) -> None:
        """Read back the settings connect wrote (`check_readback`; queries only): a mismatch
        raises `InstrumentError`. `live`: on a re-attach the instrument may be running, so what
        changes while it runs (a level, a sine) is not checked, only what holds throughout.

        A driver that can be re-attached overrides this; by default there is nothing to read.
        """
        raise InstrumentError(f"{self.who}: {type(self).__name__} has no read-back to re-attach")

    def reattach(self) -> None:
        """After a lost connection: drop the session without sending anything, open it again,
        identify it and take over what the instrument holds (`_take_over`: it only reads, as
        the instrument may be live, its output on and holding a level).

        Nothing is configured or switched. A failed re-attach (a power-cycled or reset
        instrument no longer reads back its settings) leaves the session released and raises
        an `InstrumentError` naming the instrument.
        """
        self._drop()
        with translated(self.who, "reconnect", None):
            raw = self._open()
        self._attach(raw, "read back", self._take_over)
        log.info("%s reconnected", self.who)

    def _take_over(self) -> None:
        """What a re-attach reads: the settings connect wrote, live."""
        self.read_back(live=True)

    def _attach(self, raw: Any, action: str, then: Callable[[], None]) -> None:
        """Take `raw` as the session, identify it and run `then`; released if either fails."""
        self._transcript = Transcript(raw.adapter)
        raw.adapter = self._transcript
        self.instrument = raw
        try:
            self._identity = self.identify()
            self._call(action, then)
        except BaseException:
            self._drop()
            raise

    def _drop(self) -> None:
        """Forget the session, closing its connection quietly (it may be broken already)."""
        instrument, self.instrument = self.instrument, None
        if instrument is not None:
            with contextlib.suppress(Exception):
                instrument.adapter.close()

    def identify(self) -> str:
        """The instrument's identification string."""
        return self._query("identify", self._query_identity)

    def sync(self) -> None:
        """Return once the instrument has carried out every command sent so far.

        A write returns when it is sent, not when it is applied; a rig that waits for settling
        syncs first, so the wait counts from the level being applied. Without a `sync_query`
        this returns at once.
        """
        query = self.settings.sync_query
        if query is None:
            return

        def ask() -> None:
            reply = self.instrument.ask(query)
            if as_float(reply) != 1:
                raise ValueError(f"{query} answered {reply!r}, expected 1")

        self._query("sync", ask)

    def release(self) -> None:
        """Close the connection (no command is sent)."""
        if self.instrument is None:
            return
        instrument, self.instrument = self.instrument, None
        with translated(self.who, "close", self._transcript):
            instrument.adapter.close()

    def close(self) -> None:
        """Go safe, then release the connection (released even if going safe fails)."""
        if self.instrument is None:
            return
        try:
            self.go_safe()
        finally:
            self.release()

    # -- helpers for subclasses ----------------------------------------------------------------
    def check_readback(
        self, setting: str, written: object, read: object, rule: Readback = "equal"
    ) -> None:
        """A setting must read back as written (`readback_matches`); a mismatch refuses to start."""
        if not readback_matches(written, read, rule, self.settings.readback_rtol):
            raise InstrumentError(
                f"{self.who}: setting {setting} was written as {written!r} but reads back "
                f"{read!r}; refusing to start (check the value against the instrument's "
                "allowed settings)"
            )

    def _call(self, action: str, fn: Callable[[], T]) -> T:
        """Run `fn` on the open session, its faults translated into `InstrumentError`s."""
        if self.instrument is None:
            raise InstrumentError(f"{self.who}: not connected; call connect() first ({action})")
        with translated(self.who, action, self._transcript):
            return fn()

    def _query(self, action: str, fn: Callable[[], T]) -> T:
        """An idempotent query, retried on timeouts and garbled replies."""
        return with_retry(
            lambda: self._call(action, fn), self.settings.retry, self.clock.advance, self._flush
        )

    def _flush(self) -> None:
        """Drop whatever a late reply left in the input buffer before a retry."""
        try:
            with translated(self.who, "flush input", self._transcript):
                drain_input(self.instrument.adapter)
        except (InstrumentError, NotImplementedError) as exc:
            log.warning("%s: could not flush the input buffer: %s", self.who, exc)


class PyMeasureChannel(PyMeasureSession):
    """Shared behaviour of source-measure channels on a PyMeasure instrument.

    Subclasses say how to open the instrument, configure it, and which commands set, read,
    enable and disable; this class guards every level with the instrument range, ramps within
    the slew and keeps track of the level and output state.
    """

    def __init__(self, settings: InstrumentSettings, clock: Clock | None = None) -> None:
        super().__init__(settings, clock)
        self._level = 0.0
        self._enabled = False

    # -- what a concrete instrument provides -------------------------------------------------
    @property
    @abstractmethod
    def level_range(self) -> tuple[float, float]:
        """The levels this channel accepts, V (the instrument range as configured)."""

    @abstractmethod
    def _write_level(self, volts: float) -> None: ...

    @abstractmethod
    def _query_current(self) -> float: ...

    @abstractmethod
    def _write_output(self, on: bool) -> None: ...

    @abstractmethod
    def report_source(self) -> tuple[float, bool]:
        """The level the output holds (V) and whether it is on, as the instrument reports them."""

    def _take_over(self) -> None:
        """The settings, then the level and output state the instrument reports, taken as this
        channel's own: what a safe state ramps down from."""
        super()._take_over()
        self._level, self._enabled = self.report_source()

    # -- the interface --------------------------------------------------------------------------
    @property
    def level(self) -> float:
        return self._level

    @property
    def enabled(self) -> bool:
        return self._enabled

    def sent_level(self, volts: float) -> float:
        """The level the instrument receives for `volts`, after the command's number format.

        The base sends what it is given; a driver that formats levels overrides this, so the
        guard can check what really reaches the output.
        """
        return float(volts)

    def set_level(self, volts: float) -> None:
        self.check_level(volts)
        self.check_level(self.sent_level(volts))
        self._call("set level", lambda: self._write_level(volts))
        self._level = self.sent_level(volts)

    def ramp_to(self, volts: float) -> None:
        self.check_level(volts)
        levels = ramp_levels(self._level, volts, self.settings.ramp_step)
        if not levels:
            return
        pause = abs(volts - self._level) / len(levels) / self.settings.max_slew
        for v in levels:
            self.set_level(v)
            self.clock.advance(pause)

    def read(self) -> float:
        if not self._enabled:
            raise InstrumentError(f"{self.who}: output is off; enable it before reading a current")
        return self._query("read current", self._query_current)

    def enable(self) -> None:
        self._call("enable output", lambda: self._write_output(True))
        self._enabled = True

    def disable(self) -> None:
        self._call("disable output", lambda: self._write_output(False))
        self._enabled = False

    def go_safe(self) -> None:
        """Ramp to 0 V (if the output is on), then switch the output off.

        The output is switched off even if the ramp fails, so nothing is left energised.
        """
        try:
            if self._enabled:
                self.ramp_to(0.0)
            elif self._level != 0.0:
                self.set_level(0.0)
        finally:
            self.disable()

    def check_level(self, volts: float) -> None:
        """Refuse a level outside the instrument range before anything is sent."""
        low, high = self.level_range
        if not (math.isfinite(volts) and low <= volts <= high):
            raise SafetyViolation(
                self.name,
                volts,
                f"the instrument range [{low:g}, {high:g}] V of {self.who}",
                "widen source_range in the station file if the instrument allows it",
            )
