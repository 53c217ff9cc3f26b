"""report/report.html of a short real run: self-contained, escaped, and it renders in a real
headless browser with no errors and every image loaded."""

from __future__ import annotations

import base64
import html
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from hil.report import write_report
from hil.runner import RunStatus, start_run

from experiments import experiment_text

DESCRIPTION = "<script>alert('x')</script> & <b>not bold</b>"
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Attributes through which a page can make a request.
URL_ATTRIBUTES = {"src", "href", "srcset", "action", "data", "poster", "formaction", "background"}


class Page(HTMLParser):
    """What the report's HTML is made of: tags, URL-valued attributes, images and text."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.urls: list[str] = []
        self.images: list[str] = []
        self.text: list[str] = []
        self.styles: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        values = dict(attrs)
        self.urls += [v or "" for k, v in attrs if k in URL_ATTRIBUTES]
        self.styles += [v or "" for k, v in attrs if k == "style"]
        if tag == "img":
            self.images.append(values.get("src") or "")
        self._in_style = tag == "style"

    def handle_endtag(self, tag: str) -> None:
        self._in_style = False

    def handle_data(self, data: str) -> None:
        (self.styles if self._in_style else self.text).append(data)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 5-step run of the small experiment whose description tries to inject a script."""
    tmp = tmp_path_factory.mktemp("report_html")
    config = tmp / "small.yaml"
    text = experiment_text(steps=5).replace(
        "name: small\n", f"name: small\ndescription: {json.dumps(DESCRIPTION)}\n", 1
    )
    config.write_text(text)
    outcome = start_run(config, tmp / "runs")
    assert outcome.status is RunStatus.COMPLETED, outcome.reason
    write_report(outcome.path)
    return outcome.path


def _page(run: Path) -> tuple[str, Page]:
    text = (run / "report" / "report.html").read_text(encoding="utf-8")
    page = Page()
    page.feed(text)
    page.close()
    return text, page


def test_the_page_makes_no_request_and_needs_no_script(run: Path) -> None:
    text, page = _page(run)
    assert not {"script", "link", "iframe", "object", "embed", "base"} & set(page.tags)
    assert page.urls, "the figures are there"
    assert all(url.startswith("data:") for url in page.urls), page.urls
    assert not re.search(r"https?:", text), "no address of any kind, not even in the text"
    css = " ".join(page.styles)
    assert "url(" not in css
    assert "@import" not in css
    assert "//" not in css


def test_every_image_is_an_embedded_png(run: Path) -> None:
    _, page = _page(run)
    assert len(page.images) == 3  # loss, control trajectories, gradient norm
    for src in page.images:
        head, _, data = src.partition(",")
        assert head == "data:image/png;base64"
        assert base64.b64decode(data, validate=True).startswith(PNG_SIGNATURE)


def test_user_strings_stay_text(run: Path) -> None:
    text, page = _page(run)
    assert "script" not in page.tags
    assert "b" not in page.tags
    assert DESCRIPTION in "".join(page.text)  # shown as written, in the heading and the config
    assert "<script>" not in text


def test_the_page_says_what_the_summary_says(run: Path) -> None:
    _, page = _page(run)
    shown = "".join(page.text)
    summary = json.loads((run / "summary.json").read_text())
    assert "completed" in shown
    assert "5 of 5" in shown
    assert f"{summary['final_loss']:.6g}" in shown
    assert f"{summary['device_time']:.6g}" in shown
    for name, value in summary["metrics"].items():
        assert f"{value:.6g}" in shown, name
    for name in ("Resolved experiment", "Station snapshot", "Gradient quality", "spsa", "adam"):
        assert name in shown
    assert "details" in page.tags  # the config is collapsible
    # the PNG and the markdown summary are still written beside it
    assert (run / "report" / "training.png").read_bytes().startswith(PNG_SIGNATURE)
    assert (run / "report" / "summary.md").is_file()


def test_a_run_without_a_summary_is_reported_as_running_or_killed(
    run: Path, tmp_path: Path
) -> None:
    copy = tmp_path / run.name
    shutil.copytree(run, copy)
    (copy / "summary.json").unlink()
    write_report(copy)
    _, page = _page(copy)
    assert "running or killed" in "".join(page.text)


def _browser() -> str | None:
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


# Injected into a copy of the page only: records load errors of any element (capture phase) and,
# once everything has loaded, writes what it saw into the DOM for --dump-dom to return.
PROBE = """<script>
window.__errors = [];
addEventListener("error", e => {
  __errors.push(String(e.message || (e.target && e.target.src) || e.type));
}, true);
addEventListener("load", () => {
  const out = document.createElement("pre");
  out.id = "probe";
  out.textContent = JSON.stringify({errors: __errors, title: document.title,
    images: [...document.images].map(i => [i.complete, i.naturalWidth, i.naturalHeight])});
  document.body.append(out);
});
</script>"""


def _chromium(browser: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",  # CI runs as root
            "--disable-gpu",
            "--no-first-run",
            f"--user-data-dir={profile}",
            "--enable-logging=stderr",
            "--v=0",
            # any name lookup fails: a page that tried to fetch something would show the error
            "--host-resolver-rules=MAP * ~NOTFOUND",
            "--virtual-time-budget=5000",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def assert_renders(page: Path, tmp_path: Path, *, title: str, images: int) -> str:
    """Open a probed copy of `page` in headless Chromium: no load or console errors, the title,
    and `images` images all decoded. Skips where no browser exists; returns the browser used."""
    browser = _browser()
    if browser is None:
        pytest.skip(f"no headless browser found (looked for {', '.join(BROWSERS)} on PATH)")
    probed = tmp_path / "probed.html"
    text = page.read_text(encoding="utf-8")
    probed.write_text(text.replace("<head>", "<head>" + PROBE, 1), encoding="utf-8")
    result = _chromium(browser, tmp_path / "profile", "--dump-dom", probed.as_uri())
    found = re.search(r'<pre id="probe">(.*?)</pre>', result.stdout, re.S)
    assert found, f"no probe result; browser said:\n{result.stderr[-2000:]}"
    probe = json.loads(html.unescape(found.group(1)))
    assert probe["errors"] == []
    assert probe["title"] == title
    assert len(probe["images"]) == images
    for complete, width, height in probe["images"]:
        assert complete
        assert width > 0
        assert height > 0
    console = [line for line in result.stderr.splitlines() if ":CONSOLE" in line]
    assert console == [], console
    return browser


def test_the_report_renders_in_a_headless_browser(run: Path, tmp_path: Path) -> None:
    page = run / "report" / "report.html"
    browser = assert_renders(page, tmp_path, title="Run small", images=3)

    # The page as shipped (no probe) also renders: a screenshot comes back as a PNG.
    shot = tmp_path / "page.png"
    shown = _chromium(
        browser,
        tmp_path / "profile",
        f"--screenshot={shot}",
        "--window-size=1000,1400",
        page.as_uri(),
    )
    assert shot.is_file(), shown.stderr[-2000:]
    assert shot.read_bytes().startswith(PNG_SIGNATURE)
    assert [line for line in shown.stderr.splitlines() if ":CONSOLE" in line] == []
