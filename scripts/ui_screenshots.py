"""Screenshots of every view of the playground into docs/ui-VIEW.png.

    .venv/bin/python scripts/ui_screenshots.py [--store model_store] [--url http://127.0.0.1:8000]
        [--only samples,record] [--out docs]

Starts `made serve --store STORE` on a free port (or uses the server at --url), opens each view in
Debian's headless chromium (`apt-get install chromium`, or MADE_CHROMIUM) at
`/ui/#model=MODEL&view=VIEW`, waits for the view's first answer (its section's data-ready="1"), does
the view's interaction where its first state shows little, and writes the page (1200 px wide, its
whole height) to OUT/ui-VIEW.png. The views and their ids are listed at the top of
service/http/static/app.js: binarized-mnist's samples, impute, denoise, surprisal and card;
diamonds' record, given and csv. The README shows two of them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.ui_paint import chromium_path  # noqa: E402
from service.testing import made_serve  # noqa: E402


def _impute(page: Any) -> None:  # the right half hidden: a heatmap and completions
    page.click("#impute-show-all")
    page.click("#impute-hide-right")
    page.click("#impute-go")


def _csv(page: Any) -> None:  # 300 rows drawn from the model, scored
    page.click("#csv-example")


# view -> (model, what to do once its first answer is drawn, and wait for again)
VIEWS: dict[str, tuple[str, Callable[[Any], None] | None]] = {
    "samples": ("binarized-mnist", None),
    "impute": ("binarized-mnist", _impute),
    "denoise": ("binarized-mnist", None),
    "surprisal": ("binarized-mnist", None),
    "card": ("binarized-mnist", None),
    "record": ("diamonds", None),
    "given": ("diamonds", None),
    "csv": ("diamonds", _csv),
}
READY_MS = 120_000  # the slowest first answers take a few seconds on two cores


def wait_ready(page: Any, view: str) -> None:
    page.wait_for_selector(f"#view-{view}[data-ready='1']", state="attached", timeout=READY_MS)
    page.wait_for_function("() => !Number(document.body.dataset.busy || 0)", timeout=READY_MS)


def shoot(browser: Any, base: str, view: str, out: Path) -> Path:
    model, action = VIEWS[view]
    page = browser.new_page(viewport={"width": 1200, "height": 800})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        page.goto(f"{base}/ui/#model={model}&view={view}", wait_until="load")
        if action is None:
            wait_ready(page, view)
        else:
            page.wait_for_selector(f"#view-{view}:not([hidden])", timeout=READY_MS)
            page.wait_for_load_state("networkidle", timeout=READY_MS)  # its first answer, if any, drawn
            page.evaluate(f"() => delete document.getElementById('view-{view}').dataset.ready")
            action(page)
            wait_ready(page, view)
        if errors:
            sys.exit(f"{view}: the page reported errors: {errors}")
        page.evaluate("() => document.activeElement && document.activeElement.blur()")  # no focus ring
        path = out / f"ui-{view}.png"
        page.screenshot(path=str(path), full_page=True)
        return path
    finally:
        page.close()


@contextmanager
def server_at(url: str | None, store: Path) -> Iterator[str]:
    if url:
        yield url.rstrip("/")
        return
    with made_serve(store, env={"OMP_NUM_THREADS": "1"}) as server:
        yield server.url


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", type=Path, default=ROOT / "model_store")
    ap.add_argument("--url", help="a running server's base URL (default: start made serve of --store)")
    ap.add_argument("--only", help="comma-separated views (default: all)")
    ap.add_argument("--out", type=Path, default=ROOT / "docs")
    args = ap.parse_args()
    views = args.only.split(",") if args.only else list(VIEWS)
    args.out.mkdir(parents=True, exist_ok=True)
    if unknown := sorted(set(views) - set(VIEWS)):
        sys.exit(f"unknown views {unknown}; known: {', '.join(VIEWS)}")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sys.exit("playwright is not installed: pip install -e '.[dev]' (no `playwright install`: Debian's chromium)")
    executable = chromium_path()
    with server_at(args.url, args.store) as base, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable)
        try:
            for view in views:
                path = shoot(browser, base, view, args.out)
                print(f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}: {path.stat().st_size:,} B")
        finally:
            browser.close()


if __name__ == "__main__":
    main()
