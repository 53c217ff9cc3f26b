"""Instrument faults: transport and parse failures become `InstrumentError`s, and idempotent
queries are retried with backoff.

Every error names the instrument, the action, the last command sent and what came back (if
anything), so an operator can tell a dead cable from a confused instrument.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import pyvisa.errors
import pyvisa.resources
from pydantic import BaseModel, ConfigDict, Field
from pyvisa.constants import StatusCode

from hil.core import (
    InstrumentDisconnected,
    InstrumentError,
    InstrumentProtocolError,
    InstrumentTimeout,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

_DISCONNECT_CODES = frozenset(
    {
        StatusCode.error_connection_lost,
        StatusCode.error_invalid_object,
        StatusCode.error_resource_not_found,
        StatusCode.error_closing_failed,
        StatusCode.error_io,
        StatusCode.error_not_cic,
        StatusCode.error_no_listeners,
    }
)


class RetrySettings(BaseModel):
    """How often an idempotent query is retried after a timeout or a garbled reply."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    count: int = Field(default=2, ge=0, le=10, description="retries after the first attempt")
    backoff: float = Field(default=0.05, ge=0, le=10, description="s before the first retry")
    factor: float = Field(default=2.0, ge=1, le=10, description="backoff growth per retry")


class Transcript:
    """Wraps a PyMeasure adapter and remembers the last command and reply, for error messages.

    Everything else is delegated, so the instrument sees the same adapter.
    """

    def __init__(self, adapter: Any) -> None:
        self.adapter = adapter
        self.command: str | None = None
        self.reply: str | None = None

    def write(self, command: str, **kwargs: Any) -> None:
        self.command = command
        self.reply = None
        self.adapter.write(command, **kwargs)

    def read(self, **kwargs: Any) -> str:
        reply: str = self.adapter.read(**kwargs)
        self.reply = reply
        return reply

    def __getattr__(self, name: str) -> Any:
        return getattr(self.adapter, name)


DRAIN_TIMEOUT_MS = 20
"""How long the input buffer is read for leftovers before a retry, per read."""
MAX_DRAIN_READS = 100


def drain_input(adapter: Any) -> None:
    """Drop whatever a late or garbled reply left in the input before a query is retried.

    On a pyvisa session: read with a short timeout until nothing more arrives (bounded).
    pyvisa-py's own flush (`viClear` on a socket) spins forever once the peer has closed the
    connection, so it is not used there; other adapters flush their read buffer.
    """
    resource = getattr(adapter, "connection", None)
    if not isinstance(resource, pyvisa.resources.MessageBasedResource):
        adapter.flush_read_buffer()
        return
    timeout = resource.timeout
    resource.timeout = DRAIN_TIMEOUT_MS
    try:
        for _ in range(MAX_DRAIN_READS):
            try:
                resource.read_raw()
            except pyvisa.errors.VisaIOError:
                return
    finally:
        resource.timeout = timeout


def fault_class(exc: BaseException) -> type[InstrumentError] | None:
    """The `InstrumentError` subclass a transport or parse failure stands for, None if foreign."""
    if isinstance(exc, InstrumentError):
        return type(exc)
    if isinstance(exc, pyvisa.errors.VisaIOError):
        if exc.error_code == StatusCode.error_timeout:
            return InstrumentTimeout
        if exc.error_code in _DISCONNECT_CODES:
            return InstrumentDisconnected
        return InstrumentError
    if isinstance(exc, pyvisa.errors.InvalidSession):
        return InstrumentDisconnected
    if isinstance(exc, TimeoutError):
        return InstrumentTimeout
    if isinstance(exc, ConnectionError | EOFError | OSError):
        return InstrumentDisconnected
    if isinstance(exc, ValueError | IndexError | KeyError | TypeError):
        return InstrumentProtocolError
    return None


@contextmanager
def translated(instrument: str, action: str, transcript: Transcript | None) -> Iterator[None]:
    """Turn a failure inside the block into the matching `InstrumentError`.

    Errors that are not instrument faults (programming errors, test assertions) pass unchanged.
    """
    try:
        yield
    except InstrumentError:
        raise
    except Exception as exc:
        kind = fault_class(exc)
        if kind is None:
            raise
        command = transcript.command if transcript else None
        reply = transcript.reply if transcript else None
        got = "no reply" if reply is None else f"reply {reply!r}"
        cause = " ".join(str(exc).split())  # one line: library messages may span several
        message = (
            f"{instrument}: {action} failed: sent {command!r}, {got} ({type(exc).__name__}: "
            f"{cause})"
        )
        raise kind(message) from exc


def with_retry(
    query: Callable[[], T],
    settings: RetrySettings,
    sleep: Callable[[float], None],
    recover: Callable[[], None] | None = None,
) -> T:
    """Run an idempotent `query`, retrying timeouts and garbled replies with backoff.

    `recover` runs before each retry (e.g. flush the read buffer so a late reply cannot be
    taken for the next one). A disconnect is not retried: the session is gone.
    """
    delay = settings.backoff
    attempt = 0
    while True:
        try:
            return query()
        except (InstrumentTimeout, InstrumentProtocolError) as exc:
            if attempt == settings.count:
                if not settings.count:
                    raise
                tries = settings.count + 1
                raise type(exc)(f"{exc}; gave up after {tries} attempts") from exc
            attempt += 1
            log.warning("%s; retry %d of %d in %.3g s", exc, attempt, settings.count, delay)
            sleep(delay)
            delay *= settings.factor
            if recover is not None:
                recover()
