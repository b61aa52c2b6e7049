"""Opens N idle client connections to a pgsplit (trust auth), waits until all
are logged in, prints the proxy's RSS before and after, then closes them."""
import asyncio
import struct
import sys

HOST, PORT, PID, N = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def startup(user, db):
    body = struct.pack("!i", 196608) + b"user\0" + user + b"\0database\0" + db + b"\0\0"
    return struct.pack("!i", len(body) + 4) + body


async def one(sem):
    async with sem:
        reader, writer = await asyncio.open_connection(HOST, PORT)
        writer.write(startup(b"app", b"app"))
        await writer.drain()
        got = b""
        while not got.endswith(b"Z\x00\x00\x00\x05I"):
            chunk = await reader.read(4096)
            if not chunk:
                raise RuntimeError("closed during login")
            got += chunk
        return writer


async def main():
    before = rss_kib(PID)
    sem = asyncio.Semaphore(200)
    writers = await asyncio.gather(*(one(sem) for _ in range(N)))
    await asyncio.sleep(1)
    after = rss_kib(PID)
    print(f"clients={N} rss_before_kib={before} rss_after_kib={after} per_client_bytes={(after - before) * 1024 // N}")
    for w in writers:
        w.close()


asyncio.run(main())
