#!/usr/bin/env bash
# Measures what read-your-writes costs: pgbench TPC-B-like (writes) and a
# write-then-read script through three proxies on one local cluster, with
# routing.read_your_writes off, session and global, interleaved, twice.
# Prints TPS and average latency per mode. Leaves nothing running.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
BIN=target/release/pgsplit
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
DIR=$(mktemp -d)
P1=$(free_port); P2=$(free_port); P3=$(free_port)
config() { # listen mode
  cat <<YAML
listen: 127.0.0.1:$1
auth: { method: md5, users: [ { name: app, password: app } ] }
nodes:
  - { name: pg1, host: 127.0.0.1, port: $P1, role: primary }
  - { name: pg2, host: 127.0.0.1, port: $P2, role: replica }
  - { name: pg3, host: 127.0.0.1, port: $P3, role: replica }
routing: { read_your_writes: $2 }
YAML
}
DEMO_PORT=$(free_port)
config "$DEMO_PORT" off > "$DIR/demo.yaml"
$BIN demo -c "$DIR/demo.yaml" > "$DIR/demo.log" 2>&1 &
DEMO=$!
PIDS=()
cleanup() { kill "${PIDS[@]}" 2>/dev/null || true; kill -TERM $DEMO 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$DIR"; }
trap cleanup EXIT
for _ in $(seq 1 120); do grep -q "Press Ctrl-C" "$DIR/demo.log" && break; sleep 0.5; done
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
