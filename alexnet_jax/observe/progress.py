"""Progress of long work with an ETA: a bar on a terminal, elsewhere a line every 10% or 30 s
(a log file or CI gets lines it can show, not carriage returns)."""

from __future__ import annotations

import sys
import time

LINE_EVERY_SECONDS = 30.0


def duration(seconds: float) -> str:
    """'45 s', '3 min 20 s', '2 h 05 min'."""
    seconds = max(int(round(seconds)), 0)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class Progress:
    """`done` of `total` units of work; `scale` turns units into what the line shows (bytes
    into MB, say). The ETA is the rate since this object began, over the work still left."""

    def __init__(self, name: str, total: int, done: int = 0, out=print, unit: str = "steps",
                 scale: float = 1.0, tty: bool | None = None):
        self.name, self.total, self.done, self.out = name, total, done, out
        self.unit, self.scale, self.first = unit, scale, done
        self.start = self.last_line = time.monotonic()
        self.last_tenth = 10 * done // max(total, 1)
        self.bar = None
        if sys.stderr.isatty() if tty is None else tty:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=done, desc=name, unit=unit,
                            dynamic_ncols=True)

    def show(self, desc: str | None = None, **figures) -> None:
        """On a terminal, the bar's label and figures (loss, say); the lines carry neither."""
        if self.bar is not None:
            if desc is not None:
                self.bar.set_description(desc, refresh=False)
            if figures:
                self.bar.set_postfix(figures, refresh=False)

    def eta(self) -> float | None:
        """Seconds left at the rate so far; None before any work was measured."""
        elapsed = time.monotonic() - self.start
        if self.done <= self.first or elapsed <= 0:
            return None
        return (self.total - self.done) * elapsed / (self.done - self.first)

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            if self.done >= self.total:
                self.bar.close()
            return
        tenth, now = 10 * self.done // max(self.total, 1), time.monotonic()
        if tenth > self.last_tenth or now - self.last_line >= LINE_EVERY_SECONDS:
            self.out(self.line())
            self.last_tenth, self.last_line = tenth, now

    def line(self) -> str:
        eta = self.eta()
        left = "" if self.done >= self.total else (
            f", ETA {duration(eta)}" if eta is not None else "")
        if self.scale == 1:
            done, total = f"{self.done}", f"{self.total}"
        else:
            done, total = f"{self.done / self.scale:.1f}", f"{self.total / self.scale:.1f}"
        return (f"{self.name}: {done} of {total} {self.unit} "
                f"({100 * self.done // max(self.total, 1)}%){left}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
