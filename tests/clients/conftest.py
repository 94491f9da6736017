from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import KEY_A, KEY_B
from tests.support.server import ServerProcess


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One embedded server for the client tests. The clients only speak HTTP, so unlike the
    API suite they do not run again on PostgreSQL."""
    proc = ServerProcess(
        tmp_path_factory.mktemp("clients-server"), {"IMAGEGATE_API_KEYS": f"{KEY_A},{KEY_B}"}
    )
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def slow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server whose offline engine takes 300 ms per image, so IN_PROGRESS can be seen."""
    proc = ServerProcess(
        tmp_path_factory.mktemp("slow-server"),
        {"IMAGEGATE_API_KEYS": KEY_A, "IMAGEGATE_OFFLINE_DELAY_MS": "300"},
    )
    proc.start()
    yield proc
    proc.stop()
