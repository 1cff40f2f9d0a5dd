"""TensorBoard event files that mirror metrics.jsonl, written without TensorFlow.

The events are a view of metrics.jsonl, never a second record: at the start of a run (fresh or
resumed) the folder is rewritten from the points metrics.jsonl keeps, then each new point is
appended as it is logged. So a resumed run continues the same curves with no point twice and
none missing. The files are TensorBoard's records (TFRecord framing around its `Event`
protos, from the `tensorboard` package): written here directly, because TensorBoard's own
writer imports TensorFlow where it is installed unless a module is planted in sys.modules,
and its TensorFlow stub alone takes 0.4 s to import; the protos take 0.04 s
(benchmarks/NOTES.md 36). `tensorboard --logdir runs` overlays every run's curves.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from pathlib import Path

# metrics.jsonl key -> TensorBoard tag
TAGS = {"train_loss": "train/loss", "train_acc": "train/acc", "test_loss": "test/loss",
        "test_acc": "test/acc", "examples_per_sec": "speed/examples_per_sec", "lr": "train/lr"}



def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC32C = _crc32c_table()


def masked_crc32c(data: bytes) -> int:
    """TFRecord's checksum: CRC-32C (Castagnoli), rotated and offset ("masked")."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    crc ^= 0xFFFFFFFF
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _record(data: bytes) -> bytes:
    """One TFRecord: length, its checksum, the data, its checksum (little-endian)."""
    header = struct.pack("<Q", len(data))
    return (header + struct.pack("<I", masked_crc32c(header)) + data
            + struct.pack("<I", masked_crc32c(data)))


class EventLog:
    """TensorBoard scalars, one event per metrics point, stepped by the global train step."""

    def __init__(self, folder: Path, points: list[dict], lr: float):
        from tensorboard.compat.proto.event_pb2 import Event

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("events.out.tfevents.*"):  # rebuilt from metrics.jsonl below
            old.unlink()
        self.lr = lr
        name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}." \
               f"{os.getpid()}.0"
        self.file = (folder / name).open("ab")
        self.file.write(_record(Event(wall_time=time.time(),
                                      file_version="brain.Event:2").SerializeToString()))
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
        self.file.write(_record(event.SerializeToString()))
        if flush:
            self.file.flush()

    def close(self) -> None:
        self.file.close()


def read_events(path: Path):
    """The `Event`s of one event file, each record's checksums checked."""
    from tensorboard.compat.proto.event_pb2 import Event

    data = Path(path).read_bytes()
    at = 0
    while at < len(data):
        header = data[at:at + 8]
        (length,) = struct.unpack("<Q", header)
        body = data[at + 12:at + 12 + length]
        checks = struct.unpack("<II", data[at + 8:at + 12] + data[at + 12 + length:
                                                                    at + 16 + length])
        if checks != (masked_crc32c(header), masked_crc32c(body)):
            raise ValueError(f"{path}: a damaged record at byte {at}")
        yield Event.FromString(body)
        at += 16 + length


def read_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] from the event files in `folder`."""
    scalars: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(Path(folder).glob("events.out.tfevents.*")):
        for event in read_events(path):
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars
