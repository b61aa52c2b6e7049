# Sourced by the bench scripts that run on the demo cluster (after
# `set -euo pipefail` and `cd` to the repository): the PostgreSQL
# binaries, free loopback ports for the three nodes (P1 primary, P2 and P3
# replicas), a scratch DIR, and start_demo, which starts `pgsplit demo`
# and stops it, every pid in PIDS and the scratch DIR at exit.
BIN=target/release/pgsplit
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
DIR=$(mktemp -d)
P1=$(free_port); P2=$(free_port); P3=$(free_port)
PIDS=()
DEMO=

# The proxy.yaml lines naming the three nodes.
demo_nodes() {
  cat <<YAML
nodes:
  - { name: pg1, host: 127.0.0.1, port: $P1, role: primary }
  - { name: pg2, host: 127.0.0.1, port: $P2, role: replica }
  - { name: pg3, host: 127.0.0.1, port: $P3, role: replica }
YAML
}

cleanup() {
  kill "${PIDS[@]}" 2>/dev/null || true
  [ -n "$DEMO" ] && kill -TERM "$DEMO" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$DIR"
}

# start_demo FILE: the demo cluster and its proxy configured by FILE, ready.
start_demo() {
  $BIN demo -c "$1" > "$DIR/demo.log" 2>&1 &
  DEMO=$!
  trap cleanup EXIT
  for _ in $(seq 1 120); do grep -q "Press Ctrl-C" "$DIR/demo.log" && break; sleep 0.5; done
}
