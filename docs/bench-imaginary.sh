#!/bin/sh
# imgmill bench side by side with imaginary (a synchronous libvips server) on this machine: imaginary
# started on a free loopback port, RUNS runs of `imgmill bench --compare-imaginary`, imaginary stopped.
# Usage: docs/bench-imaginary.sh SIZE N CLIENTS [RUNS]   (IMGMILL, IMAGINARY: the programs)
set -eu
IMGMILL=${IMGMILL:-imgmill} IMAGINARY=${IMAGINARY:-imaginary}
size=$1 n=$2 clients=$3 runs=${4:-1}
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
PORT=$(port)
# -log-level error: no access log line per request, imaginary's fastest setting.
"$IMAGINARY" -a 127.0.0.1 -p "$PORT" -log-level error >/dev/null 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait $pid || true' EXIT
tries=0
until curl -sf "http://127.0.0.1:$PORT/health" >/dev/null; do
  tries=$((tries + 1)); [ $tries -lt 300 ] || { echo "imaginary did not start" >&2; exit 1; }
  sleep 0.1
done
for i in $(seq "$runs"); do
  echo "== run $i: $size px x$n, $clients clients; load $(cut -d' ' -f1-3 /proc/loadavg)"
  "$IMGMILL" bench --size "$size" -n "$n" --clients "$clients" --compare-imaginary "http://127.0.0.1:$PORT"
done
