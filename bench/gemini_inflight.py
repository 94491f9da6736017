"""How many Gemini calls one worker process keeps in flight.

One process runs the Gemini engine the way a worker does (N tasks at once, each awaiting
`engine.generate`) against the Gemini stub, which runs in another process and answers every
call after `--latency` seconds with a ~1.5 MB PNG of noise (real answers are photos, which do
not compress either). A perfect client would finish in-flight / latency tasks per second;
the table shows how close the engine gets, the CPU it spends per task, and its memory.

    .venv/bin/python -m bench.gemini_inflight --inflight 50,200,500

Talks only to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass

from tests.support.gemini_stub import GeminiStub, noise_png

from bench.report import Row, at_least
from imagegate.engines.base import EngineRequest
from imagegate.engines.gemini import GeminiEngine
from imagegate.gc_tuning import tune_gc

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
# Tasks per level, in multiples of the level: enough waves that the first one, which starts
# every call in the same instant, does not dominate the figure.
WAVES = 10
MIN_RATIO = 0.9
CPU_JUDGED_BELOW = 0.25
HEADERS = [
    "in-flight",
    "tasks",
    "seconds",
    "tasks/s",
    "ideal tasks/s",
    "ratio",
    "peak RSS MB",
    "stub saw",
    "CPU ms/task",
    "failed",
]


@dataclass(frozen=True, slots=True)
class LevelResult:
    in_flight: int
    tasks: int
    seconds: float
    cpu_seconds: float
    stub_peak: int
    peak_rss_mb: float
    failures: int

    def row(self, latency: float) -> list[str]:
        rate = self.tasks / self.seconds
        ideal = self.in_flight / latency
        return [
            str(self.in_flight),
            str(self.tasks),
            f"{self.seconds:.2f}",
            f"{rate:.1f}",
            f"{ideal:.1f}",
            f"{rate / ideal:.2f}",
            f"{self.peak_rss_mb:.0f}",
            str(self.stub_peak),
            f"{1000 * self.cpu_seconds / self.tasks:.1f}",
            str(self.failures),
        ]


def rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE_SIZE / 1e6


async def sample_peak_rss(peak: list[float], stop: asyncio.Event) -> None:
    while not stop.is_set():
        peak[0] = max(peak[0], rss_mb())
        try:
            await asyncio.wait_for(stop.wait(), 0.05)
        except TimeoutError:
            pass


async def run_level(
    url: str, in_flight: int, tasks: int, stub_stats: Callable[[], dict[str, float]]
) -> LevelResult:
    engine = GeminiEngine(
        base_url=url,
        api_key="bench-key",
        max_in_flight=in_flight,
        timeout_seconds=60.0,
        deadline_seconds=120.0,
    )
    await engine.start()
    tune_gc()  # as `imagegate worker` does once it has started
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(tasks):
        queue.put_nowait(index)
    failures = 0

    async def worker_slot() -> None:
        # A worker runs `engine.concurrency` tasks at once, each slot taking the next task.
        nonlocal failures
        while True:
            try:
                index = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            result = await engine.generate(
                EngineRequest(prompt=f"benchmark image {index}", aspect_ratio="1:1")
            )
            if not result.images:
                failures += 1

    peak = [rss_mb()]
    stop = asyncio.Event()
    sampler = asyncio.create_task(sample_peak_rss(peak, stop))
    cpu_started = time.process_time()
    started = time.perf_counter()
    await asyncio.gather(*(worker_slot() for _ in range(engine.concurrency)))
    seconds = time.perf_counter() - started
    cpu_seconds = time.process_time() - cpu_started
    stop.set()
    await sampler
    await engine.close()
    return LevelResult(
        in_flight=in_flight,
        tasks=tasks,
        seconds=seconds,
        cpu_seconds=cpu_seconds,
        stub_peak=int(stub_stats()["peak_in_flight"]),
        peak_rss_mb=peak[0],
        failures=failures,
    )


def rows(*, quick: bool = False) -> list[Row]:
    """The summary rows for `python -m bench` (bench/report.py's table)."""
    levels, waves = ((50, 200), 3) if quick else ((50, 200, 500), WAVES)
    latency = 2.0
    out: list[Row] = []
    with GeminiStub.in_subprocess(delay=latency, image_bytes=noise_png(1.5)) as stub:
        for level in levels:
            stub.reset_peak()
            result = asyncio.run(run_level(stub.url, level, waves * level, stub.stats))
            rate = result.tasks / result.seconds
            ideal = level / latency
            cpu_ms = 1000 * result.cpu_seconds / result.tasks
            # Share of one core the ideal rate needs. The stub answers a whole wave at once, so
            # above a quarter of a core the waves' answers queue for the CPU: judged only below.
            needed = ideal * cpu_ms / 1000
            judged = needed < CPU_JUDGED_BELOW
            out.append(
                Row(
                    "gemini",
                    f"tasks/s, {level} in flight (stub: 2 s, 1.5 MB answers)",
                    rate,
                    ideal,
                    target=f"≥ {MIN_RATIO}x ideal" if judged else "CPU ceiling stated",
                    passed=at_least(rate / ideal, MIN_RATIO) if judged else None,
                    note=(
                        f"baseline = ideal (in-flight / latency); {result.tasks} tasks in "
                        f"{waves} waves, {result.failures} failed; {cpu_ms:.1f} ms CPU per task, "
                        f"so one core tops out near {1000 / cpu_ms:.0f} tasks/s; the ideal needs "
                        f"{needed:.0%} of a core"
                        + ("" if judged else " (CPU-limited: not judged against 0.9x)")
                        + f"; peak RSS {result.peak_rss_mb:.0f} MB, stub saw {result.stub_peak}"
                    ),
                )
            )
    return out


def print_table(rows: list[list[str]]) -> None:
    widths = [max(len(row[i]) for row in [HEADERS, *rows]) for i in range(len(HEADERS))]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(HEADERS, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print("| " + " | ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description="Gemini engine throughput against a stub.")
    parser.add_argument("--inflight", default="50,200,500", help="comma-separated levels")
    parser.add_argument(
        "--tasks", type=int, default=0, help=f"tasks per level (default {WAVES}x the level)"
    )
    parser.add_argument("--latency", type=float, default=2.0, help="stub answer delay, seconds")
    parser.add_argument("--image-mb", type=float, default=1.5, help="size of the answer PNG")
    args = parser.parse_args()
    levels = [int(level) for level in args.inflight.split(",") if level.strip()]

    image = noise_png(args.image_mb)
    print(
        f"stub: {args.latency} s latency, {len(image) / 1e6:.2f} MB PNG per answer; "
        f"{os.cpu_count()} CPUs; load average before: {os.getloadavg()[0]:.2f}"
    )
    rows: list[list[str]] = []
    with GeminiStub.in_subprocess(delay=args.latency, image_bytes=image) as stub:
        stub_cpu_started = stub.stats()["cpu_seconds"]
        for level in levels:
            stub.reset_peak()
            tasks = args.tasks or WAVES * level
            result = asyncio.run(run_level(stub.url, level, tasks, stub.stats))
            rows.append(result.row(args.latency))
            print(f"  {level} in flight: {result.seconds:.2f} s", flush=True)
        stub_cpu = stub.stats()["cpu_seconds"] - stub_cpu_started
    print()
    print_table(rows)
    max_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3
    print(
        f"\nstub process CPU: {stub_cpu:.1f} s in all; max RSS of the engine process: "
        f"{max_rss_mb:.0f} MB; load average after: {os.getloadavg()[0]:.2f}"
    )


if __name__ == "__main__":
    main()
