"""Blobs as objects in an S3-compatible bucket (AWS S3, MinIO, Cloudflare R2, ...).

Endpoint, region and credentials come from the standard AWS settings, read by boto3 itself
(AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_S3, AWS_REGION / AWS_DEFAULT_REGION, AWS_ACCESS_KEY_ID /
AWS_SECRET_ACCESS_KEY, AWS_PROFILE, ~/.aws/config, instance roles). The URL only names the
bucket and an optional key prefix: `s3://bucket/optional/prefix`.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar
from urllib.parse import unquote, urlparse

T = TypeVar("T")

# The most SigV4 allows for a presigned URL: seven days.
MAX_PRESIGN_SECONDS = 7 * 24 * 3600
# S3 DeleteObjects takes at most this many keys per request.
DELETE_BATCH = 1000
# Threads (and pooled HTTP connections) for blocking boto3 calls: enough that a worker storing
# many outputs at once does not queue behind a handful of slow uploads.
DEFAULT_CONCURRENCY = 32

_MISSING_KEY_CODES = frozenset({"NoSuchKey", "NotFound", "404"})


class S3StorageError(OSError):
    """The bucket cannot be used: missing, forbidden, unreachable, or no credentials."""


def _load_boto3() -> tuple[Any, Any]:
    try:
        import boto3
        from botocore.config import Config
    except ImportError as exc:
        raise RuntimeError(
            "IMAGEGATE_STORAGE_URL is s3://..., which needs boto3: pip install 'imagegate[s3]'"
        ) from exc
    return boto3, Config


def check_key(key: str) -> str:
    """Refuse keys that would mean something else on another backend (`..`, absolute, empty)."""
    parts = key.split("/")
    if not key or key.startswith("/") or "\x00" in key or any(p in (".", "..") for p in parts):
        raise ValueError(f"invalid blob key: {key!r}")
    return key


class S3Storage:
    def __init__(
        self,
        client: Any,
        bucket: str,
        prefix: str = "",
        *,
        presign: bool = False,
        presign_seconds: int = 3600,
        max_concurrency: int = DEFAULT_CONCURRENCY,
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix
        self.presign = presign
        self.presign_seconds = presign_seconds
        self._executor = ThreadPoolExecutor(
            max_workers=max_concurrency, thread_name_prefix="imagegate-s3"
        )

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        presign: bool,
        presign_seconds: int,
        max_concurrency: int = DEFAULT_CONCURRENCY,
    ) -> S3Storage:
        parsed = urlparse(url)
        if parsed.scheme != "s3" or not parsed.hostname:
            raise ValueError(
                f"IMAGEGATE_STORAGE_URL: expected s3://bucket/optional/prefix, got {url!r}"
            )
        if parsed.username or parsed.password:
            raise ValueError(
                "IMAGEGATE_STORAGE_URL: put no credentials in the s3:// URL; "
                "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) instead"
            )
        if parsed.port is not None or parsed.query or parsed.fragment:
            raise ValueError(
                f"IMAGEGATE_STORAGE_URL: s3:// takes only a bucket and a prefix, got {url!r}; "
                "set the endpoint with AWS_ENDPOINT_URL"
            )
        if presign and not 1 <= presign_seconds <= MAX_PRESIGN_SECONDS:
            raise ValueError(
                "IMAGEGATE_STORAGE_PRESIGN_SECONDS must be between 1 and "
                f"{MAX_PRESIGN_SECONDS} (7 days, the SigV4 maximum), got {presign_seconds}"
            )
        bucket = parsed.netloc  # not .hostname, which lower-cases: keep the user's spelling
        prefix = unquote(parsed.path).strip("/")
        if prefix:
            check_key(prefix)
            prefix += "/"

        boto3, Config = _load_boto3()
        config = Config(
            max_pool_connections=max_concurrency,
            # SigV4 everywhere: R2 and newer AWS regions refuse the legacy SigV2 presigned URLs.
            signature_version="s3v4",
            connect_timeout=5,
            read_timeout=60,
        )
        # A session of our own: boto3's default session is not safe to share across threads.
        client = boto3.session.Session().client("s3", config=config)
        return cls(
            client,
            bucket,
            prefix,
            presign=presign,
            presign_seconds=presign_seconds,
            max_concurrency=max_concurrency,
        )

    @property
    def endpoint_url(self) -> str:
        return str(self.client.meta.endpoint_url)

    def object_key(self, key: str) -> str:
        return self.prefix + check_key(key)

    async def _run(self, func: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(func, *args, **kwargs))

    # --- BlobStorage -------------------------------------------------------

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        await self._run(
            self.client.put_object,
            Bucket=self.bucket,
            Key=self.object_key(key),
            Body=data,
            ContentType=content_type,
        )

    async def get(self, key: str) -> bytes | None:
        try:
            object_key = self.object_key(key)
        except ValueError:
            return None
        return await self._run(self._get, object_key)

    def _get(self, object_key: str) -> bytes | None:
        from botocore.exceptions import ClientError

        try:
            response = self.client.get_object(Bucket=self.bucket, Key=object_key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _MISSING_KEY_CODES:
                return None
            raise
        body = response["Body"]
        try:
            return bytes(body.read())
        finally:
            body.close()

    async def delete_prefix(self, prefix: str) -> None:
        # Like the local backend: everything *under* `prefix/`, never `prefix2/...`.
        directory = self.object_key(prefix.rstrip("/")) + "/"
        await self._run(self._delete_prefix, directory)

    def _delete_prefix(self, directory: str) -> None:
        paginator = self.client.get_paginator("list_objects_v2")
        batch: list[dict[str, str]] = []
        for page in paginator.paginate(Bucket=self.bucket, Prefix=directory):
            for item in page.get("Contents", []):
                batch.append({"Key": item["Key"]})
                if len(batch) == DELETE_BATCH:
                    self._delete_batch(batch)
                    batch = []
        if batch:
            self._delete_batch(batch)

    def _delete_batch(self, batch: list[dict[str, str]]) -> None:
        response = self.client.delete_objects(
            Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
        )
        errors = response.get("Errors") or []
        if errors:
            first = errors[0]
            raise S3StorageError(
                f"could not delete {len(errors)} object(s) from bucket {self.bucket!r}, "
                f"e.g. {first.get('Key')!r}: {first.get('Code')} {first.get('Message')}"
            )

    async def ping(self) -> None:
        await self._run(self._ping)

    def _ping(self) -> None:
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        where = f"S3 bucket {self.bucket!r} at {self.endpoint_url}"
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except NoCredentialsError as exc:
            raise S3StorageError(
                f"{where}: no AWS credentials found; set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)"
            ) from exc
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("404", "NoSuchBucket", "NotFound"):
                reason = (
                    "does not exist (create it, or fix IMAGEGATE_STORAGE_URL / AWS_ENDPOINT_URL)"
                )
            elif code in ("403", "AccessDenied", "Forbidden"):
                reason = "refused access (check the credentials and that they may s3:ListBucket)"
            else:
                reason = f"answered {code or 'an error'}: {exc}"
            raise S3StorageError(f"{where} {reason}") from exc
        except BotoCoreError as exc:
            raise S3StorageError(f"{where} is not reachable: {exc}") from exc

    def public_url(self, key: str) -> str | None:
        if not self.presign:
            return None
        # Presigning is local HMAC over the cached credentials: no network, fine on the loop.
        url = self.client.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.bucket, "Key": self.object_key(key)},
            ExpiresIn=self.presign_seconds,
        )
        return str(url)

    def close(self) -> None:
        """Stop the worker threads and drop pooled connections (tests; process shutdown)."""
        self._executor.shutdown(wait=True)
        self.client.close()
