"""A TCP proxy on loopback that holds every chunk a fixed time each way: a database across a network, for the
control-plane benchmark (a claim's transaction makes a dozen round trips; across a network they, not the CPU, set
how long it holds its locks).

    python -m loadtests.delay_proxy --target 127.0.0.1:5432 --delay-ms 1      # prints its port, runs until killed

Order is kept per direction; each chunk leaves `delay` after it arrived (pipelined, as a network is). asyncio's
timers round a wait up to the millisecond, so a round trip takes at least about 2 ms whatever the delay asked:
`delayed` measures the real one (`round_trip_ms`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import subprocess
import sys
from collections.abc import Iterator


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    loop = asyncio.get_running_loop()
    chunks: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def send() -> None:
        while True:
            due, data = await chunks.get()
            if not data:
                break
            await asyncio.sleep(max(0.0, due - loop.time()))
            writer.write(data)
            await writer.drain()
        writer.close()

    sender = asyncio.create_task(send())
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65536):
            chunks.put_nowait((loop.time() + delay, data))
    chunks.put_nowait((0.0, b""))
    with contextlib.suppress(ConnectionError):
        await sender


async def serve(host: str, port: int, delay: float) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(host, port)
        await asyncio.gather(_pump(reader, up_writer, delay), _pump(up_reader, writer, delay),
                             return_exceptions=True)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


@contextlib.contextmanager
def delayed(url: str, delay_ms: float) -> Iterator[str]:
    """`url` (a postgresql+psycopg:// URL) through a proxy process holding each chunk `delay_ms` each way."""
    from sqlalchemy.engine import make_url

    u = make_url(url)
    proc = subprocess.Popen([sys.executable, "-m", "loadtests.delay_proxy", "--target", f"{u.host}:{u.port}",
                             "--delay-ms", str(delay_ms)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        yield u.set(host="127.0.0.1", port=port).render_as_string(hide_password=False)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def round_trip_ms(url: str, n: int = 50) -> float:
    """The median time of `SELECT 1` over a connection to `url` (n of them)."""
    import statistics
    import time

    import psycopg
    from sqlalchemy.engine import make_url

    u = make_url(url)
    with psycopg.connect(f"host={u.host} port={u.port} user={u.username} dbname={u.database}",
                         autocommit=True) as conn:
        times = []
        for _ in range(n):
            t = time.perf_counter()
            conn.execute("SELECT 1").fetchone()
            times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m loadtests.delay_proxy", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", required=True, help="host:port to forward to")
    ap.add_argument("--delay-ms", type=float, required=True, help="how long each chunk is held, each way")
    args = ap.parse_args()
    host, port = args.target.rsplit(":", 1)
    asyncio.run(serve(host, int(port), args.delay_ms / 1000))


if __name__ == "__main__":
    main()
