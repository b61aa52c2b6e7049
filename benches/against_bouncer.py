#!/usr/bin/env python3
"""Round-by-round ratios against PgBouncer, from benches/compare.sh's results.

Reads the tab-separated results file compare.sh writes (workload, mode,
clients, target, round, TPS, latency, CPU s per 10k tx, ...) and prints a
markdown table: for each pgsplit target, its TPS and its CPU per transaction
divided by PgBouncer's in the same round, and the median of those ratios.

PgBouncer 1.18 cannot run `-M prepared` in transaction pooling, so prepared
mode is compared with its `-M extended` runs. Where PgBouncer ran a mode more
than once in a round (extended runs again for prepared), the comparison takes
its best figure of the round: the highest TPS and the lowest CPU.
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
            try:
                tps, cpu = float(col[5]), float(col[7])
            except ValueError:
                continue
            if target == "pgbouncer":
                if mode == "prepared":
                    continue
                key = (workload, mode, clients, rnd)
                bouncer_tps[key] = max(bouncer_tps.get(key, 0.0), tps)
                bouncer_cpu[key] = min(bouncer_cpu.get(key, float("inf")), cpu)
            elif target.startswith("pgsplit") or target.startswith("baseline"):
                ours[(workload, mode, clients, target)].append((rnd, tps, cpu))
    rows = []
    for (workload, mode, clients, target), runs in sorted(ours.items()):
        against = "extended" if mode == "prepared" else mode
        tps_r, cpu_r = [], []
        for rnd, tps, cpu in runs:
            key = (workload, against, clients, rnd)
            if key in bouncer_tps and bouncer_tps[key] > 0 and bouncer_cpu[key] > 0:
                tps_r.append(tps / bouncer_tps[key])
                cpu_r.append(cpu / bouncer_cpu[key])
        if tps_r:
            rows.append((workload, mode, clients, target, tps_r, cpu_r))
    if not rows:
        return
    print("Against PgBouncer in the same round (prepared against its `-M extended`; its best run of the round):")
    print()
    print("| workload | protocol | clients | target | TPS ÷ PgBouncer's (rounds) | median | CPU per tx ÷ PgBouncer's (rounds) | median |")
    print("|---|---|---|---|---|---|---|---|")
    for workload, mode, clients, target, tps_r, cpu_r in rows:
        fmt = lambda xs: " · ".join(f"{x:.2f}" for x in xs)
        print(
            f"| {workload} | {mode} | {clients} | {target} | {fmt(tps_r)} | "
            f"{statistics.median(tps_r):.2f} | {fmt(cpu_r)} | {statistics.median(cpu_r):.2f} |"
        )
    print()


if __name__ == "__main__":
    main(sys.argv[1])
