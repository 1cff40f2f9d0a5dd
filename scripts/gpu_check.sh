#!/usr/bin/env bash
# Every GPU check of alexnet-jax in one call, for a GPU machine held for minutes: the machine and
# versions, d2l's full run in each of DTYPES (10 epochs, batch 128, TF-free: --source idx,
# device pipeline), the benchmark (step rows for every variant at two batch sizes, d2l's epoch
# end to end), and bfloat16 on the host's CPU (2 cores, as a CPU user runs it).
#
#   mkdir -p data && cp -r ../shared/data/fashion-mnist data/      # /data/ is git-ignored
#   bash scripts/gpu_check.sh OUTDIR            # on the GPU machine, from the checkout
#
# Sized for one 10-minute call: each part has its own time limit (TRAIN_LIMIT per dtype,
# BENCH_LIMIT, CPU_LIMIT, in seconds), so one that hangs cannot take the others' time, and the
# benchmark writes its JSON after every row, so a time-out still leaves what was measured.
# Needs Python with jax, flax, optax, orbax, numpy, tensorboard, tqdm and matplotlib (torch for
# the PyTorch rows); no TensorFlow.
# Writes into OUTDIR: env.txt; per dtype d2l-DTYPE.log, d2l-DTYPE-metrics.jsonl,
# d2l-DTYPE-curves.png, d2l-DTYPE-config.json; bench.md, bench.json; cpu-bf16.md,
# cpu-bf16.json (augment-*.{log,jsonl,png} with AUGMENT_LIMIT, pytest-* with TESTS_LIMIT,
# below), and a last line
# "gpu_check: passed" (exit 0) or what failed (exit 1).
# The settings are environment variables so the same script can be tried on a CPU first:
#   DATA=... EPOCHS=1 TRAIN_ARGS="--limit-train 64 --limit-test 32" BATCHES=16 STEPS=1 \
#     EPOCH_IMAGES=64 CPU_BATCHES=8 CPU_STEPS=1 bash scripts/gpu_check.sh /tmp/check
set -uo pipefail
out=${1:?usage: gpu_check.sh OUTDIR}
data=${DATA:-data/fashion-mnist}
epochs=${EPOCHS:-10}
train_args=${TRAIN_ARGS:-}
batches=${BATCHES:-128 512}
steps=${STEPS:-20}
epoch_images=${EPOCH_IMAGES:-0}
dtypes=${DTYPES:-float32 bfloat16}
export PYTHONUNBUFFERED=1
mkdir -p "$out"
run_dir=$(mktemp -d)  # checkpoints stay on the machine: only the small files come back
trap 'rm -rf "$run_dir"' EXIT
failed=()

{
  date -u
  nvidia-smi || true
  python -c 'import sys, jax, flax, optax; print(sys.version); print("jax", jax.__version__,
"flax", flax.__version__, "optax", optax.__version__); print(jax.devices())'
  python -c 'import torch; print("torch", torch.__version__, torch.cuda.is_available())' || true
  python -c 'import tensorflow' 2>/dev/null && echo "tensorflow: present" || echo "tensorflow: absent"
  grep -m1 "model name" /proc/cpuinfo; echo "cores: $(nproc)"
  python -c 'from alexnet_jax.runtime.cpu import bf16_units; print("CPU bf16 units:", bf16_units())'
} > "$out/env.txt" 2>&1

for dtype in $dtypes; do
  echo "== d2l's run in $dtype: $epochs epochs, batch 128"
  log="$out/d2l-$dtype.log"
  start=$EPOCHREALTIME
  # shellcheck disable=SC2086
  timeout "${TRAIN_LIMIT:-120}" python -m alexnet_jax.cli train --workdir "$run_dir/$dtype" \
    --epochs "$epochs" --batch-size 128 --manual-dir "$data" --source idx --pipeline device \
    --dtype "$dtype" $train_args 2>&1 | tee "$log"
  train_rc=${PIPESTATUS[0]}
  echo "train exit $train_rc, wall $(python -c "print(round($EPOCHREALTIME - $start, 1))") s" \
    | tee -a "$log"
  for f in metrics.jsonl curves.png config.json; do
    cp "$run_dir/$dtype/$f" "$out/d2l-$dtype-$f" 2>/dev/null
  done
  python - "$out/d2l-$dtype-metrics.jsonl" "$epochs" <<'EOF' || failed+=("train $dtype (exit $train_rc)")
import json, sys
points = [json.loads(line) for line in open(sys.argv[1])]
last = points[-1]
assert abs(last["epoch"] - int(sys.argv[2])) < 1e-9, f"stopped at epoch {last['epoch']}"
print(f"train: {len(points)} points, epoch {last['epoch']:g}, test acc {last['test_acc']:.3f}")
EOF
done

# bfloat16 on the host's CPU, on 2 of its cores as on a 2-core machine: float32 and bf16 rows,
# and, where the CPU has bf16 units, PyTorch's autocast (on a CPU without them autocast takes
# minutes a step). A time-out is not a failure: the rows measured
# are in the JSON.
echo "== bfloat16 on the host CPU, 2 cores: batch ${CPU_BATCHES:-32 128}"
cpu_variants="jax-f32-default jax-bf16 torch-eager"
two_cores=$(command -v taskset > /dev/null && echo "taskset -c 0,1")
if [ -n "$(python -c 'from alexnet_jax.runtime.cpu import bf16_units; print(*bf16_units())')" ]
then cpu_variants="$cpu_variants torch-bf16"; fi
# shellcheck disable=SC2086
JAX_PLATFORMS=cpu CUDA_VISIBLE_DEVICES= OMP_NUM_THREADS=2 timeout "${CPU_LIMIT:-200}" \
  $two_cores python -m alexnet_jax.cli benchmark --batch-size ${CPU_BATCHES:-32 128} \
  --steps "${CPU_STEPS:-4}" --warmup 1 --variants $cpu_variants --json "$out/cpu-bf16.json" \
  2>&1 | tee "$out/cpu-bf16.md"
echo "CPU benchmark exit ${PIPESTATUS[0]}"

echo "== benchmark: batch $batches, $steps steps"
# shellcheck disable=SC2086
timeout "${BENCH_LIMIT:-120}" python -m alexnet_jax.cli benchmark --batch-size $batches \
  --steps "$steps" --epoch-images "$epoch_images" --manual-dir "$data" --source idx \
  --json "$out/bench.json" 2>&1 | tee "$out/bench.md"
bench_rc=${PIPESTATUS[0]}
echo "benchmark exit $bench_rc"
python - "$out/bench.json" <<'EOF' || failed+=("benchmark (exit $bench_rc)")
import json, sys
rows = json.load(open(sys.argv[1]))["rows"]
jax_rows = [r for r in rows if r["variant"].startswith("jax-")]
bad = [r for r in jax_rows if "error" in r]
assert jax_rows and not bad, f"no JAX rows, or failed ones: {bad}"
print(f"benchmark: {len(rows)} rows, {len(jax_rows)} of them JAX, none failed")
EOF

# d2l's run once more with AlexNet's augmentation (train --augment), where the call has time
# for it: AUGMENT_LIMIT seconds (0, the default, skips it; a 10-minute call spends its time on
# the parts above, so give this one its own call, e.g. DTYPES=float32 TRAIN_LIMIT=250
# BENCH_LIMIT=1 CPU_LIMIT=1 AUGMENT_LIMIT=270). Its curves are reported beside d2l's; a time-out
# is not a failure.
if [ "${AUGMENT_LIMIT:-0}" -gt 0 ]; then
  echo "== d2l's run with --augment: $epochs epochs, batch 128"
  # shellcheck disable=SC2086
  timeout "$AUGMENT_LIMIT" python -m alexnet_jax.cli train --workdir "$run_dir/augment" \
    --epochs "$epochs" --batch-size 128 --manual-dir "$data" --source idx --pipeline device \
    --augment $train_args 2>&1 | tee "$out/augment-train.log"
  echo "train --augment exit ${PIPESTATUS[0]}" | tee -a "$out/augment-train.log"
  cp "$run_dir"/augment/metrics.jsonl "$out/augment-metrics.jsonl" 2>/dev/null
  cp "$run_dir"/augment/curves.png "$out/augment-curves.png" 2>/dev/null
else
  echo "== d2l's run with --augment: skipped (AUGMENT_LIMIT=0)"
fi

# The test suite's selection with JAX's default backend the GPU (TESTS_LIMIT seconds; 0, the
# default, skips it: give it its own call, e.g. DTYPES=' ' BENCH_LIMIT=1 CPU_LIMIT=1
# TESTS_LIMIT=540). TESTS_MARK picks the tests (default: the equivalence checks and every test
# that does not train on the CPU). Writes pytest.log, pytest.xml and pytest-summary.md (passed,
# failed, skipped with reasons, the slowest tests, the device).
if [ "${TESTS_LIMIT:-0}" -gt 0 ]; then
  echo "== pytest -m \"${TESTS_MARK:-equivalence or not slow}\" on $(python -c 'import jax; print(jax.devices()[0].device_kind)')"
  FASHION_MNIST_DIR="$(cd "$data" && pwd)" timeout "$TESTS_LIMIT" python -m pytest -p no:cacheprovider \
    -q -rsfE --durations=15 -m "${TESTS_MARK:-equivalence or not slow}" \
    --junitxml="$out/pytest.xml" 2>&1 | tee "$out/pytest.log"
  tests_rc=${PIPESTATUS[0]}
  python scripts/pytest_summary.py "$out/pytest.xml" > "$out/pytest-summary.md" \
    || failed+=("pytest summary")
  cat "$out/pytest-summary.md"
  [ "$tests_rc" -eq 0 ] || failed+=("pytest (exit $tests_rc)")
else
  echo "== the test suite: skipped (TESTS_LIMIT=0)"
fi

if [ ${#failed[@]} -eq 0 ]; then
  echo "gpu_check: passed" | tee -a "$out/bench.md"
else
  echo "gpu_check: FAILED: ${failed[*]}" | tee -a "$out/bench.md"
  exit 1
fi
