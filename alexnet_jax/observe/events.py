"""TensorBoard event files that mirror metrics.jsonl, written without TensorFlow.

The events are a view of metrics.jsonl, never a second record: at the start of a run (fresh or
resumed) the folder is rewritten from the points metrics.jsonl keeps, then each new point is
appended as it is logged. So a resumed run continues the same curves with no point twice and
none missing. TensorBoard's own writer and protos (the `tensorboard` package) need no
TensorFlow (where it is installed they import it, and so it is imported quietly);
`tensorboard --logdir runs` overlays every run's curves.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

from ..runtime.tf_import import import_quietly

EVENTS_DIR = "tensorboard"
# metrics.jsonl key -> TensorBoard tag
TAGS = {"train_loss": "train/loss", "train_acc": "train/acc", "test_loss": "test/loss",
        "test_acc": "test/acc", "examples_per_sec": "speed/examples_per_sec", "lr": "train/lr"}


class EventLog:
    """TensorBoard scalars, one event per metrics point, stepped by the global train step."""

    def __init__(self, workdir: Path, points: list[dict], lr: float):
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        with contextlib.suppress(ImportError):  # the writer imports TensorFlow where it is
            import_quietly("tensorflow")
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
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    scalars: dict[str, list[tuple[int, float]]] = {}
    for path in sorted((Path(workdir) / EVENTS_DIR).glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                number = value.simple_value if value.HasField("simple_value") \
                    else float(value.tensor.float_val[0])
                scalars.setdefault(value.tag, []).append((event.step, number))
    return scalars
