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
ADMIN = os.environ["PGSPLIT_ADMIN"]
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


def proxy_knows(sql):
    """Waits until the proxy's catalog facts place what `sql` names (its
    admin API's /explain no longer answers `unknown`)."""
    import json
    import time
    import urllib.request

    for _ in range(500):
        request = urllib.request.Request(
            f"http://{ADMIN}/explain", data=json.dumps({"sql": sql}).encode(), method="POST"
        )
        with urllib.request.urlopen(request) as answer:
            if json.load(answer)["reason"] != "unknown":
                return
        time.sleep(0.01)
    check(False, f"the proxy never learned what {sql!r} names")


def replicas_replayed(sql=None):
    """Waits until every replica has replayed what the primary has written,
    checked on the nodes themselves (not through the proxy), and, given
    `sql`, until the proxy knows what it names."""
    import time

    import psycopg

    if sql is not None:
        proxy_knows(sql)
    node = f"host={HOST} user=app password=app dbname=app port="
    with psycopg.connect(node + str(PRIMARY), autocommit=True) as p:
        (target,) = p.execute("SELECT pg_current_wal_lsn()::text").fetchone()
    for port in REPLICAS:
        with psycopg.connect(node + str(port), autocommit=True) as r:
            for _ in range(1000):
                (done,) = r.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (target,)).fetchone()
                if done:
                    break
                time.sleep(0.01)
            else:
                check(False, f"replica {port} never replayed {target}")


def _lsn(text):
    high, low = text.split("/")
    return (int(high, 16) << 32) | int(low, 16)


def monitor_caught_up():
    """Waits until the proxy's monitor has seen every replica replay what
    the primary has written (its /status), so reads spread over both."""
    import json
    import time
    import urllib.request

    import psycopg

    with psycopg.connect(f"host={HOST} port={PRIMARY} user=app password=app dbname=app", autocommit=True) as p:
        (target,) = p.execute("SELECT pg_current_wal_lsn()::text").fetchone()
    for _ in range(1000):
        with urllib.request.urlopen(f"http://{ADMIN}/status") as answer:
            nodes = json.load(answer)["nodes"]
        replicas = [n for n in nodes if n["role"] == "replica"]
        if replicas and all(n.get("replay_lsn") and _lsn(n["replay_lsn"]) >= _lsn(target) for n in replicas):
            return
        time.sleep(0.01)
    check(False, f"the monitor never saw the replicas replay {target}")
