"""Identifiers from the pooled CSPRNG: the shapes of the stdlib's, never a byte twice."""

from __future__ import annotations

import os
import re
import uuid

from imagegate import ids


def test_shapes_match_the_standard_library() -> None:
    made = ids.uuid4()
    assert made.version == 4 and made.variant == uuid.RFC_4122
    assert re.fullmatch(r"[0-9a-f]{20}", ids.token_hex(10))
    token = ids.token_urlsafe(24)
    assert re.fullmatch(r"[A-Za-z0-9_-]{32}", token)
    assert len(ids.random_bytes(5000)) == 5000  # more than the pool holds


def test_no_value_is_handed_out_twice_across_refills() -> None:
    seen = [ids.random_bytes(16) for _ in range(2_000)]  # ~8 refills of the 4 KiB pool
    assert len(set(seen)) == len(seen)


def test_a_forked_child_does_not_reuse_the_parents_bytes() -> None:
    ids.random_bytes(1)  # the pool now holds bytes the child would otherwise inherit
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next bytes and leave at once
        os.write(write_end, ids.random_bytes(32))
        os._exit(0)
    os.close(write_end)
    child = os.read(read_end, 32)
    os.close(read_end)
    os.waitpid(pid, 0)
    assert len(child) == 32
    assert child != ids.random_bytes(32)
