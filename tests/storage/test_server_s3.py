"""The real server with its blobs in S3 (moto on 127.0.0.1), used the way a client uses it."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest

from tests.conftest import KEY_A, Api
from tests.support.images import b64, image_bytes
from tests.support.s3 import MotoS3
from tests.support.server import ServerProcess


def test_task_blobs_go_to_the_bucket_and_download_through_the_api(
    moto_s3: MotoS3, tmp_path: Path
) -> None:
    env = {"IMAGEGATE_API_KEYS": KEY_A, **moto_s3.env(prefix="server-test")}
    reference = image_bytes()
    with ServerProcess(tmp_path, env) as server:
        api = Api(server.url, KEY_A)
        try:
            created = api.create({"prompt": "a red square", "reference_images": [b64(reference)]})
            assert created.status_code == 200, created.text
            task_id = created.json()["data"]["task_id"]
            done = api.wait(task_id)
        finally:
            api.http.close()
        assert done["status"] == "COMPLETED", done
        [url] = done["generated"]
        assert isinstance(url, str) and "/v1/files/outputs/" in url
        image = httpx.get(url, timeout=10)

    assert image.status_code == 200
    assert image.headers["content-type"] == "image/png"
    # The bytes served are the object in the bucket, under the URL's prefix.
    key = "server-test/" + urlparse(url).path.removeprefix("/v1/files/")
    client = moto_s3.client()
    try:
        stored = client.get_object(Bucket=moto_s3.bucket, Key=key)
        assert stored["ContentType"] == "image/png"
        assert stored["Body"].read() == image.content
        references = client.list_objects_v2(
            Bucket=moto_s3.bucket, Prefix=f"server-test/references/{task_id}/"
        )
        [ref] = references["Contents"]
        assert client.get_object(Bucket=moto_s3.bucket, Key=ref["Key"])["Body"].read() == reference
    finally:
        client.close()
    assert not (tmp_path / "blobs").exists()  # nothing went to local disk instead


def test_server_refuses_to_start_without_its_bucket(moto_s3: MotoS3, tmp_path: Path) -> None:
    env = {**moto_s3.env(), "IMAGEGATE_STORAGE_URL": "s3://bucket-nobody-made"}
    server = ServerProcess(tmp_path, {"IMAGEGATE_API_KEYS": KEY_A, **env})
    with pytest.raises(AssertionError, match="server exited") as caught:
        server.start()
    server.stop()
    assert "S3 bucket 'bucket-nobody-made'" in str(caught.value)
    assert moto_s3.url in str(caught.value)
