"""Abuse and faults get a clear answer, and the server keeps serving the next request."""

from __future__ import annotations

import os
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ENDPOINT, KEY_A, KEY_B, Api
from tests.support.images import b64, image_bytes
from tests.support.server import ServerProcess, wait_until

VALIDATION = "Your request parameters didn't validate."


def png_bomb(width: int, height: int) -> bytes:
    """A valid PNG header claiming width x height pixels, with a tiny compressed body of zeros."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    raw_row = b"\x00" + b"\x00" * width  # filter byte + one grey byte per pixel
    compressor = zlib.compressobj(9)
    body = b"".join(compressor.compress(raw_row) for _ in range(64)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")
    )


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = {
        "IMAGEGATE_API_KEYS": f"{KEY_A},{KEY_B}",
        "IMAGEGATE_MAX_BODY_BYTES": str(2 * 1024 * 1024),
        "IMAGEGATE_MAX_PROMPT_CHARS": "100",
        "IMAGEGATE_MAX_REFERENCE_BYTES": str(200 * 1024),
        "IMAGEGATE_MAX_IMAGE_PIXELS": str(4_000_000),
        "IMAGEGATE_FETCH_TIMEOUT_SECONDS": "1",
    }
    with ServerProcess(tmp_path_factory.mktemp("limited"), env) as server:
        yield server


def _still_serves(server: ServerProcess) -> None:
    assert httpx.get(server.url + "/healthz").status_code == 200


def test_png_bomb_is_refused_without_growing_the_process(limited: ServerProcess) -> None:
    bomb = png_bomb(10_000, 5_000)  # 50 megapixels in a few KB
    assert len(bomb) < 64 * 1024
    assert limited.proc is not None
    before = rss_kb(limited.proc.pid)
    # A fresh key: the rate-limited key is exercised elsewhere.
    response = httpx.post(
        limited.url + ENDPOINT,
        json={"prompt": "boom", "reference_images": [b64(bomb)]},
        headers={"x-freepik-api-key": KEY_B},
    )
    after = rss_kb(limited.proc.pid)
    assert response.status_code == 400
    reason = {p["name"]: p["reason"] for p in response.json()["invalid_params"]}[
        "reference_images[0]"
    ]
    assert "50,000,000 pixels" in reason
    # Decoding it would need 50 MB; the refusal costs next to nothing.
    assert after - before < 20 * 1024, f"RSS grew by {after - before} KB"
    _still_serves(limited)


def test_limits_name_the_field(limited: ServerProcess) -> None:
    api = Api(limited.url, KEY_B)
    too_long = api.create({"prompt": "x" * 101})
    assert too_long.status_code == 400
    assert "prompt" in {p["name"] for p in too_long.json()["invalid_params"]}
    big_ref = image_bytes("BMP", size=(300, 300))  # ~270 KB decoded, over the 200 KB cap
    too_big = api.create({"prompt": "x", "reference_images": [b64(big_ref)]})
    assert too_big.status_code == 400
    assert "limit" in too_big.json()["invalid_params"][0]["reason"]
    body = api.http.post(
        ENDPOINT,
        content=b"{" + b" " * (3 * 1024 * 1024) + b"}",
        headers={"content-type": "application/json"},
    )
    assert body.status_code == 413
    _still_serves(limited)
    api.http.close()


class _Trickle(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("content-type", "image/png")
        self.send_header("content-length", "100000")
        self.end_headers()
        try:
            for _ in range(200):
                self.wfile.write(b"\x89")
                self.wfile.flush()
                time.sleep(0.1)
        except OSError:
            return

    def log_message(self, *args: Any) -> None:
        return None


def test_trickling_reference_url_is_cut_off_at_the_timeout(limited: ServerProcess) -> None:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Trickle)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        api = Api(limited.url, KEY_B)
        url = f"http://127.0.0.1:{httpd.server_address[1]}/slow.png"
        task_id = api.create({"prompt": "slow", "reference_images": [url]}).json()["data"][
            "task_id"
        ]
        started = time.monotonic()
        done = api.wait(task_id, timeout=20)
        assert done["status"] == "FAILED"
        assert "reference_images[0]" in done["error"]
        assert "1 s" in done["error"] or "timed out" in done["error"] or "time" in done["error"]
        assert time.monotonic() - started < 10
        api.http.close()
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_rate_limit_headers_count_down_then_429(tmp_path: Path) -> None:
    env = {"IMAGEGATE_API_KEYS": f"{KEY_A},{KEY_B}", "IMAGEGATE_RATE_LIMIT_PER_MINUTE": "30"}
    limited = ServerProcess(tmp_path, env).start()
    client = httpx.Client(base_url=limited.url, headers={"x-freepik-api-key": KEY_A})
    remaining = []
    for _ in range(30):
        response = client.get(ENDPOINT)
        assert response.headers["x-ratelimit-limit"] == "30"
        if response.status_code == 429:
            break
        remaining.append(int(response.headers["x-ratelimit-remaining"]))
    else:
        response = client.get(ENDPOINT)
    assert remaining == sorted(remaining, reverse=True) and len(set(remaining)) > 20
    assert response.status_code == 429
    assert int(response.headers["retry-after"]) >= 1
    assert "Rate limit" in response.json()["message"]
    # Another key is not affected.
    assert (
        httpx.get(limited.url + ENDPOINT, headers={"x-freepik-api-key": KEY_B}).status_code == 200
    )
    client.close()
    limited.stop()


def test_unfinished_task_cap_is_429(tmp_path: Path) -> None:
    env = {
        "IMAGEGATE_API_KEYS": KEY_A,
        "IMAGEGATE_MAX_UNFINISHED_TASKS_PER_KEY": "3",
        "IMAGEGATE_OFFLINE_DELAY_MS": "3000",
        "IMAGEGATE_WORKER_CONCURRENCY": "1",
    }
    with ServerProcess(tmp_path, env) as server:
        api = Api(server.url, KEY_A)
        codes = [api.create({"prompt": f"queue {i}"}).status_code for i in range(4)]
        assert codes == [200, 200, 200, 429]
        refused = api.create({"prompt": "again"})
        assert "unfinished" in refused.json()["message"]
        assert refused.headers["retry-after"]
        api.http.close()


def test_queue_bound_is_503(tmp_path: Path) -> None:
    env = {"IMAGEGATE_API_KEYS": KEY_A, "IMAGEGATE_MAX_QUEUE_DEPTH": "2"}
    with ServerProcess(tmp_path, env, args=["--no-worker"]) as server:
        api = Api(server.url, KEY_A)
        assert api.create({"prompt": "1"}).status_code == 200
        assert api.create({"prompt": "2"}).status_code == 200

        def refused() -> httpx.Response | None:
            response = api.create({"prompt": "3"})
            return response if response.status_code == 503 else None

        response = wait_until(
            refused, 5, interval=0.3, message="503 once the queue count refreshes"
        )
        assert response.json() == {"message": "Service Unavailable. Please try again later."}
        api.http.close()


def test_idempotency_key_replays_and_conflicts(alice: Api) -> None:
    headers = {"Idempotency-Key": "order-" + os.urandom(6).hex()}
    body = {"prompt": "exactly once", "aspect_ratio": "16:9"}
    first = alice.http.post(ENDPOINT, json=body, headers=headers)
    again = alice.http.post(ENDPOINT, json=body, headers=headers)
    assert first.status_code == again.status_code == 200
    assert first.json()["data"]["task_id"] == again.json()["data"]["task_id"]
    changed = alice.http.post(ENDPOINT, json={**body, "prompt": "something else"}, headers=headers)
    assert changed.status_code == 409
    assert "Idempotency-Key" in changed.json()["message"]
    # Without the header, the same body makes a new task.
    assert alice.create(body).json()["data"]["task_id"] != first.json()["data"]["task_id"]


def test_concurrent_idempotent_posts_make_one_task(alice: Api) -> None:
    from concurrent.futures import ThreadPoolExecutor

    headers = {"Idempotency-Key": "race-" + os.urandom(6).hex()}
    with ThreadPoolExecutor(8) as pool:
        responses = list(
            pool.map(
                lambda _: alice.http.post(ENDPOINT, json={"prompt": "race"}, headers=headers),
                range(8),
            )
        )
    assert {r.status_code for r in responses} == {200}
    assert len({r.json()["data"]["task_id"] for r in responses}) == 1


def test_retention_purges_tasks_and_images(tmp_path: Path) -> None:
    env = {
        "IMAGEGATE_API_KEYS": KEY_A,
        "IMAGEGATE_RETENTION_DAYS": "0.00002",
        "IMAGEGATE_RETENTION_SWEEP_SECONDS": "0.5",
    }
    with ServerProcess(tmp_path, env) as server:
        api = Api(server.url, KEY_A)
        done = api.wait(api.create({"prompt": "short-lived"}).json()["data"]["task_id"])
        url = done["generated"][0]
        wait_until(
            lambda: api.get(done["task_id"]).status_code == 404, 15, message="the task purged"
        )
        assert httpx.get(url).status_code == 404
        api.http.close()


def test_worker_killed_mid_task_completes_exactly_once(tmp_path: Path) -> None:
    env = {
        "IMAGEGATE_API_KEYS": KEY_A,
        "IMAGEGATE_OFFLINE_DELAY_MS": "1500",
        "IMAGEGATE_LEASE_SECONDS": "1",
    }
    api_server = ServerProcess(tmp_path, env, args=["--no-worker"]).start()
    worker = ServerProcess(tmp_path, env, command="worker").start()
    try:
        api = Api(api_server.url, KEY_A)
        task_id = api.create({"prompt": "once", "webhook_url": "http://127.0.0.1:9/none"}).json()[
            "data"
        ]["task_id"]
        wait_until(
            lambda: api.get(task_id).json()["data"]["status"] == "IN_PROGRESS",
            15,
            message="IN_PROGRESS",
        )
        worker.kill()
        second = ServerProcess(tmp_path, env, command="worker").start()
        done = api.wait(task_id, timeout=30)
        assert done["status"] == "COMPLETED"
        second.stop()
        history = api.http.get(f"{ENDPOINT}/{task_id}/webhooks").json()["data"]
        assert [h["status"] for h in history] == ["IN_PROGRESS", "COMPLETED"]  # one COMPLETED
        logs = "".join(p.read_text() for p in tmp_path.glob("worker-*.log"))
        assert logs.count(f"task {task_id} completed") == 1
        api.http.close()
    finally:
        api_server.stop()
        worker.stop()


def test_an_unhandled_error_is_a_json_500_with_the_request_id(tmp_path: Path) -> None:
    # A broken blob directory makes storing the reference fail inside the request.
    env = {"IMAGEGATE_API_KEYS": KEY_A}
    with ServerProcess(tmp_path, env) as server:
        blobs = tmp_path / "blobs"
        (blobs / "references").mkdir(parents=True, exist_ok=True)
        os.chmod(blobs / "references", 0o500)
        try:
            if os.geteuid() == 0:
                # root ignores permissions: use a file where a directory must go instead.
                os.chmod(blobs / "references", 0o700)
                (blobs / "references").rmdir()
                (blobs / "references").write_text("not a directory")
            api = Api(server.url, KEY_A)
            response = api.create({"prompt": "x", "reference_images": [b64(image_bytes())]})
            assert response.status_code == 500
            assert response.json() == {"message": "Internal Server Error"}
            request_id = response.headers["x-request-id"]
            assert request_id in server.logs()
            assert api.create({"prompt": "still up"}).status_code == 200
            api.http.close()
        finally:
            target = blobs / "references"
            if target.is_file():
                target.unlink()
            elif target.exists():
                os.chmod(target, 0o700)
