# 2-process run; SIGKILL process 1 mid-run; time until process 0 stops. usage: lost.sh HEARTBEAT(or "default")
W=/tmp/trials/lost-$1; rm -rf $W; mkdir -p $W
PORT=$((20000 + RANDOM % 20000))
HB=""; [ "$1" != default ] && HB="--heartbeat-timeout $1"
for i in 0 1; do
  /work/main/.venv/bin/alexnet-jax train --workdir $W/run --coordinator localhost:$PORT --num-processes 2 --process-id $i \
    --manual-dir /work/shared/data/fashion-mnist --source idx --limit-train 400 --limit-test 8 --batch-size 4 --epochs 1 $HB \
    > $W/out$i.txt 2> $W/err$i.txt &
  echo $! > $W/pid$i
done
for _ in $(seq 600); do [ -s $W/run/metrics.jsonl ] && break; sleep 0.2; done
kill -KILL $(cat $W/pid1) ; t0=$(date +%s.%N)
wait $(cat $W/pid0); rc0=$?; t1=$(date +%s.%N)
echo "rc $rc0; process 0 stopped $(echo "$t1 - $t0" | bc) s after process 1 was killed"
grep -v "^WARNING" $W/err0.txt
