# Trial 1: train on while the first FAILS reads of files under PATTERN fail with EIO.
# usage: cc -shared -fPIC -O2 -o /tmp/flaky.so tests/flaky_reads.c -ldl
#        bash flaky_run.sh WORKDIR PATTERN FAILS [train flags...]
w=$1; pattern=$2; fails=$3; shift 3
ALEXNET_JAX_MALLOC=system LD_PRELOAD=/tmp/flaky.so FLAKY_PATH=$pattern FLAKY_FAILS=$fails \
  alexnet-jax train --workdir "$w" "$@"
echo "rc $?"
