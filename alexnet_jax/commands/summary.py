"""The per-layer table d2l prints for one 224x224 image, in NHWC, with params and FLOPs."""

from __future__ import annotations

import math

from ..config import D2L, IMAGE_SIZE
from ..model.alexnet import IN_CHANNELS, layers


def layer_table(image_size: int = IMAGE_SIZE, num_classes: int = D2L.num_classes) -> list[dict]:
    """Rows of (layer, output shape, params, forward FLOPs) for one image.

    FLOPs count a multiply-add as 2 and leave out ReLU, pooling and bias adds, the
    usual convention (and XLA's for convolutions and dots).
    """
    rows = []
    for r in layers(image_size, num_classes):
        weights = math.prod(r["kernel"]) if r["kernel"] else 0
        positions = r["shape"][0] * r["shape"][1] if len(r["shape"]) == 3 else 1
        rows.append(dict(layer=r["layer"], shape=r["shape"],
                         params=weights + r["kernel"][-1] if r["kernel"] else 0,
                         flops=2 * weights * positions))
    return rows


def forward_flops(image_size: int = IMAGE_SIZE, num_classes: int = D2L.num_classes) -> int:
    return sum(r["flops"] for r in layer_table(image_size, num_classes))


def format_summary(image_size: int = IMAGE_SIZE, num_classes: int = D2L.num_classes) -> str:
    rows = layer_table(image_size, num_classes)
    lines = [
        f"AlexNet (d2l) for one {image_size}x{image_size}x{IN_CHANNELS} image. Shapes are NHWC "
        "without the batch axis (d2l prints NCHW: its 1x96x54x54 is our 54x54x96).",
        f"{'layer':<24}{'output shape':>16}{'params':>14}{'fwd FLOPs':>16}",
    ]
    for r in rows:
        shape = "x".join(str(d) for d in r["shape"])
        lines.append(f"{r['layer']:<24}{shape:>16}{r['params']:>14,}{r['flops']:>16,}")
    total_params = sum(r["params"] for r in rows)
    total_flops = sum(r["flops"] for r in rows)
    lines.append(f"total parameters: {total_params:,}")
    lines.append(
        f"forward FLOPs per image: {total_flops:,} ({total_flops / 1e9:.3f} GFLOP; "
        f"a training step is about 3x: {3 * total_flops / 1e9:.2f} GFLOP per image)"
    )
    return "\n".join(lines)


def summary_command(args) -> None:
    print(format_summary(args.image_size))
