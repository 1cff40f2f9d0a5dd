"""`alexnet-jax`: train, evaluate, predict, convert, plot, download, compare-torch, summary,
benchmark.

Exit codes: 0 success, 2 usage errors (argparse), 1 runtime errors, 128+N when stopped by
signal N. Errors are one line on stderr; `--debug` shows the traceback.
"""

from __future__ import annotations

import argparse
import os
import sys

from .cli_parser import build_parser


def run(args: argparse.Namespace) -> int:
    if args.command == "summary":
        from .summary import format_summary

        print(format_summary(args.image_size))
        return 0
    if args.command == "train":
        from .parallel import init_distributed
        from .run_dir import TrainConfig
        from .train import train_and_evaluate

        init_distributed(args.coordinator, args.num_processes, args.process_id,
                         auto=args.distributed)
        train_and_evaluate(TrainConfig.from_dict(vars(args)), restart=args.restart)
        return 0
    if args.command == "download":
        from .download import download

        print(f"the four Fashion-MNIST release files are in {download(args.dir)}, verified")
        return 0
    if args.command == "plot":
        from .workdir_tools import plot_command

        plot_command(args)
        return 0
    if args.command == "compare-torch":
        from .d2l_compare import compare_command

        compare_command(args)
        return 0
    if args.command == "benchmark":
        from .benchmark import main as benchmark_main

        return benchmark_main(args)
    from . import workdir_tools

    if args.command == "evaluate":
        workdir_tools.evaluate_command(args)
    elif args.command == "predict":
        workdir_tools.predict_command(args)
    elif args.command == "convert":
        workdir_tools.convert_command(args)
    return 0


def quiet_logs() -> None:
    """TensorFlow's, absl's and orbax's log lines off: what matters reaches the user as our
    own lines, and an error as one."""
    import logging

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    logging.getLogger("absl").setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.verbose:
        quiet_logs()
    try:
        return run(args)
    except KeyboardInterrupt:
        print("alexnet-jax: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # one clear line; the traceback only when asked
        if args.debug:
            raise
        code = getattr(err, "exit_code", 1)  # 128 + N when stopped by signal N, on purpose
        print(f"alexnet-jax: {'' if code > 128 else 'error: '}{err}", file=sys.stderr)
        return code


def entry() -> int:
    """The `alexnet-jax` command: `main` under tcmalloc where installed (fast_malloc.py)."""
    from .fast_malloc import preload_tcmalloc

    preload_tcmalloc()
    return main()


if __name__ == "__main__":
    sys.exit(entry())

