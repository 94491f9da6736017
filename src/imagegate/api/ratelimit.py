"""Per-key request rate limits (token buckets) with the `x-ratelimit-*` headers clients read.

Buckets live in the API process: with N API processes behind a load balancer a key gets up to
N times the configured rate (documented in docs/limits.md). Requests without a key are
limited per client address, so floods of unauthenticated requests are limited too.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import OrderedDict

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from imagegate.api.middleware import error_body, send_json

MAX_BUCKETS = 100_000


class TokenBucket:
    __slots__ = ("capacity", "rate", "tokens", "updated")

    def __init__(self, capacity: float, rate: float, now: float) -> None:
        self.capacity = capacity
        self.rate = rate
        self.tokens = capacity
        self.updated = now

    def take(self, now: float) -> bool:
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False

    def seconds_until_full(self) -> float:
        return (self.capacity - self.tokens) / self.rate

    def seconds_until_one(self) -> float:
        return max(0.0, (1 - self.tokens) / self.rate)


class RateLimiter:
    def __init__(self, per_minute: int) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self.buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def bucket(self, identity: str, now: float) -> TokenBucket:
        bucket = self.buckets.get(identity)
        if bucket is None:
            bucket = TokenBucket(self.capacity, self.rate, now)
            self.buckets[identity] = bucket
            if len(self.buckets) > MAX_BUCKETS:
                self.buckets.popitem(last=False)
        else:
            self.buckets.move_to_end(identity)
        return bucket


def _identity(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"x-freepik-api-key" or (
            name == b"authorization" and value[:7].lower() == b"bearer "
        ):
            key = value[7:] if name == b"authorization" else value
            return "key:" + hashlib.sha256(key.strip()).hexdigest()
    client = scope.get("client")
    return "ip:" + (client[0] if client else "unknown")


class RateLimitMiddleware:
    def __init__(self, app: ASGIApp, per_minute: int) -> None:
        self.app = app
        self.limiter = RateLimiter(per_minute)
        self.limit_header = str(per_minute).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        now = time.monotonic()
        bucket = self.limiter.bucket(_identity(scope), now)
        allowed = bucket.take(now)
        headers = [
            (b"x-ratelimit-limit", self.limit_header),
            (b"x-ratelimit-remaining", str(int(bucket.tokens)).encode()),
            (b"x-ratelimit-reset", str(math.ceil(bucket.seconds_until_full())).encode()),
        ]
        if not allowed:
            retry_after = max(1, math.ceil(bucket.seconds_until_one()))
            body = error_body(
                scope["path"],
                429,
                f"Rate limit exceeded: {self.limit_header.decode()} requests per minute. "
                f"Retry in {retry_after} s.",
            )
            await send_json(
                send, 429, body, [(b"retry-after", str(retry_after).encode()), *headers]
            )
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *headers]
            await send(message)

        await self.app(scope, receive, send_with_headers)
