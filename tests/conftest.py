from __future__ import annotations

import os

# Nothing may reach a model hub from the tests (set before anything imports huggingface_hub).
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.fileserver import FileServer
from tests.support.postgres import PostgresUnavailable, create_database, drop_database
from tests.support.s3 import MotoS3, moto_missing
from tests.support.server import ServerProcess, wait_until

KEY_A = "ig_test_key_alice_0123456789"
KEY_B = "ig_test_key_bob_9876543210"
KEY_PAGES = "ig_test_key_pages_5555555555"
ENDPOINT = "/v1/ai/gemini-2-5-flash-image-preview"


@pytest.fixture(scope="session")
def file_server() -> Iterator[FileServer]:
    with FileServer() as server:
        yield server


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[MotoS3]:
    """One moto S3 server on 127.0.0.1 for the whole run, with a bucket; skips without moto."""
    reason = moto_missing()
    if reason:
        pytest.skip(reason)
    with MotoS3() as s3:
        yield s3


@pytest.fixture(scope="session", params=["embedded", "postgres+s3"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """One real server for the black-box tests that don't restart it; the whole suite runs
    against the embedded default and against PostgreSQL + S3 (skipped where PostgreSQL or
    moto is missing)."""
    data_dir = tmp_path_factory.mktemp(f"server-{request.param}")
    env = {"IMAGEGATE_API_KEYS": f"{KEY_A},{KEY_B},{KEY_PAGES}"}
    database_url = None
    if request.param == "postgres+s3":
        s3: MotoS3 = request.getfixturevalue("moto_s3")
        try:
            database_url = create_database()
        except PostgresUnavailable as exc:
            pytest.skip(str(exc))
        env["IMAGEGATE_DATABASE_URL"] = database_url
        env.update(s3.env(prefix=f"suite-{data_dir.name}"))
    proc = ServerProcess(data_dir, env)
    proc.start()
    yield proc
    proc.stop()
    if database_url:
        drop_database(database_url)


class Api:
    """A client of one key, with the helpers the tests need."""

    def __init__(self, base_url: str, key: str | None) -> None:
        headers = {"x-freepik-api-key": key} if key else {}
        self.http = httpx.Client(base_url=base_url, headers=headers, timeout=30)

    def create(self, body: dict[str, object]) -> httpx.Response:
        return self.http.post(ENDPOINT, json=body)

    def get(self, task_id: str) -> httpx.Response:
        return self.http.get(f"{ENDPOINT}/{task_id}")

    def wait(self, task_id: str, timeout: float = 30.0) -> dict[str, object]:
        def finished() -> dict[str, object] | None:
            data: dict[str, object] = self.get(task_id).json()["data"]
            return data if data["status"] in ("COMPLETED", "FAILED") else None

        result: dict[str, object] = wait_until(
            finished, timeout, message=f"task {task_id} to finish"
        )
        return result


@pytest.fixture
def alice(server: ServerProcess) -> Iterator[Api]:
    api = Api(server.url, KEY_A)
    yield api
    api.http.close()


@pytest.fixture
def bob(server: ServerProcess) -> Iterator[Api]:
    api = Api(server.url, KEY_B)
    yield api
    api.http.close()


@pytest.fixture
def output_dir(request: pytest.FixtureRequest) -> Path:
    """Where a test leaves artefacts worth looking at (screenshots, images)."""
    path = Path("test-output") / request.node.name
    path.mkdir(parents=True, exist_ok=True)
    return path
