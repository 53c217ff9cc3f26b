"""`hil report --live RUN`: the run's report page served on 127.0.0.1 while the run goes on.

The page is `hil.report.report_page` built in memory (nothing is written in the run directory),
rebuilt only when events.jsonl or summary.json changed (size and modification time), so a page
that reloads itself every few seconds costs a file status check, not a render. In live mode
the page carries a `<meta http-equiv="refresh">` and a line saying when it was updated and at
which step; the offline report stays without either. Before the first step a placeholder page
says so. The server binds the loopback interface only and serves each request on a daemon
thread; `stop()` shuts it down, closes the port and joins its thread.
"""

from __future__ import annotations

import html
import logging
import math
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from hil.core import HilError, RunError, Serving
from hil.report import report_page
from hil.rundir import EVENTS_FILE, SUMMARY_FILE, RunDirectory

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
_BANNER_STYLE = (
    "background:#eef4ff;border:1px solid #b8cdf0;padding:0.3rem 0.6rem;"
    "font:0.9rem system-ui,sans-serif;margin-bottom:1rem"
)


class LivePage:
    """A run's report page, rebuilt when its journal or summary changed since the last build."""

    def __init__(self, run_path: Path, refresh: float = 2.0) -> None:
        self.rundir = RunDirectory.open(run_path)
        self.name = str(self.rundir.run_info().get("name") or run_path.name)
        self.refresh = max(1, math.ceil(refresh))  # whole seconds: what every browser honours
        self.renders = 0  # how many times the page was built (for tests and the log)
        self._lock = threading.Lock()
        self._key: tuple[Any, ...] | None = None
        self._body = ""
        self._steps = 0
        self._failed = False  # the last build failed: the body says why
        self._status: str | None = None
        self._updated = ""

    def _files_key(self) -> tuple[Any, ...]:
        key: list[Any] = []
        for name in (EVENTS_FILE, SUMMARY_FILE):
            try:
                stat = self.rundir.file(name).stat()
            except FileNotFoundError:
                key.append(None)
            else:
                key.append((stat.st_size, stat.st_mtime_ns))
        return tuple(key)

    def page(self) -> tuple[HTTPStatus, str]:
        """The page as it should be served now, with its live banner."""
        with self._lock:  # one build at a time; requests meanwhile wait for it
            key = self._files_key()  # taken before reading: a change during the build shows next
            if key != self._key:
                self._build()
                self._key = key
            status = HTTPStatus.INTERNAL_SERVER_ERROR if self._failed else HTTPStatus.OK
            return status, self._with_banner(self._body)

    def _build(self) -> None:
        self.renders += 1
        self._updated = time.strftime("%H:%M:%S")
        events = self.rundir.events()
        steps = [r for r in events if r.get("event") == "step"]
        segments = [r for r in events if r.get("event") in ("start", "resume", "stop")]
        ended = bool(segments) and segments[-1].get("event") == "stop"
        self._status = str(segments[-1].get("status")) if ended else None
        self._steps = int(steps[-1].get("step") or len(steps)) if steps else 0
        self._failed = False
        if not steps:
            self._body = self._placeholder()
            return
        try:
            self._body = report_page(self.rundir.path)
        except Exception as exc:  # damaged files or a bug: say so on the page, keep serving
            if isinstance(exc, HilError):
                log.warning("live report of %s: %s", self.rundir.path, exc)
            else:
                log.exception("live report of %s failed", self.rundir.path)
            self._failed = True
            self._body = self._message(f"The report cannot be built: {exc}")

    def _banner(self) -> str:
        where = f"step {self._steps}" if self._steps else "no step yet"
        if self._failed:
            where += " (the page could not be built)"
        ended = f"; the run {self._status}" if self._status else ""
        return (
            f'<div class="live" style="{_BANNER_STYLE}">live — updated {self._updated}, '
            f"{html.escape(where)}{html.escape(ended)} (checked {time.strftime('%H:%M:%S')}; "
            f"reloads every {self.refresh} s)</div>"
        )

    def _with_banner(self, body: str) -> str:
        meta = f'<meta http-equiv="refresh" content="{self.refresh}">'
        return body.replace("</head>", meta + "</head>", 1).replace(
            "<body>", "<body>" + self._banner(), 1
        )

    def _message(self, text: str) -> str:
        title = html.escape(f"Run {self.name}")
        return (
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{title}</title></head><body><h1>{title}</h1>"
            f"<p>{html.escape(text)}</p></body></html>\n"
        )

    def _placeholder(self) -> str:
        return self._message(
            "The run has no step yet: this page shows the report as soon as the first step is "
            "recorded."
        )


class _Handler(BaseHTTPRequestHandler):
    """GET / (or /index.html) is the page; everything else is 404."""

    server: _Server

    def do_GET(self) -> None:
        self._answer(body=True)

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def _answer(self, *, body: bool) -> None:
        if self.path.split("?")[0] not in ("/", "/index.html"):
            self.send_error(HTTPStatus.NOT_FOUND)
            return
        status, page = self.server.live_page.page()
        data = page.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if body:
            self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, live_page: LivePage) -> None:
        self.live_page = live_page
        super().__init__((HOST, port), _Handler)


class LiveServer(Serving):
    """Serves a `LivePage` on 127.0.0.1 from a background thread until `stop()`."""

    def __init__(self, run_path: Path, *, port: int = 0, refresh: float = 2.0) -> None:
        self.page = LivePage(run_path, refresh)
        self._port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the live server is not started")
        return f"http://{HOST}:{self._server.server_address[1]}/"

    def start(self) -> LiveServer:
        """Bind (port 0: a free one) and serve in a daemon thread."""
        try:
            self._server = _Server(self._port, self.page)
        except OSError as exc:
            raise RunError(
                f"cannot serve on {HOST}:{self._port} ({exc.strerror}); choose another --port "
                "or 0 for a free one"
            ) from None
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="hil-live-report",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving, close the port and join the thread."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout)
        self._server, self._thread = None, None
