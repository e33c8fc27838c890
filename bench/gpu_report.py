"""bench/gpu_check.py's report: markdown that grows step by step and is rewritten after each, so
that a run cut short keeps what it measured."""

from __future__ import annotations

import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

UNFINISHED = (
    "**This run did not finish**: the report ends with the last step that completed (the device call's "
    "time limit, or the process was stopped). What is above was measured."
)


class Report:
    """The report as it grows, so that a run cut short keeps what it measured (device time is
    minutes: a run that hits its call's limit must not come back empty). Each finished step is
    printed at once, and with a path the file is rewritten, atomically, with every step so far and
    a last line saying the run has not finished. A step that raises is reported in its own
    section, its traceback on stderr, and the run goes on with the next step."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self.lines: list[str] = []
        self.failed: list[str] = []
        self.seconds: dict[str, float] = {}

    def add(self, lines: list[str]) -> None:
        print("\n".join(lines), flush=True)
        self.lines += lines
        self._write(finished=False)

    def step(self, title: str, measure: Callable[[list[str]], None]) -> None:
        """Run `measure`, which appends its section's lines as it measures; where it raises, the
        lines it had appended stay, followed by the error."""
        started = time.perf_counter()
        lines: list[str] = []
        try:
            measure(lines)
        except Exception as exc:  # broken on this device: say so, and measure the rest
            traceback.print_exc()
            self.failed.append(title)
            why = " ".join(f"{type(exc).__name__}: {exc}".split())[:500]
            lines[:] = [*(lines or [f"## {title}"]), "", f"**This step failed**: {why} (traceback on stderr).", ""]
        self.seconds[title] = time.perf_counter() - started
        print(f"gpu_check: {title}: {self.seconds[title]:.0f} s", file=sys.stderr, flush=True)
        self.add(lines)

    def timings(self, started: float) -> list[str]:
        steps = "; ".join(f"{title} {s:.0f} s" for title, s in self.seconds.items())
        return [f"The whole run took {time.perf_counter() - started:.0f} s ({steps}).", ""]

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"

    def finish(self) -> None:
        self._write(finished=True)

    def _write(self, finished: bool) -> None:
        if self.path is None:
            return
        tmp = self.path.with_name(f".{self.path.name}.partial")
        tmp.write_text(self.text() + ("" if finished else f"\n{UNFINISHED}\n"))
        os.replace(tmp, self.path)


# the procedure on a bare device machine, appended to every finished report
HOW_TO = (Path(__file__).resolve().parent.parent / "docs" / "gpu-check-howto.md").read_text()
