#!/usr/bin/env bash
# Read-your-writes at replica speed: the write-then-read workload of
# benches/ryw_share.rs (each client INSERTs a row, then READS reads, OWN of
# them of the row it just wrote) through pgsplit with read_your_writes
# session, global and off, and straight to the primary, on a local primary
# and two streaming replicas (synchronous_commit = on, loopback). Prints
# the share of reads replicas served, stale reads of the client's own rows,
# read latency p50/p99 and loops per second. Leaves nothing running.
#
#   CLIENTS=8 LOOPS=300 READS=9 OWN=3 benches/ryw_share.sh
set -euo pipefail
cd "$(dirname "$0")/.."
CLIENTS=${CLIENTS:-8}
LOOPS=${LOOPS:-300}
READS=${READS:-9}
OWN=${OWN:-3}
cargo build --release --quiet
cargo bench --quiet --bench ryw_share --no-run 2>/dev/null
. benches/lib.sh
config() { # listen mode
  echo "listen: 127.0.0.1:$1"
  echo "auth: { method: md5, users: [ { name: app, password: app } ] }"
  demo_nodes
  echo "pool: { mode: transaction, size: 20 }"
  echo "routing: { read_your_writes: $2 }"
}
DEMO_PORT=$(free_port)
config "$DEMO_PORT" off > "$DIR/demo.yaml"
start_demo "$DIR/demo.yaml"
declare -A PORT
for mode in session global; do
  PORT[$mode]=$(free_port)
  config "${PORT[$mode]}" $mode > "$DIR/$mode.yaml"
  $BIN -c "$DIR/$mode.yaml" > "$DIR/$mode.log" 2>&1 &
  PIDS+=($!)
done
PORT[off]=$DEMO_PORT
PORT[primary]=$P1
export PGPASSWORD=app
"$PGBIN/psql" -X -q -h 127.0.0.1 -p "$P1" -U app -d app -c \
  "CREATE TABLE IF NOT EXISTS ryw_share (client int, seq int); \
   CREATE TABLE IF NOT EXISTS ryw_share_other (id int PRIMARY KEY); \
   INSERT INTO ryw_share_other SELECT generate_series(0, 20) ON CONFLICT DO NOTHING; \
   SHOW synchronous_commit" > /dev/null
# every proxy has read the new tables from the catalog and sees the replicas
for mode in session global off; do
  for _ in $(seq 1 100); do
    "$PGBIN/psql" -X -At -h 127.0.0.1 -p "${PORT[$mode]}" -U app -d app \
      -c "SELECT 1 FROM ryw_share_other LIMIT 1" > /dev/null 2>&1 && break
    sleep 0.1
  done
done
sleep 1
echo "| target | reads on replicas | stale own-row reads | read p50 ms | read p99 ms | loops/s |"
echo "|---|---:|---:|---:|---:|---:|"
for target in session global off primary; do
  "$PGBIN/psql" -X -q -h 127.0.0.1 -p "$P1" -U app -d app -c "TRUNCATE ryw_share"
  sleep 0.5
  cargo bench --quiet --bench ryw_share -- 127.0.0.1 "${PORT[$target]}" "$P1" \
    "$CLIENTS" "$LOOPS" "$READS" "$OWN" "$target"
done
