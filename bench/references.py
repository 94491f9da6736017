"""References: POSTs carrying three ~4 MB images as base64, imagegate against the baseline.

The images are random-noise PNGs (incompressible, like photos: ~4 MB decoded each, ~5.3 MB
as base64, a ~16 MB JSON body), made once per run from a fixed seed. imagegate runs API
only (`--no-worker`): the POST decodes, checks (Pillow) and stores each reference before
answering. The baseline only validates the body and base64-decodes the three items.

Memory: the server's peak RSS (VmHWM, reset when the process has started and served nothing)
minus that starting RSS, divided by the number of concurrent requests, against the body size.

    .venv/bin/python -m bench references
"""

from __future__ import annotations

import base64
import io
import json
import random
import tempfile
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from bench.load import LoadResult, run_load
from bench.processes import (
    API_KEY,
    Target,
    baseline,
    cpu_seconds,
    imagegate,
    peak_rss_bytes,
    py_spy,
    reset_peak_rss,
    rss_bytes,
)
from bench.report import Row, at_least, at_most

CONNECTIONS = 8
IMAGE_BYTES = 4_000_000
MIN_RATIO = 0.7
MAX_RSS_PER_BODY = 3.0
MB = 1e6


def noise_png(target_bytes: int, seed: int) -> bytes:
    """An RGB PNG of random pixels of about `target_bytes` (noise does not compress)."""
    side = int((target_bytes / 3) ** 0.5)
    pixels = random.Random(seed).randbytes(side * side * 3)
    out = io.BytesIO()
    Image.frombytes("RGB", (side, side), pixels).save(out, format="PNG", compress_level=1)
    return out.getvalue()


def make_body(path: Path) -> tuple[int, int]:
    """Write the request body; returns (body bytes, decoded bytes of one image)."""
    images = [noise_png(IMAGE_BYTES, seed) for seed in range(3)]
    body = {
        "prompt": "Blend these three pictures into one",
        "reference_images": [base64.b64encode(image).decode() for image in images],
    }
    data = json.dumps(body).encode()
    path.write_bytes(data)
    return len(data), len(images[0])


@dataclass(frozen=True, slots=True)
class Measured:
    load: LoadResult
    idle_rss: int
    peak_rss: int
    cpu_ms_per_request: float

    @property
    def rss_per_request(self) -> float:
        return (self.peak_rss - self.idle_rss) / CONNECTIONS


def _measure(
    server: AbstractContextManager[Target],
    body: Path,
    seconds: float,
    warmup: float,
    profile: Path | None = None,
) -> Measured:
    with server as target:
        # The process as it starts, before any request: what every in-flight request adds to.
        idle = rss_bytes(target.pid)
        reset_peak_rss(target.pid)
        run_load(target.endpoint, body, API_KEY, connections=CONNECTIONS, seconds=warmup)
        cpu_before = cpu_seconds(target.pid)
        with py_spy(target.pid, profile, seconds):
            load = run_load(
                target.endpoint, body, API_KEY, connections=CONNECTIONS, seconds=seconds
            )
        cpu = cpu_seconds(target.pid) - cpu_before
        measured = Measured(
            load=load,
            idle_rss=idle,
            peak_rss=peak_rss_bytes(target.pid),
            cpu_ms_per_request=1e3 * cpu / max(1, load.ok),
        )
    print(
        f"  {target.name}: {load.line()}; RSS idle {idle / MB:.0f} MB, peak "
        f"{measured.peak_rss / MB:.0f} MB; CPU {measured.cpu_ms_per_request:.1f} ms/request",
        flush=True,
    )
    return measured


def run(*, seconds: float = 15.0, warmup: float = 3.0, profile: Path | None = None) -> list[Row]:
    with tempfile.TemporaryDirectory(prefix="imagegate-bench-") as tmp:
        body = Path(tmp) / "body.json"
        body_bytes, image_bytes = make_body(body)
        print(
            f"references: 3 x {image_bytes / MB:.1f} MB noise PNGs, body {body_bytes / MB:.1f} MB, "
            f"{CONNECTIONS} connections, {seconds:g} s per run",
            flush=True,
        )
        base = _measure(baseline(), body, seconds, warmup)
        ours = _measure(
            imagegate(worker=False),
            body,
            seconds,
            warmup,
            profile / "references.txt" if profile else None,
        )

    ratio = ours.load.ok_rps / base.load.ok_rps if base.load.ok_rps else None
    rss_limit = MAX_RSS_PER_BODY * body_bytes
    setup = (
        f"body {body_bytes / MB:.1f} MB (3 x {image_bytes / MB:.1f} MB PNG as base64), "
        f"{CONNECTIONS} connections, imagegate --no-worker; {ours.load.ok} vs {base.load.ok} 200s, "
        f"{ours.load.non_2xx + ours.load.socket_errors} imagegate errors"
    )
    return [
        Row(
            "references",
            "req/s, 3 x 4 MB base64 references",
            ours.load.ok_rps,
            base.load.ok_rps,
            target=f"≥ {MIN_RATIO}x baseline",
            passed=at_least(ratio, MIN_RATIO),
            note=setup,
        ),
        Row("references", "p50 latency", ours.load.p50_ms, base.load.p50_ms, unit="ms"),
        Row("references", "p99 latency", ours.load.p99_ms, base.load.p99_ms, unit="ms"),
        Row(
            "references",
            "server CPU per request",
            ours.cpu_ms_per_request,
            base.cpu_ms_per_request,
            unit="ms",
        ),
        Row(
            "references",
            "peak RSS growth per in-flight request",
            ours.rss_per_request / MB,
            base.rss_per_request / MB,
            unit="MB",
            target=f"≤ {MAX_RSS_PER_BODY:g} x body = {rss_limit / MB:.0f} MB",
            passed=at_most(ours.rss_per_request, rss_limit),
            note=f"(VmHWM over warm-up and run - VmRSS at start) / {CONNECTIONS}; imagegate idle "
            f"{ours.idle_rss / MB:.0f} MB, peak {ours.peak_rss / MB:.0f} MB; baseline idle "
            f"{base.idle_rss / MB:.0f} MB, peak {base.peak_rss / MB:.0f} MB",
        ),
    ]


if __name__ == "__main__":
    from bench.report import print_table

    print_table(run())
