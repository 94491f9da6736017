"""Nothing is lost: a server killed with -9 mid-task finishes the task after a restart."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import KEY_A, Api
from tests.support.server import ServerProcess, wait_until


def test_kill_9_mid_task_then_restart_completes_it(tmp_path: Path) -> None:
    env = {
        "IMAGEGATE_API_KEYS": KEY_A,
        "IMAGEGATE_OFFLINE_DELAY_MS": "1500",
        "IMAGEGATE_LEASE_SECONDS": "2",
    }
    first = ServerProcess(tmp_path, env).start()
    api = Api(first.url, KEY_A)
    running = api.create({"prompt": "survive a crash"}).json()["data"]["task_id"]
    wait_until(
        lambda: api.get(running).json()["data"]["status"] == "IN_PROGRESS",
        10,
        message="IN_PROGRESS",
    )
    first.kill()

    second = ServerProcess(tmp_path, env, port=first.port).start()
    try:
        done = api.wait(running, timeout=30)
        assert done["status"] == "COMPLETED", done
        assert len(done["generated"]) == 1
    finally:
        second.stop()
        api.http.close()


def test_sigterm_drains_and_exits_zero(tmp_path: Path) -> None:
    env = {"IMAGEGATE_API_KEYS": KEY_A, "IMAGEGATE_OFFLINE_DELAY_MS": "500"}
    server = ServerProcess(tmp_path, env).start()
    api = Api(server.url, KEY_A)
    task_id = api.create({"prompt": "finish before exit"}).json()["data"]["task_id"]
    wait_until(
        lambda: api.get(task_id).json()["data"]["status"] == "IN_PROGRESS",
        10,
        message="IN_PROGRESS",
    )
    assert server.stop() == 0
    again = ServerProcess(tmp_path, env, port=server.port).start()
    try:
        # Drained: finished during the grace period, not re-run after the restart.
        assert api.get(task_id).json()["data"]["status"] == "COMPLETED"
    finally:
        again.stop()
        api.http.close()


def test_first_start_without_keys_prints_one(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path).start()
    try:
        logs = server.logs()
        key = next(line.strip() for line in logs.splitlines() if line.strip().startswith("ig_"))
        api = Api(server.url, key)
        assert api.create({"prompt": "with the printed key"}).status_code == 200
        api.http.close()
    finally:
        server.stop()
    again = ServerProcess(tmp_path, port=server.port).start()
    try:
        # Same log file (same port): the key was announced once, by the first start only.
        assert again.logs().count("shown only this once") == 1
    finally:
        again.stop()
