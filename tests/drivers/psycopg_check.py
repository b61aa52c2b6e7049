"""psycopg 3 through pgsplit: reads on replicas, writes on the primary,
transactions, server-side prepared statements (prepare_threshold=0),
pipeline mode, COPY, and parameters of several types with NULLs."""
import datetime
import decimal

import psycopg

from common import SESSION_MODE, DSN, check, monitor_caught_up, on_primary, on_replica, replicas_replayed

with psycopg.connect(DSN, autocommit=True, prepare_threshold=0) as conn:
    conn.execute("CREATE TABLE IF NOT EXISTS drv_psycopg (id serial PRIMARY KEY, n int, t text, f float8, b bool, ts timestamptz, d numeric)")
    # read-your-writes keeps this session's reads off a replica until it
    # has replayed the CREATE; they spread over both once the monitor has
    # seen both replay it.
    monitor_caught_up()
    seen = set()
    for i in range(20):
        port, x = conn.execute("SELECT inet_server_port(), %s::int * 2", (i,)).fetchone()
        on_replica(port, "prepared read")
        check(x == i * 2, "read result")
        seen.add(port)
    check(len(seen) == 2 or SESSION_MODE, f"reads use both replicas: {seen}")

    (port,) = conn.execute(
        "INSERT INTO drv_psycopg (n, t, f, b, ts, d) VALUES (%s, %s, %s, %s, %s, %s) RETURNING inet_server_port()",
        (1, None, 2.5, True, datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc), decimal.Decimal("1.25")),
    ).fetchone()
    on_primary(port, "insert")

    row = conn.execute(
        "SELECT %s::int, %s::text, %s::float8, %s::bool, %s::text IS NULL, %s::numeric",
        (7, "tëxt", 1.5, False, None, decimal.Decimal("3.5")),
    ).fetchone()
    check(row == (7, "tëxt", 1.5, False, True, decimal.Decimal("3.5")), f"types round trip: {row}")

    with conn.transaction():
        (p1,) = conn.execute("SELECT inet_server_port()").fetchone()
        conn.execute("INSERT INTO drv_psycopg (n) VALUES (%s)", (42,))
        (count,) = conn.execute("SELECT count(*) FROM drv_psycopg WHERE n = 42").fetchone()
        on_primary(p1, "read inside a transaction")
        check(count >= 1, "transaction sees its own insert")

    with conn.pipeline():
        cursors = [conn.execute("SELECT %s::int + 1", (i,)) for i in range(30)]
        write = conn.execute("INSERT INTO drv_psycopg (n) VALUES (%s) RETURNING inet_server_port()", (99,))
    for i, cur in enumerate(cursors):
        check(cur.fetchone()[0] == i + 1, "pipeline result")
    on_primary(write.fetchone()[0], "insert in a pipeline")

    with conn.cursor() as cur:
        with cur.copy("COPY drv_psycopg (n, t) FROM STDIN") as copy:
            for i in range(1000):
                copy.write_row((i, f"copy {i}"))
        check(cur.rowcount == 1000, f"copy in rowcount {cur.rowcount}")
    with conn.transaction():
        with conn.cursor() as cur:
            rows = 0
            with cur.copy("COPY (SELECT n, t FROM drv_psycopg WHERE t LIKE 'copy %') TO STDOUT") as copy:
                for _ in copy.rows():
                    rows += 1
            check(rows >= 1000, f"copy out rows {rows}")

    # Once the replicas have replayed this session's writes, its reads
    # (read-your-writes on, named statements) run on them.
    replicas_replayed("SELECT count(*) FROM drv_psycopg")
    for i in range(10):
        port, n = conn.execute("SELECT inet_server_port(), count(*) FROM drv_psycopg WHERE n = %s", (42,)).fetchone()
        on_replica(port, "read after the writes replayed (prepare_threshold=0)")
        check(n >= 1, "the replica has the session's write")

# The default prepare threshold: text first, then named statements.
with psycopg.connect(DSN, autocommit=True) as conn:
    conn.execute("INSERT INTO drv_psycopg (n) VALUES (%s)", (43,))
    replicas_replayed("SELECT count(*) FROM drv_psycopg")
    for i in range(10):
        port, n = conn.execute("SELECT inet_server_port(), count(*) FROM drv_psycopg WHERE n = %s", (43,)).fetchone()
        on_replica(port, "read after the writes replayed (default prepare threshold)")
        check(n >= 1, "the replica has the session's write")

print("psycopg ok")
