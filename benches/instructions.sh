#!/usr/bin/env bash
# Instructions per transaction of the proxy, counted by callgrind (the
# same for the same binary and inputs whatever else the machine does):
# a local primary and two replicas, one proxy under valgrind, pgbench -S
# through it in each protocol mode. With BASELINE=<another pgsplit binary>
# the same is counted for it, for a before/after comparison;
# PRIMARY_ONLY=1 gives the counted proxy only the primary (as PgBouncer).
#
#   TRANSACTIONS=2000 BASELINE=/tmp/old/target/release/pgsplit benches/instructions.sh
set -euo pipefail
cd "$(dirname "$0")/.."
TRANSACTIONS=${TRANSACTIONS:-2000}
# ROWS=N: each transaction reads N rows (aid <= N) instead of pgbench -S's one
WORKLOAD=(-S)
MODES=${MODES:-"simple extended prepared"}
cargo build --release --quiet
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
command -v valgrind >/dev/null || { echo "install valgrind: apt-get install -y valgrind" >&2; exit 1; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
DIR=$(mktemp -d); chmod 755 "$DIR"
P1=$(free_port); P2=$(free_port); P3=$(free_port); DEMO_PORT=$(free_port)
nodes() {
  echo "nodes:"
  echo "  - { name: pg1, host: 127.0.0.1, port: $P1, role: primary }"
  echo "  - { name: pg2, host: 127.0.0.1, port: $P2, role: replica }"
  echo "  - { name: pg3, host: 127.0.0.1, port: $P3, role: replica }"
}
{ echo "listen: 127.0.0.1:$DEMO_PORT"; echo "auth: { method: trust, users: [ { name: postgres }, { name: app, password: app } ] }"; nodes; } > "$DIR/demo.yaml"
target/release/pgsplit demo -c "$DIR/demo.yaml" > "$DIR/demo.log" 2>&1 &
DEMO=$!
cleanup() { kill -TERM "$DEMO" 2>/dev/null || true; wait "$DEMO" 2>/dev/null || true; rm -rf "$DIR"; }
trap cleanup EXIT
for _ in $(seq 1 120); do grep -q "Press Ctrl-C" "$DIR/demo.log" && break; sleep 0.5; done
"$PGBIN/pgbench" -h 127.0.0.1 -p "$P1" -U postgres -i -q -s 1 app > /dev/null 2>&1
sleep 2
if [ -n "${ROWS:-}" ]; then
  echo "SELECT aid, bid, abalance, filler FROM pgbench_accounts WHERE aid <= $ROWS;" > "$DIR/rows.sql"
  chmod 644 "$DIR/rows.sql"
  WORKLOAD=(-f "$DIR/rows.sql")
fi
count() { # binary label
  local port; port=$(free_port)
  { echo "listen: 127.0.0.1:$port"; echo "auth: { method: trust, users: [ { name: postgres } ] }"
    # PRIMARY_ONLY=1: the proxy is given only the primary, as PgBouncer is
    if [ -n "${PRIMARY_ONLY:-}" ]; then echo "nodes:"; echo "  - { name: pg1, host: 127.0.0.1, port: $P1, role: primary }"; else nodes; fi
    echo "pool: { mode: transaction, size: 4 }"; echo "workers: 1"; } > "$DIR/$2.yaml"
  for mode in $MODES; do
    valgrind --tool=callgrind --callgrind-out-file="$DIR/$2.$mode.out" "$1" run -c "$DIR/$2.yaml" > "$DIR/$2.log" 2>&1 &
    local pid=$!
    for _ in $(seq 1 240); do "$PGBIN/psql" -h 127.0.0.1 -p "$port" -U postgres -d app -Atc "SELECT 1" >/dev/null 2>&1 && break; sleep 0.5; done
    # warm-up, then the counted run; totals include start-up, so the
    # warm-up run is subtracted by counting two runs of different sizes
    "$PGBIN/pgbench" -h 127.0.0.1 -p "$port" -U postgres -n "${WORKLOAD[@]}" -M "$mode" -c 4 -j 1 -t 100 app > /dev/null 2>&1
    "$PGBIN/pgbench" -h 127.0.0.1 -p "$port" -U postgres -n "${WORKLOAD[@]}" -M "$mode" -c 4 -j 1 -t "$((TRANSACTIONS / 4))" app > /dev/null 2>&1
    kill -INT "$pid"; wait "$pid" 2>/dev/null || true
    # The sessions' own work: the inclusive cost of the session tasks, the
    # session's tracing span included (start-up, the monitor and the
    # catalog reader are left out). Older builds are counted the same way:
    # the first poll of a task future in src/session/mod.rs.
    local ann; ann=$(callgrind_annotate --inclusive=yes "$DIR/$2.$mode.out" 2>/dev/null || true)
    local total; total=$(echo "$ann" | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1; exit}' || true)
    # (or, where the compiler inlined that poll, session::serve's future)
    local sessions; sessions=$(echo "$ann" | awk '/src\/session\/mod.rs:<tokio_util::task::task_tracker::TrackedFuture/ {gsub(",", "", $1); print $1; exit}' || true)
    if [ -z "$sessions" ]; then
      sessions=$(echo "$ann" | awk 'index($0, "src/session/mod.rs:pgsplit::session::serve::{{closure}}") {gsub(",", "", $1); print $1; exit}' || true)
    fi
    local tx=$((TRANSACTIONS + 400))
    echo "$2 -M $mode: $tx transactions; program $total instructions; sessions ${sessions:-?} ($(( ${sessions:-0} / tx )) per transaction)"
    if [ -n "${KEEP:-}" ]; then cp "$DIR/$2.$mode.out" "$KEEP.$2.$mode.out"; fi
  done
}
# PGBOUNCER=1 (SMALL=400): the whole program's instructions per transaction, pgsplit
# (and with BASELINE the baseline binary, as baseline-primary) given only the primary (what PgBouncer is given, pool of 4) against
# PgBouncer (transaction pooling, pool of 4): each runs under callgrind
# twice, with SMALL and TRANSACTIONS transactions after the same warm-up,
# and the difference per transaction cancels start-up and shutdown. Unlike
# the session count above this includes the I/O driver and the scheduler.
program_delta() { # label port command... (AS_PG: run it as postgres)
  local label=$1; shift
  local port=$1; shift
  for mode in $MODES; do
    local bench_mode=$mode
    [ "$label" = pgbouncer ] && [ "$mode" = prepared ] && bench_mode=extended
    local totals=()
    for n in "$SMALL" "$TRANSACTIONS"; do
      local out="$DIR/$label.$mode.$n.out"
      "${AS_PG[@]}" valgrind --tool=callgrind --callgrind-out-file="$out" "$@" > "$DIR/$label.log" 2>&1 &
      local pid=$!
      local up=""
      for _ in $(seq 1 240); do "$PGBIN/psql" -h 127.0.0.1 -p "$port" -U postgres -d app -Atc "SELECT 1" >/dev/null 2>&1 && { up=1; break; }; sleep 0.5; done
      [ -n "$up" ] || { echo "$label did not accept connections:" >&2; for f in "$DIR/$label.log" "$DIR/bouncer.log"; do [ -f "$f" ] && head -n 40 "$f" >&2; done; return 1; }
      "$PGBIN/pgbench" -h 127.0.0.1 -p "$port" -U postgres -n "${WORKLOAD[@]}" -M "$bench_mode" -c 4 -j 1 -t 100 app > /dev/null 2>&1
      "$PGBIN/pgbench" -h 127.0.0.1 -p "$port" -U postgres -n "${WORKLOAD[@]}" -M "$bench_mode" -c 4 -j 1 -t "$((n / 4))" app > /dev/null 2>&1
      pkill -INT -f "callgrind-out-file=$out" || true; wait "$pid" 2>/dev/null || true
      totals+=("$(callgrind_annotate "$out" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1; exit}' || true)")
      if [ -n "${KEEP:-}" ]; then cp "$out" "$KEEP.$label.$mode.$n.out"; fi
    done
    echo "$label -M $bench_mode: program $(( (totals[1] - totals[0]) / (TRANSACTIONS - SMALL) )) instructions per transaction (difference of $SMALL and $TRANSACTIONS transactions)"
  done
}
count target/release/pgsplit pgsplit
[ -n "${BASELINE:-}" ] && count "$BASELINE" baseline
if [ -n "${PGBOUNCER:-}" ]; then
  command -v pgbouncer >/dev/null || { echo "install pgbouncer: apt-get install -y pgbouncer" >&2; exit 1; }
  SMALL=${SMALL:-400}
  port=$(free_port)
  { echo "listen: 127.0.0.1:$port"; echo "auth: { method: trust, users: [ { name: postgres } ] }"
    echo "nodes:"; echo "  - { name: pg1, host: 127.0.0.1, port: $P1, role: primary }"
    echo "pool: { mode: transaction, size: 4 }"; echo "workers: 1"; } > "$DIR/primary.yaml"
  AS_PG=()
  program_delta pgsplit-primary "$port" target/release/pgsplit run -c "$DIR/primary.yaml"
  if [ -n "${BASELINE:-}" ]; then
    program_delta baseline-primary "$port" "$BASELINE" run -c "$DIR/primary.yaml"
  fi
  bport=$(free_port)
  cat > "$DIR/pgbouncer.ini" <<INI
[databases]
app = host=127.0.0.1 port=$P1 dbname=app user=postgres
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $bport
unix_socket_dir =
auth_type = trust
auth_file = $DIR/users.txt
pool_mode = transaction
default_pool_size = 4
logfile = $DIR/bouncer.log
INI
  echo '"postgres" ""' > "$DIR/users.txt"
  chown -R postgres "$DIR" 2>/dev/null || true
  AS_PG=(); [ "$(id -u)" = 0 ] && AS_PG=(runuser -u postgres --)
  program_delta pgbouncer "$bport" "$(command -v pgbouncer)" "$DIR/pgbouncer.ini"
fi
exit 0
