#!/usr/bin/env bash
# The replica share of plain reads: one read-only workload of typical
# application reads (pgbench custom script, simple and prepared protocol)
# through this pgsplit and, interleaved, through a BASELINE pgsplit binary
# (an older commit's release build) on the same local primary and two
# replicas. The share comes from the nodes themselves: each node's
# pg_stat_user_tables counts the scans it ran on the pgbench tables.
#
#   BASELINE=/tmp/old/target/release/pgsplit TXNS=2000 benches/replica_share.sh
set -euo pipefail
cd "$(dirname "$0")/.."
TXNS=${TXNS:-2000}
CLIENTS=${CLIENTS:-4}
cargo build --release --quiet
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
DIR=$(mktemp -d); chmod 755 "$DIR"
P1=$(free_port); P2=$(free_port); P3=$(free_port); SPLIT=$(free_port); BASE=$(free_port)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -n "${DEMO:-}" ] && kill -TERM "$DEMO" 2>/dev/null && wait "$DEMO" 2>/dev/null || true
  rm -rf "$DIR"
}
trap cleanup EXIT

cat > "$DIR/proxy.yaml" <<YAML
listen: 127.0.0.1:$SPLIT
auth: { method: trust, users: [ { name: postgres }, { name: app, password: app } ] }
nodes:
  - { name: pg1, host: 127.0.0.1, port: $P1, role: primary }
  - { name: pg2, host: 127.0.0.1, port: $P2, role: replica }
  - { name: pg3, host: 127.0.0.1, port: $P3, role: replica }
pool: { mode: transaction, size: 8 }
routing: { read_your_writes: off }
YAML
target/release/pgsplit demo -c "$DIR/proxy.yaml" > "$DIR/demo.log" 2>&1 &
DEMO=$!
for _ in $(seq 1 120); do grep -q "Press Ctrl-C" "$DIR/demo.log" && break; sleep 0.5; done
grep -q "Press Ctrl-C" "$DIR/demo.log" || { cat "$DIR/demo.log"; exit 1; }
"$PGBIN/pgbench" -h 127.0.0.1 -p "$P1" -U postgres -i -q -s 1 app > /dev/null 2>&1
TARGETS="pgsplit"
if [ -n "${BASELINE:-}" ]; then
  sed -e "s/^listen: .*/listen: 127.0.0.1:$BASE/" "$DIR/proxy.yaml" > "$DIR/base.yaml"
  "$BASELINE" run -c "$DIR/base.yaml" > "$DIR/base.log" 2>&1 &
  PIDS+=("$!")
  TARGETS="pgsplit baseline"
fi
port_of() { case $1 in pgsplit) echo "$SPLIT" ;; baseline) echo "$BASE" ;; esac; }
# Replicas have the tables before any read is timed.
for _ in $(seq 1 100); do
  n=$("$PGBIN/psql" -h 127.0.0.1 -p "$P3" -U postgres -d app -Atc \
    "SELECT count(*) FROM pg_class WHERE relname = 'pgbench_history'" 2>/dev/null || echo 0)
  [ "$n" = 1 ] && break; sleep 0.2
done

cat > "$DIR/reads.sql" <<'SQL'
\set aid random(1, 100000)
\set tid random(1, 10)
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
SELECT count(*), now() FROM pgbench_branches;
SELECT b.bbalance, t.tbalance FROM pgbench_branches b JOIN pgbench_tellers t ON t.bid = b.bid WHERE t.tid = :tid;
SELECT coalesce(max(mtime), now()) FROM pgbench_history;
WITH a AS (SELECT aid FROM pgbench_accounts WHERE aid < :aid LIMIT 5) SELECT count(*) FROM a;
SELECT lower(filler), length(filler), date_trunc('day', now()) FROM pgbench_tellers WHERE tid = :tid;
SELECT public.pgbench_accounts.aid FROM public.pgbench_accounts WHERE aid = :aid;
SQL
STATS="SELECT coalesce(sum(seq_scan + coalesce(idx_scan, 0)), 0) FROM pg_stat_user_tables WHERE relname LIKE 'pgbench%'"
scans() { "$PGBIN/psql" -h 127.0.0.1 -p "$1" -U postgres -d app -Atc "$STATS"; }
# A backend publishes its table statistics within 10 s of going idle.
settle() { sleep 11; }

echo "| binary | protocol | statements | on the primary | on replicas | replica share |"
echo "|---|---|---:|---:|---:|---:|"
for mode in simple prepared; do
  for target in $TARGETS; do
    settle
    b1=$(scans "$P1"); b2=$(scans "$P2"); b3=$(scans "$P3")
    "$PGBIN/pgbench" -n -h 127.0.0.1 -p "$(port_of "$target")" -U postgres -M "$mode" \
      -c "$CLIENTS" -t "$TXNS" -f "$DIR/reads.sql" app > "$DIR/run.log" 2>&1 || { cat "$DIR/run.log"; exit 1; }
    settle
    a1=$(scans "$P1"); a2=$(scans "$P2"); a3=$(scans "$P3")
    primary=$((a1 - b1)); replicas=$((a2 - b2 + a3 - b3)); total=$((primary + replicas))
    share=$(python3 -c "print(f'{100 * $replicas / max($total, 1):.1f} %')")
    echo "| $target | $mode | $total | $primary | $replicas | $share |"
  done
done
