#!/usr/bin/env bash
# pgbench against the primary directly, pgsplit (transaction pooling, reads
# to replicas), PgBouncer (transaction pooling, to the primary) and
# Pgpool-II (streaming replication, load balancing over the replicas), on a
# local primary and two streaming replicas. Interleaved so drift hits all
# targets alike. Writes BENCHMARKS.md. Installs pgbouncer and pgpool2 with
# apt when missing (as root). Leaves nothing running.
#
#   DURATION=15 ROUNDS=2 CLIENTS="8 32 128" benches/compare.sh
#
# Targets: direct, pgsplit (reads to the replicas), pgsplit-nobatch (the same
# with sched_batch: false),
# pgsplit-primary (only the primary, like PgBouncer: the like-for-like
# row), pgsplit-primary-w2 (the same with workers: 2), pgsplit-primary-nobatch
# (the same with sched_batch: false), pgbouncer, pgpool,
# and with BASELINE baseline and baseline-primary. Workloads: select
# (pgbench -S), tpcb, tiny (SELECT 1: the proxy's own capacity shows),
# rows (100 rows per transaction).
#
# For a quick look at one case (the table still goes to $OUT):
#   TARGETS="pgsplit pgbouncer" WORKLOADS=select MODES=simple CLIENTS=32 \
#   DURATION=10 OUT=/tmp/bench.md benches/compare.sh
#
# Before/after a change, interleaved in one run: BASELINE names another
# pgsplit binary (an older commit's release build), which runs as the
# targets "baseline" (with the replicas) and "baseline-primary":
#   BASELINE=/tmp/old/target/release/pgsplit \
#   TARGETS="pgsplit baseline pgsplit-primary baseline-primary" ... benches/compare.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-15}
ROUNDS=${ROUNDS:-2}
CLIENTS=${CLIENTS:-"8 32 128"}
TARGETS=${TARGETS:-"direct pgsplit pgsplit-nobatch pgsplit-primary pgbouncer pgpool"}
WORKLOADS=${WORKLOADS:-"select tpcb"}
MODES=${MODES:-"simple prepared"}
SCALE=${SCALE:-10}
OUT=${OUT:-BENCHMARKS.md}
ulimit -n 65536 2>/dev/null || true

if ! command -v pgbouncer >/dev/null || ! ls /usr/sbin/pgpool >/dev/null 2>&1; then
  [ "$(id -u)" = 0 ] || { echo "install them: apt-get install -y pgbouncer pgpool2" >&2; exit 1; }
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends pgbouncer pgpool2
fi
cargo build --release --quiet
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
AS_PG=(); [ "$(id -u)" = 0 ] && AS_PG=(runuser -u postgres --)
# Each proxy runs in a session of its own (setsid), as a service does: the
# kernel's autogroups (sched_autogroup_enabled) otherwise put it in one
# scheduling group with pgbench, this script's session, where it competes
# with pgbench's threads for that group's share, and PgBouncer (normal
# policy, preempted more often) pays for it more than pgsplit (SCHED_BATCH).
# SHARED_SESSION=1 keeps them in this script's session (rounds 1-7 of
# BENCHMARKS.md's issue-17 runs were made that way).
SESSION=(setsid); [ -n "${SHARED_SESSION:-}" ] && SESSION=()
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
DIR=$(mktemp -d); chmod 755 "$DIR"
P1=$(free_port); P2=$(free_port); P3=$(free_port)
SPLIT=$(free_port); SPLIT1=$(free_port); SPLITB=$(free_port); BOUNCER=$(free_port); POOL=$(free_port); PCP=$(free_port)
BASE=$(free_port); BASE1=$(free_port)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -n "${POOLPID:-}" ] && "${AS_PG[@]}" /usr/sbin/pgpool -f "$DIR/pgpool.conf" -m fast stop >/dev/null 2>&1 || true
  pkill -f "$DIR/pgpool.conf" 2>/dev/null || true
  [ -n "${DEMO:-}" ] && kill -TERM "$DEMO" 2>/dev/null && wait "$DEMO" 2>/dev/null || true
  rm -rf "$DIR"
}
trap cleanup EXIT

# the cluster and pgsplit (the demo runs both; the proxy's CPU is the demo's)
cat > "$DIR/proxy.yaml" <<YAML
listen: 127.0.0.1:$SPLIT
auth: { method: trust, users: [ { name: postgres }, { name: app, password: app } ] }
nodes:
  - { name: pg1, host: 127.0.0.1, port: $P1, role: primary }
  - { name: pg2, host: 127.0.0.1, port: $P2, role: replica }
  - { name: pg3, host: 127.0.0.1, port: $P3, role: replica }
pool: { mode: transaction, size: 20 }
limits: { max_clients: 2000 }
workers: 1
sched_batch: true
YAML
# The demo runs the cluster (its own proxy, on another port, is not
# measured: 'pgsplit run' is what operators run, and only it takes
# sched_batch, which the demo's PostgreSQL children would inherit).
DEMOPORT=$(free_port)
sed -e "s/^listen: .*/listen: 127.0.0.1:$DEMOPORT/" "$DIR/proxy.yaml" > "$DIR/demo.yaml"
target/release/pgsplit demo -c "$DIR/demo.yaml" > "$DIR/demo.log" 2>&1 &
DEMO=$!
for _ in $(seq 1 120); do grep -q "Press Ctrl-C" "$DIR/demo.log" && break; sleep 0.5; done
grep -q "Press Ctrl-C" "$DIR/demo.log" || { cat "$DIR/demo.log"; exit 1; }
"${SESSION[@]}" target/release/pgsplit run -c "$DIR/proxy.yaml" > "$DIR/proxy.log" 2>&1 &
SPLITPID=$!
PIDS+=("$SPLITPID")

# pgsplit-primary: a second pgsplit on the same cluster that knows only the
# primary, like PgBouncer: the proxy's own cost without the replicas.
cat > "$DIR/primary.yaml" <<YAML
listen: 127.0.0.1:$SPLIT1
auth: { method: trust, users: [ { name: postgres } ] }
nodes:
  - { name: pg1, host: 127.0.0.1, port: $P1, role: primary }
routing: { primary_reads: 100 }
pool: { mode: transaction, size: 20 }
limits: { max_clients: 2000 }
workers: 1
sched_batch: true
YAML
"${SESSION[@]}" target/release/pgsplit run -c "$DIR/primary.yaml" > "$DIR/primary.log" 2>&1 &
SPLIT1PID=$!
PIDS+=("$SPLIT1PID")

# pgsplit-primary-w2: the same with two runtime workers (a multi-thread
# runtime; workers: 1 is a current-thread one).
SPLIT2=$(free_port)
sed -e "s/^listen: .*/listen: 127.0.0.1:$SPLIT2/" -e "s/^workers: 1$/workers: 2/" "$DIR/primary.yaml" > "$DIR/primary2.yaml"
"${SESSION[@]}" target/release/pgsplit run -c "$DIR/primary2.yaml" > "$DIR/primary2.log" 2>&1 &
SPLIT2PID=$!
PIDS+=("$SPLIT2PID")

# pgsplit-nobatch: like pgsplit (reads to the replicas) with sched_batch: false.
sed -e "s/^listen: .*/listen: 127.0.0.1:$SPLITB/" -e "s/^sched_batch: true$/sched_batch: false/" "$DIR/proxy.yaml" > "$DIR/batch.yaml"
"${SESSION[@]}" target/release/pgsplit run -c "$DIR/batch.yaml" > "$DIR/batch.log" 2>&1 &
SPLITBPID=$!
PIDS+=("$SPLITBPID")

# pgsplit-primary-nobatch: pgsplit-primary with sched_batch: false.
SPLIT1B=$(free_port)
sed -e "s/^listen: .*/listen: 127.0.0.1:$SPLIT1B/" -e "s/^sched_batch: true$/sched_batch: false/" "$DIR/primary.yaml" > "$DIR/primary-batch.yaml"
"${SESSION[@]}" target/release/pgsplit run -c "$DIR/primary-batch.yaml" > "$DIR/primary-batch.log" 2>&1 &
SPLIT1BPID=$!
PIDS+=("$SPLIT1BPID")

# baseline, baseline-primary: another pgsplit binary on the same two configs.
if [ -n "${BASELINE:-}" ]; then
  sed -e "s/^listen: .*/listen: 127.0.0.1:$BASE/" "$DIR/proxy.yaml" > "$DIR/base.yaml"
  sed -e "s/^listen: .*/listen: 127.0.0.1:$BASE1/" "$DIR/primary.yaml" > "$DIR/base1.yaml"
  "${SESSION[@]}" "$BASELINE" run -c "$DIR/base.yaml" > "$DIR/base.log" 2>&1 &
  BASEPID=$!
  "${SESSION[@]}" "$BASELINE" run -c "$DIR/base1.yaml" > "$DIR/base1.log" 2>&1 &
  BASE1PID=$!
  PIDS+=("$BASEPID" "$BASE1PID")
fi

# PgBouncer
cat > "$DIR/pgbouncer.ini" <<INI
[databases]
app = host=127.0.0.1 port=$P1 dbname=app user=postgres
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $BOUNCER
unix_socket_dir =
auth_type = trust
auth_file = $DIR/users.txt
pool_mode = transaction
default_pool_size = 20
max_client_conn = 2000
logfile = $DIR/pgbouncer.log
pidfile = $DIR/pgbouncer.pid
INI
echo '"postgres" ""' > "$DIR/users.txt"
chown -R postgres "$DIR" 2>/dev/null || true
"${SESSION[@]}" "${AS_PG[@]}" pgbouncer "$DIR/pgbouncer.ini" > /dev/null 2>&1 &
sleep 1
BOUNCERPID=$(cat "$DIR/pgbouncer.pid")
PIDS+=("$BOUNCERPID")
for pid in "${PIDS[@]}"; do # (each its own scheduling group, unless SHARED_SESSION)
  echo "$(cat "/proc/$pid/comm" 2>/dev/null) $pid: $(cat "/proc/$pid/autogroup" 2>/dev/null)" >&2
done

# Pgpool-II: streaming replication mode, load balancing, no failover
mkdir -p "$DIR/pgpool"
cat > "$DIR/pgpool.conf" <<CONF
backend_clustering_mode = 'streaming_replication'
listen_addresses = '127.0.0.1'
port = $POOL
pcp_port = $PCP
unix_socket_directories = '$DIR/pgpool'
pcp_socket_dir = '$DIR/pgpool'
pid_file_name = '$DIR/pgpool/pgpool.pid'
logdir = '$DIR/pgpool'
backend_hostname0 = '127.0.0.1'
backend_port0 = $P1
backend_weight0 = 0
backend_flag0 = 'DISALLOW_TO_FAILOVER'
backend_hostname1 = '127.0.0.1'
backend_port1 = $P2
backend_weight1 = 1
backend_flag1 = 'DISALLOW_TO_FAILOVER'
backend_hostname2 = '127.0.0.1'
backend_port2 = $P3
backend_weight2 = 1
backend_flag2 = 'DISALLOW_TO_FAILOVER'
num_init_children = 140
max_pool = 1
load_balance_mode = on
sr_check_period = 0
health_check_period = 0
failover_on_backend_error = off
enable_pool_hba = off
CONF
chown -R postgres "$DIR" 2>/dev/null || true
"${SESSION[@]}" "${AS_PG[@]}" /usr/sbin/pgpool -n -f "$DIR/pgpool.conf" > "$DIR/pgpool/out.log" 2>&1 &
POOLPID=$!
PIDS+=("$POOLPID")
for _ in $(seq 1 60); do "$PGBIN/psql" -h 127.0.0.1 -p "$POOL" -U postgres -d app -Atc "SELECT 1" >/dev/null 2>&1 && break; sleep 0.5; done

"$PGBIN/pgbench" -h 127.0.0.1 -p "$P1" -U postgres -i -q -s "$SCALE" app > /dev/null 2>&1
# Settle before the first round: a checkpoint, the replicas done replaying
# the load (a replica still replaying 150 MB of WAL takes CPU from round 1),
# and the table read once into shared buffers.
"$PGBIN/psql" -h 127.0.0.1 -p "$P1" -U postgres -d app -qAtc "CHECKPOINT" > /dev/null
LSN=$("$PGBIN/psql" -h 127.0.0.1 -p "$P1" -U postgres -d app -qAtc "SELECT pg_current_wal_lsn()")
for port in "$P2" "$P3"; do
  for _ in $(seq 1 600); do
    [ "$("$PGBIN/psql" -h 127.0.0.1 -p "$port" -U postgres -d app -qAtc "SELECT pg_last_wal_replay_lsn() >= '$LSN'")" = t ] && break
    sleep 0.5
  done
done
"$PGBIN/pgbench" -h 127.0.0.1 -p "$P1" -U postgres -n -S -c 4 -j 2 -T 3 app > /dev/null 2>&1

cpu_ticks() { # user and system ticks (utime, stime) summed over the processes
  local user=0 system=0
  for pid in "$@"; do
    [ -r "/proc/$pid/stat" ] || continue
    set -- $(sed 's/^.*) //' "/proc/$pid/stat")
    user=$((user + ${12})); system=$((system + ${13}))
  done
  echo "$user $system"
}
# Per-process counters summed over a target's processes and threads:
# voluntary (blocked, then woken) and involuntary (preempted) context
# switches (/proc/PID/task/*/status).
counters() {
  local v=0 n=0
  for pid in "$@"; do
    for t in /proc/$pid/task/*/status; do
      [ -r "$t" ] || continue
      v=$((v + $(awk '/^voluntary_ctxt_switches/ {print $2}' "$t" 2>/dev/null || echo 0)))
      n=$((n + $(awk '/^nonvoluntary_ctxt_switches/ {print $2}' "$t" 2>/dev/null || echo 0)))
    done
  done
  echo "$v $n"
}
# Syscalls of those processes while pgbench runs: perf's raw_syscalls
# tracepoint (works without hardware counters), "-" without perf.
PERF=$(command -v perf || true)
syscalls_start() { # file pids...
  local f=$1; shift
  [ -n "$PERF" ] && [ $# -gt 0 ] || return 0
  "$PERF" stat -x, -e raw_syscalls:sys_enter -p "$(echo "$@" | tr ' ' ',')" -o "$f" 2>/dev/null &
  PERFPID=$!
  sleep 0.2
}
syscalls_stop() { # file: sets SYSCALLS to the count, or empty
  SYSCALLS=
  [ -n "${PERFPID:-}" ] || return 0
  kill -INT "$PERFPID" 2>/dev/null || true; wait "$PERFPID" 2>/dev/null || true; PERFPID=
  SYSCALLS=$(awk -F, '/raw_syscalls:sys_enter/ && $1 ~ /^[0-9]+$/ {print $1; exit}' "$1" 2>/dev/null || true)
}
# The whole machine while pgbench runs (/proc/stat): idle (idle + iowait)
# and steal ticks, and the CPU ticks of every PostgreSQL process (the
# primary's backends and the replicas'). A proxy that costs less CPU but
# leaves the cores idle more often (its replies late) gains no TPS.
machine_ticks() { # idle steal postgres-user postgres-system
  echo "$(awk '/^cpu / {print $5 + $6, $9; exit}' /proc/stat) $(cpu_ticks $(pgrep -x postgres))"
}
per_tx_machine() { # before after tx: idle, steal and PostgreSQL µs per transaction
  awk -v b="$1" -v a="$2" -v tx="$3" -v hz="$HZ" 'BEGIN { split(b, x, " "); split(a, y, " "); us = 1e6 / hz;
    if (tx > 0) printf "%.1f\t%.1f\t%.1f", (y[1]-x[1])*us/tx, (y[2]-x[2])*us/tx, (y[3]+y[4]-x[3]-x[4])*us/tx; else printf "-\t-\t-" }'
}
per_tx() { # ctx-before ctx-after syscalls tx: syscalls, woken, preempted per transaction
  awk -v b="$1" -v a="$2" -v sc="$3" -v tx="$4" 'BEGIN { split(b, x, " "); split(a, y, " ");
    if (tx > 0) printf "%s\t%.2f\t%.2f", (sc == "" ? "-" : sprintf("%.2f", sc/tx)), (y[1]-x[1])/tx, (y[2]-x[2])/tx; else printf "-\t-\t-" }'
}
pids_of() {
  case $1 in
    direct) echo "" ;;
    pgsplit) echo "$SPLITPID" ;;
    pgsplit-primary) echo "$SPLIT1PID" ;;
    pgsplit-primary-w2) echo "$SPLIT2PID" ;;
    pgsplit-nobatch) echo "$SPLITBPID" ;;
    pgsplit-primary-nobatch) echo "$SPLIT1BPID" ;;
    baseline) echo "$BASEPID" ;;
    baseline-primary) echo "$BASE1PID" ;;
    pgbouncer) echo "$BOUNCERPID" ;;
    pgpool) pgrep -x pgpool | tr '\n' ' ' ;;
  esac
}
port_of() {
  case $1 in direct) echo "$P1" ;; pgsplit) echo "$SPLIT" ;; pgsplit-primary) echo "$SPLIT1" ;; pgsplit-primary-w2) echo "$SPLIT2" ;; pgsplit-nobatch) echo "$SPLITB" ;; pgsplit-primary-nobatch) echo "$SPLIT1B" ;; baseline) echo "$BASE" ;; baseline-primary) echo "$BASE1" ;; pgbouncer) echo "$BOUNCER" ;; pgpool) echo "$POOL" ;; esac
}
echo "SELECT 1;" > "$DIR/tiny.sql"; chmod 644 "$DIR/tiny.sql"
echo "SELECT aid, bid, abalance, filler FROM pgbench_accounts WHERE aid <= 100;" > "$DIR/rows.sql"; chmod 644 "$DIR/rows.sql"
HZ=$(getconf CLK_TCK)
RESULTS="$DIR/results.tsv"
: > "$RESULTS"
for round in $(seq 1 "$ROUNDS"); do
  for workload in $WORKLOADS; do
    for mode in $MODES; do
      for c in $CLIENTS; do
        # every other round runs the targets in reverse order, so no target
        # always follows the same one
        order=$TARGETS
        [ $((round % 2)) = 0 ] && order=$(echo $TARGETS | tr ' ' '\n' | tac | tr '\n' ' ')
        for target in $order; do
          # PgBouncer 1.18 has no prepared statements in transaction pooling
          # (-M prepared fails or stalls, and slows the run after it): it runs
          # -M extended instead (the same messages, unnamed statements);
          # PGBOUNCER_PREPARED=1 runs -M prepared first as well.
          modes=$mode
          if [ "$target" = pgbouncer ] && [ "$mode" = prepared ]; then
            modes=extended
            [ -n "${PGBOUNCER_PREPARED:-}" ] && modes="prepared extended"
          fi
          for m in $modes; do
            args=(-h 127.0.0.1 -p "$(port_of $target)" -U postgres -n -M "$m" -c "$c" -j 2 -T "$DURATION")
            [ $workload = select ] && args+=(-S)
            # tiny: SELECT 1, no table: the least server work per transaction
            [ $workload = tiny ] && args+=(-f "$DIR/tiny.sql")
            # rows: 100 rows per transaction (the relay's share shows)
            [ $workload = rows ] && args+=(-f "$DIR/rows.sql")
            pids=$(pids_of $target)
            before=$(cpu_ticks $pids)
            cbefore=$(counters $pids)
            mbefore=$(machine_ticks)
            syscalls_start "$DIR/perf.txt" $pids
            out=$("$PGBIN/pgbench" "${args[@]}" app 2>&1) || true
            syscalls_stop "$DIR/perf.txt"; sc=$SYSCALLS
            after=$(cpu_ticks $pids)
            cafter=$(counters $pids)
            mafter=$(machine_ticks)
            tps=$(echo "$out" | awk '/^tps/ {print $3; exit}')
            lat=$(echo "$out" | awk '/latency average/ {print $4; exit}')
            tx=$(echo "$out" | awk -F'[ /]+' '/actually processed/ {print $6; exit}')
            failed=$(echo "$out" | awk '/number of failed/ {print $5; exit}')
            # CPU s per 10k transactions, then user and system µs per transaction
            cpu=$(awk -v a="$after" -v b="$before" -v hz="$HZ" -v tx="${tx:-0}" 'BEGIN { split(a, x, " "); split(b, y, " ");
              if (tx > 0) printf "%.3f\t%.1f\t%.1f", (x[1] + x[2] - y[1] - y[2]) / hz / tx * 10000, (x[1] - y[1]) / hz / tx * 1e6, (x[2] - y[2]) / hz / tx * 1e6; else printf "-\t-\t-" }')
            prof=$(per_tx "$cbefore" "$cafter" "$sc" "${tx:-0}")
            [ "$target" = direct ] && { cpu=$(printf -- '-\t-\t-'); prof=$(printf -- '-\t-\t-'); }
            machine=$(per_tx_machine "$mbefore" "$mafter" "${tx:-0}")
            IFS=$'\t' read -r cpu10k user_us sys_us <<< "$cpu"
            printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$workload" "$m" "$c" "$target" "$round" "${tps:-error}" "${lat:--}" "$cpu10k" "${failed:--}" "$prof" "$user_us" "$sys_us" "$mode" "$machine" >> "$RESULTS"
            echo "round $round $workload -M $m -c $c $target: tps=${tps:-error} lat=${lat:--}ms cpu/10k=$cpu10k user/sys us per tx=$user_us/$sys_us failed=${failed:--} syscalls/woken/preempted per tx: $(echo $prof) idle/steal/postgres us per tx: $(echo $machine)" >&2
          done
        done
      done
    done
  done
done

{
  echo "# Benchmarks"
  echo
  echo "Run of \`benches/compare.sh\` on $(date -u +%Y-%m-%d) (UTC): $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB,"
  echo "$(uname -sr). PostgreSQL $("$PGBIN/postgres" --version | awk '{print $3}'), $(pgbouncer --version 2>/dev/null | head -1),"
  echo "$(/usr/sbin/pgpool --version 2>&1 | head -1), pgsplit $(git rev-parse --short HEAD 2>/dev/null || echo dev) (release build)."
  echo
  echo "Primary and two streaming replicas on loopback, pgbench scale $SCALE, \`-j 2 -T $DURATION\`, $ROUNDS interleaved rounds (every other one in reverse target order), started after a checkpoint, with the replicas caught up."
  echo "pgsplit: transaction pooling, 20 server connections per node, reads to the replicas, \`workers: 1\` (one runtime"
  echo "thread, as PgBouncer has one). pgsplit-primary: the same proxy knowing only the primary (what PgBouncer is given),"
  echo "to separate the proxy's own cost from the cost of spreading reads over two more servers on the same two cores."
  echo "pgsplit-primary-w2: pgsplit-primary with \`workers: 2\` (a two-worker multi-thread runtime; \`workers: 1\` is a"
  echo "current-thread runtime). tiny is \`SELECT 1\` from a pgbench script: the least server work per transaction;"
  echo "rows reads 100 rows of pgbench_accounts per transaction."
  echo "pgsplit and pgsplit-primary run with \`sched_batch: true\` (the default: their threads under SCHED_BATCH, woken, wait"
  echo "for their turn instead of preempting a backend); pgsplit-nobatch and pgsplit-primary-nobatch with \`sched_batch: false\`."
  echo "PgBouncer 1.18: transaction pooling, 20 server connections, to the primary. Pgpool-II: streaming replication"
  echo "mode, load balancing on the two"
  echo "replicas (weight 0 on the primary), 140 children, no failover. All with trust authentication as \`postgres\`."
  echo "CPU is the proxy process's user+system seconds per 10,000 transactions (Pgpool-II: all its processes),"
  echo "from /proc. TPS and latency are pgbench's (\"without initial connection time\"). Per transaction, over all the"
  echo "proxy's threads: syscalls (perf's raw_syscalls:sys_enter tracepoint while pgbench runs), woken (voluntary"
  echo "context switches: each a sleep in epoll_wait or on a futex, then a wake-up) and preempted (involuntary"
  echo "switches), from /proc; rounds separated by · . The machine's idle and steal time and all PostgreSQL processes'"
  echo "CPU per transaction come from /proc/stat and /proc/PID/stat: the cores a proxy leaves idle are TPS lost"
  echo "whatever its own CPU. Instructions per transaction are \`benches/instructions.sh\`'s."
  echo
  echo "| workload | protocol | clients | target | TPS (rounds) | mean TPS | avg latency ms | CPU s / 10k tx | user / system µs per tx | syscalls per tx | woken / preempted per tx | machine idle / steal · PostgreSQL µs per tx | failed |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
  awk -F'\t' '{ k=$1"\t"$2"\t"$3"\t"$4; tps[k]=tps[k] (tps[k]?" / ":"") $6; sum[k]+=$6; n[k]++; lat[k]=lat[k] (lat[k]?" / ":"") $7; cpu[k]=cpu[k] (cpu[k]?" / ":"") $8; f[k]=f[k] (f[k]?" / ":"") $9;
         sc[k]=sc[k] (sc[k]?" / ":"") $10; cs[k]=cs[k] (cs[k]?" · ":"") $11 " / " $12; us[k]=us[k] (us[k]?" · ":"") $13 " / " $14; mc[k]=mc[k] (mc[k]?" · ":"") $16 " / " $17 " · " $18; order[k]=NR }
       END { for (k in order) { split(k, p, "\t"); printf "| %s | %s | %s | %s | %s | %.0f | %s | %s | %s | %s | %s | %s | %s |\n", p[1], p[2], p[3], p[4], tps[k], sum[k]/n[k], lat[k], cpu[k], us[k], sc[k], cs[k], mc[k], f[k] } }' "$RESULTS" \
    | sort -t'|' -k2,2 -k3,3 -k4,4n -k5,5
  echo
  python3 benches/against_bouncer.py "$RESULTS"
  echo "Commands: \`pgbench -h 127.0.0.1 -p PORT -U postgres -n -M simple|prepared -c N -j 2 -T $DURATION [-S] app\`,"
  echo "after \`pgbench -i -s $SCALE app\` on the primary. Configurations are written by benches/compare.sh."
} > "$OUT"
echo "wrote $OUT" >&2
