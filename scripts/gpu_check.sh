#!/usr/bin/env bash
# Every GPU check of alexnet-jax in one call, for a GPU machine held for minutes: the machine and
# versions, d2l's full run (10 epochs, batch 128, TF-free: --source idx, device pipeline),
# then the benchmark (step rows for every variant and batch size, epoch rows).
#
#   mkdir -p data && cp -r ../shared/data/fashion-mnist data/      # /data/ is git-ignored
#   bash scripts/gpu_check.sh OUTDIR            # on the GPU machine, from the checkout
#
# Writes 7 files into OUTDIR: env.txt, train.log, metrics.jsonl, curves.png, config.json,
# bench.md, bench.json. Each part has its own time limit, so one that hangs cannot take the
# others' time. The settings below are environment variables so that the same script can be
# tried on a CPU first with tiny ones.
set -uo pipefail
out=${1:?usage: gpu_check.sh OUTDIR}
data=${DATA:-data/fashion-mnist}
epochs=${EPOCHS:-10}
train_args=${TRAIN_ARGS:-}
batches=${BATCHES:-128 256 512 1024}
steps=${STEPS:-20}
epoch_images=${EPOCH_IMAGES:-0}
export PYTHONUNBUFFERED=1
mkdir -p "$out"
run_dir=$(mktemp -d)  # checkpoints stay on the machine: only the small files come back

{
  date -u
  nvidia-smi || true
  python -c 'import sys, jax, flax, optax; print(sys.version); print("jax", jax.__version__,
"flax", flax.__version__, "optax", optax.__version__); print(jax.devices())'
  python -c 'import torch; print("torch", torch.__version__, torch.cuda.is_available())' || true
  python -c 'import tensorflow' 2>/dev/null && echo "tensorflow: present" || echo "tensorflow: absent"
} > "$out/env.txt" 2>&1

echo "== d2l's run: $epochs epochs, batch 128"
start=$EPOCHREALTIME
# shellcheck disable=SC2086
timeout "${TRAIN_LIMIT:-300}" python -m alexnet_jax.cli train --workdir "$run_dir/d2l" \
  --epochs "$epochs" --batch-size 128 --manual-dir "$data" --source idx --pipeline device \
  $train_args 2>&1 | tee "$out/train.log"
echo "train exit ${PIPESTATUS[0]}, wall $(python -c "print(round($EPOCHREALTIME - $start, 1))") s" \
  | tee -a "$out/train.log"
cp "$run_dir"/d2l/{metrics.jsonl,curves.png,config.json} "$out"/ 2>/dev/null

echo "== benchmark: batch $batches, $steps steps"
# shellcheck disable=SC2086
timeout "${BENCH_LIMIT:-360}" python -m alexnet_jax.cli benchmark --batch-size $batches \
  --steps "$steps" --epoch-images "$epoch_images" --manual-dir "$data" --source idx \
  --json "$out/bench.json" 2>&1 | tee "$out/bench.md"
echo "benchmark exit ${PIPESTATUS[0]}"
rm -rf "$run_dir"
