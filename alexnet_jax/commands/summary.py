"""The per-layer table d2l prints for one 224x224 image, in NHWC, with params and FLOPs."""

from __future__ import annotations

from ..model import (
    CONV_LAYERS,
    DENSE_LAYERS,
    IN_CHANNELS,
    POOL_STRIDE,
    POOL_WINDOW,
    conv_out,
)


def layer_table(image_size: int = 224, num_classes: int = 10) -> list[dict]:
    """Rows of (layer, output shape, params, forward FLOPs) for one image.

    FLOPs count a multiply-add as 2 and leave out ReLU, pooling and bias adds, the
    usual convention (and XLA's for convolutions and dots).
    """
    rows = []
    size, chans = image_size, IN_CHANNELS
    for name, out_c, kernel, stride, pad, pool in CONV_LAYERS:
        size = conv_out(size, kernel, stride, pad)
        params = kernel * kernel * chans * out_c + out_c
        flops = 2 * kernel * kernel * chans * out_c * size * size
        rows.append(dict(layer=f"{name} (Conv {kernel}x{kernel}/{stride})",
                         shape=(size, size, out_c), params=params, flops=flops))
        rows.append(dict(layer="ReLU", shape=(size, size, out_c), params=0, flops=0))
        if pool:
            size = conv_out(size, POOL_WINDOW, POOL_STRIDE, 0)
            rows.append(dict(layer="MaxPool 3/2", shape=(size, size, out_c), params=0, flops=0))
        chans = out_c
    features = size * size * chans
    rows.append(dict(layer="Flatten", shape=(features,), params=0, flops=0))
    for name, out_f in (*DENSE_LAYERS, ("fc3", num_classes)):
        rows.append(dict(layer=f"{name} (Dense)", shape=(out_f,),
                         params=features * out_f + out_f, flops=2 * features * out_f))
        if name != "fc3":
            rows.append(dict(layer="ReLU", shape=(out_f,), params=0, flops=0))
            rows.append(dict(layer="Dropout 0.5", shape=(out_f,), params=0, flops=0))
        features = out_f
    return rows


def forward_flops(image_size: int = 224, num_classes: int = 10) -> int:
    return sum(r["flops"] for r in layer_table(image_size, num_classes))


def format_summary(image_size: int = 224, num_classes: int = 10) -> str:
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
