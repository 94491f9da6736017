"""An S3 server for tests: moto's standalone server on 127.0.0.1, and the env to point at it."""

from __future__ import annotations

import importlib.util
import logging
from typing import Any

REGION = "us-east-1"
ACCESS_KEY = "testing-access-key"
SECRET_KEY = "testing-secret-key"


def moto_missing() -> str | None:
    """Why S3 tests cannot run here, or None when they can."""
    for module, package in (("moto.server", "moto[server]"), ("boto3", "boto3")):
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            return f"S3 tests need {package}: pip install 'moto[server]' 'imagegate[s3]'"
    return None


def s3_env(moto_url: str, bucket: str, prefix: str = "") -> dict[str, str]:
    """The environment a process needs to keep its blobs in `bucket` on the moto server.

    Only AWS settings boto3 reads itself, plus IMAGEGATE_STORAGE_URL. The shared config and
    credentials files point nowhere, so a developer's ~/.aws (profiles, SSO, another
    endpoint) cannot leak in, and instance metadata is off, so nothing looks beyond 127.0.0.1.
    """
    url = f"s3://{bucket}/{prefix.strip('/')}" if prefix.strip("/") else f"s3://{bucket}"
    return {
        "IMAGEGATE_STORAGE_URL": url,
        "AWS_ENDPOINT_URL": moto_url,
        "AWS_REGION": REGION,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_CONFIG_FILE": "/nonexistent/aws-config",
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
        "AWS_EC2_METADATA_DISABLED": "true",
    }


# Variables that would steer boto3 elsewhere if the caller's environment had them.
UNSET = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3")


class MotoS3:
    """moto's threaded S3 server on 127.0.0.1 (a free port), with one bucket made."""

    def __init__(self, bucket: str = "imagegate-test") -> None:
        self.bucket = bucket
        self.url = ""
        self._server: Any = None

    def env(self, prefix: str = "") -> dict[str, str]:
        return s3_env(self.url, self.bucket, prefix)

    def client(self) -> Any:
        """A boto3 client of its own, for tests that look at the bucket behind the storage."""
        import boto3

        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.url,
            region_name=REGION,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
        )

    def __enter__(self) -> MotoS3:
        from moto.server import ThreadedMotoServer

        # werkzeug logs every request at INFO: thousands of lines in a failing test's report.
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        # Port 0: the OS picks a free port; start() returns once the socket is listening.
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.url = f"http://{host}:{port}"
        client = self.client()
        client.create_bucket(Bucket=self.bucket)
        client.close()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.stop()
