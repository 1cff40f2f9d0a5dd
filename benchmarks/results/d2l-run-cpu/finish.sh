#!/bin/bash
# After `train` (train.sh): the files of this folder from the run's work dir RUN.
#   bash finish.sh RUN CONSOLE OUT [NUM]   (CONSOLE: train's output; NUM: test images for the
#                                           PyTorch check, all 10,000)
# STEP=N: the checkpoint at step N (default: the latest).
set -euo pipefail
RUN=$1 CONSOLE=$2 OUT=$3 NUM=${4:-10000}
HERE=$(cd "$(dirname "$0")" && pwd)
AT=(${STEP:+--step "$STEP"})
DATA=${FASHION_MNIST_DIR:-../shared/data/fashion-mnist}
mkdir -p "$OUT"
cp "$RUN/metrics.jsonl" "$RUN/config.json" "$OUT/"
cp "$CONSOLE" "$OUT/console.txt"
alexnet-jax plot "$RUN" --out "$OUT/curves.png"
alexnet-jax predict --workdir "$RUN" "${AT[@]}" --num 20 --source idx --manual-dir "$DATA" --out "$OUT/predictions.png" \
  | tee "$OUT/predict.txt"
# (idx: the release files read directly, the images tfds gives, without importing TensorFlow.)
# Every test prediction of ours, then the same weights in d2l's nn.Sequential.
alexnet-jax convert --to-torch "$RUN/ours.pt" --workdir "$RUN" "${AT[@]}"
alexnet-jax predict --workdir "$RUN" "${AT[@]}" --num "$NUM" --source idx --manual-dir "$DATA" --csv "$RUN/ours.csv" \
  --out "$RUN/all.png"
python "$HERE/../../../scripts/d2l_torch_accuracy.py" --weights "$RUN/ours.pt" \
  --ours "$RUN/ours.csv" --manual-dir "$DATA" --out "$OUT/torch-accuracy.json" \
  | tee "$OUT/torch-accuracy.txt"
python "$HERE/../../../scripts/d2l_run_report.py" "$OUT"
