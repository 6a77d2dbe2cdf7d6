"""Progress output that stays readable everywhere: a tqdm bar on a terminal, plain lines elsewhere.

A tqdm bar redrawn with carriage returns turns a CI log or a ``nohup`` file into one huge line; when
the stream is not a terminal, :class:`Progress` prints a complete line instead, every twentieth of
the work or every 30 seconds, whichever comes first, and one at the end. ``SFTRL_PROGRESS=bar`` or
``=lines`` forces either form.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, TextIO

from tqdm.auto import tqdm

from .formatting import number

LINE_INTERVAL_S = 30.0
LINE_FRACTION = 20  # a line at least every 1/20th of the total


def _use_bar(stream: TextIO) -> bool:
    forced = os.environ.get("SFTRL_PROGRESS", "").lower()
    if forced in ("bar", "lines"):
        return forced == "bar"
    return hasattr(stream, "isatty") and stream.isatty()


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"


class Progress:
    """Counts work done out of ``total``; ``update(n, **fields)`` shows the latest fields beside it."""

    def __init__(self, total: int, desc: str, enabled: bool = True, initial: int = 0, unit: str = "it",
                 stream: TextIO | None = None) -> None:
        self.total, self.desc, self.enabled, self.unit = total, desc, enabled, unit
        self.done = self.start_done = initial
        self.stream = stream or sys.stderr
        self.fields: dict[str, Any] = {}
        self.started = self.last_line = time.perf_counter()
        self.last_line_done = initial
        self.bar = None
        if enabled and _use_bar(self.stream):
            self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True, file=self.stream)

    def update(self, n: int = 1, **fields: Any) -> None:
        if not self.enabled:
            return
        self.done += n
        self.fields.update(fields)
        if self.bar is not None:
            if fields:
                self.bar.set_postfix(self.fields, refresh=False)
            self.bar.update(n)
            return
        now = time.perf_counter()
        step = max(1, self.total // LINE_FRACTION)
        if self.done >= self.total or self.done - self.last_line_done >= step or now - self.last_line >= LINE_INTERVAL_S:
            self._line(now)

    def _line(self, now: float) -> None:
        elapsed = now - self.started
        rate = (self.done - self.start_done) / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else 0.0
        percent = 100.0 * self.done / self.total if self.total else 100.0
        extra = " ".join(f"{k}={v}" for k, v in self.fields.items())
        print(f"{self.desc}: {self.done}/{self.total} {self.unit} ({number(percent, '.0f')}%) {_duration(elapsed)} elapsed, "
              f"{_duration(eta)} left{'  ' + extra if extra else ''}", file=self.stream, flush=True)
        self.last_line, self.last_line_done = now, self.done

    def write(self, text: str) -> None:
        """Print a message without breaking the bar."""
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled and self.done != self.last_line_done:
            self._line(time.perf_counter())
