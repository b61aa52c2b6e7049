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
. benches/lib.sh
DEMO_PORT=$(free_port); BASE=$(free_port)
{ echo "listen: 127.0.0.1:$DEMO_PORT"
  echo "auth: { method: md5, users: [ { name: app, password: app } ] }"
  demo_nodes
  echo "pool: { mode: transaction, size: $POOL }"; } > "$DIR/demo.yaml"
start_demo "$DIR/demo.yaml"
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
