"""The command line's surface: every command, flag, default and example of `alexnet-jax`."""

from __future__ import annotations

import argparse
import math

from .config import D2L, DTYPES, IMAGE_SIZE, PIPELINES, QUICK_RUN, SOURCES

DESCRIPTION = "d2l's AlexNet on Fashion-MNIST in JAX/Flax."


def positive(kind: type):
    """An argparse type: a positive (and finite) `kind`, with a clear message otherwise."""
    noun = "integer" if kind is int else "number"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive {noun}, got {text!r}") from None
        if not (value > 0 and math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"expected a positive {noun}, got {text}")
        return value

    return parse


def step_range(text: str) -> tuple[int, int]:
    """argparse type for A:B, the first and last (1-based) global steps to trace."""
    try:
        first, last = (int(part) for part in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected A:B, two step numbers, got {text!r}") \
            from None
    if not 1 <= first <= last:
        raise argparse.ArgumentTypeError(f"expected 1 <= A <= B in A:B, got {text}")
    return first, last


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every flag's default in --help (where it has one), and the examples as written."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


EXAMPLES = {
    "train": f"""alexnet-jax train                                  # d2l's run (a GPU job)
  alexnet-jax train {QUICK_RUN}
                                                     # learns in 2-4 minutes on 2 CPU cores
  alexnet-jax train --workdir runs/quick --epochs 3  # the same run, one epoch more
  alexnet-jax train --augment --workdir runs/augmented  # with AlexNet's augmentation""",
    "evaluate": """alexnet-jax evaluate --workdir runs/quick
  alexnet-jax evaluate --workdir runs/quick --step 32 --limit-test 1000""",
    "predict": """alexnet-jax predict --workdir runs/quick --num 20 --out wrong_or_right.png
  alexnet-jax predict --workdir runs/quick --num 10000 --csv preds.csv --wrong-first""",
    "convert": """alexnet-jax convert --from-torch d2l_alexnet.pt --workdir runs/from_d2l
  alexnet-jax convert --to-torch ours.pt --workdir runs/quick""",
    "plot": """alexnet-jax plot runs/lr0.01 runs/lr0.05 --out compare.png""",
    "show-batch": """alexnet-jax show-batch --augment --out batch.png
  alexnet-jax show-batch --step 469 --num 16 --out first_of_epoch2.png""",
    "download": """alexnet-jax download
  alexnet-jax download --dir /data/fashion-mnist   # then --manual-dir /data/fashion-mnist""",
    "compare-torch": """alexnet-jax compare-torch                          # ~2 min on a CPU
  alexnet-jax compare-torch --dtype float64 --dropout 0 --limit-train 256 --batch-size 32 \\
      --out runs/exact                               # the curves coincide
  alexnet-jax compare-torch --epochs 2 --limit-train 4000 --limit-test 10000 \\
      --seeds 0 1 2 3 4 --out runs/fidelity          # the spread over seeds""",
    "summary": """alexnet-jax summary
  alexnet-jax summary --image-size 193""",
    "aot": """alexnet-jax aot --topology v5e:2x2 v6e:2x2 --batch-size 128 1024
  alexnet-jax aot --topology v4:2x2x1 --batch-size 256 --dtype bfloat16 --out tpu/v4""",
    "benchmark": """alexnet-jax benchmark --batch-size 32 128 --steps 5
  alexnet-jax benchmark --batch-size 128 --variants jax-f32-default torch-eager \\
      --profile traces""",
}


def command(sub, name: str, help: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help, description=help, formatter_class=HelpFormatter,
                          epilog="examples:\n  " + EXAMPLES[name])


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", help="tfds data dir (where tfds keeps prepared datasets)")
    p.add_argument("--manual-dir", help="folder with the four Fashion-MNIST release files; "
                   "unset: $FASHION_MNIST_DIR or ~/.cache/alexnet-jax/fashion-mnist, "
                   "downloaded on first use")
    p.add_argument("--source", choices=SOURCES, default=D2L.source,
                   help="tfds, the release files read directly (idx, needs no TensorFlow), "
                   "or auto: tfds when TensorFlow is installed")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alexnet-jax", description=DESCRIPTION)
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument("--verbose", action="store_true",
                        help="keep TensorFlow's, absl's and orbax's own log lines")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = command(sub, "train", "train (or resume) d2l's run; the defaults reproduce d2l")
    t.add_argument("--workdir", default=D2L.workdir, help="where the run's records live")
    t.add_argument("--epochs", type=positive(int), default=D2L.epochs, help="epochs in all")
    t.add_argument("--batch-size", type=positive(int), default=D2L.batch_size,
                   help="the global batch")
    t.add_argument("--lr", type=positive(float), default=D2L.lr, help="SGD learning rate")
    t.add_argument("--seed", type=int, default=D2L.seed, help="init, dropout and shuffling seed")
    t.add_argument("--pipeline", choices=PIPELINES, default=D2L.pipeline,
                   help="device: resize on the accelerator (fast); host: tf.data")
    _add_data_args(t)
    t.add_argument("--limit-train", type=positive(int), help="use the first N train examples")
    t.add_argument("--limit-test", type=positive(int), help="use the first N test examples")
    t.add_argument("--checkpoint-every-steps", type=positive(int),
                   help="also checkpoint every N steps (always after each epoch)")
    t.add_argument("--keep-checkpoints", type=positive(int), default=D2L.keep_checkpoints,
                   help="how many checkpoints to keep")
    t.add_argument("--dropout", type=float, default=D2L.dropout,
                   help="dropout rate after fc1 and fc2 (0: off, for exact comparisons)")
    t.add_argument("--augment", action="store_true",
                   help="AlexNet's data augmentation, which d2l leaves out: random "
                   "translations by up to 16 pixels, horizontal flips, brightness x (1 + "
                   "N(0, 0.1)); the test set is never augmented")
    t.add_argument("--dtype", choices=tuple(DTYPES), default=D2L.dtype,
                   help="computation dtype; parameters stay float32 (float64: parameters "
                   "too, for numerical checks; needs JAX_ENABLE_X64=1)")
    t.add_argument("--profile-steps", type=step_range, metavar="A:B",
                   help="write a jax.profiler trace of global steps A to B into WORKDIR/profile")
    t.add_argument("--restart", action="store_true",
                   help="start this work dir's run over; its records move to replaced/TIME/")
    t.add_argument("--sync-steps", action="store_true",
                   help="d2l's timing: wait for every step and count the steps alone in "
                   "examples/sec (default: one step in flight, the steps' wall time counted)")
    t.add_argument("--strict-checkpoints", action="store_true",
                   help="stop on a corrupted checkpoint instead of falling back to an earlier one")
    m = t.add_argument_group("several hosts", "data-parallel training over many processes "
                             "(one per host); --batch-size is the global batch")
    m.add_argument("--coordinator", metavar="HOST:PORT",
                   help="address of process 0's coordinator (jax.distributed)")
    m.add_argument("--num-processes", type=positive(int), help="processes in the run")
    m.add_argument("--process-id", type=int, help="this process's index, 0 .. N-1")
    m.add_argument("--distributed", action="store_true",
                   help="read the three settings above from the cluster (SLURM, Open MPI, "
                   "Kubernetes, Cloud TPU, JAX_COORDINATOR_ADDRESS)")
    m.add_argument("--heartbeat-timeout", type=positive(int), default=D2L.heartbeat_timeout,
                   metavar="SECONDS", help="a process silent this long is lost and the run "
                   "stops; a healthy process may stall (swap, a VM's migration, a slow "
                   "network file system) for less")

    e = command(sub, "evaluate", "test loss and accuracy of a checkpoint")
    e.add_argument("--workdir", required=True, help="the run's work dir")
    e.add_argument("--step", type=int, help="checkpoint step; unset: the latest")
    e.add_argument("--pipeline", choices=PIPELINES, default=D2L.pipeline,
                   help="input pipeline")
    e.add_argument("--limit-test", type=positive(int), help="only the first N test images")
    _add_data_args(e)

    p = command(sub, "predict", "a PNG grid of test images with true and predicted classes")
    p.add_argument("--workdir", required=True, help="the run's work dir")
    p.add_argument("--step", type=int, help="checkpoint step; unset: the latest")
    p.add_argument("--num", type=positive(int), default=10,
                   help="predict the first N test images (at most the 10,000 there are)")
    p.add_argument("--out", default="predictions.png",
                   help="the PNG to write: a grid of at most 100 of them")
    p.add_argument("--wrong-first", action="store_true",
                   help="the grid shows wrong predictions first")
    p.add_argument("--csv", metavar="FILE.csv",
                   help="write every prediction here (index,true,predicted) instead of the "
                        "console")
    _add_data_args(p)

    c = command(sub, "convert", "PyTorch state_dict <-> checkpoint in a work dir")
    direction = c.add_mutually_exclusive_group(required=True)
    direction.add_argument("--from-torch", metavar="FILE.pt",
                           help="a torch.save(net.state_dict()) of d2l's model")
    direction.add_argument("--to-torch", metavar="FILE.pt", help="write the checkpoint here")
    c.add_argument("--workdir", required=True, help="the work dir to write or read")
    c.add_argument("--step", type=int, help="checkpoint step for --to-torch; unset: the latest")

    s = command(sub, "show-batch", "a PNG of one training batch as the model receives it "
                "(resized to 224, and augmented with --augment)")
    s.add_argument("--augment", action="store_true", help="as `train --augment` augments it")
    s.add_argument("--step", type=int, default=0, help="the global train step whose batch "
                   "to show (its epoch's order and its augmentation key)")
    s.add_argument("--seed", type=int, default=D2L.seed, help="the run's seed (shuffling, keys)")
    s.add_argument("--batch-size", type=positive(int), default=D2L.batch_size,
                   help="the run's batch")
    s.add_argument("--limit-train", type=positive(int), help="the run's --limit-train")
    s.add_argument("--num", type=positive(int), default=32,
                   help="show the batch's first N images (at most 100)")
    s.add_argument("--out", default="batch.png", help="the PNG to write")
    _add_data_args(s)

    g = command(sub, "plot", "d2l's curves of several runs in one PNG, to compare them")
    g.add_argument("runs", nargs="+", metavar="RUN", help="work dirs (each with metrics.jsonl)")
    g.add_argument("--out", default="curves.png", help="the PNG to write")

    d = command(sub, "download", "fetch the four Fashion-MNIST release files, verified")
    d.add_argument("--dir", help="where to put them; unset: $FASHION_MNIST_DIR, else "
                   "~/.cache/alexnet-jax/fashion-mnist, where every command looks")

    k = command(sub, "compare-torch", "d2l's PyTorch train_ch6 and our train side by side, "
                "from the same weights on the same batches (needs torch)")
    k.add_argument("--out", default="runs/compare", help="folder for both runs and the PNG")
    k.add_argument("--epochs", type=positive(int), default=1, help="epochs in all")
    k.add_argument("--limit-train", type=positive(int), default=1024,
                   help="the first N train images (at least 5 batches)")
    k.add_argument("--limit-test", type=positive(int), default=1000,
                   help="the first N test images")
    k.add_argument("--batch-size", type=positive(int), default=D2L.batch_size,
                   help="d2l's batch")
    k.add_argument("--lr", type=positive(float), default=D2L.lr, help="SGD learning rate")
    k.add_argument("--seeds", type=int, nargs="+", default=[D2L.seed], help="one pair of runs each")
    k.add_argument("--dropout", type=float, default=D2L.dropout, help="dropout rate (0: off)")
    k.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                   help="both frameworks' dtype (float64 turns on JAX's 64-bit mode)")
    _add_data_args(k)

    s = command(sub, "summary", "per-layer shapes, parameters and FLOPs")
    s.add_argument("--image-size", type=positive(int), default=IMAGE_SIZE,
                   help="input height = width")

    b = command(sub, "benchmark", "training-step throughput: JAX variants and PyTorch")
    b.add_argument("--batch-size", type=positive(int), nargs="+", default=[128, 256, 512, 1024],
                   help="one row per batch size and variant")
    b.add_argument("--steps", type=positive(int), default=20, help="timed steps per row")
    b.add_argument("--warmup", type=positive(int), default=2, help="untimed steps first")
    b.add_argument("--no-torch", action="store_true", help="skip the PyTorch rows")
    b.add_argument("--variants", nargs="+", help="only these rows (see the table's names)")
    b.add_argument("--json", default="benchmark.json", help="where to write every figure")
    b.add_argument("--profile", metavar="DIR",
                   help="write a jax.profiler trace of each JAX row's timed steps into DIR")
    b.add_argument("--epoch-images", type=int, metavar="N",
                   help="also time d2l's epoch end to end (pipeline and steps) on the first N "
                   "train images with each pipeline (0: all 60,000)")
    _add_data_args(b)

    a = command(sub, "aot", "the steps compiled for a TPU slice without one: FLOPs, HBM, a "
                "roofline (needs libtpu: pip install 'alexnet-jax[tpu]')")
    a.add_argument("--topology", nargs="+", default=["v5e:2x2"],
                   help="TPU topologies: v4, v5e, v5p or v6e, with their chip grid (v5e:2x2, "
                   "v6e:4x4, v4:2x2x1, v5p:2x2x1)")
    a.add_argument("--batch-size", type=positive(int), nargs="+", default=[128, 1024],
                   help="global batch sizes; two or more also estimate the largest that fits")
    a.add_argument("--dtype", nargs="+", choices=["float32", "bfloat16"],
                   default=["float32", "bfloat16"], help="the model's compute dtypes")
    a.add_argument("--out", metavar="PATH",
                   help="also write the report to PATH.md and every figure to PATH.json")
    return parser
