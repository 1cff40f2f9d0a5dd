"""The tables of a d2l-run results page, from the files committed beside it.

    python scripts/d2l_run_report.py benchmarks/results/d2l-run-cpu

Reads FOLDER/metrics.jsonl (train's records) and FOLDER/torch-accuracy.json (the PyTorch
check) and rewrites the part of FOLDER/results.md between its two `generated` markers, so that
every figure there is read from those files, never typed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

BEGIN, END = "<!-- generated: begin -->", "<!-- generated: end -->"
D2L = {"train_loss": 0.331, "train_acc": 0.878, "test_acc": 0.883}  # d2l's printed line
D2L_RANGE = (0.866, 0.886)  # d2l's published builds


def epoch_rows(points: list[dict]) -> list[dict]:
    """One row per finished epoch: its closing point (train figures and test accuracy)."""
    return [{**p, "epoch": round(p["epoch"])} for p in points if p["test_acc"] is not None]


def tables(points: list[dict], check: dict | None) -> str:
    rows = epoch_rows(points)
    lines = ["| epoch | train loss | train acc | test loss | test acc | "
             "examples/sec of the epoch (steps only) | wall time so far |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        rate = r["epoch_examples_per_sec"]  # None: the run resumed inside this epoch
        lines.append(f"| {r['epoch']} | {r['train_loss']:.3f} | {r['train_acc']:.3f} | "
                     f"{r['test_loss']:.3f} | {r['test_acc']:.4f} | "
                     f"{'resumed in it' if rate is None else f'{rate:.1f}'} | "
                     f"{r['wall_seconds'] / 60:.1f} min |")
    out = [f"Per epoch, from `metrics.jsonl` ({len(rows)} of 10 epochs recorded):", "",
           *lines, ""]
    if any(r["epoch_examples_per_sec"] is None for r in rows):
        out += ["An epoch the run was resumed in has no rate of its own (`train` times whole "
                "epochs only); wall time counts the time `train` ran, not the pause.", ""]
    if rows:
        last = rows[-1]
        low, high = D2L_RANGE
        inside = "inside" if low <= last["test_acc"] <= high else "outside"
        where = f"{inside} d2l's published range, {low} to {high}"
        if last["epoch"] < 10:
            where = (f"after {last['epoch']} of d2l's 10 epochs; d2l's published range "
                     f"(after 10) is {low} to {high}")
        out += [f"After epoch {last['epoch']}, ours beside d2l's printed line (after 10):", "",
                "| | train loss | train acc | test acc |", "| --- | ---: | ---: | ---: |",
                f"| alexnet-jax, epoch {last['epoch']} | {last['train_loss']:.3f} | "
                f"{last['train_acc']:.3f} | {last['test_acc']:.3f} |",
                f"| d2l, epoch 10 | {D2L['train_loss']:.3f} | {D2L['train_acc']:.3f} | "
                f"{D2L['test_acc']:.3f} |", "",
                f"Test accuracy {last['test_acc']:.4f}: {where}.", ""]
    if check:
        n = check["images"]
        out += ["The same weights in d2l's `nn.Sequential` (`torch-accuracy.json`):", "",
                "| | test acc | right of " + f"{n:,} |", "| --- | ---: | ---: |",
                f"| d2l's PyTorch net, `evaluate_accuracy_gpu` | "
                f"{check['d2l_pytorch_test_acc']:.4f} | "
                f"{round(check['d2l_pytorch_test_acc'] * n):,} |",
                f"| alexnet-jax `predict` | {check['alexnet_jax_test_acc']:.4f} | "
                f"{round(check['alexnet_jax_test_acc'] * n):,} |", "",
                f"Difference {check['difference_pp']:+.2f} percentage points; "
                f"{check['predictions_that_differ']} of {n:,} predictions differ.", ""]
    return "\n".join(out)


def main() -> None:
    folder = Path(sys.argv[1])
    points = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    check_file = folder / "torch-accuracy.json"
    check = json.loads(check_file.read_text()) if check_file.is_file() else None
    page = folder / "results.md"
    text = page.read_text()
    if BEGIN not in text or END not in text:
        sys.exit(f"{page} needs the lines {BEGIN} and {END}")
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    page.write_text(f"{head}{BEGIN}\n{tables(points, check)}\n{END}{tail}")
    print(f"{page}: tables rewritten from {len(points)} records")


if __name__ == "__main__":
    main()
