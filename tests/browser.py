"""Browser fixtures (a pytest plugin, loaded by conftest's `pytest_plugins`): the playground in
Debian's chromium, driven by Playwright's sync API, against a real `made serve` of the shipped store.

- `ui_server`: `made serve --store model_store` on a free loopback port, once a session.
- `ui_base_url`: its base URL, e.g. http://127.0.0.1:PORT.
- `ui_browser`: chromium (never downloaded: Debian's, `apt-get install chromium`, or the one
  MADE_CHROMIUM names), once a session. Tests that need it skip with the reason where Playwright or
  chromium is absent.
- `ui_page`: a fresh context and page at `{base}/ui/`, loaded. `ui_recorder` is what it records: console
  errors, uncaught page errors, failed requests, responses >= 400 and any request to another origin
  (aborted: tests never leave the machine). At teardown the test fails listing them, unless
  expected: `ui_recorder.expect_status(404, "/models/nope")` or the marker
  `@pytest.mark.ui_expect_status(422, "/impute")`, and `ui_recorder.expect_console("Refused to")`.
- `open_page(browser, base, path)`: the same recorded page, for another server (one with an API key).

Playwright's sync API cannot run inside an asyncio loop: tests that use these are plain functions.
Between its calls it marks its own loop as the thread's running loop, which would stop every later
async (anyio) test of the session from starting its own; the hooks below unmark it around tests that
use no browser.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pytest

from service.testing import ServerProcess, made_serve

if TYPE_CHECKING:
    from playwright.sync_api import Browser, ConsoleMessage, Page, Request, Response, Route

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "model_store"
UI_PATH = "/ui/"
TIMEOUT_MS = 15_000  # one Playwright action or wait; well under pytest-timeout's 300 s
CHROMIUM_NAMES = ("chromium", "chromium-browser")  # Debian's, Ubuntu's


_PLAYWRIGHT_LOOP: asyncio.AbstractEventLoop | None = None  # Playwright's loop, while it runs


@contextmanager
def _loop_unmarked() -> Iterator[None]:
    """No running loop in this thread for the block (an async test starts its own), Playwright's
    marked again after it (its next call resumes that loop, whose tasks ask for it)."""
    loop = _PLAYWRIGHT_LOOP
    if loop is None or asyncio._get_running_loop() is not loop:
        yield
        return
    asyncio._set_running_loop(None)
    try:
        yield
    finally:
        if _PLAYWRIGHT_LOOP is loop:  # not stopped meanwhile (at the session's end)
            asyncio._set_running_loop(loop)


def _phase(item: pytest.Item) -> Iterator[None]:
    if "ui_browser" in getattr(item, "fixturenames", ()):
        return (yield)
    with _loop_unmarked():
        return (yield)


pytest_runtest_setup = pytest.hookimpl(wrapper=True)(_phase)
pytest_runtest_call = pytest.hookimpl(wrapper=True)(_phase)
pytest_runtest_teardown = pytest.hookimpl(wrapper=True)(_phase)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "ui_expect_status(status, path=None): a response the ui_page fixture does not count as a problem"
    )


def chromium_path() -> str | None:
    """MADE_CHROMIUM, else Debian's chromium on PATH; None where there is none."""
    named = os.environ.get("MADE_CHROMIUM")
    if named:
        return named if Path(named).exists() else None
    return next((p for p in map(shutil.which, CHROMIUM_NAMES) if p), None)


def browser_missing() -> str | None:
    """Why no browser test can run here, or None."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[dev]')"
    if chromium_path() is None:
        return "chromium not found (apt-get install -y chromium, or set MADE_CHROMIUM to its path)"
    return None


def same_origin(url: str, base: str) -> bool:
    u, b = urlsplit(url), urlsplit(base)
    return (u.scheme, u.netloc) == (b.scheme, b.netloc)


def off_host(url: str, base: str) -> bool:
    """A request that would leave the server: any http(s)/ws(s) URL of another origin (data:,
    blob: and about: URLs never leave the page)."""
    return urlsplit(url).scheme in ("http", "https", "ws", "wss") and not same_origin(url, base)


@dataclass
class Recorder:
    """What a page did wrong; `problems()` less what the test expected."""

    base: str
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    bad_status: list[tuple[int, str]] = field(default_factory=list)  # (status, url)
    off_host: list[str] = field(default_factory=list)
    expected_status: list[tuple[int, str | None]] = field(default_factory=list)
    expected_console: list[str] = field(default_factory=list)

    def expect_status(self, status: int, path: str | None = None) -> None:
        """Responses with `status` (to URLs whose path contains `path`, if given) are not problems,
        nor is the console error chromium logs for them."""
        self.expected_status.append((status, path))

    def expect_console(self, text: str) -> None:
        """Console errors containing `text` are not problems."""
        self.expected_console.append(text)

    def _status_expected(self, status: int, url: str) -> bool:
        path = urlsplit(url).path
        return any(s == status and (p is None or p in path) for s, p in self.expected_status)

    def _console_expected(self, text: str, url: str) -> bool:
        if any(t in text for t in self.expected_console):
            return True
        # chromium's own line for a response >= 400: "Failed to load resource: the server
        # responded with a status of 404 (Not Found)", located at the response's URL
        return any(
            f"status of {s} " in text and (p is None or p in urlsplit(url).path) for s, p in self.expected_status
        )

    # --- listeners ----------------------------------------------------------------------------

    def on_console(self, msg: ConsoleMessage) -> None:
        if msg.type == "error":
            url = msg.location.get("url", "") if msg.location else ""
            if off_host(url, self.base):
                return  # the aborted request itself is recorded
            if not self._console_expected(msg.text, url):
                self.console_errors.append(f"{msg.text} (at {url or '?'})")

    def on_page_error(self, error: Any) -> None:
        self.page_errors.append(str(error))

    def on_request_failed(self, request: Request) -> None:
        if off_host(request.url, self.base):
            return  # recorded (and aborted) by the route
        if request.failure == "net::ERR_ABORTED":
            return  # cancelled by the page (a navigation, an AbortController), not failed
        self.failed.append(f"{request.method} {request.url}: {request.failure}")

    def on_response(self, response: Response) -> None:
        if response.status >= 400 and not self._status_expected(response.status, response.url):
            self.bad_status.append((response.status, f"{response.request.method} {response.url}"))

    def on_off_host(self, route: Route) -> None:
        self.off_host.append(f"{route.request.method} {route.request.url}")
        route.abort("blockedbyclient")

    def problems(self) -> list[str]:
        return (
            [f"console error: {t}" for t in self.console_errors]
            + [f"page error: {t}" for t in self.page_errors]
            + [f"failed request: {t}" for t in self.failed]
            + [f"HTTP {s}: {u}" for s, u in self.bad_status]
            + [f"request to another host: {u}" for u in self.off_host]
        )


@contextmanager
def open_page(browser: Browser, base: str, path: str = UI_PATH, *, recorder: Recorder | None = None) -> Iterator[Page]:
    """A new context and page at `base + path`, loaded, with `recorder` (a new one if None)
    listening from before the first request; the context is closed on exit. Checking the
    recorder is the caller's (the `ui_page` fixture does it)."""
    rec = recorder if recorder is not None else Recorder(base)
    context = browser.new_context()
    try:
        context.set_default_timeout(TIMEOUT_MS)
        context.route(lambda url: off_host(url, base), rec.on_off_host)
        page = context.new_page()
        page.on("console", rec.on_console)
        page.on("pageerror", rec.on_page_error)
        page.on("requestfailed", rec.on_request_failed)
        page.on("response", rec.on_response)
        page.goto(base + path, wait_until="load")
        yield page
    finally:
        context.close()


def settle(page: Page, idle_ms: int = 2_000) -> None:
    """Until the network is idle (at most `idle_ms`): late requests and errors get recorded."""
    from playwright.sync_api import Error

    with suppress(Error):  # a page that polls is never idle; what it did so far is recorded
        page.wait_for_load_state("networkidle", timeout=idle_ms)


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def ui_server() -> Iterator[ServerProcess]:
    with made_serve(SHIPPED, env={"OMP_NUM_THREADS": "1"}) as server:
        yield server


@pytest.fixture(scope="session")
def ui_base_url(ui_server: ServerProcess) -> str:
    return ui_server.url


@pytest.fixture(scope="session")
def ui_browser() -> Iterator[Browser]:
    reason = browser_missing()
    if reason:
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    global _PLAYWRIGHT_LOOP
    playwright = sync_playwright().start()
    _PLAYWRIGHT_LOOP = asyncio._get_running_loop()
    try:
        browser = playwright.chromium.launch(executable_path=chromium_path())
        try:
            yield browser
        finally:
            if asyncio._get_running_loop() is None:  # finalized in the teardown of a test without it
                asyncio._set_running_loop(_PLAYWRIGHT_LOOP)
            browser.close()
    finally:
        playwright.stop()
        if asyncio._get_running_loop() is _PLAYWRIGHT_LOOP:
            asyncio._set_running_loop(None)
        _PLAYWRIGHT_LOOP = None


@pytest.fixture
def ui_recorder(request: pytest.FixtureRequest, ui_base_url: str) -> Recorder:
    rec = Recorder(ui_base_url)
    for mark in request.node.iter_markers("ui_expect_status"):
        rec.expect_status(*mark.args, **mark.kwargs)
    return rec


@pytest.fixture
def ui_page(ui_browser: Browser, ui_base_url: str, ui_recorder: Recorder) -> Iterator[Page]:
    """The playground at {base}/ui/, loaded, in a fresh context; fails the test at teardown with
    every console error, page error, failed, >= 400 or off-host request it recorded."""
    with open_page(ui_browser, ui_base_url, recorder=ui_recorder) as page:
        yield page
        if not page.is_closed():
            settle(page)
    problems = ui_recorder.problems()
    if problems:
        pytest.fail("the page recorded problems:\n  " + "\n  ".join(problems), pytrace=False)
