from __future__ import annotations

import pytest

from tests.support.s3 import UNSET, MotoS3


@pytest.fixture
def s3_environ(moto_s3: MotoS3, monkeypatch: pytest.MonkeyPatch) -> MotoS3:
    """Point boto3 (through the standard AWS_* variables) at the moto server, for one test."""
    for name in UNSET:
        monkeypatch.delenv(name, raising=False)
    for name, value in moto_s3.env().items():
        monkeypatch.setenv(name, value)
    return moto_s3
