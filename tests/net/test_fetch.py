"""Guarded GET and POST against servers on 127.0.0.1, and against a scripted network backend
for "public" addresses, which records where a connection would go and opens no socket."""

from __future__ import annotations

import asyncio
import datetime
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpcore
import httpx
import pytest

from imagegate.net import (
    USER_AGENT,
    GuardedClient,
    OutboundError,
    fetch_image_bytes,
    make_client,
    post_json_guarded,
)
from imagegate.net.backend import AsyncioBackend

PUBLIC_IP = "93.184.215.14"
PNG = b"\x89PNG\r\n\x1a\n" + b"pixels" * 10


# --- a tiny HTTP/1.1 server on 127.0.0.1 ----------------------------------------------------


@dataclass
class Seen:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes


# A handler writes the whole answer for one request; it returns True to keep the connection
# open for the next request.
Handler = Callable[[Seen, asyncio.StreamWriter], Awaitable[bool]]


def answer(
    status: int,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    *,
    keep_alive: bool = False,
) -> bytes:
    lines = [f"HTTP/1.1 {status} {httpx.codes.get_reason_phrase(status)}"]
    all_headers = {"Content-Length": str(len(body))}
    if not keep_alive:
        all_headers["Connection"] = "close"
    all_headers.update(headers or {})
    lines += [f"{name}: {value}" for name, value in all_headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class LocalServer:
    def __init__(self, handler: Handler, ssl_context: ssl.SSLContext | None = None) -> None:
        self._handler = handler
        self._ssl = ssl_context
        self.requests: list[Seen] = []
        self.connections = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    async def __aenter__(self) -> LocalServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self._ssl)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        try:
            while True:
                request_line = await reader.readline()
                if not request_line:
                    return
                method, target, _ = request_line.decode().split(" ", 2)
                headers: dict[str, str] = {}
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    name, value = line.decode().split(":", 1)
                    headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                seen = Seen(method, target, headers, body)
                self.requests.append(seen)
                keep_open = await self._handler(seen, writer)
                await writer.drain()
                if not keep_open:
                    return
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            return
        finally:
            self._tasks.discard(task)
            writer.close()

    async def settle(self, requests: int, deadline: float = 5.0) -> None:
        """Wait until the server has recorded `requests` requests."""
        end = time.monotonic() + deadline
        while len(self.requests) < requests:
            assert time.monotonic() < end, f"server saw {len(self.requests)} of {requests}"
            await asyncio.sleep(0.01)


def respond(status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> Handler:
    async def handler(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        writer.write(answer(status, body, headers, keep_alive=True))
        return True

    return handler


async def never_answer(seen: Seen, writer: asyncio.StreamWriter) -> bool:
    await asyncio.Event().wait()
    return False


class StubResolver:
    """Answers each lookup of a name with the next answer in its list (the last one repeats)."""

    def __init__(self, table: dict[str, list[Sequence[str]]]) -> None:
        self.table = table
        self.lookups: list[str] = []

    async def resolve(self, host: str, port: int) -> Sequence[str]:
        self.lookups.append(host)
        if host not in self.table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        answers = self.table[host]
        return answers.pop(0) if len(answers) > 1 else answers[0]


def local_names(*names: str) -> StubResolver:
    return StubResolver({name: [["127.0.0.1"]] for name in names})


# --- a network backend that scripts "public" hosts ------------------------------------------


class ScriptedStream(httpcore.AsyncMockStream):
    def __init__(self, buffer: list[bytes], backend: ScriptedBackend) -> None:
        super().__init__(buffer)
        self._backend = backend

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        self._backend.tls_hostnames.append(server_hostname)
        return self


class ScriptedBackend(httpcore.AsyncNetworkBackend):
    """Records every connection; serves canned bytes for scripted addresses and opens real
    sockets only to 127.0.0.1, so a test can never reach a non-loopback address."""

    def __init__(self, scripts: dict[str, bytes] | None = None) -> None:
        self.scripts = scripts or {}
        self.connects: list[tuple[str, int]] = []
        self.tls_hostnames: list[str | None] = []
        self._loopback = AsyncioBackend()  # the backend imagegate uses

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        self.connects.append((host, port))
        if host == "127.0.0.1":
            return await self._loopback.connect_tcp(host, port, timeout=timeout)
        if host in self.scripts:
            return ScriptedStream([self.scripts[host]], self)
        raise httpcore.ConnectError(f"scripted backend: nothing at {host}")

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise AssertionError("no unix sockets expected")

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


@asynccontextmanager
async def client_for(backend: ScriptedBackend | None = None) -> AsyncIterator[GuardedClient]:
    async with make_client(network_backend=backend or ScriptedBackend()) as client:
        yield client


@pytest.fixture
async def client() -> AsyncIterator[GuardedClient]:
    """A guarded client that can reach nothing but 127.0.0.1, whatever the code under test
    asks for: a regression that looked a fake name up again would fail, not query DNS."""
    async with client_for() as guarded:
        yield guarded


# --- fetch: success, headers, pooling -------------------------------------------------------


async def test_fetch_returns_body_type_and_sends_original_host(client: GuardedClient) -> None:
    async with LocalServer(respond(200, PNG, {"Content-Type": "image/png"})) as server:
        resolver = local_names("images.test")
        result = await fetch_image_bytes(
            f"http://images.test:{server.port}/cat.png",
            max_bytes=10_000,
            timeout=5,
            allow_private=True,
            resolver=resolver,
            client=client,
        )
    assert result.data == PNG
    assert result.content_type == "image/png"
    assert result.final_url == f"http://images.test:{server.port}/cat.png"
    [seen] = server.requests
    # images.test exists in no real DNS: reaching the server at all proves the connection
    # used the stub's answer and no second lookup.
    assert seen.headers["host"] == f"images.test:{server.port}"
    assert seen.headers["user-agent"] == USER_AGENT
    assert seen.headers["accept-encoding"] == "identity"
    assert seen.method == "GET" and seen.target == "/cat.png"
    assert resolver.lookups == ["images.test"]


async def test_connection_goes_to_the_checked_address_not_a_second_lookup(
    client: GuardedClient,
) -> None:
    # A rebinding resolver: 127.0.0.1 at check time, 127.0.0.2 (where nothing listens) after.
    resolver = StubResolver({"rebind.test": [["127.0.0.1"], ["127.0.0.2"]]})
    async with LocalServer(respond(200, PNG)) as server:
        result = await fetch_image_bytes(
            f"http://rebind.test:{server.port}/x",
            max_bytes=10_000,
            timeout=5,
            allow_private=True,
            resolver=resolver,
            client=client,
        )
    assert result.data == PNG
    assert resolver.lookups == ["rebind.test"]
    assert server.requests[0].headers["host"] == f"rebind.test:{server.port}"


async def test_rebinding_to_loopback_after_a_public_answer_still_connects_to_the_public_one() -> (
    None
):
    backend = ScriptedBackend({PUBLIC_IP: answer(200, PNG, {"Content-Type": "image/png"})})
    resolver = StubResolver({"public.test": [[PUBLIC_IP], ["127.0.0.1"]]})
    async with client_for(backend) as client:
        result = await fetch_image_bytes(
            "http://public.test/cat.png",
            max_bytes=10_000,
            timeout=5,
            allow_private=False,
            resolver=resolver,
            client=client,
        )
    assert result.data == PNG
    assert backend.connects == [(PUBLIC_IP, 80)]
    assert resolver.lookups == ["public.test"]


async def test_https_handshake_names_the_original_host() -> None:
    backend = ScriptedBackend({PUBLIC_IP: answer(200, PNG)})
    resolver = StubResolver({"public.test": [[PUBLIC_IP]]})
    async with client_for(backend) as client:
        await fetch_image_bytes(
            "https://public.test/cat.png",
            max_bytes=10_000,
            timeout=5,
            allow_private=False,
            resolver=resolver,
            client=client,
        )
    assert backend.connects == [(PUBLIC_IP, 443)]
    assert backend.tls_hostnames == ["public.test"]


@pytest.mark.parametrize(
    ("url", "connect"),
    [
        (
            "http://[2606:2800:21f:cb07:6820:80da:af6b:8b2c]/x",
            "2606:2800:21f:cb07:6820:80da:af6b:8b2c",
        ),
        ("http://1572394766:8080/x", PUBLIC_IP),  # 93.184.215.14 spelled as one number
    ],
)
async def test_ip_literal_urls_connect_to_the_address_they_name(url: str, connect: str) -> None:
    backend = ScriptedBackend({connect: answer(200, PNG)})
    async with client_for(backend) as client:
        result = await fetch_image_bytes(
            url, max_bytes=10_000, timeout=5, allow_private=False, client=client
        )
    assert result.data == PNG
    assert [host for host, _ in backend.connects] == [connect]


async def test_next_address_is_tried_when_the_first_refuses(client: GuardedClient) -> None:
    resolver = StubResolver({"images.test": [["127.0.0.2", "127.0.0.1"]]})
    async with LocalServer(respond(200, PNG)) as server:
        result = await fetch_image_bytes(
            f"http://images.test:{server.port}/x",
            max_bytes=10_000,
            timeout=5,
            allow_private=True,
            resolver=resolver,
            client=client,
        )
    assert result.data == PNG


async def test_shared_client_reuses_the_connection() -> None:
    async with LocalServer(respond(200, PNG)) as server, client_for() as client:
        for _ in range(2):
            await fetch_image_bytes(
                f"http://images.test:{server.port}/x",
                max_bytes=10_000,
                timeout=5,
                allow_private=True,
                resolver=local_names("images.test"),
                client=client,
            )
        assert len(server.requests) == 2
        assert server.connections == 1


async def test_idle_connection_the_server_closed_is_not_reused() -> None:
    # The server keeps the first connection open after answering, then closes it while it
    # sits idle in the pool. A webhook POST is not retried by the client, so sending it on
    # that dead connection would fail; it must go on a new one.
    async def answer_then_hang_up(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        writer.write(answer(200, b"ok", keep_alive=True))
        await writer.drain()
        return len(server.requests) > 1

    async with LocalServer(answer_then_hang_up) as server, client_for() as client:
        for _ in range(2):
            result = await post_json_guarded(
                f"http://hooks.test:{server.port}/hook",
                b"{}",
                {},
                timeout=5,
                allow_private=True,
                resolver=local_names("hooks.test"),
                client=client,
            )
            assert result.status_code == 200
            await asyncio.sleep(0.05)  # the close reaches the client's event loop
        assert len(server.requests) == 2
        assert server.connections == 2


async def test_strict_request_never_reuses_a_connection_opened_under_allow_private() -> None:
    backend = ScriptedBackend()
    async with LocalServer(respond(200, b"private")) as server, client_for(backend) as client:
        backend.scripts[PUBLIC_IP] = answer(200, b"public")
        resolver = StubResolver({"cdn.test": [["127.0.0.1"], [PUBLIC_IP]]})
        url = f"http://cdn.test:{server.port}/x"
        first = await fetch_image_bytes(
            url, max_bytes=100, timeout=5, allow_private=True, resolver=resolver, client=client
        )
        second = await fetch_image_bytes(
            url, max_bytes=100, timeout=5, allow_private=False, resolver=resolver, client=client
        )
    assert (first.data, second.data) == (b"private", b"public")
    assert backend.connects == [("127.0.0.1", server.port), (PUBLIC_IP, server.port)]
    assert len(server.requests) == 1


async def test_credentials_become_basic_auth_and_stay_out_of_results(client: GuardedClient) -> None:
    async with LocalServer(respond(200, PNG)) as server:
        result = await fetch_image_bytes(
            f"http://alice:s3cret@images.test:{server.port}/x",
            max_bytes=10_000,
            timeout=5,
            allow_private=True,
            resolver=local_names("images.test"),
            client=client,
        )
    assert server.requests[0].headers["authorization"] == "Basic YWxpY2U6czNjcmV0"
    assert "s3cret" not in result.final_url and "alice" not in result.final_url


# --- fetch: refusals before any connection ---------------------------------------------------


async def test_loopback_url_is_refused_without_a_connection() -> None:
    async with LocalServer(respond(200, PNG)) as server:
        with pytest.raises(OutboundError) as caught:
            await fetch_image_bytes(
                f"http://127.0.0.1:{server.port}/x",
                max_bytes=10_000,
                timeout=5,
                allow_private=False,
            )
        # A later allowed request is accepted after any earlier connection would have been,
        # so once it is seen, the count is final.
        await fetch_image_bytes(
            f"http://127.0.0.1:{server.port}/x", max_bytes=10_000, timeout=5, allow_private=True
        )
        await server.settle(1)
        assert server.connections == 1
    assert "points to 127.0.0.1, a loopback address" in caught.value.reason


async def test_host_resolving_to_loopback_is_refused_without_a_connection(
    client: GuardedClient,
) -> None:
    async with LocalServer(respond(200, PNG)) as server:
        with pytest.raises(OutboundError) as caught:
            await fetch_image_bytes(
                f"http://sneaky.test:{server.port}/x",
                max_bytes=10_000,
                timeout=5,
                allow_private=False,
                resolver=local_names("sneaky.test"),
                client=client,
            )
        await fetch_image_bytes(
            f"http://127.0.0.1:{server.port}/x", max_bytes=10_000, timeout=5, allow_private=True
        )
        await server.settle(1)
        assert server.connections == 1
    assert caught.value.reason.startswith("URL resolves to 127.0.0.1, a loopback address; ")


async def test_client_refuses_requests_that_skipped_the_guard() -> None:
    async with LocalServer(respond(200, PNG)) as server, client_for() as client:
        with pytest.raises(httpx.ConnectError, match=r"checked by imagegate\.net"):
            await client.get(f"http://127.0.0.1:{server.port}/x")
        await fetch_image_bytes(
            f"http://127.0.0.1:{server.port}/x",
            max_bytes=10_000,
            timeout=5,
            allow_private=True,
            client=client,
        )
        await server.settle(1)
        assert server.connections == 1


async def test_scheme_is_checked_even_with_allow_private() -> None:
    with pytest.raises(OutboundError, match="uses scheme 'file'"):
        await fetch_image_bytes("file:///etc/passwd", max_bytes=10, timeout=5, allow_private=True)


# --- fetch: size, time, status ----------------------------------------------------------------


async def test_declared_length_over_the_cap_is_refused_before_reading(
    client: GuardedClient,
) -> None:
    async def big_promise(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 50000000\r\n\r\n")
        await writer.drain()
        await asyncio.Event().wait()  # the body never comes: reading it would time out
        return False

    async with LocalServer(big_promise) as server:
        with pytest.raises(OutboundError) as caught:
            await fetch_image_bytes(
                f"http://images.test:{server.port}/x",
                max_bytes=1000,
                timeout=5,
                allow_private=True,
                resolver=local_names("images.test"),
                client=client,
            )
    assert caught.value.reason == (
        "URL answered with 50000000 bytes, more than the limit of 1000 bytes"
    )


async def test_chunked_body_over_the_cap_is_cut_at_the_cap(client: GuardedClient) -> None:
    async def endless_chunks(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        while True:  # never ends: only the cap can stop the reader before the timeout
            writer.write(b"400\r\n" + b"x" * 0x400 + b"\r\n")
            await writer.drain()
            await asyncio.sleep(0)

    async with LocalServer(endless_chunks) as server:
        with pytest.raises(OutboundError) as caught:
            await fetch_image_bytes(
                f"http://images.test:{server.port}/x",
                max_bytes=5000,
                timeout=5,
                allow_private=True,
                resolver=local_names("images.test"),
                client=client,
            )
    assert caught.value.reason == "URL sent more than the limit of 5000 bytes"


async def test_body_exactly_at_the_cap_is_accepted(client: GuardedClient) -> None:
    body = b"y" * 5000
    async with LocalServer(respond(200, body)) as server:
        result = await fetch_image_bytes(
            f"http://images.test:{server.port}/x",
            max_bytes=5000,
            timeout=5,
            allow_private=True,
            resolver=local_names("images.test"),
            client=client,
        )
    assert result.data == body


async def test_trickling_server_is_cut_off_at_the_total_timeout(client: GuardedClient) -> None:
    async def trickle(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
        while True:  # each byte arrives well within any per-read timeout
            writer.write(b"x")
            await writer.drain()
            await asyncio.sleep(0.2)

    async with LocalServer(trickle) as server:
        started = time.monotonic()
        with pytest.raises(OutboundError) as caught:
            await fetch_image_bytes(
                f"http://images.test:{server.port}/x",
                max_bytes=10_000,
                timeout=1,
                allow_private=True,
                resolver=local_names("images.test"),
                client=client,
            )
        elapsed = time.monotonic() - started
    assert caught.value.reason == "URL took longer than 1 s to download"
    assert 0.9 < elapsed < 2.0


async def test_silent_server_times_out_waiting_for_an_answer(client: GuardedClient) -> None:
    async with LocalServer(never_answer) as server:
        with pytest.raises(OutboundError) as caught:
            await fetch_image_bytes(
                f"http://images.test:{server.port}/x",
                max_bytes=10_000,
                timeout=0.5,
                allow_private=True,
                resolver=local_names("images.test"),
                client=client,
            )
    assert caught.value.reason == "URL did not answer within 0.5 s"


async def test_not_found_is_a_clear_error(client: GuardedClient) -> None:
    async with LocalServer(respond(404, b"nope")) as server:
        with pytest.raises(OutboundError) as caught:
            await fetch_image_bytes(
                f"http://images.test:{server.port}/missing.png",
                max_bytes=10_000,
                timeout=5,
                allow_private=True,
                resolver=local_names("images.test"),
                client=client,
            )
    assert caught.value.reason == "URL answered HTTP 404 Not Found"


async def test_compressed_answer_is_refused(client: GuardedClient) -> None:
    async with LocalServer(respond(200, b"\x1f\x8b...", {"Content-Encoding": "gzip"})) as server:
        with pytest.raises(OutboundError, match="Content-Encoding gzip"):
            await fetch_image_bytes(
                f"http://images.test:{server.port}/x",
                max_bytes=10_000,
                timeout=5,
                allow_private=True,
                resolver=local_names("images.test"),
                client=client,
            )


async def test_malformed_answer_is_a_clear_error(client: GuardedClient) -> None:
    async def garbage(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"SPEAKING GIBBERISH\r\n\r\n")
        return False

    async with LocalServer(garbage) as server:
        with pytest.raises(OutboundError, match="answered with a malformed HTTP response"):
            await fetch_image_bytes(
                f"http://images.test:{server.port}/x",
                max_bytes=10_000,
                timeout=5,
                allow_private=True,
                resolver=local_names("images.test"),
                client=client,
            )


# --- fetch: redirects -------------------------------------------------------------------------


async def redirect_chain(seen: Seen, writer: asyncio.StreamWriter) -> bool:
    # /r/N redirects to /r/N-1; /r/0 is the image.
    remaining = int(seen.target.rsplit("/", 1)[1])
    if remaining == 0:
        writer.write(answer(200, PNG, {"Content-Type": "image/png"}, keep_alive=True))
    else:
        writer.write(answer(302, headers={"Location": f"/r/{remaining - 1}"}, keep_alive=True))
    return True


async def test_two_redirects_are_followed(client: GuardedClient) -> None:
    async with LocalServer(redirect_chain) as server:
        result = await fetch_image_bytes(
            f"http://images.test:{server.port}/r/2",
            max_bytes=10_000,
            timeout=5,
            allow_private=True,
            resolver=local_names("images.test"),
            client=client,
        )
    assert result.data == PNG
    assert result.final_url == f"http://images.test:{server.port}/r/0"
    assert [seen.target for seen in server.requests] == ["/r/2", "/r/1", "/r/0"]


async def test_four_redirects_are_refused(client: GuardedClient) -> None:
    async with LocalServer(redirect_chain) as server:
        with pytest.raises(OutboundError) as caught:
            await fetch_image_bytes(
                f"http://images.test:{server.port}/r/4",
                max_bytes=10_000,
                timeout=5,
                allow_private=True,
                max_redirects=3,
                resolver=local_names("images.test"),
                client=client,
            )
    assert caught.value.reason == "URL redirected more than 3 times"
    assert [seen.target for seen in server.requests] == ["/r/4", "/r/3", "/r/2", "/r/1"]


async def test_error_after_a_redirect_names_where_it_happened(client: GuardedClient) -> None:
    async def to_missing(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        if seen.target == "/start":
            writer.write(answer(301, headers={"Location": "/gone.png"}, keep_alive=True))
        else:
            writer.write(answer(404, keep_alive=True))
        return True

    async with LocalServer(to_missing) as server:
        with pytest.raises(OutboundError) as caught:
            await fetch_image_bytes(
                f"http://images.test:{server.port}/start",
                max_bytes=10_000,
                timeout=5,
                allow_private=True,
                resolver=local_names("images.test"),
                client=client,
            )
    assert caught.value.reason == (
        f"URL (redirected to http://images.test:{server.port}/gone.png) answered HTTP 404 Not Found"
    )


@pytest.mark.parametrize(
    ("location", "expected"),
    [
        (
            "http://internal.test/secret",
            "URL redirects to http://internal.test/secret, which resolves to 10.0.0.7, "
            "a private address; imagegate does not connect",
        ),
        (
            "http://169.254.169.254/latest/meta-data/",
            "URL redirects to http://169.254.169.254/latest/meta-data/, which points to "
            "169.254.169.254, a link-local address;",
        ),
        (
            "http://[::ffff:127.0.0.1]:8080/",
            "an IPv4-mapped form of 127.0.0.1, a loopback address",
        ),
        (
            "file:///etc/passwd",
            "which uses scheme 'file'; only http and https URLs are allowed",
        ),
    ],
)
async def test_redirect_to_a_refused_url_is_refused_before_connecting(
    location: str, expected: str
) -> None:
    backend = ScriptedBackend({PUBLIC_IP: answer(302, headers={"Location": location})})
    resolver = StubResolver({"public.test": [[PUBLIC_IP]], "internal.test": [["10.0.0.7"]]})
    async with client_for(backend) as client:
        with pytest.raises(OutboundError) as caught:
            await fetch_image_bytes(
                "http://public.test/cat.png",
                max_bytes=10_000,
                timeout=5,
                allow_private=False,
                resolver=resolver,
                client=client,
            )
    assert expected in caught.value.reason
    assert backend.connects == [(PUBLIC_IP, 80)]


async def test_redirect_hop_is_resolved_and_pinned_like_the_first() -> None:
    backend = ScriptedBackend(
        {
            PUBLIC_IP: answer(302, headers={"Location": "https://cdn.test/cat.png"}),
            "2606:2800:21f:cb07:6820:80da:af6b:8b2c": answer(200, PNG),
        }
    )
    resolver = StubResolver(
        {
            "public.test": [[PUBLIC_IP]],
            "cdn.test": [["2606:2800:21f:cb07:6820:80da:af6b:8b2c"], ["127.0.0.1"]],
        }
    )
    async with client_for(backend) as client:
        result = await fetch_image_bytes(
            "http://public.test/cat.png",
            max_bytes=10_000,
            timeout=5,
            allow_private=False,
            resolver=resolver,
            client=client,
        )
    assert result.final_url == "https://cdn.test/cat.png"
    assert backend.connects == [
        (PUBLIC_IP, 80),
        ("2606:2800:21f:cb07:6820:80da:af6b:8b2c", 443),
    ]
    assert backend.tls_hostnames == ["cdn.test"]
    assert resolver.lookups == ["public.test", "cdn.test"]


# --- TLS to 127.0.0.1 under a host name --------------------------------------------------------


@dataclass
class Certificates:
    server: ssl.SSLContext
    client: ssl.SSLContext


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    """A CA and a certificate for images.test only (no IP address in it)."""
    pytest.importorskip("cryptography")
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def name(common_name: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(name("imagegate test CA"))
        .issuer_name(name("imagegate test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf_cert = (
        x509.CertificateBuilder()
        .subject_name(name("images.test"))
        .issuer_name(ca_cert.subject)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("images.test")]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    directory: Path = tmp_path_factory.mktemp("tls")
    pem = serialization.Encoding.PEM
    (directory / "ca.pem").write_bytes(ca_cert.public_bytes(pem))
    (directory / "leaf.pem").write_bytes(leaf_cert.public_bytes(pem))
    (directory / "leaf.key").write_bytes(
        leaf_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(directory / "leaf.pem", directory / "leaf.key")
    client = ssl.create_default_context(cafile=str(directory / "ca.pem"))
    return Certificates(server=server, client=client)


async def test_https_verifies_the_certificate_against_the_host_name(
    certificates: Certificates,
) -> None:
    handler = respond(200, PNG, {"Content-Type": "image/png"})
    async with (
        LocalServer(handler, ssl_context=certificates.server) as server,
        make_client(verify=certificates.client, network_backend=ScriptedBackend()) as client,
    ):
        result = await fetch_image_bytes(
            f"https://images.test:{server.port}/cat.png",
            max_bytes=10_000,
            timeout=5,
            allow_private=True,
            resolver=local_names("images.test"),
            client=client,
        )
        assert result.data == PNG
        assert server.requests[0].headers["host"] == f"images.test:{server.port}"

        # Same address, a name the certificate does not cover: verification must fail,
        # which shows it is done against the name and not the address.
        with pytest.raises(OutboundError) as caught:
            await fetch_image_bytes(
                f"https://other.test:{server.port}/cat.png",
                max_bytes=10_000,
                timeout=5,
                allow_private=True,
                resolver=local_names("other.test"),
                client=client,
            )
    assert caught.value.reason.startswith("URL could not be reached (")
    assert "CERTIFICATE_VERIFY_FAILED" in caught.value.reason
    assert len(server.requests) == 1


# --- post_json_guarded -------------------------------------------------------------------------

BODY = b'{"task_id": "t1", "status": "COMPLETED", "generated": []}'


async def test_post_delivers_body_and_headers(client: GuardedClient) -> None:
    async with LocalServer(respond(204, headers={"X-Receiver": "ok"})) as server:
        result = await post_json_guarded(
            f"http://hooks.test:{server.port}/receive",
            BODY,
            {"webhook-id": "msg_1", "webhook-signature": "v1,abc"},
            timeout=5,
            allow_private=True,
            resolver=local_names("hooks.test"),
            client=client,
        )
    assert result.status_code == 204
    assert result.headers["x-receiver"] == "ok"
    assert result.elapsed_ms > 0
    [seen] = server.requests
    assert seen.method == "POST" and seen.target == "/receive"
    assert seen.body == BODY
    assert seen.headers["content-type"] == "application/json"
    assert seen.headers["webhook-id"] == "msg_1"
    assert seen.headers["webhook-signature"] == "v1,abc"
    assert seen.headers["host"] == f"hooks.test:{server.port}"
    assert seen.headers["user-agent"] == USER_AGENT


async def test_post_server_error_is_an_answer_not_an_exception() -> None:
    async with LocalServer(respond(500, b"boom")) as server:
        result = await post_json_guarded(
            f"http://127.0.0.1:{server.port}/receive", BODY, {}, timeout=5, allow_private=True
        )
    assert result.status_code == 500


async def test_post_does_not_follow_redirects() -> None:
    async with LocalServer(respond(307, headers={"Location": "/elsewhere"})) as server:
        result = await post_json_guarded(
            f"http://127.0.0.1:{server.port}/receive", BODY, {}, timeout=5, allow_private=True
        )
    assert result.status_code == 307
    assert result.headers["location"] == "/elsewhere"
    assert [seen.target for seen in server.requests] == ["/receive"]


async def test_post_connection_refused_is_an_outbound_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    with pytest.raises(OutboundError) as caught:
        await post_json_guarded(
            f"http://127.0.0.1:{closed_port}/receive", BODY, {}, timeout=5, allow_private=True
        )
    assert caught.value.reason.startswith("URL could not be reached (")


async def test_post_times_out() -> None:
    async with LocalServer(never_answer) as server:
        started = time.monotonic()
        with pytest.raises(OutboundError) as caught:
            await post_json_guarded(
                f"http://127.0.0.1:{server.port}/receive",
                BODY,
                {},
                timeout=0.5,
                allow_private=True,
            )
        elapsed = time.monotonic() - started
    assert caught.value.reason == "URL did not answer within 0.5 s"
    assert elapsed < 1.5


async def test_post_checks_the_address_at_delivery_time() -> None:
    resolver = StubResolver({"hooks.test": [[PUBLIC_IP], ["10.9.8.7"]]})
    backend = ScriptedBackend({PUBLIC_IP: answer(200)})
    async with client_for(backend) as client:
        first = await post_json_guarded(
            "http://hooks.test/receive",
            BODY,
            {},
            timeout=5,
            allow_private=False,
            resolver=resolver,
            client=client,
        )
        with pytest.raises(OutboundError) as caught:
            await post_json_guarded(
                "http://hooks.test/receive",
                BODY,
                {},
                timeout=5,
                allow_private=False,
                resolver=resolver,
                client=client,
            )
    assert first.status_code == 200
    assert caught.value.reason.startswith("URL resolves to 10.9.8.7, a private address; ")
    assert backend.connects == [(PUBLIC_IP, 80)]


async def test_post_to_loopback_is_refused_without_a_connection() -> None:
    async with LocalServer(respond(200)) as server:
        with pytest.raises(OutboundError, match="a loopback address"):
            await post_json_guarded(
                f"http://127.0.0.1:{server.port}/receive", BODY, {}, timeout=5, allow_private=False
            )
        await post_json_guarded(
            f"http://127.0.0.1:{server.port}/receive", BODY, {}, timeout=5, allow_private=True
        )
        await server.settle(1)
        assert server.connections == 1


async def test_post_answer_counts_even_when_its_body_never_ends() -> None:
    async def status_then_trickle(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 202 Accepted\r\nContent-Length: 1000\r\n\r\n")
        while True:
            writer.write(b".")
            await writer.drain()
            await asyncio.sleep(0.1)

    async with LocalServer(status_then_trickle) as server:
        result = await post_json_guarded(
            f"http://127.0.0.1:{server.port}/receive", BODY, {}, timeout=0.5, allow_private=True
        )
    assert result.status_code == 202


async def test_post_keeps_the_connection_for_the_next_delivery(client: GuardedClient) -> None:
    async with LocalServer(respond(200, b'{"ok": true}')) as server:
        for _ in range(3):
            result = await post_json_guarded(
                f"http://hooks.test:{server.port}/receive",
                BODY,
                {},
                timeout=5,
                allow_private=True,
                resolver=local_names("hooks.test"),
                client=client,
            )
            assert result.status_code == 200
        assert len(server.requests) == 3
        assert server.connections == 1
