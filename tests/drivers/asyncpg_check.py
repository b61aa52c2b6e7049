"""asyncpg through pgsplit: it prepares every statement; fetch,
executemany, transactions, copy_records_to_table, NULLs and types."""
import asyncio
import datetime

import asyncpg

from common import SESSION_MODE, HOST, PORT, check, monitor_caught_up, on_primary, on_replica, replicas_replayed


async def main():
    conn = await asyncpg.connect(host=HOST, port=PORT, user="app", password="app", database="app")
    await conn.execute("CREATE TABLE IF NOT EXISTS drv_asyncpg (id serial PRIMARY KEY, n int, t text, ts timestamptz)")
    # read-your-writes keeps this session's reads off a replica until it
    # has replayed the CREATE; they spread over both once the monitor has
    # seen both replay it.
    monitor_caught_up()
    seen = set()
    for i in range(20):
        row = await conn.fetchrow("SELECT inet_server_port() AS port, $1::int * 3 AS x", i)
        on_replica(row["port"], "fetch")
        check(row["x"] == i * 3, "fetch result")
        seen.add(row["port"])
    check(len(seen) == 2 or SESSION_MODE, f"both replicas: {seen}")

    port = await conn.fetchval("INSERT INTO drv_asyncpg (n, t) VALUES ($1, $2) RETURNING inet_server_port()", 1, None)
    on_primary(port, "insert")
    await conn.executemany(
        "INSERT INTO drv_asyncpg (n, t, ts) VALUES ($1, $2, $3)",
        [(i, None if i % 2 else f"t{i}", datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)) for i in range(100)],
    )
    row = await conn.fetchrow("SELECT $1::int, $2::text, $3::float8, $4::bool, $5::text IS NULL", 5, "x", 0.5, True, None)
    check(tuple(row) == (5, "x", 0.5, True, True), f"types: {tuple(row)}")

    async with conn.transaction():
        port = await conn.fetchval("SELECT inet_server_port()")
        on_primary(port, "read in a transaction")
        await conn.execute("INSERT INTO drv_asyncpg (n) VALUES (7)")
        count = await conn.fetchval("SELECT count(*) FROM drv_asyncpg WHERE n = 7")
        check(count >= 1, "transaction sees its insert")

    result = await conn.copy_records_to_table("drv_asyncpg", records=[(i, f"c{i}") for i in range(500)], columns=["n", "t"])
    check(result == "COPY 500", f"copy result {result}")
    stmt = await conn.prepare("SELECT $1::int + 100")
    for i in range(10):
        check(await stmt.fetchval(i) == i + 100, "prepared statement object")
    # Once the replicas have replayed this session's writes, its reads run
    # on them (read-your-writes on; asyncpg prepares every statement).
    replicas_replayed("SELECT count(*) FROM drv_asyncpg")
    for i in range(10):
        row = await conn.fetchrow("SELECT inet_server_port() AS port, count(*) AS n FROM drv_asyncpg WHERE n = $1", 7)
        on_replica(row["port"], "read after the writes replayed")
        check(row["n"] >= 1, "the replica has the session's write")
    await conn.close()
    print("asyncpg ok")


asyncio.run(main())
