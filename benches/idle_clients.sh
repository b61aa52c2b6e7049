#!/usr/bin/env bash
# Memory of idle clients: starts the demo cluster and a release pgsplit
# (trust auth), opens N (default 10000) idle logged-in client connections and
# prints the proxy's RSS before and after. Leaves nothing running.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-10000}
ulimit -n 65536 2>/dev/null || true
cargo build --release --quiet
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
DIR=$(mktemp -d)
LISTEN=$(free_port)
cat > "$DIR/proxy.yaml" <<YAML
listen: 127.0.0.1:$LISTEN
auth: { method: trust, users: [ { name: app, password: app } ] }
nodes:
  - { name: pg1, host: 127.0.0.1, port: $(free_port), role: primary }
  - { name: pg2, host: 127.0.0.1, port: $(free_port), role: replica }
  - { name: pg3, host: 127.0.0.1, port: $(free_port), role: replica }
limits: { max_clients: 20000 }
YAML
target/release/pgsplit demo -c "$DIR/proxy.yaml" > "$DIR/demo.log" 2>&1 &
DEMO=$!
trap 'kill -TERM $DEMO 2>/dev/null; wait $DEMO 2>/dev/null; rm -rf "$DIR"' EXIT
for _ in $(seq 1 120); do grep -q "Press Ctrl-C" "$DIR/demo.log" && break; sleep 0.5; done
python3 benches/idle_clients.py 127.0.0.1 "$LISTEN" "$DEMO" "$N"
