"""A training run's settings and their defaults: the one place the CLI, the library and a
work dir's config.json read them from. Imports nothing heavy, so `--help` stays quick."""

from __future__ import annotations

from dataclasses import dataclass

PIPELINES = ("device", "host")  # resize on the accelerator, or in tf.data on the host
SOURCES = ("auto", "tfds", "idx")  # how the Fashion-MNIST release files are read
IMAGE_SIZE = 224  # d2l's Resize(224): the model's input is IMAGE_SIZE x IMAGE_SIZE x 1
# --dtype NAME: (the computation dtype, the parameters' dtype); None computes in the input's
# dtype (float32). float64 is for numerical checks (JAX's 64-bit mode).
DTYPES = {"float32": (None, "float32"), "bfloat16": ("bfloat16", "float32"),
          "float64": ("float64", "float64")}
# A run that learns in minutes on a CPU: what the CLI's examples, `train`'s CPU estimate and
# the README suggest.
QUICK_RUN = ("--limit-train 2048 --limit-test 256 --epochs 2 --batch-size 32 --lr 0.05 "
             "--workdir runs/quick")


@dataclass
class TrainConfig:
    """Every setting of `train`; the defaults are d2l's run."""

    workdir: str = "runs/alexnet"
    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.01
    seed: int = 0
    pipeline: str = "device"
    source: str = "auto"
    data_dir: str | None = None
    manual_dir: str | None = None
    limit_train: int | None = None
    limit_test: int | None = None
    checkpoint_every_steps: int | None = None
    keep_checkpoints: int = 3
    dtype: str = "float32"
    num_classes: int = 10
    dropout: float = 0.5
    augment: bool = False
    strict_checkpoints: bool = False
    profile_steps: tuple[int, int] | None = None
    # d2l's timing: each step waited for and timed alone (examples/sec comparable with d2l's
    # printed figure); by default one step is in flight and the steps' wall time is counted.
    sync_steps: bool = False
    # Seconds without a heartbeat before a process of a multi-process run counts as lost and
    # the run stops: a lost host is noticed within it (38 s measured at 60), a healthy process
    # that stalls for up to half of it goes on (heartbeats go out about every half; 25 s
    # survived at 60, 20 s did not at 30). JAX's default is 100 (benchmarks/NOTES.md 40).
    heartbeat_timeout: int = 60

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        """The config from `values`, ignoring keys that are not settings (CLI flags, say)."""
        return cls(**{k: v for k, v in values.items() if k in cls.__dataclass_fields__})


D2L = TrainConfig()  # d2l's run: what every command's defaults come from
