"""SIGTERM as an exception, for scripts that drive a guard directly (the runner has its own)."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

log = logging.getLogger("hil.safety")


class Terminated(BaseException):
    """Raised in the main thread when SIGTERM arrives, so `with` blocks and `finally` run."""

    def __init__(self, signum: int = signal.SIGTERM) -> None:
        self.signum = signum
        super().__init__(f"terminated by signal {signal.Signals(signum).name}")


@contextmanager
def sigterm_raises() -> Iterator[None]:
    """While inside, SIGTERM raises `Terminated` in the main thread (once; later ones are logged).

    Outside the main thread signal handlers cannot be installed, so this does nothing there.
    The previous handler is restored on exit.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    raised = False

    def handler(signum: int, frame: FrameType | None) -> None:
        nonlocal raised
        if raised:
            # A second SIGTERM must not interrupt the cleanup the first one started.
            log.warning("SIGTERM received again while stopping; still making the device safe")
            return
        raised = True
        log.warning("SIGTERM received; stopping and making the device safe")
        raise Terminated(signum)

    previous: Callable[[int, FrameType | None], Any] | int | None = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
