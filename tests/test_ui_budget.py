"""The playground's budgets (issue 27): light, closed, and off when MADE_UI=0.

- The page and every asset it loads weigh under 300 KB (measured in the browser: the bodies of
  the page's own requests), and so do all the files the server can serve for it.
- Every file goes out with a Content-Security-Policy that allows this origin only and no inline
  script; the HTML holds no inline script (nor inline handlers, nor inline style where the policy
  forbids it); in the browser an injected inline script does not run and a fetch to another host
  is refused.
- MADE_UI=0: GET /ui/ and GET / are 404.
- Serving the page and its assets raises the service's RSS (VmRSS of `made serve`) by less than
  5 MB: 20 rounds of its files, then 20 page loads in the browser after one warm-up load.

First paint is a bench, not a test: bench/ui_paint.py.
"""

from __future__ import annotations

import time
from html.parser import HTMLParser
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import httpx
import pytest
from browser import SHIPPED, UI_PATH, Recorder, open_page, same_origin, settle

from service.http import ui
from service.settings import Settings
from service.testing import in_process, made_serve

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page, Response

KB = 1000
PAGE_BUDGET = 300 * KB
RSS_BUDGET = 5 * 1024 * 1024
ROUNDS = 20
ASSET_TYPES = {"document", "stylesheet", "script", "font", "manifest"}


# --- weight ------------------------------------------------------------------------------------


def is_asset(response: Response, base: str) -> bool:
    """A file of the page, as opposed to an answer of the API it calls."""
    path = urlsplit(response.url).path
    return same_origin(response.url, base) and (
        path.startswith(UI_PATH) or path == "/favicon.ico" or response.request.resource_type in ASSET_TYPES
    )


def load_assets(page: Page, base: str) -> dict[str, int]:
    """Reload the page and return the body size of every asset it loads, by path."""
    settle(page)
    responses: list[Response] = []
    page.on("response", lambda r: responses.append(r))
    page.reload(wait_until="load")
    settle(page)
    sizes = {}
    for r in responses:
        if is_asset(r, base) and r.status < 300:
            sizes[urlsplit(r.url).path] = len(r.body())
    return sizes


def test_the_page_and_its_assets_weigh_under_300_kb(ui_page: Page, ui_base_url: str) -> None:
    sizes = load_assets(ui_page, ui_base_url)
    table = "\n".join(f"  {n:>8,} B  {p}" for p, n in sorted(sizes.items()))
    total = sum(sizes.values())
    print(f"\nthe page and its assets, loaded by chromium: {total:,} B\n{table}")
    assert UI_PATH in sizes, f"the page itself was not loaded: {sorted(sizes)}"
    assert total < PAGE_BUDGET, f"{total:,} B loaded (budget {PAGE_BUDGET:,} B):\n{table}"


def test_every_file_the_playground_can_serve_weighs_under_300_kb_together() -> None:
    # Views loaded later (on demand) count too: the budget is for all of it.
    total = sum(p.stat().st_size for p in ui.ASSETS.values())
    assert "index.html" in ui.ASSETS
    assert total < PAGE_BUDGET, {n: p.stat().st_size for n, p in ui.ASSETS.items()}


# --- a closed page -----------------------------------------------------------------------------


def csp_directives(header: str) -> dict[str, list[str]]:
    """A Content-Security-Policy header as {directive: sources} (the first of a repeated one wins,
    as browsers do)."""
    out: dict[str, list[str]] = {}
    for part in header.split(";"):
        words = part.split()
        if words:
            out.setdefault(words[0].lower(), [w.lower() for w in words[1:]])
    return out


LOCAL_SOURCES = {"'self'", "'none'"}
FETCH_DIRECTIVES = ("default-src", "script-src", "script-src-elem", "script-src-attr", "style-src", "img-src")
FETCH_DIRECTIVES += ("connect-src", "font-src", "media-src", "object-src", "frame-src", "worker-src", "manifest-src")


def csp_problems(header: str | None) -> list[str]:
    """Why a policy would let the page run an inline script or reach another origin."""
    if not header:
        return ["no Content-Security-Policy"]
    csp = csp_directives(header)
    problems = []
    if set(csp.get("default-src", ["*"])) - LOCAL_SOURCES:
        problems.append(f"default-src {csp.get('default-src')} is not 'self' or 'none'")
    for name in ("script-src", "script-src-elem", "script-src-attr"):
        sources = set(csp.get(name, csp.get("script-src", csp.get("default-src", ["*"]))))
        if sources - LOCAL_SOURCES:  # no 'unsafe-inline', 'unsafe-eval', hashes, nonces, hosts or schemes
            problems.append(f"{name} allows {sorted(sources - LOCAL_SOURCES)}")
    for name in FETCH_DIRECTIVES:
        # data: and blob: URLs are made in the page and never leave it; any host, scheme or * is
        # another origin
        other = [s for s in csp.get(name, []) if not s.startswith("'") and s not in ("data:", "blob:")]
        if other:
            problems.append(f"{name} allows other origins: {other}")
    return problems


def test_the_csp_checker_rejects_what_it_should() -> None:
    assert csp_problems("default-src 'self'; img-src 'self' data: blob:; object-src 'none'") == []
    assert csp_problems(None)
    assert csp_problems("default-src 'self'; script-src 'self' 'unsafe-inline'")
    assert csp_problems("default-src 'self'; script-src 'self' https://cdn.example")
    assert csp_problems("default-src *")
    assert csp_problems("script-src 'self'")  # no default-src: every other fetch is open
    assert csp_problems("default-src 'self'; connect-src 'self' https:")


class InlineFinder(HTMLParser):
    """What in an HTML file would run or style inline."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[str] = []  # inline script elements
        self.handlers: list[str] = []  # on...= attributes and javascript: URLs
        self.styles: list[str] = []  # <style> elements and style= attributes
        self._in: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name.startswith("on"):
                self.handlers.append(f"<{tag} {name}=...>")
            url = (value or "").strip().lower()
            if name in ("href", "src", "action", "formaction") and url.startswith("javascript:"):
                self.handlers.append(f"<{tag} {name}={value!r}>")
            if name == "style":
                self.styles.append(f"<{tag} style={value!r}>")
        if tag == "script" and not dict(attrs).get("src"):
            self.scripts.append("<script> without src")
        if tag in ("script", "style"):
            self._in = tag
        if tag == "style":
            self.styles.append("<style>")

    def handle_endtag(self, tag: str) -> None:
        self._in = None

    def handle_data(self, data: str) -> None:
        if self._in == "script" and data.strip():
            self.scripts.append(f"inline script: {data.strip()[:60]!r}")


def inline_problems(html: str, csp: str | None) -> list[str]:
    finder = InlineFinder()
    finder.feed(html)
    problems = finder.scripts + finder.handlers
    style = csp_directives(csp or "").get("style-src", [])
    if "'unsafe-inline'" not in style:  # the page's own policy would block them: a broken look
        problems += finder.styles
    return problems


@pytest.mark.anyio
async def test_every_file_goes_out_with_a_csp_that_allows_only_this_origin_and_no_inline_script() -> None:
    async with in_process(Settings(store=SHIPPED), lifespan=False) as made:
        paths = [UI_PATH] + [UI_PATH + name for name in ui.ASSETS]
        for path in paths:
            r = await made.http.get(path)
            assert r.status_code == 200, (path, r.status_code)
            csp = r.headers.get("content-security-policy")
            assert csp_problems(csp) == [], (path, csp)
            assert r.headers.get("x-content-type-options") == "nosniff", path
            if r.headers["content-type"].startswith("text/html"):
                assert inline_problems(r.text, csp) == [], path


def test_in_the_browser_every_asset_has_the_csp_and_inline_script_and_other_hosts_are_refused(
    ui_page: Page, ui_base_url: str, ui_recorder: Recorder
) -> None:
    settle(ui_page)
    responses: list[Response] = []
    ui_page.on("response", lambda r: responses.append(r))
    ui_page.reload(wait_until="load")
    settle(ui_page)
    assets = [r for r in responses if is_asset(r, ui_base_url) and r.status < 300]
    assert assets
    for r in assets:
        assert csp_problems(r.headers.get("content-security-policy")) == [], r.url

    # chromium's lines for what the policy blocked ("Executing inline script violates ...",
    # "Connecting to 'http://example.invalid/x' violates ...")
    ui_recorder.expect_console("inline script violates")
    ui_recorder.expect_console("example.invalid")
    ran = ui_page.evaluate(
        """() => {
            const s = document.createElement("script");
            s.textContent = "window.__inlineRan = true";
            document.body.appendChild(s);
            return window.__inlineRan === true;
        }"""
    )
    assert ran is False, "an injected inline script ran"
    fetched = ui_page.evaluate(
        """() => fetch("http://example.invalid/x").then(() => "fetched", (e) => "refused: " + e)"""
    )
    assert fetched.startswith("refused"), fetched
    assert ui_recorder.off_host == []  # refused by the page's policy, before any request


# --- off ---------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_made_ui_0_unmounts_the_page(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MADE_UI", "0")
    assert Settings().ui is False
    async with in_process(Settings(store=SHIPPED, ui=False), lifespan=False) as made:
        for path in ("/", "/ui", UI_PATH, UI_PATH + "app.js", UI_PATH + "index.html"):
            assert (await made.http.get(path)).status_code == 404, path
    async with in_process(Settings(store=SHIPPED, ui=True), lifespan=False) as made:  # on: they answer
        assert (await made.http.get(UI_PATH)).status_code == 200
        r = await made.http.get("/")
        assert r.status_code in (301, 302, 303, 307, 308)
        assert r.headers["location"].rstrip("/").endswith("ui")


# --- memory ------------------------------------------------------------------------------------


def vm_rss(pid: int) -> int:
    """Bytes resident in the process (/proc/PID/status, VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS in /proc/{pid}/status")


def mib(n: int) -> str:
    return f"{n / (1 << 20):+.2f} MiB"


@pytest.mark.slow
def test_serving_the_page_raises_the_services_rss_by_under_5_mb(ui_browser: Browser) -> None:
    if not Path("/proc/self/status").exists():
        pytest.skip("no /proc here: VmRSS is Linux's")
    # A server of its own: the page's first serving counts too, nothing else has touched it.
    with made_serve(SHIPPED, env={"OMP_NUM_THREADS": "1"}) as server:
        pid = server.proc.pid
        assert b"serve" in Path(f"/proc/{pid}/cmdline").read_bytes()
        with httpx.Client(base_url=server.url, timeout=30) as http:
            for _ in range(5):  # the HTTP path itself warm: what any first requests cost
                http.get("/healthz").raise_for_status()
                http.get("/models").raise_for_status()
            time.sleep(0.2)
            before = vm_rss(pid)
            # 1. the files alone, 20 rounds, from the first serving on
            for _ in range(ROUNDS):
                for path in [UI_PATH] + [UI_PATH + name for name in ui.ASSETS]:
                    http.get(path).raise_for_status()
            files = vm_rss(pid)
        # 2. the page in the browser (its files and the API calls it makes on load), after one
        # warm-up load (the models' first answers)
        rec = Recorder(server.url)
        with open_page(ui_browser, server.url, recorder=rec) as page:
            settle(page, 10_000)
            warm = vm_rss(pid)
            for _ in range(ROUNDS):
                page.reload(wait_until="load")
                settle(page, 10_000)
            loaded = vm_rss(pid)
        assert rec.problems() == []
    report = f"files x{ROUNDS}: {mib(files - before)}; page loads x{ROUNDS} after a warm-up: {mib(loaded - warm)}"
    print(f"\nVmRSS of made serve: {mib(before)[1:]} at start; {report}")
    assert files - before < RSS_BUDGET, report
    assert loaded - warm < RSS_BUDGET, report
