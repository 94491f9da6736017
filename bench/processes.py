"""The processes a benchmark measures: imagegate itself and the bare FastAPI baseline.

Both run as their own process on 127.0.0.1 under uvicorn with the same defaults (uvloop,
httptools, no access log), so the load generator and the server never share an
interpreter. Memory is read from /proc: `clear_refs` resets a process's peak RSS (VmHWM)
right before the measured run, so the peak is that of the run alone.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
from tests.support.server import ServerProcess, free_port, wait_until

API_KEY = "bench-key-0123456789"
ENDPOINT = "/v1/ai/gemini-2-5-flash-image-preview"


class Target:
    """A running server under test: where to send requests and which process to watch."""

    name: str
    url: str
    pid: int
    data_dir: Path | None

    @property
    def endpoint(self) -> str:
        return self.url + ENDPOINT


class ImagegateTarget(Target):
    def __init__(self, server: ServerProcess) -> None:
        assert server.proc is not None
        self.server = server
        self.name = "imagegate"
        self.url = server.url
        self.pid = server.proc.pid
        self.data_dir = server.data_dir

    @property
    def db_path(self) -> Path:
        assert self.data_dir is not None
        return self.data_dir / "imagegate.db"


class BaselineTarget(Target):
    def __init__(self, proc: subprocess.Popen[bytes], url: str) -> None:
        self.name = "baseline"
        self.url = url
        self.pid = proc.pid
        self.data_dir = None


@contextlib.contextmanager
def imagegate(
    *, worker: bool, env: dict[str, str] | None = None, keep_dir: bool = False
) -> Iterator[ImagegateTarget]:
    """`imagegate serve` on a free port with a fresh data directory on the real disk.

    /tmp is the root filesystem here, not tmpfs, so `synchronous=FULL` pays for its fsyncs.
    """
    data_dir = Path(tempfile.mkdtemp(prefix="imagegate-bench-"))
    server = ServerProcess(
        data_dir,
        {
            "IMAGEGATE_API_KEYS": API_KEY,
            "IMAGEGATE_ENGINE": "offline",
            "IMAGEGATE_SHUTDOWN_GRACE_SECONDS": "5",
            # The benchmarks measure how fast tasks go in, not the abuse limits that would
            # turn most of the load into 429s and 503s (the checks themselves still run).
            "IMAGEGATE_RATE_LIMIT_PER_MINUTE": "0",
            "IMAGEGATE_MAX_UNFINISHED_TASKS_PER_KEY": "100000000",
            "IMAGEGATE_MAX_QUEUE_DEPTH": "100000000",
            **(env or {}),
        },
        args=[] if worker else ["--no-worker"],
    )
    server.start()
    failed = False
    try:
        yield ImagegateTarget(server)
    except BaseException:
        failed = True
        raise
    finally:
        server.stop(timeout=30)
        if failed or keep_dir:
            print(f"imagegate data and log kept in {data_dir}", file=sys.stderr)
        else:
            shutil.rmtree(data_dir, ignore_errors=True)


@contextlib.contextmanager
def baseline() -> Iterator[BaselineTarget]:
    """`bench.baseline_app` under uvicorn, configured like `imagegate serve` configures it."""
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "bench.baseline_app:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--no-access-log",
        ],
        stdout=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"baseline app exited with {proc.returncode}")
            try:
                return httpx.get(url + "/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, 30, interval=0.05, message="baseline app")
        yield BaselineTarget(proc, url)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


# --- memory ------------------------------------------------------------------------------


def _status_kb(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


def rss_bytes(pid: int) -> int:
    return _status_kb(pid, "VmRSS") * 1024


def peak_rss_bytes(pid: int) -> int:
    return _status_kb(pid, "VmHWM") * 1024


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of the whole process (all threads) so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def reset_peak_rss(pid: int) -> None:
    """Make VmHWM start again from the current RSS (Linux ≥ 4.0, our own process)."""
    with open(f"/proc/{pid}/clear_refs", "w") as clear:
        clear.write("5")


# --- the task table ----------------------------------------------------------------------


def task_ids(db_path: Path) -> set[str]:
    with contextlib.closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)) as db:
        return {row[0] for row in db.execute("SELECT id FROM tasks")}


def settled_task_ids(db_path: Path, quiet: float = 0.3, timeout: float = 15.0) -> set[str]:
    """The task ids once no new row has appeared for `quiet` seconds (requests a load tool
    cut off may still be committing)."""
    deadline = time.monotonic() + timeout
    ids = task_ids(db_path)
    while time.monotonic() < deadline:
        time.sleep(quiet)
        again = task_ids(db_path)
        if len(again) == len(ids):
            return again
        ids = again
    return ids


def task_times(db_path: Path) -> list[tuple[str, str, float, float | None, float | None]]:
    """(id, status, created_at, started_at, finished_at) of every task."""
    with contextlib.closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)) as db:
        return list(db.execute("SELECT id, status, created_at, started_at, finished_at FROM tasks"))


# --- profiling ---------------------------------------------------------------------------


@contextlib.contextmanager
def py_spy(pid: int, output: Path | None, seconds: float) -> Iterator[None]:
    """Sample `pid` with py-spy for `seconds` while the body runs (no-op without `output`).

    Writes collapsed stacks (one `frame;frame;... count` line per stack) that `bench.profile`
    summarises and speedscope or flamegraph.pl draw. Sampling slows the server a little:
    profiled runs are not the table's numbers.
    """
    if output is None:
        yield
        return
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    output.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [
            *(exe, "record", "--pid", str(pid), "--duration", str(round(seconds))),
            *("--rate", "200", "--nonblocking", "--threads", "--format", "raw", "-o", str(output)),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1.0)  # let py-spy attach before the load starts
    try:
        yield
    finally:
        try:
            proc.wait(seconds + 30)
        except subprocess.TimeoutExpired:
            proc.terminate()
            proc.wait(10)
