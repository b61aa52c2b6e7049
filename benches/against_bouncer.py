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
"""

import statistics
import sys
from collections import defaultdict


def main(path):
    bouncer_tps = {}
    bouncer_cpu = {}
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
            if target == "pgbouncer":
                if mode != "prepared":
                    bouncer_tps[(workload, asked, clients, rnd)] = tps
                    bouncer_cpu[(workload, asked, clients, rnd)] = cpu
            elif target.startswith("pgsplit") or target.startswith("baseline"):
                ours[(workload, mode, clients, target)].append((rnd, tps, cpu))
    rows = []
    for (workload, mode, clients, target), runs in sorted(ours.items()):
        tps_r, cpu_r = [], []
        for rnd, tps, cpu in runs:
            key = (workload, mode, clients, rnd)
            if key in bouncer_tps and bouncer_tps[key] > 0 and bouncer_cpu[key] > 0:
                tps_r.append(tps / bouncer_tps[key])
                cpu_r.append(cpu / bouncer_cpu[key])
        if tps_r:
            rows.append((workload, mode, clients, target, tps_r, cpu_r))
    if not rows:
        return
    print("Against PgBouncer's run next to it in the same round (prepared against its `-M extended`):")
    print()
    print(
        "| workload | protocol | clients | target | TPS ÷ PgBouncer's (rounds) | median | rounds ≥ 1 "
        "| CPU per tx ÷ PgBouncer's (rounds) | median | rounds ≤ 1 |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for workload, mode, clients, target, tps_r, cpu_r in rows:
        print(
            f"| {workload} | {mode} | {clients} | {target} | {joined(tps_r)} | "
            f"{statistics.median(tps_r):.2f} | {sum(x >= 1 for x in tps_r)} of {len(tps_r)} | "
            f"{joined(cpu_r)} | {statistics.median(cpu_r):.2f} | {sum(x <= 1 for x in cpu_r)} of {len(cpu_r)} |"
        )
    print()


def joined(ratios):
    """Ratios with two decimals, rounds separated by a middle dot."""
    return " · ".join(f"{x:.2f}" for x in ratios)


if __name__ == "__main__":
    main(sys.argv[1])
