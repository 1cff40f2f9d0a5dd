"""`plot`: several runs' d2l curves in one PNG."""

from __future__ import annotations

from pathlib import Path

from ..training import layout
from ..training.metrics_log import read_points
from ..training.run_dir import RunError


def plot_command(args) -> None:
    from ..observe.plots import plot_runs

    runs = {}
    for run in args.runs:
        path = Path(run) / layout.METRICS
        if not path.is_file():
            raise RunError(f"{path} is missing: {run} is not a work dir that has trained")
        points = read_points(path, out=lambda *args: None)
        name = Path(run).name if sum(Path(r).name == Path(run).name for r in args.runs) == 1 \
            else str(run)
        runs[name] = points
    plot_runs(runs, args.out)
    print(f"wrote {args.out}: {len(runs)} runs, train loss, train acc and test acc of each")
