#!/usr/bin/env bash
# What sequence affinity gains and costs: CLIENTS clients share a pool of
# POOL primary connections (transaction pooling); each INSERTs (nextval),
# runs an UPDATE, then asks currval. Through this pgsplit and, when
# BASELINE names an older pgsplit binary, through that one on the same
# cluster. Prints how often currval answered (with the client's own
# value), how often it was refused (55000), wrong answers (must be 0) and
# loops per second. Leaves nothing running.
#
#   BASELINE=/tmp/old/target/release/pgsplit CLIENTS=8 POOL=4 LOOPS=500 benches/sequence_affinity.sh
set -euo pipefail
cd "$(dirname "$0")/.."
CLIENTS=${CLIENTS:-8}
POOL=${POOL:-4}
LOOPS=${LOOPS:-500}
cargo build --release --quiet
cargo bench --quiet --bench sequence_affinity --no-run 2>/dev/null
BIN=target/release/pgsplit
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
DIR=$(mktemp -d)
P1=$(free_port); P2=$(free_port); P3=$(free_port); DEMO_PORT=$(free_port); BASE=$(free_port)
cat > "$DIR/demo.yaml" <<YAML
listen: 127.0.0.1:$DEMO_PORT
auth: { method: md5, users: [ { name: app, password: app } ] }
nodes:
  - { name: pg1, host: 127.0.0.1, port: $P1, role: primary }
  - { name: pg2, host: 127.0.0.1, port: $P2, role: replica }
  - { name: pg3, host: 127.0.0.1, port: $P3, role: replica }
pool: { mode: transaction, size: $POOL }
YAML
$BIN demo -c "$DIR/demo.yaml" > "$DIR/demo.log" 2>&1 &
DEMO=$!
PIDS=()
cleanup() { kill "${PIDS[@]}" 2>/dev/null || true; kill -TERM $DEMO 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$DIR"; }
trap cleanup EXIT
for _ in $(seq 1 120); do grep -q "Press Ctrl-C" "$DIR/demo.log" && break; sleep 0.5; done
TARGETS="pgsplit"
if [ -n "${BASELINE:-}" ]; then
  sed -e "s/^listen: .*/listen: 127.0.0.1:$BASE/" "$DIR/demo.yaml" > "$DIR/base.yaml"
  "$BASELINE" -c "$DIR/base.yaml" > "$DIR/base.log" 2>&1 &
  PIDS+=($!)
  TARGETS="pgsplit baseline"
fi
export PGPASSWORD=app
"$PGBIN/psql" -X -q -h 127.0.0.1 -p "$P1" -U app -d app -c \
  "CREATE TABLE IF NOT EXISTS affinity (id serial PRIMARY KEY, v int); \
   CREATE TABLE IF NOT EXISTS affinity_other (id int PRIMARY KEY, n int); \
   INSERT INTO affinity_other SELECT i, 0 FROM generate_series(0, 1000) i ON CONFLICT DO NOTHING" > /dev/null
sleep 1
echo "| binary | currval answered | currval refused (55000) | wrong values | loops/s |"
echo "|---|---:|---:|---:|---:|"
for round in 1 2; do
  for target in $TARGETS; do
    port=$DEMO_PORT; [ "$target" = baseline ] && port=$BASE
    cargo bench --quiet --bench sequence_affinity -- 127.0.0.1 "$port" "$CLIENTS" "$LOOPS" "$target"
  done
done
