#!/bin/sh
# The split deployment on loopback: the six services as six imgmill processes on free ports with a fresh
# data directory (log level INFO, their default), RUNS runs of `imgmill bench --master` against it, then
# the processes stopped and the directory removed.
# Usage: docs/bench-split.sh SIZE N CLIENTS [RUNS]   (IMGMILL: the program)
set -eu
IMGMILL=${IMGMILL:-imgmill}
size=$1 n=$2 clients=$3 runs=${4:-1}
dir=$(mktemp -d)
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
KV=127.0.0.1:$(port) DB=127.0.0.1:$(port) ST=127.0.0.1:$(port) MA=127.0.0.1:$(port) FE=127.0.0.1:$(port)
"$IMGMILL" kv       --addr $KV --data "$dir" 2>"$dir/kv.log" & pids="$!"
trap 'kill $pids 2>/dev/null || true; wait; rm -rf "$dir"' EXIT
"$IMGMILL" database --addr $DB --kv $KV --data "$dir" 2>"$dir/database.log" & pids="$pids $!"
"$IMGMILL" storage  --addr $ST --kv $KV --data "$dir" 2>"$dir/storage.log" & pids="$pids $!"
"$IMGMILL" master   --addr $MA --kv $KV 2>"$dir/master.log" & pids="$pids $!"
"$IMGMILL" worker   --kv $KV 2>"$dir/worker.log" & pids="$pids $!"
"$IMGMILL" frontend --addr $FE --kv $KV --data "$dir" 2>"$dir/frontend.log" & pids="$pids $!"
for addr in $KV $DB $ST $MA $FE; do
  tries=0
  until curl -sf "http://$addr/healthz" >/dev/null; do
    tries=$((tries + 1)); [ $tries -lt 600 ] || { echo "$addr not ready; logs in $dir" >&2; exit 1; }
    sleep 0.1
  done
done
for i in $(seq "$runs"); do
  echo "== split run $i: $size px x$n, $clients clients; load $(cut -d' ' -f1-3 /proc/loadavg)"
  "$IMGMILL" bench --master "http://$MA" --size "$size" -n "$n" --clients "$clients"
done
