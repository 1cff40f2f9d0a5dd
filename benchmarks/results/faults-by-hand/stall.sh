# 2-process run on loopback; SIGSTOP process 1's training child for $1 seconds mid-run.
# usage: stall.sh STALL_SECONDS HEARTBEAT
set -u
W=/tmp/trials/stall-$1-$2; rm -rf $W; mkdir -p $W
PORT=$((20000 + RANDOM % 20000))
for i in 0 1; do
  /work/main/.venv/bin/alexnet-jax train --workdir $W/run --coordinator localhost:$PORT --num-processes 2 --process-id $i \
    --manual-dir /work/shared/data/fashion-mnist --source idx --limit-train 160 --limit-test 8 --batch-size 4 --epochs 1 \
    --heartbeat-timeout $2 > $W/out$i.txt 2> $W/err$i.txt &
  echo $! > $W/pid$i
done
# wait for the first metrics point
for _ in $(seq 600); do [ -s $W/run/metrics.jsonl ] && break; sleep 0.2; done
child=$(pgrep -P $(cat $W/pid1) | head -1)
echo "stopping process 1 (child $child) for $1 s at $(date +%T)"
kill -STOP $child; sleep $1; kill -CONT $child
t0=$(date +%s.%N)
wait $(cat $W/pid0); rc0=$?; t_0=$(date +%s.%N)
wait $(cat $W/pid1); rc1=$?
echo "rc $rc0 $rc1; process 0 ended $(echo "$t_0 - $t0" | bc) s after the stall ended"
echo "-- process 0 stderr:"; cat $W/err0.txt | grep -v "^WARNING"; echo "-- process 1 stderr:"; cat $W/err1.txt | grep -v "^WARNING"
echo "-- process 0 last lines:"; tail -2 $W/out0.txt
