#!/bin/sh
# imgmill bench's in-process pipeline on PostgreSQL + MinIO + etcd, each started here in a temporary
# directory on free loopback ports and set up as the tests' (internal/enginetest: PostgreSQL with fsync,
# synchronous_commit and full_page_writes off; one etcd member), stopped and removed afterwards.
# Usage: docs/bench-distributed.sh SIZE N CLIENTS   (IMGMILL, MINIO, ETCD, PGBIN: the programs)
set -eu
IMGMILL=${IMGMILL:-imgmill} MINIO=${MINIO:-minio} ETCD=${ETCD:-etcd}
PGBIN=${PGBIN:-$(dirname "$(ls /usr/lib/postgresql/*/bin/postgres | tail -1)")}
size=$1 n=$2 clients=$3
dir=$(mktemp -d)
chmod 755 "$dir"
mkdir "$dir/pg"
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
PG=$(port) S3=127.0.0.1:$(port) S3C=127.0.0.1:$(port) ETC=127.0.0.1:$(port) ETP=127.0.0.1:$(port)
as_pg=
if [ "$(id -u)" = 0 ]; then # initdb and postgres refuse to run as root
  chown postgres: "$dir/pg"
  as_pg="runuser -u postgres --"
fi
$as_pg "$PGBIN/initdb" -D "$dir/pg/data" -U postgres -A trust -E UTF8 --locale=C --no-sync >"$dir/initdb.log"
$as_pg "$PGBIN/postgres" -D "$dir/pg/data" -p "$PG" -c listen_addresses=127.0.0.1 -c unix_socket_directories="$dir/pg" \
  -c fsync=off -c synchronous_commit=off -c full_page_writes=off 2>"$dir/postgres.log" & pids="$!"
trap 'kill $pids 2>/dev/null || true; wait; rm -rf "$dir"' EXIT
MINIO_ROOT_USER=imgmill MINIO_ROOT_PASSWORD=imgmill-bench-secret MINIO_UPDATE=off \
  "$MINIO" server "$dir/minio" --address $S3 --console-address $S3C --certs-dir "$dir/certs" --quiet >"$dir/minio.log" 2>&1 & pids="$pids $!"
"$ETCD" --name m1 --data-dir "$dir/etcd" --listen-client-urls http://$ETC --advertise-client-urls http://$ETC \
  --listen-peer-urls http://$ETP --initial-advertise-peer-urls http://$ETP --initial-cluster m1=http://$ETP \
  --initial-cluster-state new --initial-cluster-token "bench-$$" >"$dir/etcd.log" 2>&1 & pids="$pids $!"
wait_for() {
  tries=0
  until "$@" >/dev/null 2>&1; do
    tries=$((tries + 1)); [ $tries -lt 600 ] || { echo "not ready: $*" >&2; exit 1; }
    sleep 0.1
  done
}
wait_for $as_pg "$PGBIN/pg_isready" -h 127.0.0.1 -p "$PG"
wait_for curl -sf "http://$S3/minio/health/live"
wait_for sh -c "curl -sf http://$ETC/health | grep -q true"
echo "== distributed: $size px x$n, $clients clients; load $(cut -d' ' -f1-3 /proc/loadavg)"
"$IMGMILL" bench --size "$size" -n "$n" --clients "$clients" \
  --tasks "postgres://postgres@127.0.0.1:$PG/postgres?sslmode=disable" \
  --blobs "s3://imgmill-bench?endpoint=http://$S3&access_key=imgmill&secret_key=imgmill-bench-secret" \
  --kv-store "etcd://$ETC"
