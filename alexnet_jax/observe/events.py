"""TensorBoard event files that mirror metrics.jsonl, written without TensorFlow.

The events are a view of metrics.jsonl, never a second record: at the start of a run (fresh or
resumed) the folder is rewritten from the points metrics.jsonl keeps, then each new point is
appended as it is logged. So a resumed run continues the same curves with no point twice and
none missing. TensorBoard's own writer, reader and protos (the `tensorboard` package) run on
its own file layer: `without_tensorflow` keeps them from importing TensorFlow where it is
installed (5 s of every `train` start on the idx source, measured: benchmarks/NOTES.md 34).
`tensorboard --logdir runs` overlays every run's curves.
"""

from __future__ import annotations

import sys
import time
import types
from pathlib import Path

EVENTS_DIR = "tensorboard"
# metrics.jsonl key -> TensorBoard tag
TAGS = {"train_loss": "train/loss", "train_acc": "train/acc", "test_loss": "test/loss",
        "test_acc": "test/acc", "examples_per_sec": "speed/examples_per_sec", "lr": "train/lr"}


def without_tensorflow() -> None:
    """Make `tensorboard.compat.tf` its TensorFlow stub: tensorboard picks the stub when a
    module `tensorboard.compat.notf` exists (the switch of its TensorFlow-free build), and
    otherwise imports TensorFlow for local file writes the stub does as well."""
    sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))


class EventLog:
    """TensorBoard scalars, one event per metrics point, stepped by the global train step."""

    def __init__(self, workdir: Path, points: list[dict], lr: float):
        without_tensorflow()
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        folder = Path(workdir) / EVENTS_DIR
        for old in folder.glob("events.out.tfevents.*"):  # rebuilt from metrics.jsonl below
            old.unlink()
        self.lr = lr
        self.writer = EventFileWriter(str(folder))
        for point in points:
            self.add(point, flush=False)
        self.writer.flush()

    def add(self, point: dict, flush: bool = True) -> None:
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary

        values = {**point, "lr": self.lr}
        summary = Summary(value=[Summary.Value(tag=tag, simple_value=float(values[key]))
                                 for key, tag in TAGS.items() if values.get(key) is not None])
        self.writer.add_event(Event(wall_time=time.time(), step=int(point["step"]),
                                    summary=summary))
        if flush:
            self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def read_scalars(workdir: Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] from a work dir's event files, with TensorBoard's own reader."""
    without_tensorflow()
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    scalars: dict[str, list[tuple[int, float]]] = {}
    for path in sorted((Path(workdir) / EVENTS_DIR).glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                number = value.simple_value if value.HasField("simple_value") \
                    else float(value.tensor.float_val[0])
                scalars.setdefault(value.tag, []).append((event.step, number))
    return scalars
