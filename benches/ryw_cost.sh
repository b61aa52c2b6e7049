#!/usr/bin/env bash
# Measures what read-your-writes costs: pgbench TPC-B-like (writes) and a
# write-then-read script through three proxies on one local cluster, with
# routing.read_your_writes off, session and global, interleaved, twice.
# Prints TPS and average latency per mode. Leaves nothing running.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
. benches/lib.sh
config() { # listen mode
  echo "listen: 127.0.0.1:$1"
  echo "auth: { method: md5, users: [ { name: app, password: app } ] }"
  demo_nodes
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
sleep 1
export PGPASSWORD=app
"$PGBIN/pgbench" -h 127.0.0.1 -p "$DEMO_PORT" -U app -i -q -s 4 app > /dev/null 2>&1
sleep 1
cat > "$DIR/write_read.sql" <<'SQL'
\set aid random(1, 400000)
UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = :aid;
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
SQL
echo "| workload | read_your_writes | round | TPS | avg latency ms |"
echo "|---|---|---|---|---|"
for round in 1 2; do
  for mode in off session global; do
    for w in tpcb write_read; do
      if [ $w = tpcb ]; then args=(-N); else args=(-f "$DIR/write_read.sql"); fi
      out=$("$PGBIN/pgbench" -h 127.0.0.1 -p "${PORT[$mode]}" -U app -n -M simple -c 4 -j 2 -T 10 "${args[@]}" app 2>&1)
      tps=$(echo "$out" | awk '/^tps/ {print $3; exit}')
      lat=$(echo "$out" | awk '/latency average/ {print $4; exit}')
      echo "| $w | $mode | $round | $tps | $lat |"
    done
  done
done
