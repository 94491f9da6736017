"""Random identifiers for the hot path, from the OS's CSPRNG, fetched in bulk.

Every POST needs three random values (its request id, task id and output token). Asking
`os.urandom` for each is a system call each; profiled under load, those three calls were about
a tenth of a POST's event-loop time on this kind of VM. The bytes here come from the same
`os.urandom`, 4 KiB at a time, and each byte is handed out once. A forked child starts with
an empty buffer, so parent and child never share bytes.
"""

from __future__ import annotations

import base64
import os
import threading
import uuid

_CHUNK = 4096


class _RandomPool:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buffer = b""
        self._offset = 0

    def take(self, n: int) -> bytes:
        if n > _CHUNK:
            return os.urandom(n)
        with self._lock:
            end = self._offset + n
            if end > len(self._buffer):
                self._buffer = os.urandom(_CHUNK)
                self._offset, end = 0, n
            chunk = self._buffer[self._offset : end]
            self._offset = end
            return chunk

    def reset(self) -> None:
        self._lock = threading.Lock()
        self._buffer = b""
        self._offset = 0


_pool = _RandomPool()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_pool.reset)


def random_bytes(n: int) -> bytes:
    return _pool.take(n)


def token_hex(nbytes: int) -> str:
    """Like `secrets.token_hex`."""
    return _pool.take(nbytes).hex()


def token_urlsafe(nbytes: int) -> str:
    """Like `secrets.token_urlsafe`."""
    return base64.urlsafe_b64encode(_pool.take(nbytes)).rstrip(b"=").decode("ascii")


def uuid4() -> uuid.UUID:
    """Like `uuid.uuid4`: 122 random bits, version 4, RFC 4122 variant."""
    return uuid.UUID(bytes=_pool.take(16), version=4)
