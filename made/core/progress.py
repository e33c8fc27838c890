"""Progress of a long run on stderr, for `made train` and `made score`.

On a terminal (with tqdm installed): a live bar. Redirected to a file (a log, CI) there is no bar,
whose carriage returns would glue the lines together: a caller that wants plain lines gives a
`plain` formatter, printed at most once per `every_s` seconds. Disabled, it prints nothing.
Plain python (tqdm only when a bar is drawn), so every layer may use it.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from typing import IO, Any

PLAIN_EVERY_S = 10.0  # plain progress lines (no terminal): at most one per this many seconds


def format_duration(seconds: float) -> str:
    """42s, 3m05s, 1h02m."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class Progress:
    """A position out of `total` units (bytes, rows, batches) and a count of items done.

    update() moves the position and the count; on a terminal the bar follows (unit "B" is scaled
    to KiB/MiB; its postfix is update's note, else `postfix(self)`), elsewhere `plain(self)` is
    printed when at least `every_s` seconds have passed since the last line. close() (or leaving
    active()) ends the bar."""

    def __init__(
        self,
        total: int | None,
        unit: str,
        enabled: bool,
        stream: IO[str] | None = None,
        *,
        desc: str = "",
        initial: int = 0,
        bar_format: str | None = None,
        plain: Callable[[Progress], str] | None = None,
        postfix: Callable[[Progress], str] | None = None,
        every_s: float = PLAIN_EVERY_S,
    ):
        self.stream = stream if stream is not None else sys.stderr
        self.total, self.unit, self.enabled = total, unit, enabled
        self.plain, self.postfix, self.every_s = plain, postfix, every_s
        self.items = 0
        self.position = initial
        self.start = time.perf_counter()
        self.last_line = self.start
        self.bar: Any = None
        if enabled and self.stream.isatty():
            try:
                from tqdm import tqdm
            except ImportError:
                return
            self.bar = tqdm(
                total=total,
                initial=initial,
                file=self.stream,
                unit=unit,
                unit_scale=unit == "B",
                unit_divisor=1024,
                dynamic_ncols=True,
                mininterval=0.5,
                desc=desc,
                bar_format=bar_format,
            )

    @property
    def rate(self) -> float:
        """Items per second since the start."""
        return self.items / max(time.perf_counter() - self.start, 1e-9)

    def update(self, items: int, position: int | None = None, note: str | None = None) -> None:
        """items done since the last call; position: where the run now is (default: one unit
        further); note: the bar's postfix."""
        self.items += items
        position = self.position + 1 if position is None else position
        step, self.position = position - self.position, position
        if self.bar is not None:
            if note is None and self.postfix is not None:
                note = self.postfix(self)
            if note is not None:
                self.bar.set_postfix_str(note, refresh=False)
            self.bar.update(step)
            return
        now = time.perf_counter()
        if self.enabled and self.plain is not None and now - self.last_line >= self.every_s:
            self.last_line = now
            print(self.plain(self), file=self.stream, flush=True)

    def describe(self, desc: str, note: str | None = None) -> None:
        """Relabel the bar (and refresh it with a new postfix)."""
        if self.bar is not None:
            self.bar.set_description_str(desc, refresh=note is None)
            if note is not None:
                self.bar.set_postfix_str(note)

    @contextlib.contextmanager
    def active(self) -> Iterator[Progress]:
        """While the bar is live, log lines are printed above it instead of through it."""
        if self.bar is None:
            yield self
            return
        from tqdm.contrib.logging import logging_redirect_tqdm

        try:
            with logging_redirect_tqdm():
                yield self
        finally:
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
