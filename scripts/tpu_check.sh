#!/usr/bin/env bash
# Every TPU check of alexnet-jax in one call, for a TPU VM held for minutes: gpu_check.sh's
# checks (the machine and versions, d2l's run, the benchmark; they name no GPU), then the
# compiled report for the same slice (`alexnet-jax aot`), so that the roofline estimate and the
# measured images/s sit side by side in OUTDIR.
#
#   pip install -e '.[tpu]'; mkdir -p data && cp -r ../shared/data/fashion-mnist data/
#   bash scripts/tpu_check.sh OUTDIR TOPOLOGY     # TOPOLOGY: this slice, e.g. v5e:2x2
#
# The same environment variables as gpu_check.sh (EPOCHS, BATCHES, ...), and AOT_LIMIT
# (seconds, default 600). Exit 0 only when the device is a TPU and every part passed.
set -uo pipefail
out=${1:?usage: tpu_check.sh OUTDIR TOPOLOGY}
topology=${2:?usage: tpu_check.sh OUTDIR TOPOLOGY (this slice, e.g. v5e:2x2)}
mkdir -p "$out"
python -c 'import jax; d = jax.devices(); assert d[0].platform == "tpu", d' \
  || { echo "tpu_check: FAILED: JAX sees no TPU here"; exit 1; }
bash "$(dirname "$0")/gpu_check.sh" "$out"
rc=$?
echo "== aot: $topology compiled, beside the measurement"
# shellcheck disable=SC2086
timeout "${AOT_LIMIT:-600}" python -m alexnet_jax.cli aot --topology "$topology" \
  --batch-size ${BATCHES:-128 512} --out "$out/aot" 2>&1 | tee "$out/aot.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || { echo "tpu_check: FAILED: aot"; rc=1; }
[ $rc -eq 0 ] && echo "tpu_check: passed"
exit $rc
