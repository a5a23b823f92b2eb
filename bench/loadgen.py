"""A small open-loop HTTP/1.1 load generator: N keep-alive connections, a target rate, every request timed.

Used by bench/deploy. Each result is (start, latency, ok); a failure is a non-2xx answer or any
connection error, and a failed connection is replaced so the rate holds.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass
class LoadResult:
    samples: list[tuple[float, float, bool]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def window(self, start: float, end: float) -> list[tuple[float, float, bool]]:
        return [s for s in self.samples if start <= s[0] <= end]


def p99(samples) -> float:
    lat = sorted(s[1] for s in samples)
    return lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else float("nan")


async def _request(reader, writer, req: bytes) -> int:
    writer.write(req)
    await writer.drain()
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("connection closed before a response")
    status = int(status_line.split()[1])
    length, close = 0, False
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b""):
            break
        k, _, v = line.decode("latin-1").partition(":")
        if k.lower() == "content-length":
            length = int(v)
        elif k.lower() == "connection" and v.strip().lower() == "close":
            close = True
    await reader.readexactly(length)
    if close:
        raise EOFError("server asked to close")
    return status


class LoadGenerator(threading.Thread):
    def __init__(self, url: str, rate: float, connections: int = 32):
        super().__init__(daemon=True)
        u = urlsplit(url)
        self.host, self.port, self.path = u.hostname, u.port or 80, u.path or "/"
        self.rate, self.connections = rate, connections
        self.result = LoadResult()
        self._halt = threading.Event()

    def stop(self) -> LoadResult:
        self._halt.set()
        self.join(30)
        return self.result

    def run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        req = f"GET {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nUser-Agent: aixsss-bench\r\n\r\n".encode()
        interval = self.connections / self.rate
        t0 = time.monotonic()
        await asyncio.gather(*(self._conn(req, interval, t0 + i * interval / self.connections)
                               for i in range(self.connections)))

    async def _conn(self, req: bytes, interval: float, first: float) -> None:
        reader = writer = None
        next_at = first
        while not self._halt.is_set():
            delay = next_at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            next_at += interval
            start = time.monotonic()
            ok = False
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection(self.host, self.port)
                status = await asyncio.wait_for(_request(reader, writer, req), 10)
                ok = 200 <= status < 300
                if not ok:
                    self.result.errors.append(f"HTTP {status}")
            except EOFError:
                ok = True
                writer.close()
                writer = None
            except (TimeoutError, OSError, ValueError, IndexError) as e:
                self.result.errors.append(f"{type(e).__name__}: {e}")
                if writer is not None:
                    writer.close()
                writer = None
            self.result.samples.append((start, time.monotonic() - start, ok))
        if writer is not None:
            writer.close()
