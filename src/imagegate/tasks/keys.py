"""API keys: made once, shown once, stored only as hashes."""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass

from imagegate.store import Store
from imagegate.tasks.model import ApiKey
from imagegate.webhooks.signing import generate_secret

KEY_PREFIX = "ig_"
# How long a key lookup is remembered; a revoked key stops working within this time.
CACHE_SECONDS = 5.0


def hash_key(key: str) -> str:
    # Keys are 256-bit random tokens, so a fast hash is enough: nothing to brute-force.
    return hashlib.sha256(key.encode()).hexdigest()


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


STATIC_OWNER_PREFIX = "static_"


def static_owner(key_hash: str) -> str:
    return STATIC_OWNER_PREFIX + key_hash[:24]


@dataclass(frozen=True, slots=True)
class CreatedKey:
    key: str
    webhook_secret: str
    record: ApiKey


async def create_key(store: Store, name: str) -> CreatedKey:
    key = generate_key()
    secret = generate_secret()
    record = await store.create_key(name, hash_key(key), key[: len(KEY_PREFIX) + 6], secret)
    return CreatedKey(key=key, webhook_secret=secret, record=record)


class KeyRing:
    """Answers "whose key is this?" for every request, cheaply."""

    def __init__(self, store: Store, static_keys: list[str]) -> None:
        self.store = store
        # By the key itself: a static key is answered without hashing it on every request.
        self._static_keys = {k: static_owner(hash_key(k)) for k in static_keys}
        self._cache: dict[str, tuple[str | None, float]] = {}

    async def owner_of(self, key: str) -> str | None:
        owner = self._static_keys.get(key)
        if owner is not None:
            return owner
        digest = hash_key(key)
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and cached[1] > now:
            return cached[0]
        record = await self.store.find_key(digest)
        found = record.id if record else None
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[digest] = (found, now + CACHE_SECONDS)
        return found
