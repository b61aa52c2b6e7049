"""Shared settings for the Python driver checks: where the proxy and the
nodes are (from the environment the Rust test sets), and assertions."""
import os
import sys

HOST = "127.0.0.1"
PORT = int(os.environ["PGSPLIT_PORT"])
PRIMARY = int(os.environ["PRIMARY_PORT"])
REPLICAS = {int(p) for p in os.environ["REPLICA_PORTS"].split(",")}
DSN = f"host={HOST} port={PORT} user=app password=app dbname=app"
URL = f"postgresql://app:app@{HOST}:{PORT}/app"
# Session pooling keeps one replica connection for the whole session.
SESSION_MODE = os.environ.get("POOL_MODE") == "session"


def check(cond, what):
    if not cond:
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)


def on_replica(port, what):
    check(port in REPLICAS, f"{what}: served by {port}, replicas are {sorted(REPLICAS)}")


def on_primary(port, what):
    check(port == PRIMARY, f"{what}: served by {port}, primary is {PRIMARY}")
