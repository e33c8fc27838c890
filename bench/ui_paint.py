"""First paint of the playground (/ui/) on a cold browser, with the shipped store.

    .venv/bin/python bench/ui_paint.py [--store model_store] [--rounds 7] [--write]

Starts `made serve --store STORE` on a free port (ready: its models loaded), then for each round
launches a new chromium process (Debian's: `apt-get install chromium`, or MADE_CHROMIUM; never
downloaded), opens each page once in it and closes it: an empty cache, a new renderer, nothing
shared between rounds. The page's own clock gives, from the start of navigation:
- first contentful paint (performance.getEntriesByType("paint"), first-contentful-paint);
- DOMContentLoaded and the load event (the navigation entry);
- the first view drawn: its section's data-ready="1" (the page's first answer from the API drawn).
Prints a markdown table of the median over the rounds (with the slowest); --write puts it into
docs/playground.md between `<!-- paint:begin -->` and `<!-- paint:end -->`. The issue's target is a
first paint under 1 s; this is a bench, not a test.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import textwrap
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from service.testing import made_serve  # noqa: E402

DOC = ROOT / "docs" / "playground.md"
BEGIN, END = "<!-- paint:begin -->", "<!-- paint:end -->"
PAGES = {  # the default view of the default model, and a table model's first view
    "/ui/ (binarized-mnist, samples)": "/ui/",
    "/ui/#model=diamonds&view=record": "/ui/#model=diamonds&view=record",
}
TARGET_MS = 1000.0

# Resolves with the page's timings once first-contentful-paint is in (buffered: also when it came first).
TIMINGS_JS = """() => new Promise((resolve) => {
  const done = (fcp) => {
    const nav = performance.getEntriesByType("navigation")[0];
    resolve({fcp, dcl: nav.domContentLoadedEventEnd, load: nav.loadEventEnd});
  };
  const seen = performance.getEntriesByName("first-contentful-paint");
  if (seen.length) return done(seen[0].startTime);
  new PerformanceObserver((list) => {
    const e = list.getEntriesByName("first-contentful-paint");
    if (e.length) done(e[0].startTime);
  }).observe({type: "paint", buffered: true});
})"""


def chromium_path() -> str:
    """MADE_CHROMIUM, else Debian's chromium on PATH; exits with the reason where there is none."""
    path = os.environ.get("MADE_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path or not Path(path).exists():
        sys.exit("chromium not found: apt-get install -y chromium, or set MADE_CHROMIUM to its path")
    return path


def one_round(playwright: Any, base: str, path: str) -> dict[str, float]:
    """A new browser process, one page, its timings in ms from the start of navigation."""
    browser = playwright.chromium.launch(executable_path=chromium_path())
    try:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(base + path, wait_until="load")
        timings: dict[str, float] = page.evaluate(TIMINGS_JS)
        page.wait_for_selector("section.view:not([hidden])[data-ready='1']", timeout=60_000)
        timings["ready"] = page.evaluate("() => performance.now()")
        return timings
    finally:
        browser.close()


def measure(store: Path, rounds: int) -> dict[str, list[dict[str, float]]]:
    from playwright.sync_api import sync_playwright

    with made_serve(store, env={"OMP_NUM_THREADS": "1"}) as server, sync_playwright() as playwright:
        return {name: [one_round(playwright, server.url, path) for _ in range(rounds)] for name, path in PAGES.items()}


def table(results: dict[str, list[dict[str, float]]], rounds: int, chromium: str) -> str:
    def cell(runs: list[dict[str, float]], key: str) -> str:
        values = [r[key] for r in runs]
        return f"{statistics.median(values):,.0f} ({max(values):,.0f})"

    lines = [
        "| page | first contentful paint | DOMContentLoaded | load | first view drawn |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, runs in results.items():
        lines.append(f"| {name} | " + " | ".join(cell(runs, k) for k in ("fcp", "dcl", "load", "ready")) + " |")
    fcp = max(statistics.median(r["fcp"] for r in runs) for runs in results.values())
    verdict = "under" if fcp < TARGET_MS else "OVER"
    cpu = f"{os.cpu_count()} cores, {platform.machine()}"
    note = textwrap.fill(
        f"Milliseconds from the start of navigation, median of {rounds} rounds (the slowest in brackets), each "
        f"round a new headless chromium process ({chromium}) with an empty cache; `made serve` of the shipped "
        f"store on the same machine ({cpu}), its models loaded. First paint {verdict} the {TARGET_MS:,.0f} ms "
        "target. `python bench/ui_paint.py --write` rewrites this table.",
        width=100,
        break_on_hyphens=False,
    )
    return "\n".join([*lines, "", note])


def write(doc: Path, generated: str) -> None:
    text = doc.read_text()
    if BEGIN not in text or END not in text:
        text = text.rstrip("\n") + f"\n\n## First paint\n\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    doc.write_text(f"{head}{BEGIN}\n{generated}\n{END}{tail}")


def chromium_version(path: str) -> str:
    import subprocess

    out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30).stdout.split()
    return " ".join(out[:2]) if out else "chromium"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", type=Path, default=ROOT / "model_store")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--write", action="store_true", help=f"write the table into {DOC.relative_to(ROOT)}")
    args = ap.parse_args()
    try:
        import playwright  # noqa: F401
    except ImportError:
        sys.exit("playwright is not installed: pip install -e '.[dev]' (no `playwright install`: Debian's chromium)")
    generated = table(measure(args.store, args.rounds), args.rounds, chromium_version(chromium_path()))
    print(generated)
    if args.write:
        write(DOC, generated)
        print(f"written to {DOC}")


if __name__ == "__main__":
    main()
