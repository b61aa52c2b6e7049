#!/usr/bin/env python3
"""Round-by-round ratios against PgBouncer, from benches/compare.sh's results.

Reads the tab-separated results file compare.sh writes (workload, mode,
clients, target, round, TPS, latency, CPU s per 10k tx, ...) and prints a
markdown table: for each pgsplit target, its TPS and its CPU per transaction
divided by PgBouncer's in the same round, and the median of those ratios.

PgBouncer 1.18 cannot run `-M prepared` in transaction pooling: in prepared
mode compare.sh runs it with `-M extended` instead (after a `-M prepared` run
too with PGBOUNCER_PREPARED=1, which is left out here), and prepared mode is
compared with that extended run. Each mode is compared with PgBouncer's run
of the same mode loop (the last column of the results: the mode asked for),
so every ratio pairs two runs next to each other in time.

Where the results carry the machine's columns (idle, steal and PostgreSQL
µs per transaction), it also prints, per round, the target's idle µs per
transaction minus PgBouncer's and its PostgreSQL CPU µs per transaction
minus PgBouncer's: where a lower proxy CPU did not turn into TPS.
"""

import statistics
import sys
from collections import defaultdict


def main(path):
    bouncer = {}  # (workload, mode asked, clients, round) -> (TPS, CPU, machine)
    ours = defaultdict(list)
    with open(path) as f:
        for line in f:
            col = line.rstrip("\n").split("\t")
            workload, mode, clients, target, rnd = col[:5]
            asked = col[14] if len(col) > 14 else mode
            try:
                tps, cpu = float(col[5]), float(col[7])
            except ValueError:
                continue
            machine = machine_of(col)
            if target == "pgbouncer":
                if mode != "prepared":
                    bouncer[(workload, asked, clients, rnd)] = (tps, cpu, machine)
            elif target.startswith("pgsplit") or target.startswith("baseline"):
                ours[(workload, mode, clients, target)].append((rnd, tps, cpu, machine))
    rows = []
    for (workload, mode, clients, target), runs in sorted(ours.items()):
        tps_r, cpu_r, idle_d, pg_d = [], [], [], []
        for rnd, tps, cpu, machine in runs:
            their_tps, their_cpu, theirs = bouncer.get((workload, mode, clients, rnd), (0, 0, None))
            if their_tps > 0 and their_cpu > 0:
                tps_r.append(tps / their_tps)
                cpu_r.append(cpu / their_cpu)
                if machine and theirs:
                    idle_d.append(machine[0] - theirs[0])
                    pg_d.append(machine[2] - theirs[2])
        if tps_r:
            rows.append((workload, mode, clients, target, tps_r, cpu_r, idle_d, pg_d))
    if not rows:
        return
    print("Against PgBouncer's run next to it in the same round (prepared against its `-M extended`):")
    print()
    print(
        "| workload | protocol | clients | target | TPS ÷ PgBouncer's (rounds) | median | rounds ≥ 1 "
        "| CPU per tx ÷ PgBouncer's (rounds) | median | rounds ≤ 1 |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for workload, mode, clients, target, tps_r, cpu_r, _, _ in rows:
        print(
            f"| {workload} | {mode} | {clients} | {target} | {joined(tps_r)} | "
            f"{statistics.median(tps_r):.2f} | {sum(x >= 1 for x in tps_r)} of {len(tps_r)} | "
            f"{joined(cpu_r)} | {statistics.median(cpu_r):.2f} | {sum(x <= 1 for x in cpu_r)} of {len(cpu_r)} |"
        )
    print()
    machine_rows = [r for r in rows if r[6]]
    if not machine_rows:
        return
    print("The whole machine against PgBouncer's run in the same round: idle µs per transaction and")
    print("PostgreSQL's CPU µs per transaction, the target's minus PgBouncer's (above 0: more than PgBouncer's):")
    print()
    print(
        "| workload | protocol | clients | target | idle µs per tx, difference (rounds) | median "
        "| PostgreSQL µs per tx, difference (rounds) | median |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for workload, mode, clients, target, _, _, idle_d, pg_d in machine_rows:
        print(
            f"| {workload} | {mode} | {clients} | {target} | {joined(idle_d, '+.1f')} | "
            f"{statistics.median(idle_d):+.1f} | {joined(pg_d, '+.1f')} | {statistics.median(pg_d):+.1f} |"
        )
    print()


def machine_of(col):
    """Idle, steal and PostgreSQL µs per transaction, or None (older results)."""
    try:
        return tuple(float(x) for x in col[15:18]) if len(col) >= 18 else None
    except ValueError:
        return None


def joined(values, spec=".2f"):
    """Values in the format `spec` (ratios: two decimals), rounds separated by a middle dot."""
    return " · ".join(format(x, spec) for x in values)


if __name__ == "__main__":
    main(sys.argv[1])
