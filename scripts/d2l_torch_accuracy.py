"""Test accuracy of converted weights in d2l's own PyTorch net, beside ours, image by image.

    alexnet-jax convert --to-torch ours.pt --workdir RUN
    alexnet-jax predict --workdir RUN --num 10000 --csv ours.csv --out grid.png
    python scripts/d2l_torch_accuracy.py --weights ours.pt --ours ours.csv \
        --manual-dir ../shared/data/fashion-mnist --out torch-accuracy.json

d2l's `nn.Sequential` loads the state dict (strictly), d2l's `evaluate_accuracy_gpu` runs it
over d2l's preprocessing (Pillow's bilinear Resize(224), ToTensor) of the 10,000 test images
in order, batch 128; a forward hook keeps each image's argmax so the images on which the two
frameworks disagree can be counted and listed.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np
import torch

from alexnet_jax.d2l.compare import D2lLoader
from alexnet_jax.d2l.reference import d2l_alexnet, evaluate_accuracy_gpu
from alexnet_jax.data.fashion_mnist import CLASS_NAMES, Split, load_split


def read_predictions(path: Path) -> np.ndarray:
    """predict's CSV (index,true,predicted; class names) -> predicted class per index."""
    with open(path) as f:
        rows = list(csv.DictReader(f))
    if [int(r["index"]) for r in rows] != list(range(len(rows))):
        sys.exit(f"{path}: expected rows for indices 0..N-1 in order, as `predict --csv` writes")
    return np.array([CLASS_NAMES.index(r["predicted"]) for r in rows])


def torch_predictions(weights: Path, images: np.ndarray, labels: np.ndarray,
                      batch_size: int) -> tuple[float, np.ndarray]:
    """d2l's evaluate_accuracy_gpu of the net with `weights`, and its argmax per image."""
    net = d2l_alexnet()
    net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    seen = []
    net.register_forward_hook(lambda module, inputs, output: seen.append(output.argmax(1)))
    loader = D2lLoader(Split(images, labels), batch_size, seed=0, shuffle=False,
                       dtype=torch.float32)
    accuracy = evaluate_accuracy_gpu(net, loader)
    return accuracy, torch.cat(seen).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", required=True, type=Path, help="convert --to-torch's file")
    parser.add_argument("--ours", required=True, type=Path, help="predict --csv's file")
    parser.add_argument("--manual-dir", help="the four Fashion-MNIST release files")
    parser.add_argument("--batch-size", type=int, default=128, help="d2l's batch")
    parser.add_argument("--out", type=Path, help="write the figures here as JSON")
    args = parser.parse_args()

    test = load_split("test", "idx", manual_dir=args.manual_dir)
    ours = read_predictions(args.ours)
    if len(ours) > len(test):
        sys.exit(f"{args.ours} has {len(ours)} predictions, the test set {len(test)} images")
    if len(ours) < len(test):
        print(f"note: {args.ours} covers the first {len(ours)} test images only "
              f"(predict --num 10000 for all)")
        test = test.head(len(ours))
    torch_acc, theirs = torch_predictions(args.weights, test.images, test.labels,
                                          args.batch_size)
    differ = np.flatnonzero(theirs != ours)
    result = {
        "images": len(test),
        "d2l_pytorch_test_acc": torch_acc,
        "alexnet_jax_test_acc": float((ours == test.labels).mean()),
        "difference_pp": 100 * (torch_acc - float((ours == test.labels).mean())),
        "predictions_that_differ": len(differ),
        "differing": [{"index": int(i), "true": CLASS_NAMES[test.labels[i]],
                       "d2l_pytorch": CLASS_NAMES[theirs[i]], "alexnet_jax": CLASS_NAMES[ours[i]]}
                      for i in differ],
        "torch": torch.__version__,
    }
    print(f"d2l's nn.Sequential, converted weights: test acc {torch_acc:.4f} "
          f"({round(torch_acc * len(test))} of {len(test)})")
    print(f"alexnet-jax, the same weights:         test acc {result['alexnet_jax_test_acc']:.4f}")
    print(f"difference {result['difference_pp']:+.2f} percentage points; "
          f"{len(differ)} of {len(test)} predictions differ")
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
        print(f"written to {args.out}")


if __name__ == "__main__":
    main()
