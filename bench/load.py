"""Closed-loop HTTP load from a separate process: `wrk` when installed, else `bench.loadgen`.

Both keep N connections busy with the same POST for a fixed time and report requests,
200s (with their task ids, so the benchmark can check every 200 has its row), and
latency percentiles. Only 127.0.0.1 URLs are accepted.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

LUA_SCRIPT = Path(__file__).with_name("post.lua")


@dataclass(frozen=True, slots=True)
class LoadResult:
    tool: str
    connections: int
    seconds: float
    requests: int
    ok: int
    non_2xx: int
    socket_errors: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    ids: list[str]

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def ok_rps(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    def line(self) -> str:
        return (
            f"{self.tool} -c{self.connections}: {self.ok_rps:,.0f} ok/s over {self.seconds:.1f} s "
            f"({self.ok} ok, {self.non_2xx} non-2xx, {self.socket_errors} socket errors), "
            f"p50 {self.p50_ms:.1f} ms, p90 {self.p90_ms:.1f} ms, p99 {self.p99_ms:.1f} ms, "
            f"max {self.max_ms:.0f} ms"
        )


def have_wrk() -> bool:
    return shutil.which("wrk") is not None


def _check_loopback(url: str) -> None:
    if urlsplit(url).hostname not in ("127.0.0.1", "::1"):
        raise ValueError(f"benchmarks talk to 127.0.0.1 only, not {url}")


def run_load(
    url: str,
    body: Path,
    key: str,
    *,
    connections: int,
    seconds: float,
    timeout: float = 30.0,
    tool: str | None = None,
) -> LoadResult:
    """POST `body` to `url` from `connections` connections for `seconds` seconds."""
    _check_loopback(url)
    tool = tool or ("wrk" if have_wrk() else "loadgen")
    with tempfile.TemporaryDirectory(prefix="imagegate-load-") as tmp:
        out, ids_path = Path(tmp) / "summary.json", Path(tmp) / "ids.txt"
        if tool == "wrk":
            # One wrk thread: the server gets the other core of this 2-core machine.
            command = [
                "wrk",
                "-t1",
                f"-c{connections}",
                f"-d{max(1, round(seconds))}s",
                f"--timeout={round(timeout)}s",
                "-s",
                str(LUA_SCRIPT),
                url,
            ]
            env = {"BENCH_BODY": str(body), "BENCH_KEY": key}
            env |= {"BENCH_OUT": str(out), "BENCH_IDS": str(ids_path)}
        else:
            command = [sys.executable, "-m", "bench.loadgen", url, str(body), key]
            command += [f"--connections={connections}", f"--seconds={seconds}"]
            command += [f"--timeout={timeout}", f"--out={out}", f"--ids={ids_path}"]
            env = {}
        completed = subprocess.run(
            command,
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=seconds + timeout + 60,
        )
        if completed.returncode != 0 or not out.exists():
            raise RuntimeError(
                f"{tool} failed ({completed.returncode}):\n{completed.stdout}\n{completed.stderr}"
            )
        summary = json.loads(out.read_text())
        ids = ids_path.read_text().split()
    return LoadResult(tool=tool, connections=connections, ids=ids, **summary)
