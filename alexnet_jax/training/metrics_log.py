"""metrics.jsonl: d2l's points of a run, one JSON object a line, and their TensorBoard mirror.

A resumed run cuts the file back to its checkpoint's step, so no point is ever there twice;
a torn last line (a crash mid-write) is dropped with a note.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..observe.events import EventLog
from . import layout, run_dir
from .run_dir import RunError, write_atomic


def read_points(path: Path, out=print) -> list[dict]:
    """The points of a metrics.jsonl; a torn last line (a crash mid-write) is dropped."""
    lines = path.read_text().splitlines() if path.exists() else []
    points = []
    for number, line in enumerate(lines, start=1):
        try:
            point = json.loads(line)
        except json.JSONDecodeError:
            if number < len(lines):
                raise damaged(path, number, line) from None
            out(f"note: dropped the torn last line of {path} (a crash mid-write)")
            continue
        if not (isinstance(point, dict) and isinstance(point.get("step"), int)):
            raise damaged(path, number, line)  # valid JSON, but no point of a run
        points.append(point)
    return points


def damaged(path: Path, number: int, line: str) -> RunError:
    return RunError(f"{path}, line {number}, is damaged: {line[:60]!r}; delete that line, or "
                    "start the run over with `train --restart`")


class MetricsLog:
    """metrics.jsonl, which a resume cuts back to its step; `mirror` adds TensorBoard."""

    def __init__(self, path: Path, resume_step: int, out=print, write: bool = True):
        self.path = path
        self.write = write  # one writer in a multi-process run: the primary process
        self.points = [p for p in read_points(path, out) if p["step"] <= resume_step]
        if path.exists() and self.write:
            write_atomic(path, "".join(json.dumps(p) + "\n" for p in self.points))
        self.events: EventLog | None = None

    def mirror(self, lr: float) -> None:
        """Mirror the points kept, and each one added, to TensorBoard (tagged with `lr`)."""
        if self.write:
            self.events = EventLog(self.path.parent / layout.EVENTS, self.points, lr)

    def close(self) -> None:
        if self.events:
            self.events.close()

    def add(self, point: dict) -> None:
        self.points.append(point)
        if self.events:  # only the writing process has them
            self.events.add(point)
        if self.write:
            try:
                with self.path.open("a") as f:
                    f.write(json.dumps(point) + "\n")
            except OSError as err:
                raise run_dir.cannot_write(self.path, err) from err
