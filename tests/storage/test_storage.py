"""One contract for every blob backend: the local directory and S3 (moto on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import sys
import threading
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import httpx
import pytest

from imagegate.storage import BlobStorage, LocalStorage, S3Storage, open_storage
from imagegate.storage.s3 import S3StorageError
from tests.support.s3 import UNSET, MotoS3, s3_env
from tests.support.server import free_port

PNG = b"\x89PNG\r\n\x1a\n" + b"not really a png, but bytes are bytes" * 10
PRESIGN_SECONDS = 600


@pytest.fixture(params=["local", "s3"])
async def storage(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[BlobStorage]:
    if request.param == "local":
        yield LocalStorage(tmp_path / "blobs")
        return
    moto: MotoS3 = request.getfixturevalue("s3_environ")
    # A prefix of its own per test: tests share the bucket, never each other's keys.
    # Presigned, so the contract covers direct URLs; without presign S3 behaves like local.
    s3 = S3Storage.from_url(
        f"s3://{moto.bucket}/test-{uuid.uuid4().hex}",
        presign=True,
        presign_seconds=PRESIGN_SECONDS,
    )
    yield s3
    s3.close()


def keys_under(storage: BlobStorage, prefix: str) -> list[str]:
    """What the backend really holds under `prefix/`, looked at behind the interface."""
    if isinstance(storage, LocalStorage):
        root = storage.path_for(prefix)
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert isinstance(storage, S3Storage)
    full = storage.object_key(prefix) + "/"
    paginator = storage.client.get_paginator("list_objects_v2")
    return sorted(
        item["Key"][len(full) :]
        for page in paginator.paginate(Bucket=storage.bucket, Prefix=full)
        for item in page.get("Contents", [])
    )


def record_calls(storage: S3Storage, operation: str) -> list[dict[str, Any]]:
    """The API parameters of every `operation` the storage's client calls, and the thread."""
    calls: list[dict[str, Any]] = []

    def hook(params: dict[str, Any], **_: Any) -> None:
        calls.append({"thread": threading.get_ident(), "params": params})

    storage.client.meta.events.register(f"before-parameter-build.s3.{operation}", hook)
    return calls


async def test_round_trip_keeps_bytes_and_content_type(storage: BlobStorage) -> None:
    await storage.put("outputs/t1/0.png", PNG, "image/png")
    # The content type is the one given, not one guessed from the name.
    await storage.put("references/t1/0.bin", b"\xff\xd8jpeg", "image/jpeg")

    assert await storage.get("outputs/t1/0.png") == PNG
    assert await storage.get("references/t1/0.bin") == b"\xff\xd8jpeg"
    if isinstance(storage, S3Storage):
        head = storage.client.head_object(
            Bucket=storage.bucket, Key=storage.object_key("outputs/t1/0.png")
        )
        assert head["ContentType"] == "image/png"
        assert head["ContentLength"] == len(PNG)
        head = storage.client.head_object(
            Bucket=storage.bucket, Key=storage.object_key("references/t1/0.bin")
        )
        assert head["ContentType"] == "image/jpeg"


async def test_missing_key_is_none(storage: BlobStorage) -> None:
    assert await storage.get("outputs/nothing-here/0.png") is None
    await storage.put("outputs/t2/0.png", PNG, "image/png")
    # A "directory" is not a blob either.
    assert await storage.get("outputs/t2") is None


async def test_overwrite_replaces_the_blob(storage: BlobStorage) -> None:
    await storage.put("outputs/t3/0.png", b"first", "image/png")
    await storage.put("outputs/t3/0.png", b"second, longer", "image/png")
    assert await storage.get("outputs/t3/0.png") == b"second, longer"


async def test_delete_prefix_removes_everything_under_it_and_nothing_else(
    storage: BlobStorage,
) -> None:
    doomed = ["tasks/a/0.png", "tasks/a/1.png", "tasks/a/deep/er/2.png"]
    kept = ["tasks/ab/0.png", "tasks/a.png", "tasks/b/0.png", "other/a/0.png"]
    for key in doomed + kept:
        await storage.put(key, key.encode(), "image/png")

    await storage.delete_prefix("tasks/a")

    for key in doomed:
        assert await storage.get(key) is None, key
    for key in kept:
        assert await storage.get(key) == key.encode(), key
    # A trailing slash means the same; a prefix with nothing under it is no error.
    await storage.put("tasks/c/0.png", PNG, "image/png")
    await storage.delete_prefix("tasks/c/")
    assert await storage.get("tasks/c/0.png") is None
    await storage.delete_prefix("tasks/never-existed")


async def test_delete_prefix_removes_1500_blobs(storage: BlobStorage) -> None:
    keys = [f"bulk/{i:04d}.png" for i in range(1500)]
    await asyncio.gather(*(storage.put(key, b"x", "image/png") for key in keys))
    await storage.put("bulk-neighbour/0.png", b"stays", "image/png")
    assert len(keys_under(storage, "bulk")) == 1500
    deletes = record_calls(storage, "DeleteObjects") if isinstance(storage, S3Storage) else []

    await storage.delete_prefix("bulk")

    assert keys_under(storage, "bulk") == []
    assert await storage.get("bulk-neighbour/0.png") == b"stays"
    if isinstance(storage, S3Storage):
        # S3 takes at most 1000 keys per DeleteObjects.
        sizes = [len(call["params"]["Delete"]["Objects"]) for call in deletes]
        assert sizes == [1000, 500]


async def test_ping_succeeds(storage: BlobStorage) -> None:
    await storage.ping()


@pytest.mark.parametrize("key", ["../x", "a/../../x", "/abs/x", ""])
async def test_keys_that_escape_are_refused(storage: BlobStorage, key: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="blob key"):
        await storage.put(key, b"evil", "image/png")
    assert await storage.get(key) is None
    assert not (tmp_path / "x").exists()
    assert not (tmp_path.parent / "x").exists()


@pytest.mark.parametrize("prefix", ["", "/", "..", "../"])
async def test_delete_prefix_refuses_the_whole_store_and_above(
    storage: BlobStorage, prefix: str
) -> None:
    await storage.put("keep/0.png", PNG, "image/png")
    with pytest.raises(ValueError, match="blob key"):
        await storage.delete_prefix(prefix)
    assert await storage.get("keep/0.png") == PNG


async def test_50_concurrent_puts(storage: BlobStorage) -> None:
    blobs = {f"outputs/c{i}/0.png": f"image {i}".encode() * 100 for i in range(50)}
    await asyncio.gather(*(storage.put(k, v, "image/png") for k, v in blobs.items()))
    got = await asyncio.gather(*(storage.get(k) for k in blobs))
    assert got == list(blobs.values())


async def test_public_url_is_presigned_or_served_by_the_api(storage: BlobStorage) -> None:
    await storage.put("outputs/t4/0.png", PNG, "image/png")
    url = storage.public_url("outputs/t4/0.png")
    if isinstance(storage, LocalStorage):
        assert url is None  # the presenter then serves it at /v1/files/{key}
        return
    assert url is not None
    parsed = urlparse(url)
    assert parsed.hostname == "127.0.0.1"
    query = parse_qs(parsed.query)
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
    assert query["X-Amz-Expires"] == [str(PRESIGN_SECONDS)]
    async with httpx.AsyncClient() as http:
        response = await http.get(url)
    assert response.status_code == 200
    assert response.content == PNG
    assert response.headers["content-type"] == "image/png"


# --- S3 only ----------------------------------------------------------------


@pytest.fixture
async def s3(s3_environ: MotoS3) -> AsyncIterator[S3Storage]:
    storage = S3Storage.from_url(
        f"s3://{s3_environ.bucket}/some/prefix", presign=False, presign_seconds=3600
    )
    yield storage
    storage.close()


async def test_s3_keys_live_under_the_url_prefix(s3: S3Storage, s3_environ: MotoS3) -> None:
    await s3.put("outputs/p/0.png", PNG, "image/png")
    client = s3_environ.client()
    try:
        head = client.head_object(Bucket=s3_environ.bucket, Key="some/prefix/outputs/p/0.png")
    finally:
        client.close()
    assert head["ContentLength"] == len(PNG)


async def test_s3_calls_run_off_the_event_loop(s3: S3Storage) -> None:
    puts = record_calls(s3, "PutObject")
    gets = record_calls(s3, "GetObject")
    await s3.put("outputs/thread/0.png", PNG, "image/png")
    assert await s3.get("outputs/thread/0.png") == PNG
    loop_thread = threading.get_ident()
    assert len(puts) == 1 and len(gets) == 1
    assert puts[0]["thread"] != loop_thread
    assert gets[0]["thread"] != loop_thread


async def test_s3_ping_names_a_missing_bucket_and_the_endpoint(s3_environ: MotoS3) -> None:
    storage = S3Storage.from_url("s3://no-such-bucket-here", presign=False, presign_seconds=1)
    try:
        with pytest.raises(S3StorageError) as caught:
            await storage.ping()
    finally:
        storage.close()
    message = str(caught.value)
    assert "'no-such-bucket-here'" in message
    assert s3_environ.url in message
    assert "does not exist" in message


# --- configuration (no server needed) ---------------------------------------


@pytest.fixture
def offline_aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """AWS settings that point at a closed loopback port: clients build, nothing connects."""
    pytest.importorskip("boto3")
    for name in UNSET:
        monkeypatch.delenv(name, raising=False)
    for name, value in s3_env("http://127.0.0.1:9", "bucket").items():
        monkeypatch.setenv(name, value)


def test_open_storage_picks_s3_with_its_presign_settings(offline_aws_env: None) -> None:
    storage = open_storage("s3://my-bucket/images/v1/", presign=True, presign_seconds=120)
    assert isinstance(storage, S3Storage)
    try:
        assert (storage.bucket, storage.prefix) == ("my-bucket", "images/v1/")
        assert (storage.presign, storage.presign_seconds) == (True, 120)
        assert storage.endpoint_url == "http://127.0.0.1:9"
        url = storage.public_url("outputs/a/0.png")
        assert url is not None
        assert url.startswith("http://127.0.0.1:9/my-bucket/images/v1/outputs/a/0.png?")
    finally:
        storage.close()


def test_open_storage_s3_serves_through_the_api_by_default(offline_aws_env: None) -> None:
    storage = open_storage("s3://my-bucket")
    assert isinstance(storage, S3Storage)
    try:
        assert storage.prefix == ""
        assert storage.public_url("outputs/a/0.png") is None
    finally:
        storage.close()


@pytest.mark.parametrize(
    ("url", "presign_seconds", "needle"),
    [
        ("s3://key:secret@bucket", 60, "AWS_ACCESS_KEY_ID"),
        ("s3://bucket:9000/x", 60, "AWS_ENDPOINT_URL"),
        ("s3://bucket?region=eu", 60, "AWS_ENDPOINT_URL"),
        ("s3:///no-bucket", 60, "s3://bucket"),
        ("s3://bucket/../up", 60, "blob key"),
        ("s3://bucket", 0, "IMAGEGATE_STORAGE_PRESIGN_SECONDS"),
        ("s3://bucket", 8 * 24 * 3600, "IMAGEGATE_STORAGE_PRESIGN_SECONDS"),
    ],
)
def test_bad_s3_settings_are_named(
    offline_aws_env: None, url: str, presign_seconds: int, needle: str
) -> None:
    with pytest.raises(ValueError, match=needle):
        S3Storage.from_url(url, presign=True, presign_seconds=presign_seconds)


def test_missing_boto3_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    # None in sys.modules makes `import boto3` fail as if it were not installed.
    monkeypatch.setitem(sys.modules, "boto3", None)
    with pytest.raises(RuntimeError, match=r"pip install 'imagegate\[s3\]'"):
        open_storage("s3://bucket")


async def test_s3_ping_says_when_the_endpoint_is_unreachable(
    offline_aws_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    dead_url = f"http://127.0.0.1:{free_port()}"  # bound, released: nothing listens there
    monkeypatch.setenv("AWS_ENDPOINT_URL", dead_url)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    storage = S3Storage.from_url("s3://bucket", presign=False, presign_seconds=3600)
    try:
        with pytest.raises(S3StorageError, match="is not reachable") as caught:
            await storage.ping()
    finally:
        storage.close()
    assert dead_url in str(caught.value)
