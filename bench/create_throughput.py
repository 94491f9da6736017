"""Create throughput: POST a prompt from 32 connections, imagegate against the bare baseline.

One server process each, load from `wrk` in another process. imagegate runs twice: API only
(`--no-worker`) and the embedded default (the worker drains the queue in the same process
while the API takes POSTs). The baseline runs before and after them; its figure is the mean
of the two runs, so drift on this shared machine shows up as their spread.

Durability: every 200 carries a task id; after the run each of them must be a row in the
database (the POST commits before answering).

    .venv/bin/python -m bench create
"""

from __future__ import annotations

import statistics
import tempfile
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

from bench.load import LoadResult, run_load
from bench.processes import (
    API_KEY,
    ImagegateTarget,
    Target,
    baseline,
    cpu_seconds,
    imagegate,
    py_spy,
    settled_task_ids,
)
from bench.report import Row, at_least, at_most

CONNECTIONS = 32
BODY = (
    b'{"prompt": "A beautiful sunset over mountains with vibrant orange and purple skies", '
    b'"aspect_ratio": "widescreen_16_9"}'
)
MIN_RATIO = 0.5
MAX_P99_MS = 25.0


@dataclass(frozen=True, slots=True)
class Durability:
    """What the database holds after a run, against the 200s the load tool saw."""

    answered: int
    missing: list[str]
    new_rows: int

    def describe(self, result: LoadResult) -> str:
        in_flight = self.new_rows - (self.answered - len(self.missing))
        text = (
            f"{self.answered:,} 200s, {len(self.missing)} without a row; {self.new_rows:,} new "
            f"rows ({in_flight} from requests in flight when the load stopped, at most "
            f"{CONNECTIONS})"
        )
        if result.non_2xx or result.socket_errors:
            text += f"; {result.non_2xx} non-2xx, {result.socket_errors} socket errors"
        if self.missing:
            text += f"; missing e.g. {self.missing[:3]}"
        return text


def _measure(
    target: Target, body: Path, seconds: float, warmup: float, profile: Path | None
) -> tuple[LoadResult, float, Durability | None]:
    run_load(target.endpoint, body, API_KEY, connections=CONNECTIONS, seconds=warmup)
    before = settled_task_ids(target.db_path) if isinstance(target, ImagegateTarget) else set()
    with py_spy(target.pid, profile, seconds):
        cpu_before = cpu_seconds(target.pid)
        result = run_load(target.endpoint, body, API_KEY, connections=CONNECTIONS, seconds=seconds)
        cpu_ms = 1e3 * (cpu_seconds(target.pid) - cpu_before) / max(1, result.ok)
    print(f"  {target.name}: {result.line()}; server CPU {cpu_ms:.2f} ms/request", flush=True)
    if not isinstance(target, ImagegateTarget):
        return result, cpu_ms, None
    rows = settled_task_ids(target.db_path) - before
    missing = sorted(set(result.ids) - rows)
    return result, cpu_ms, Durability(answered=len(result.ids), missing=missing, new_rows=len(rows))


def _run_target(
    server: AbstractContextManager[Target],
    body: Path,
    seconds: float,
    warmup: float,
    profile: Path | None,
) -> tuple[LoadResult, float, Durability | None]:
    with server as target:
        return _measure(target, body, seconds, warmup, profile)


def run(*, seconds: float = 10.0, warmup: float = 2.0, profile: Path | None = None) -> list[Row]:
    with tempfile.TemporaryDirectory(prefix="imagegate-bench-") as tmp:
        body = Path(tmp) / "body.json"
        body.write_bytes(BODY)
        print(f"create throughput: {CONNECTIONS} connections, {seconds:g} s per run", flush=True)
        base_first, base_cpu_first, _ = _run_target(baseline(), body, seconds, warmup, None)
        runs = [
            (
                label,
                *_run_target(
                    imagegate(worker=worker),
                    body,
                    seconds,
                    warmup,
                    profile / f"create-{slug}.txt" if profile else None,
                ),
            )
            for label, slug, worker in (
                ("API only (--no-worker)", "api-only", False),
                ("with worker (embedded default)", "with-worker", True),
            )
        ]
        base_last, base_cpu_last, _ = _run_target(baseline(), body, seconds, warmup, None)

    base_rps = statistics.mean([base_first.ok_rps, base_last.ok_rps])
    base_p50 = statistics.mean([base_first.p50_ms, base_last.p50_ms])
    base_p99 = statistics.mean([base_first.p99_ms, base_last.p99_ms])
    base_cpu = statistics.mean([base_cpu_first, base_cpu_last])
    spread = (
        f"baseline {base_first.ok_rps:,.0f} req/s before imagegate and {base_last.ok_rps:,.0f} "
        f"after; load: {base_first.tool}, 1 thread, {CONNECTIONS} connections, {seconds:g} s"
    )
    rows: list[Row] = []
    for label, result, cpu_ms, durability in runs:
        assert durability is not None
        ratio = result.ok_rps / base_rps if base_rps else None
        rows += [
            Row(
                "create",
                f"req/s, {label}",
                result.ok_rps,
                base_rps,
                target=f"≥ {MIN_RATIO}x baseline",
                passed=at_least(ratio, MIN_RATIO),
                note=spread if not rows else "",
            ),
            Row("create", f"p50 latency, {label}", result.p50_ms, base_p50, unit="ms"),
            Row(
                "create",
                f"p99 latency, {label}",
                result.p99_ms,
                base_p99,
                unit="ms",
                target=f"≤ {MAX_P99_MS:g} ms",
                passed=at_most(result.p99_ms, MAX_P99_MS),
            ),
            Row("create", f"server CPU per request, {label}", cpu_ms, base_cpu, unit="ms"),
            Row(
                "create",
                f"200s without a DB row, {label}",
                float(len(durability.missing)),
                target="0",
                passed=not durability.missing and result.ok > 0,
                note=durability.describe(result),
            ),
        ]
    return rows


if __name__ == "__main__":
    from bench.report import print_table

    print_table(run())
