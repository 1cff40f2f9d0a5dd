"""`alexnet-jax`: train, evaluate, predict, convert, plot, show-batch, download, compare-torch,
summary, benchmark, aot.

Exit codes: 0 success, 2 usage errors (argparse), 1 runtime errors, 128+N when stopped by
signal N. Errors are one line on stderr; `--debug` shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from .cli_parser import build_parser
from .config import TrainConfig
from .runtime import supervise
from .runtime.fast_malloc import choose_allocator, runs_on_cpu

# The commands that run train or eval steps (on a CPU they re-execute under fast_malloc).
STEP_COMMANDS = {"train", "evaluate", "predict", "benchmark", "compare-torch"}
# Each command's function (module, name), imported only when it runs: `--help` stays quick.
COMMANDS = {
    "evaluate": ("commands.evaluate", "evaluate_command"),
    "predict": ("commands.evaluate", "predict_command"),
    "convert": ("commands.convert", "convert_command"),
    "plot": ("commands.plot", "plot_command"),
    "show-batch": ("commands.show_batch", "show_batch_command"),
    "benchmark": ("commands.benchmark", "main"),
    "aot": ("commands.aot", "aot_command"),
    "summary": ("commands.summary", "summary_command"),
    "download": ("data.download", "download_command"),
    "compare-torch": ("d2l.compare", "compare_command"),
}


def train_command(args: argparse.Namespace, argv: list[str]) -> int:
    """`train`; a process of a multi-process run trains in a child (runtime/supervise.py)."""
    many = supervise.distributed_flags(args.coordinator, args.num_processes,
                                       args.process_id, args.distributed)
    if many and not supervise.is_child():
        who = "this process" if args.process_id is None else \
            f"process {args.process_id} of {args.num_processes}"
        return supervise.train_in_child(argv, who)
    from .runtime.parallel import init_distributed
    from .training.loop import train_and_evaluate

    init_distributed(args.coordinator, args.num_processes, args.process_id,
                     auto=args.distributed, heartbeat_timeout=args.heartbeat_timeout)
    train_and_evaluate(TrainConfig.from_dict(vars(args)), restart=args.restart)
    return 0


def run(args: argparse.Namespace, argv: list[str]) -> int:
    if args.command == "train":
        return train_command(args, argv)
    module, name = COMMANDS[args.command]
    command = getattr(importlib.import_module(f".{module}", __package__), name)
    return command(args) or 0


def quiet_logs() -> None:
    """TensorFlow's, absl's and orbax's log lines off: what matters reaches the user as our
    own lines, and an error as one."""
    import logging

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    # orbax logs a failed background save as pages of tracebacks at ERROR; the error itself
    # reaches the user as our one line (training/checkpoints.py, Manager).
    logging.getLogger("absl").setLevel(logging.CRITICAL)


def stop_with_the_run(err: Exception, heartbeat_timeout: int) -> None:
    """In a multi-process run, exit at once with one line (jax.distributed's shutdown would
    wait for the others at exit, about a minute, then abort with a C++ trace): a lost peer
    when the coordination service says one is gone, else this error, told to the others."""
    import jax

    from .runtime.parallel import exit_failed, exit_lost_process, lost_processes

    if not jax.distributed.is_initialized():
        return
    if gone := lost_processes(heartbeat_timeout):
        exit_lost_process(str(err), gone)
    exit_failed(str(err))


def main(argv: list[str] | None = None, args: argparse.Namespace | None = None) -> int:
    """Run one command line (`args`: that line already parsed); returns the exit code."""
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv) if args is None else args
    if not args.verbose:
        quiet_logs()
    supervise.native_logs_aside()
    try:
        return run(args, argv)
    except KeyboardInterrupt:
        print("alexnet-jax: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # one clear line; the traceback only when asked
        if args.debug:
            raise
        code = getattr(err, "exit_code", 1)  # 128 + N when stopped by signal N, on purpose
        if args.command == "train" and supervise.is_child() and code <= 128:
            stop_with_the_run(err, args.heartbeat_timeout)  # all stop together on a signal
        print(f"alexnet-jax: {'' if code > 128 else 'error: '}{err}", file=sys.stderr)
        return code


def entry() -> int:
    """The `alexnet-jax` command. The line is parsed before anything heavy is imported (help
    and usage errors come at once); a command that runs steps on a CPU first re-executes under
    a malloc that keeps big buffers (runtime/fast_malloc.py)."""
    args = build_parser().parse_args(sys.argv[1:])
    if args.command in STEP_COMMANDS and runs_on_cpu():
        choose_allocator()
    return main(sys.argv[1:], args)


if __name__ == "__main__":
    sys.exit(entry())
