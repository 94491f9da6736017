"""A small closed-loop HTTP/1.1 load generator, used when `wrk` is not installed.

    python -m bench.loadgen URL BODY_FILE KEY --connections 32 --seconds 10 --out s.json

Each connection sends the POST, reads the answer (Content-Length framed, keep-alive) and
sends the next, until the time is up; requests in flight then finish and are counted.
Writes the same JSON summary and id file as bench/post.lua does for wrk.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import time
from pathlib import Path
from urllib.parse import urlsplit

_TASK_ID = re.compile(rb'"task_id":"([^"]+)"')


class Tally:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.ok = 0
        self.non_2xx = 0
        self.socket_errors = 0
        self.ids: list[str] = []


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("connection closed")
    status = int(status_line.split()[1])
    length = 0
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b""):
            break
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return status, await reader.readexactly(length)


async def _connection(
    host: str, port: int, request: bytes, deadline: float, response_timeout: float, tally: Tally
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            try:
                writer.write(request)
                async with asyncio.timeout(response_timeout):
                    status, body = await _read_response(reader)
            except (OSError, TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                tally.socket_errors += 1
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
                continue
            tally.latencies.append(time.perf_counter() - started)
            if status == 200:
                tally.ok += 1
                match = _TASK_ID.search(body)
                if match:
                    tally.ids.append(match.group(1).decode())
            elif not 200 <= status < 400:
                tally.non_2xx += 1
    finally:
        writer.close()


def _percentile(sorted_values: list[float], fraction: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, round(fraction * (len(sorted_values) - 1)))
    return sorted_values[index]


async def run(
    url: str, body: bytes, key: str, connections: int, seconds: float, response_timeout: float
) -> tuple[dict[str, float], list[str]]:
    parts = urlsplit(url)
    if parts.hostname not in ("127.0.0.1", "::1"):
        raise SystemExit(f"loopback only, not {url}")
    host, port = parts.hostname, parts.port or 80
    request = (
        f"POST {parts.path or '/'} HTTP/1.1\r\nhost: {parts.netloc}\r\n"
        f"content-type: application/json\r\nx-freepik-api-key: {key}\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode() + body
    tally = Tally()
    started = time.perf_counter()
    deadline = started + seconds
    await asyncio.gather(
        *(
            _connection(host, port, request, deadline, response_timeout, tally)
            for _ in range(connections)
        )
    )
    elapsed = time.perf_counter() - started
    latencies = sorted(tally.latencies)
    summary = {
        "seconds": elapsed,
        "requests": len(latencies),
        "ok": tally.ok,
        "non_2xx": tally.non_2xx,
        "socket_errors": tally.socket_errors,
        "p50_ms": 1e3 * _percentile(latencies, 0.50),
        "p90_ms": 1e3 * _percentile(latencies, 0.90),
        "p99_ms": 1e3 * _percentile(latencies, 0.99),
        "max_ms": 1e3 * (latencies[-1] if latencies else 0.0),
    }
    return summary, tally.ids


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("url")
    parser.add_argument("body", type=Path)
    parser.add_argument("key")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--ids", type=Path, required=True)
    args = parser.parse_args()
    try:
        from uvloop import run as run_loop
    except ImportError:
        run_loop = asyncio.run
    summary, ids = run_loop(
        run(
            args.url, args.body.read_bytes(), args.key, args.connections, args.seconds, args.timeout
        )
    )
    args.ids.write_text("".join(f"{task_id}\n" for task_id in ids))
    args.out.write_text(json.dumps(summary))


if __name__ == "__main__":
    main()
