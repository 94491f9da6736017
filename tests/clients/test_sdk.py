"""The Python SDK against the real server: results, typed errors, the event stream, polling."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from imagegate import AsyncClient, Client
from imagegate.client import (
    APIConnectionError,
    AuthenticationError,
    InvalidParam,
    NotFoundError,
    RateLimitError,
    ServerError,
    TaskFailedError,
    ValidationError,
    WaitTimeout,
)
from imagegate.client._task import output_paths
from tests.conftest import KEY_A, KEY_B
from tests.support.fileserver import FileServer
from tests.support.images import decode, image_bytes
from tests.support.server import ServerProcess, free_port

RED, GREEN, BLUE = (230, 20, 20), (20, 210, 20), (20, 20, 230)


def colours(data: bytes) -> set[tuple[int, int, int]]:
    picture = decode(data).convert("RGB")
    return {colour for _, colour in picture.getcolors(1 << 22) or []}


@pytest.fixture
def client(server: ServerProcess) -> Iterator[Client]:
    with Client(api_key=KEY_A, base_url=server.url) as client:
        yield client


def test_generate_with_a_path_bytes_and_a_pil_image(client: Client, tmp_path: Path) -> None:
    path = tmp_path / "red.png"
    path.write_bytes(image_bytes("PNG", color=RED))
    task = client.generate(
        "combine the three",
        references=[path, image_bytes("JPEG", color=GREEN), Image.new("RGB", (40, 30), BLUE)],
    )
    assert task.status == "COMPLETED"
    assert task.completed and task.finished
    assert uuid.UUID(task.task_id)
    assert len(task.images) == len(task.generated) == 1
    # The offline engine pastes the references into its picture: all three arrived intact.
    seen = colours(task.images[0])
    assert {RED, BLUE} <= seen
    assert any(abs(c[0] - 20) < 8 and abs(c[1] - 210) < 8 and abs(c[2] - 20) < 8 for c in seen)

    written = task.save(tmp_path / "out.png")
    assert written == [tmp_path / "out.png"]
    assert written[0].read_bytes() == task.images[0]


def test_generate_accepts_a_string_path_and_a_url(
    client: Client, file_server: FileServer, tmp_path: Path
) -> None:
    path = tmp_path / "green.png"
    path.write_bytes(image_bytes("PNG", color=GREEN))
    url = file_server.add("/sdk-blue.png", image_bytes("PNG", color=BLUE))
    task = client.generate("two", references=[str(path), url], aspect_ratio="16:9")
    assert decode(task.images[0]).size == (1344, 768)
    assert {GREEN, BLUE} <= colours(task.images[0])
    assert "/sdk-blue.png" in file_server.requests


def test_create_get_wait_and_list(client: Client) -> None:
    created = client.create("step by step")
    assert created.status == "CREATED"
    assert created.generated == [] and created.images == []
    done = client.wait(created.task_id, timeout=30)
    assert done.status == "COMPLETED"
    assert client.get(created.task_id).generated == done.generated
    newest = client.list(page=1, per_page=5)
    assert newest[0].task_id == created.task_id
    assert client.download(done).images[0].startswith(b"\x89PNG")


def test_a_missing_reference_file_is_refused_before_sending(client: Client) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.png"):
        client.generate("x", references=["nope.png"])
    with pytest.raises(TypeError, match="reference"):
        client.generate("x", references=[123])  # type: ignore[list-item]


def test_missing_and_invalid_keys(server: ServerProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IMAGEGATE_KEY", raising=False)
    with Client(base_url=server.url) as anonymous, pytest.raises(AuthenticationError) as missing:
        anonymous.create("x")
    assert missing.value.status_code == 401
    assert missing.value.message == "Missing API key"
    with Client("ig_nobody", server.url) as stranger, pytest.raises(AuthenticationError) as bad:
        stranger.list()
    assert str(bad.value) == "Invalid API key"
    assert bad.value.request_id


def test_validation_error_names_each_field(client: Client) -> None:
    with pytest.raises(ValidationError) as caught:
        client.create("   ")
    error = caught.value
    assert error.status_code == 400
    assert error.message == "Your request parameters didn't validate."
    assert error.invalid_params == [InvalidParam("prompt", "must not be empty")]
    assert "prompt: must not be empty" in str(error)

    with pytest.raises(ValidationError) as not_an_image:
        client.create("x", references=[b"these bytes are no image"])
    assert [p.name for p in not_an_image.value.invalid_params] == ["reference_images[0]"]


def test_not_found_for_unknown_and_for_another_keys_task(
    client: Client, server: ServerProcess
) -> None:
    with pytest.raises(NotFoundError) as unknown:
        client.get(str(uuid.uuid4()))
    assert unknown.value.status_code == 404
    assert unknown.value.message == "Not Found"
    mine = client.create("only mine")
    with Client(KEY_B, server.url) as bob, pytest.raises(NotFoundError):
        bob.wait(mine.task_id, timeout=10)


def test_failed_task_raises_with_the_servers_reason(
    client: Client, file_server: FileServer
) -> None:
    with pytest.raises(TaskFailedError) as caught:
        client.generate("x", references=[file_server.url + "/sdk-missing.png"], timeout=30)
    task = caught.value.task
    assert task.status == "FAILED"
    assert task.error is not None and "404" in task.error
    assert caught.value.message == task.error


def test_wait_timeout_is_a_timeout_error(slow_server: ServerProcess) -> None:
    with Client(KEY_A, slow_server.url) as client:
        created = client.create("slow")
        with pytest.raises(WaitTimeout) as caught:
            client.wait(created.task_id, timeout=0.05)
        assert isinstance(caught.value, TimeoutError)
        assert caught.value.task is not None
        assert caught.value.task.status in ("CREATED", "IN_PROGRESS")
        assert client.wait(created.task_id, timeout=30).completed


def test_wait_follows_the_event_stream(slow_server: ServerProcess) -> None:
    requested: list[str] = []
    http = httpx.Client(event_hooks={"request": [lambda r: requested.append(r.url.path)]})
    statuses: list[str] = []
    with http, Client(KEY_A, slow_server.url, http_client=http) as client:
        task = client.generate("watch me", on_update=lambda t: statuses.append(t.status))
    assert task.completed
    # Seen from the stream, each status once, in order (CREATED may already be over).
    assert statuses[-2:] == ["IN_PROGRESS", "COMPLETED"]
    assert statuses in (["CREATED", "IN_PROGRESS", "COMPLETED"], ["IN_PROGRESS", "COMPLETED"])
    task_path = f"/v1/ai/gemini-2-5-flash-image-preview/{task.task_id}"
    assert requested.count(task_path + "/events") == 1
    assert task_path not in requested  # no polling was needed


class NoEventStream(httpx.HTTPTransport):
    """The hosted API has no event stream: its events URL is a 404."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/events"):
            return httpx.Response(404, json={"message": "Not Found"})
        return super().handle_request(request)


def test_wait_polls_where_the_server_has_no_event_stream(slow_server: ServerProcess) -> None:
    requested: list[str] = []
    http = httpx.Client(
        transport=NoEventStream(),
        event_hooks={"request": [lambda r: requested.append(r.url.path)]},
    )
    statuses: list[str] = []
    with http, Client(KEY_A, slow_server.url, http_client=http) as client:
        first = client.generate("polled", on_update=lambda t: statuses.append(t.status))
        second = client.generate("polled again")
    assert first.completed and second.completed
    assert statuses[-2:] == ["IN_PROGRESS", "COMPLETED"]
    # The missing stream is learnt once; after that the client only polls.
    assert sum(path.endswith("/events") for path in requested) == 1
    assert requested.count(f"/v1/ai/gemini-2-5-flash-image-preview/{second.task_id}") >= 2


def test_stream_is_reopened_so_keep_alives_cannot_outlast_the_deadline() -> None:
    def status(value: str) -> bytes:
        task = {"task_id": "t", "status": value, "generated": []}
        return b"event: status\ndata: " + json.dumps(task).encode() + b"\n\n"

    streams = iter([status("IN_PROGRESS") + b": keep-alive\n\n", status("COMPLETED")])
    requests: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request.url.path)
        headers = {"content-type": "text/event-stream"}
        return httpx.Response(200, content=next(streams), headers=headers)

    http = httpx.Client(transport=httpx.MockTransport(handler))
    with http, Client("k", "http://imagegate.invalid", http_client=http) as client:
        assert client.wait("t", timeout=10).status == "COMPLETED"
    # A keep-alive with less than a read timeout left: reconnect with a read timeout that
    # ends at the deadline rather than keep listening past it.
    assert requests == ["/v1/ai/gemini-2-5-flash-image-preview/t/events"] * 2


def test_wait_rides_out_rate_limits_and_unavailability() -> None:
    answers = iter(
        [
            httpx.Response(429, json={"message": "slow down"}, headers={"retry-after": "0"}),
            httpx.Response(503, json={"message": "Service Unavailable. Please try again later."}),
            httpx.Response(200, json={"data": {"task_id": "t", "status": "COMPLETED"}}),
        ]
    )
    requests: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request.url.path)
        if request.url.path.endswith("/events"):
            return httpx.Response(404, json={"message": "Not Found"})
        return next(answers)

    http = httpx.Client(transport=httpx.MockTransport(handler))
    with http, Client("k", "http://imagegate.invalid", http_client=http) as client:
        client._events_supported = False
        assert client.wait("t", timeout=10).status == "COMPLETED"
    assert len(requests) == 3


@pytest.mark.parametrize(
    ("status", "headers", "kind"),
    [
        (429, {"retry-after": "7"}, RateLimitError),
        (500, {}, ServerError),
        (503, {}, ServerError),
    ],
)
def test_other_statuses_map_to_typed_errors(
    status: int, headers: dict[str, str], kind: type[Exception]
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json={"message": f"server says {status}"}, headers=headers)

    http = httpx.Client(transport=httpx.MockTransport(handler))
    with http, Client("k", "http://imagegate.invalid", http_client=http) as client:
        with pytest.raises(kind) as caught:
            client.get("t")
    assert caught.value.status_code == status  # type: ignore[attr-defined]
    assert caught.value.message == f"server says {status}"  # type: ignore[attr-defined]
    if status == 429:
        assert caught.value.retry_after == 7.0  # type: ignore[attr-defined]


def test_an_unreachable_server_is_a_connection_error() -> None:
    with Client("k", f"http://127.0.0.1:{free_port()}") as client:
        with pytest.raises(APIConnectionError, match="cannot reach"):
            client.list()


def test_url_and_key_come_from_the_environment(
    server: ServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IMAGEGATE_URL", server.url + "/")
    monkeypatch.setenv("IMAGEGATE_KEY", KEY_A)
    with Client() as client:
        assert client.base_url == server.url
        assert isinstance(client.list(per_page=1), list)


def test_image_downloads_never_carry_the_key(client: Client) -> None:
    sent: list[httpx.Request] = []
    http = httpx.Client(event_hooks={"request": [sent.append]})
    with http, Client(KEY_A, client.base_url, http_client=http) as keyed:
        task = keyed.generate("no key on downloads")
    downloads = [r for r in sent if r.url.path.startswith("/v1/files/")]
    assert len(downloads) == len(task.generated) == 1
    assert "x-freepik-api-key" not in downloads[0].headers
    assert all("x-freepik-api-key" in r.headers for r in sent if r not in downloads)


async def test_async_client(server: ServerProcess, file_server: FileServer) -> None:
    url = file_server.add("/async-red.png", image_bytes("PNG", color=RED))
    statuses: list[str] = []
    async with AsyncClient(KEY_A, server.url) as client:
        task = await client.generate(
            "async", references=[url, image_bytes()], on_update=lambda t: statuses.append(t.status)
        )
        assert task.completed and RED in colours(task.images[0])
        assert statuses[-1] == "COMPLETED"
        assert (await client.list(per_page=1))[0].task_id == task.task_id
        with pytest.raises(TaskFailedError):
            await client.generate("x", references=[file_server.url + "/async-missing.png"])
        with pytest.raises(NotFoundError):
            await client.get(str(uuid.uuid4()))
        with pytest.raises(ValidationError):
            await client.create("")


async def test_async_wait_timeout_and_stream(slow_server: ServerProcess) -> None:
    statuses: list[str] = []
    async with AsyncClient(KEY_A, slow_server.url) as client:
        created = await client.create("async slow")
        with pytest.raises(WaitTimeout):
            await client.wait(created.task_id, timeout=0.05)
        done = await client.wait(created.task_id, on_update=lambda t: statuses.append(t.status))
    assert done.completed
    assert statuses[-1] == "COMPLETED"


def test_output_names() -> None:
    png, jpeg = image_bytes("PNG"), image_bytes("JPEG")
    assert output_paths("out.png", [png], default_stem="t") == [Path("out.png")]
    assert output_paths("out.png", [png, png], default_stem="t") == [
        Path("out-1.png"),
        Path("out-2.png"),
    ]
    assert output_paths("shot-{n}.png", [png, png], default_stem="t") == [
        Path("shot-1.png"),
        Path("shot-2.png"),
    ]
    assert output_paths("out", [jpeg], default_stem="t") == [Path("out.jpg")]
    assert output_paths(None, [png, jpeg], default_stem="abc") == [
        Path("abc-1.png"),
        Path("abc-2.jpg"),
    ]
