"""`python -m bench [create|pickup|references|gemini ...]`: run benchmarks, print one table.

    make bench                                   # all of them, a few minutes
    .venv/bin/python -m bench create --seconds 5 # one, shorter
    .venv/bin/python -m bench create --profile /tmp/prof   # py-spy the server under load

Every figure is measured next to its baseline in the same run; read the ratios, not the
absolute numbers, on a shared machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from bench import create_throughput, pickup_latency, references
from bench.load import have_wrk
from bench.report import Row, markdown_table, print_table, write_json


def gemini(quick: bool) -> list[Row]:
    """The rows of bench/gemini_inflight.py (its summary per in-flight level)."""
    from bench import gemini_inflight

    return gemini_inflight.rows(quick=quick)


def _benchmarks(args: argparse.Namespace) -> dict[str, Callable[[], list[Row]]]:
    seconds = args.seconds or (4.0 if args.quick else 10.0)
    return {
        "create": lambda: create_throughput.run(seconds=seconds, profile=args.profile),
        "pickup": lambda: pickup_latency.run(
            tasks=args.tasks or (300 if args.quick else pickup_latency.TASKS),
            rate=args.rate,
            profile=args.profile,
        ),
        "references": lambda: references.run(
            seconds=args.seconds or (6.0 if args.quick else 15.0), profile=args.profile
        ),
        "gemini": lambda: gemini(args.quick),
    }


def machine() -> str:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown CPU",
    )
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    tool = "wrk" if have_wrk() else "bench.loadgen (wrk not installed)"
    return (
        f"{os.cpu_count()} CPUs ({model}), Python {platform.python_version()}, "
        f"load average {load}; load tool: {tool}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument(
        "names", nargs="*", help="create, pickup, references, gemini (default: all)"
    )
    parser.add_argument("--quick", action="store_true", help="shorter runs, fewer tasks")
    parser.add_argument("--seconds", type=float, help="seconds per load run (default 10)")
    parser.add_argument("--tasks", type=int, help="pickup: tasks to submit (default 1000)")
    parser.add_argument(
        "--rate", type=float, default=pickup_latency.RATE, help="pickup: POSTs per second"
    )
    parser.add_argument(
        "--profile", type=Path, help="py-spy the server under load; raw stacks go in this dir"
    )
    parser.add_argument("--json", help="also write the rows as JSON here")
    parser.add_argument("--markdown", action="store_true", help="also print a markdown table")
    args = parser.parse_args()

    benchmarks = _benchmarks(args)
    names = args.names or list(benchmarks)
    unknown = [name for name in names if name not in benchmarks]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {list(benchmarks)}")

    print(f"machine: {machine()}", flush=True)
    started = time.monotonic()
    rows: list[Row] = []
    for name in names:
        try:
            rows += benchmarks[name]()
        except Exception as exc:
            traceback.print_exc()
            rows.append(Row(name, "run", None, passed=False, note=f"crashed: {exc!r}"))
    print()
    print_table(rows)
    print(f"\n{time.monotonic() - started:.0f} s; after the run: {machine()}")
    if args.markdown:
        print("\n" + markdown_table(rows))
    if args.json:
        write_json(rows, args.json)
    # A missed target is a FAIL row, not an error: only a benchmark that crashed fails `make`.
    return 1 if any(row.metric == "run" and row.passed is False for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
