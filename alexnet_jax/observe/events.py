"""TensorBoard event files that mirror metrics.jsonl, written without TensorFlow.

The events are a view of metrics.jsonl, never a second record: at the start of a run (fresh or
resumed) the folder is rewritten from the points metrics.jsonl keeps, then each new point is
appended as it is logged. So a resumed run continues the same curves with no point twice and
none missing. The records are written by TensorBoard's own `RecordWriter` (its TFRecord
framing and checksums, from the `tensorboard` package, which needs no TensorFlow) around its
`Event` protos. Not its `EventFileWriter`, nor tensorboardX: the first imports TensorFlow where
it is installed, the second PyTorch (3.1 s, measured: benchmarks/NOTES.md 40).
`tensorboard --logdir runs` overlays every run's curves.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

# metrics.jsonl key -> TensorBoard tag
TAGS = {"train_loss": "train/loss", "train_acc": "train/acc", "test_loss": "test/loss",
        "test_acc": "test/acc", "examples_per_sec": "speed/examples_per_sec", "lr": "train/lr"}



class EventLog:
    """TensorBoard scalars, one event per metrics point, stepped by the global train step."""

    def __init__(self, folder: Path, points: list[dict], lr: float):
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.summary.writer.record_writer import RecordWriter

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("events.out.tfevents.*"):  # rebuilt from metrics.jsonl below
            old.unlink()
        self.lr = lr
        name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}." \
               f"{os.getpid()}.0"
        self.file = (folder / name).open("ab")
        self.records = RecordWriter(self.file)
        self.records.write(Event(wall_time=time.time(),
                                 file_version="brain.Event:2").SerializeToString())
        for point in points:
            self.add(point, flush=False)
        self.file.flush()

    def add(self, point: dict, flush: bool = True) -> None:
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary

        values = {**point, "lr": self.lr}
        summary = Summary(value=[Summary.Value(tag=tag, simple_value=float(values[key]))
                                 for key, tag in TAGS.items() if values.get(key) is not None])
        event = Event(wall_time=time.time(), step=int(point["step"]), summary=summary)
        self.records.write(event.SerializeToString())
        if flush:
            self.file.flush()

    def close(self) -> None:
        self.file.close()


def read_events(path: Path):
    """The `Event`s of one event file, each record's checksums checked (TensorBoard's own
    reader without TensorFlow)."""
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.compat.tensorflow_stub import errors
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import PyRecordReader_New

    reader = PyRecordReader_New(str(path))
    while True:
        try:
            reader.GetNext()
        except errors.OutOfRangeError:
            return
        yield Event.FromString(reader.record())


def read_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] from the event files in `folder`."""
    scalars: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(Path(folder).glob("events.out.tfevents.*")):
        for event in read_events(path):
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars
