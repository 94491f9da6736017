"""schemathesis against /openapi.json: zero 5xx, every response matches the documented schema.

Driven through hypothesis directly (one test per operation) rather than schemathesis' pytest
plugin, which does not support the pytest version we run."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import checks

from tests.conftest import KEY_A
from tests.support.server import ServerProcess

EXAMPLES_PER_OPERATION = 40
# What the issue asks: no 5xx, and every response (status, content type, headers, body) is
# the documented one. Not "positive data acceptance": the schema cannot say that a base64
# string must decode to an image, so schema-valid junk is rightly a 400.
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_headers_conformance,
    checks.response_schema_conformance,
]


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    # --no-worker: the fuzzer creates many tasks; running them is not what is under test here.
    env = {"IMAGEGATE_API_KEYS": KEY_A}
    with ServerProcess(tmp_path_factory.mktemp("fuzz"), env, args=["--no-worker"]) as server:
        yield server


@pytest.fixture(scope="module")
def operations(fuzz_server: ServerProcess) -> dict[str, Any]:
    schema = schemathesis.openapi.from_url(fuzz_server.url + "/openapi.json")
    found = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        found[f"{operation.method.upper()} {operation.path}"] = operation
    return found


FUZZED = [
    "POST /v1/ai/gemini-2-5-flash-image-preview",
    "GET /v1/ai/gemini-2-5-flash-image-preview",
    "GET /v1/ai/gemini-2-5-flash-image-preview/{task_id}",
    "GET /v1/ai/gemini-2-5-flash-image-preview/{task_id}/webhooks",
    "GET /v1/files/{key}",
    "GET /healthz",
    "GET /readyz",
]


@pytest.mark.parametrize("label", FUZZED)
def test_no_server_errors_and_responses_match_the_schema(
    operations: dict[str, Any], label: str
) -> None:
    assert label in operations, f"{label} is missing from /openapi.json: {sorted(operations)}"
    operation = operations[label]

    @given(case=operation.as_strategy())
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    def run(case: Any) -> None:
        # With a valid key, so the handlers behind auth are what gets fuzzed.
        case.headers = {**(case.headers or {}), "x-freepik-api-key": KEY_A}
        case.call_and_validate(checks=CHECKS)

    run()
