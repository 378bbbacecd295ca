"""Progress of a long copy: rows done, rate, ETA, in the log and as a bar on stderr.

No dependency: the bar is one carriage-returned line, drawn only when stderr is a
terminal (or when asked), so task logs in Airflow stay readable.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import TextIO

log = logging.getLogger(__name__)


def _fmt_seconds(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


class Progress:
    """Reports `done` of `total` rows; logs at most every `log_every` seconds."""

    def __init__(
        self,
        label: str,
        total: int,
        *,
        bar: bool | None = None,
        log_every: float = 5.0,
        stream: TextIO | None = None,
    ) -> None:
        self.label, self.total = label, max(total, 0)
        self.stream = stream or sys.stderr
        self.bar = self.stream.isatty() if bar is None else bar
        self.log_every = log_every
        self.started = time.monotonic()
        self.last_log = self.started
        self.done = 0

    def rate(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.done / elapsed if elapsed > 0 else 0.0

    def line(self) -> str:
        rate = self.rate()
        left = max(self.total - self.done, 0)
        eta = _fmt_seconds(left / rate) if rate > 0 else "?"
        pct = 100.0 * self.done / self.total if self.total else 100.0
        return (
            f"{self.label}: {self.done:,}/{self.total:,} rows ({pct:.0f}%), "
            f"{rate:,.0f} rows/s, ETA {eta}"
        )

    def update(self, rows: int) -> None:
        self.done += rows
        now = time.monotonic()
        if self.bar:
            width = 30
            filled = int(width * min(self.done / self.total, 1.0)) if self.total else width
            self.stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {self.line()}\x1b[K")
            self.stream.flush()
        if now - self.last_log >= self.log_every:
            self.last_log = now
            log.info("%s", self.line())

    def finish(self) -> None:
        if self.bar:
            self.stream.write("\n")
            self.stream.flush()
        log.info("%s (done in %s)", self.line(), _fmt_seconds(time.monotonic() - self.started))
