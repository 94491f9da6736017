"""Guarded outbound HTTP: fetch a reference image, deliver a webhook.

Every request is checked by `imagegate.net.guard.check_url` and then sent through a
`GuardedClient`, whose transport connects only to the addresses that check approved:

- The request URL keeps its host name, so the `Host` header, TLS SNI and certificate
  verification all use the real name, and pooled connections are keyed by that name.
- The checked addresses travel with the request (an httpx request extension) to
  `_PinnedNetworkBackend`, which opens the socket to one of them. No second DNS lookup
  happens, so DNS rebinding cannot swap in another address after the check.
- A request that did not go through the guard is refused before any socket is opened.
- Connections checked with `allow_private=True` live in a pool of their own, so a request
  checked strictly never reuses a connection that went to a private address.

This design was chosen over rewriting the URL's host to the IP (with `Host` and the
`sni_hostname` extension set to the name): that keys httpcore's pool by IP, so an https
connection verified for one host name would be reused for another name on the same IP
without verifying that name's certificate.
"""

from __future__ import annotations

import asyncio
import contextvars
import ssl
import time
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Mapping
from contextlib import AsyncExitStack, contextmanager
from dataclasses import dataclass

import httpcore
import httpx

from imagegate import __version__
from imagegate.net.backend import AsyncioBackend
from imagegate.net.guard import (
    CheckedURL,
    OutboundError,
    Resolver,
    check_url,
    redact_url,
)

__all__ = [
    "USER_AGENT",
    "FetchResult",
    "GuardedClient",
    "PostResult",
    "fetch_image_bytes",
    "make_client",
    "post_json_guarded",
]

USER_AGENT = f"imagegate/{__version__}"

_CHECKED_EXTENSION = "imagegate.checked_url"
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# httpx's own defaults.
_DEFAULT_LIMITS = httpx.Limits(
    max_connections=100, max_keepalive_connections=20, keepalive_expiry=5.0
)
# A webhook receiver's answer body is read only so the connection can be reused.
_MAX_DISCARDED_BODY = 64 * 1024

# Set by the transport for the duration of one request, read by the network backend when
# the pool opens a new connection for that request (httpcore connects in the caller's task).
_current_check: contextvars.ContextVar[CheckedURL | None] = contextvars.ContextVar(
    "imagegate_net_current_check", default=None
)


@dataclass(frozen=True)
class FetchResult:
    data: bytes
    content_type: str | None
    final_url: str  # after redirects, without credentials


@dataclass(frozen=True)
class PostResult:
    status_code: int
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "
    elapsed_ms: float


class _PinnedNetworkBackend(httpcore.AsyncNetworkBackend):
    """Opens TCP connections only to the addresses the guard checked for the current request."""

    def __init__(self, inner: httpcore.AsyncNetworkBackend) -> None:
        self._inner = inner

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        checked = _current_check.get()
        if checked is None or (checked.host, checked.port) != (host, port):
            raise httpcore.ConnectError(
                f"refused to connect to {host}:{port}: it was not checked by imagegate.net.guard"
            )
        failure: Exception | None = None
        for address in checked.addresses:
            try:
                return await self._inner.connect_tcp(
                    address,
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None  # check_url never returns an empty address list
        raise failure

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("imagegate's outbound client does not use unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


# httpcore's exceptions as httpx's, most specific first, so callers of a GuardedClient see
# the same exception types as with any httpx client.
_HTTPX_ERRORS: tuple[tuple[type[Exception], type[httpx.TransportError]], ...] = (
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.TimeoutException, httpx.TimeoutException),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.NetworkError, httpx.NetworkError),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.ProtocolError, httpx.ProtocolError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
    (httpcore.ProxyError, httpx.ProxyError),
)


@contextmanager
def _as_httpx_errors(request: httpx.Request) -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        for core_type, httpx_type in _HTTPX_ERRORS:
            if isinstance(exc, core_type):
                raise httpx_type(str(exc), request=request) from exc
        raise


class _ResponseStream(httpx.AsyncByteStream):
    def __init__(self, stream: AsyncIterable[bytes], request: httpx.Request) -> None:
        self._stream = stream
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _as_httpx_errors(self._request):
            async for part in self._stream:
                yield part

    async def aclose(self) -> None:
        aclose = getattr(self._stream, "aclose", None)
        if aclose is not None:
            with _as_httpx_errors(self._request):
                await aclose()


class _GuardedTransport(httpx.AsyncBaseTransport):
    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext,
        limits: httpx.Limits,
        network_backend: httpcore.AsyncNetworkBackend,
    ) -> None:
        pinned = _PinnedNetworkBackend(network_backend)
        self._pools = {
            allow_private: httpcore.AsyncConnectionPool(
                ssl_context=ssl_context,
                max_connections=limits.max_connections,
                max_keepalive_connections=limits.max_keepalive_connections,
                keepalive_expiry=limits.keepalive_expiry,
                network_backend=pinned,
            )
            for allow_private in (False, True)
        }

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        checked = request.extensions.get(_CHECKED_EXTENSION)
        port = request.url.port or (443 if request.url.scheme == "https" else 80)
        if not isinstance(checked, CheckedURL) or (checked.host, checked.port) != (
            request.url.raw_host.decode("ascii"),
            port,
        ):
            raise httpx.ConnectError(
                "imagegate's outbound client sends only requests checked by imagegate.net "
                "(use fetch_image_bytes or post_json_guarded)",
                request=request,
            )
        assert isinstance(request.stream, httpx.AsyncByteStream)
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions={k: v for k, v in request.extensions.items() if k != _CHECKED_EXTENSION},
        )
        token = _current_check.set(checked)
        try:
            with _as_httpx_errors(request):
                core_response = await self._pools[checked.allow_private].handle_async_request(
                    core_request
                )
        finally:
            _current_check.reset(token)
        assert isinstance(core_response.stream, AsyncIterable)
        return httpx.Response(
            status_code=core_response.status,
            headers=core_response.headers,
            stream=_ResponseStream(core_response.stream, request),
            extensions=core_response.extensions,
        )

    async def aclose(self) -> None:
        for pool in self._pools.values():
            await pool.aclose()


class GuardedClient(httpx.AsyncClient):
    """A pooled httpx client that connects only to addresses imagegate.net.guard checked.

    Make one with `make_client()` and share it (it pools connections); send requests with
    `fetch_image_bytes` / `post_json_guarded`. Requests sent on it directly are refused.
    Redirects are never followed automatically and proxy environment variables are
    ignored, since a proxy would resolve host names itself.
    """

    def __init__(
        self,
        *,
        verify: ssl.SSLContext | str | bool = True,
        limits: httpx.Limits = _DEFAULT_LIMITS,
        network_backend: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        super().__init__(
            transport=_GuardedTransport(
                ssl_context=httpx.create_ssl_context(verify=verify),
                limits=limits,
                network_backend=network_backend or AsyncioBackend(),
            ),
            headers={"User-Agent": USER_AGENT},
            follow_redirects=False,
            trust_env=False,
        )


def make_client(
    *,
    verify: ssl.SSLContext | str | bool = True,
    network_backend: httpcore.AsyncNetworkBackend | None = None,
) -> GuardedClient:
    """The client to share for outbound requests (one per process or per worker).

    `verify`: CA bundle path or SSL context for https (default: certifi's CAs).
    `network_backend`: what opens sockets once the guard has chosen the address; tests pass
    one that records connections instead of opening them.
    """
    return GuardedClient(verify=verify, network_backend=network_backend)


@dataclass
class _Progress:
    """Where a request stands, so a timeout can say which step was too slow."""

    subject: str = "URL"
    phase: str = "resolving"


def _timeout_reason(progress: _Progress, timeout: float) -> str:
    if progress.phase == "resolving":
        return f"{progress.subject} could not be resolved within {timeout:g} s"
    if progress.phase == "downloading":
        return f"{progress.subject} took longer than {timeout:g} s to download"
    return f"{progress.subject} did not answer within {timeout:g} s"


def _transport_reason(exc: httpx.HTTPError, progress: _Progress, timeout: float) -> str:
    detail = str(exc) or type(exc).__name__
    subject = progress.subject
    if isinstance(exc, httpx.TimeoutException):
        return _timeout_reason(progress, timeout)
    if isinstance(exc, httpx.ConnectError):
        return f"{subject} could not be reached ({detail})"
    if isinstance(exc, httpx.RemoteProtocolError):
        return f"{subject} answered with a malformed HTTP response ({detail})"
    if isinstance(exc, httpx.NetworkError):
        return f"the connection to {subject} broke ({detail})"
    return f"{subject} could not be fetched ({detail})"


def _request_for(
    client: GuardedClient,
    method: str,
    checked: CheckedURL,
    *,
    headers: httpx.Headers,
    timeout: float,
    content: bytes | None = None,
) -> httpx.Request:
    return client.build_request(
        method,
        checked.url,
        headers=headers,
        content=content,
        timeout=timeout,
        extensions={_CHECKED_EXTENSION: checked},
    )


async def _read_capped(response: httpx.Response, max_bytes: int, subject: str) -> bytes:
    declared = response.headers.get("content-length")
    if declared is not None and declared.strip().isdigit() and int(declared) > max_bytes:
        raise OutboundError(
            f"{subject} answered with {int(declared)} bytes, more than the limit of "
            f"{max_bytes} bytes"
        )
    encoding = response.headers.get("content-encoding", "").strip().lower()
    if encoding not in ("", "identity"):
        # We ask for identity; decoding a compressed answer could inflate it far past the
        # cap within one chunk, so an encoded answer is refused instead.
        raise OutboundError(
            f"{subject} answered with Content-Encoding {encoding}; imagegate accepts only "
            "unencoded images"
        )
    data = bytearray()
    async for chunk in response.aiter_raw():
        if len(data) + len(chunk) > max_bytes:
            raise OutboundError(f"{subject} sent more than the limit of {max_bytes} bytes")
        data += chunk
    return bytes(data)


async def _fetch(
    client: GuardedClient,
    url: str,
    *,
    max_bytes: int,
    io_timeout: float,
    allow_private: bool,
    max_redirects: int,
    resolver: Resolver | None,
    progress: _Progress,
) -> FetchResult:
    target: str | httpx.URL = url
    for hop in range(max_redirects + 1):
        progress.phase = "resolving"
        checked = await check_url(
            target,
            allow_private=allow_private,
            resolver=resolver,
            subject="URL" if hop == 0 else f"URL redirects to {redact_url(target)}, which",
        )
        if hop:
            progress.subject = f"URL (redirected to {redact_url(checked.url)})"
        progress.phase = "waiting"
        request = _request_for(
            client,
            "GET",
            checked,
            headers=httpx.Headers({"Accept": "image/*, */*;q=0.8", "Accept-Encoding": "identity"}),
            timeout=io_timeout,
        )
        response = await client.send(request, stream=True)
        try:
            status = response.status_code
            if status in _REDIRECT_STATUSES:
                location = response.headers.get("location")
                if not location:
                    raise OutboundError(
                        f"{progress.subject} answered HTTP {status} without a Location header"
                    )
                if hop == max_redirects:
                    raise OutboundError(f"URL redirected more than {max_redirects} times")
                try:
                    target = checked.url.join(location)
                except httpx.InvalidURL as exc:
                    raise OutboundError(
                        f"{progress.subject} redirects to an invalid Location ({exc})"
                    ) from exc
                continue
            if not 200 <= status < 300:
                raise OutboundError(
                    f"{progress.subject} answered HTTP {status} {response.reason_phrase}".rstrip()
                )
            progress.phase = "downloading"
            data = await _read_capped(response, max_bytes, progress.subject)
            return FetchResult(
                data=data,
                content_type=response.headers.get("content-type"),
                final_url=redact_url(checked.url),
            )
        finally:
            await response.aclose()
    raise AssertionError("unreachable: the last hop either returns or raises")


async def fetch_image_bytes(
    url: str,
    *,
    max_bytes: int,
    timeout: float,
    allow_private: bool,
    max_redirects: int = 3,
    resolver: Resolver | None = None,
    client: GuardedClient | None = None,
) -> FetchResult:
    """GET `url` through the guard and return its body, at most `max_bytes` long.

    `timeout` bounds everything (resolution, connection, headers, body, every redirect),
    so a server that trickles bytes forever is cut off. Redirects (at most `max_redirects`)
    are followed by hand and each hop's URL and addresses are checked again. Raises
    OutboundError for a refused URL, a non-2xx answer, an oversized body, a timeout or a
    network failure. Pass the process's shared `client`; without one a client is made and
    closed for this call.
    """
    progress = _Progress()
    async with AsyncExitStack() as stack:
        if client is None:
            client = await stack.enter_async_context(make_client())
        try:
            async with asyncio.timeout(timeout):
                return await _fetch(
                    client,
                    url,
                    max_bytes=max_bytes,
                    io_timeout=timeout,
                    allow_private=allow_private,
                    max_redirects=max_redirects,
                    resolver=resolver,
                    progress=progress,
                )
        except TimeoutError as exc:
            raise OutboundError(_timeout_reason(progress, timeout)) from exc
        except httpx.HTTPError as exc:
            raise OutboundError(_transport_reason(exc, progress, timeout)) from exc


async def post_json_guarded(
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    *,
    timeout: float,
    allow_private: bool,
    resolver: Resolver | None = None,
    client: GuardedClient | None = None,
) -> PostResult:
    """POST `body` (JSON) to `url` through the guard, for webhook delivery.

    The address is checked at delivery time. Redirects are not followed: a 3xx is returned
    like any other non-2xx answer, for the caller's retry policy to judge. `timeout` bounds
    the whole exchange. Raises OutboundError when the URL is refused, the connection fails
    or the receiver does not answer in time.
    """
    progress = _Progress()
    started = time.perf_counter()
    request_headers = httpx.Headers({"Content-Type": "application/json"})
    request_headers.update(headers)
    response: httpx.Response | None = None
    async with AsyncExitStack() as stack:
        if client is None:
            client = await stack.enter_async_context(make_client())
        try:
            async with asyncio.timeout(timeout):
                checked = await check_url(url, allow_private=allow_private, resolver=resolver)
                progress.phase = "waiting"
                request = _request_for(
                    client, "POST", checked, headers=request_headers, timeout=timeout, content=body
                )
                response = await client.send(request, stream=True)
                try:
                    await _discard_body(response)
                finally:
                    await response.aclose()
        except (TimeoutError, httpx.HTTPError) as exc:
            # Once the status line and headers are in, the receiver has answered; a body that
            # is slow or cut short does not change that answer.
            if response is None:
                if isinstance(exc, httpx.HTTPError):
                    raise OutboundError(_transport_reason(exc, progress, timeout)) from exc
                raise OutboundError(_timeout_reason(progress, timeout)) from exc
    return PostResult(
        status_code=response.status_code,
        headers=dict(response.headers),
        elapsed_ms=(time.perf_counter() - started) * 1000,
    )


async def _discard_body(response: httpx.Response) -> None:
    """Read a small answer to its end so the connection can go back to the pool; a large
    one is abandoned (closing the response then closes the connection)."""
    received = 0
    async for chunk in response.aiter_raw():
        received += len(chunk)
        if received > _MAX_DISCARDED_BODY:
            return
