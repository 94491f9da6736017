"""Decide whether imagegate may connect to a URL: syntax, scheme, resolution, address class.

This is the SSRF guard for every outbound request imagegate makes on a user's behalf
(reference-image URLs, webhooks). The decision is made on *resolved addresses*, never on
the host name's spelling: a host is resolved once, every address it resolves to is checked,
and `imagegate.net.fetch` then connects only to those checked addresses (no second lookup,
so DNS rebinding cannot swap in another address between the check and the connection).

Refused addresses (unless `allow_private=True`): loopback, private (RFC 1918), link-local
(including the 169.254.169.254 cloud metadata service), carrier-grade NAT, multicast,
unspecified, reserved, IPv6 unique-local and site-local, benchmarking and documentation
ranges, and IPv6 forms that embed any of those (IPv4-mapped, IPv4-compatible, NAT64, 6to4,
Teredo). `allow_private=True` lifts the address checks, never the http/https scheme check.

Credentials in URLs (`https://user:secret@host/`) are allowed, because webhook receivers
commonly use them for basic auth; they are never written into a reason, a log line or a
returned URL (see `redact_url`).
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import httpx

__all__ = [
    "ALLOWED_SCHEMES",
    "MAX_URL_LENGTH",
    "CheckedURL",
    "IPAddress",
    "OutboundError",
    "Resolver",
    "SystemResolver",
    "address_problem",
    "check_url",
    "redact_url",
    "validate_url_syntax",
]

MAX_URL_LENGTH = 2048
ALLOWED_SCHEMES = frozenset({"http", "https"})

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_PRIVATE_HINT = (
    "imagegate does not connect to private or reserved addresses "
    "(set IMAGEGATE_ALLOW_PRIVATE_URLS=true on trusted networks)"
)


class OutboundError(Exception):
    """An outbound request was refused or failed.

    `reason` is written to be shown to the user after a field name, e.g.
    ``f"reference_images[1]: {error.reason}"``; it never contains URL credentials.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Resolver(Protocol):
    """Turns a host name into the IP addresses a connection may go to."""

    async def resolve(self, host: str, port: int) -> Sequence[str]:
        """Every address `host` resolves to, as IP address strings; raise OSError when none."""
        ...


class SystemResolver:
    """The operating system's resolver (`getaddrinfo`), run off the event loop."""

    async def resolve(self, host: str, port: int) -> Sequence[str]:
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        return list(dict.fromkeys(str(info[4][0]) for info in infos))


@dataclass(frozen=True)
class CheckedURL:
    """A URL that passed the guard, with the addresses a connection to it may use.

    `host` is the host exactly as the HTTP stack will name it (lower-case, IDNA-encoded,
    IPv6 without brackets); `addresses` are the checked IPs, in resolver order.
    `allow_private` records the policy the addresses were checked under.
    """

    url: httpx.URL
    host: str
    port: int
    addresses: tuple[str, ...]
    allow_private: bool


def redact_url(url: str | httpx.URL) -> str:
    """The URL as text with any `user:password@` removed, safe for reasons and logs."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError):
        return "<invalid URL>"
    if parsed.userinfo:
        parsed = parsed.copy_with(username=None, password=None)
    return str(parsed)


def _parse(url: str | httpx.URL, subject: str) -> httpx.URL:
    text = str(url)
    if len(text) > MAX_URL_LENGTH:
        raise OutboundError(f"{subject} is longer than {MAX_URL_LENGTH} characters")
    return _parse_text(text, subject)


@functools.lru_cache(maxsize=1024)
def _parse_text(text: str, subject: str) -> httpx.URL:
    # Remembered: a client sends the same webhook URL with every task, and it is checked at
    # POST and at every delivery; parsing costs more than the rest of the check. Only
    # acceptable URLs are cached (a refusal raises), and httpx.URL is immutable.
    if any(char.isspace() or ord(char) < 0x20 or ord(char) == 0x7F for char in text):
        raise OutboundError(f"{subject} contains spaces or control characters")
    try:
        parsed = httpx.URL(text)
    except (httpx.InvalidURL, ValueError) as exc:
        # httpx's messages name the faulty part, never the userinfo.
        raise OutboundError(f"{subject} is malformed ({exc})") from exc
    if not parsed.scheme:
        raise OutboundError(f"{subject} is not absolute; it must start with http:// or https://")
    if parsed.scheme not in ALLOWED_SCHEMES:
        raise OutboundError(
            f"{subject} uses scheme '{parsed.scheme}'; only http and https URLs are allowed"
        )
    if not parsed.raw_host:
        raise OutboundError(f"{subject} has no host name")
    if parsed.port is not None and not 1 <= parsed.port <= 65535:
        raise OutboundError(f"{subject} has port {parsed.port}, outside 1-65535")
    return parsed


def validate_url_syntax(url: str) -> str | None:
    """Cheap check at request time, with no I/O: an absolute http(s) URL with a host, at most
    2048 characters. Returns a reason to show the user, or None when the URL is acceptable."""
    try:
        _parse(url, "URL")
    except OutboundError as exc:
        return exc.reason
    return None


def _v4(cidr: str) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(cidr)


def _v6(cidr: str) -> ipaddress.IPv6Network:
    return ipaddress.IPv6Network(cidr)


# Ordered so that the most specific description wins; anything not listed is public.
_REFUSED_V4: tuple[tuple[ipaddress.IPv4Network, str], ...] = (
    (_v4("0.0.0.0/8"), "an unspecified ('this network') address"),
    (_v4("10.0.0.0/8"), "a private address"),
    (_v4("100.64.0.0/10"), "a carrier-grade NAT (shared) address"),
    (_v4("127.0.0.0/8"), "a loopback address"),
    (_v4("169.254.0.0/16"), "a link-local address"),
    (_v4("172.16.0.0/12"), "a private address"),
    (_v4("192.0.0.0/24"), "a reserved (IETF protocol assignment) address"),
    (_v4("192.0.2.0/24"), "a documentation address"),
    (_v4("192.88.99.0/24"), "a reserved (6to4 relay anycast) address"),
    (_v4("192.168.0.0/16"), "a private address"),
    (_v4("198.18.0.0/15"), "a benchmarking address"),
    (_v4("198.51.100.0/24"), "a documentation address"),
    (_v4("203.0.113.0/24"), "a documentation address"),
    (_v4("224.0.0.0/4"), "a multicast address"),
    (_v4("240.0.0.0/4"), "a reserved address"),
)

_REFUSED_V6: tuple[tuple[ipaddress.IPv6Network, str], ...] = (
    (_v6("64:ff9b:1::/48"), "a local-use NAT64 address"),
    (_v6("100::/64"), "a discard-only address"),
    (_v6("2001:2::/48"), "a benchmarking address"),
    (_v6("2001:db8::/32"), "a documentation address"),
    (_v6("3fff::/20"), "a documentation address"),
    (_v6("fc00::/7"), "a unique local (private) address"),
    (_v6("fe80::/10"), "a link-local address"),
    (_v6("fec0::/10"), "a site-local address"),
    (_v6("ff00::/8"), "a multicast address"),
)

_NAT64 = _v6("64:ff9b::/96")
_IPV4_COMPATIBLE = _v6("::/96")
_GLOBAL_UNICAST = _v6("2000::/3")


def _embedded_problem(ipv4: ipaddress.IPv4Address, form: str) -> str | None:
    problem = _ipv4_problem(ipv4)
    return None if problem is None else f"{form} {ipv4}, {problem}"


def _ipv4_problem(ip: ipaddress.IPv4Address) -> str | None:
    for network, description in _REFUSED_V4:
        if ip in network:
            return description
    # Backstop for ranges IANA adds after this table was written.
    if not ip.is_global:
        return "a reserved (non-global) address"
    return None


def _ipv6_problem(ip: ipaddress.IPv6Address) -> str | None:
    if ip.is_unspecified:
        return "an unspecified address"
    if ip.is_loopback:
        return "a loopback address"
    # An IPv6 address that carries an IPv4 one reaches that IPv4 host (dual-stack sockets,
    # NAT64 gateways, 6to4 relays), so it is judged by the address it carries.
    if ip.ipv4_mapped is not None:
        return _embedded_problem(ip.ipv4_mapped, "an IPv4-mapped form of")
    if ip in _NAT64:
        return _embedded_problem(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF), "a NAT64 form of")
    if ip.sixtofour is not None:
        return _embedded_problem(ip.sixtofour, "a 6to4 address embedding")
    if ip.teredo is not None:
        server, client = ip.teredo
        # Teredo is client-side tunnelling; no server imagegate should reach lives there.
        return (
            _embedded_problem(client, "a Teredo address embedding")
            or _embedded_problem(server, "a Teredo address relayed through")
            or "a Teredo tunnel address"
        )
    if ip in _IPV4_COMPATIBLE:
        embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        return (
            _embedded_problem(embedded, "an IPv4-compatible form of")
            or "a deprecated IPv4-compatible address"
        )
    for network, description in _REFUSED_V6:
        if ip in network:
            return description
    if ip not in _GLOBAL_UNICAST or not ip.is_global:
        return "a reserved address"
    return None


def address_problem(ip: IPAddress) -> str | None:
    """Why imagegate refuses to connect to `ip` (e.g. "a link-local address"), or None when
    it is a public address."""
    if isinstance(ip, ipaddress.IPv4Address):
        return _ipv4_problem(ip)
    return _ipv6_problem(ip)


def _literal_addresses(host: str, port: int) -> tuple[str, ...] | None:
    """The address a host names when it is an IP literal, in any spelling the system
    resolver accepts (`2130706433`, `0x7f.1`, `127.1`); None for a real host name."""
    try:
        return (str(ipaddress.ip_address(host)),)
    except ValueError:
        pass
    try:
        # AI_NUMERICHOST parses the spelling locally and never sends a DNS query, so this
        # blocking call is safe on the event loop; it normalises exactly what a connect
        # to `host` would have used.
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
    except (OSError, UnicodeError):
        return None
    return tuple(dict.fromkeys(str(info[4][0]) for info in infos))


async def check_url(
    url: str | httpx.URL,
    *,
    allow_private: bool,
    resolver: Resolver | None = None,
    subject: str = "URL",
) -> CheckedURL:
    """Parse `url`, resolve its host once and check every address it resolves to.

    Raises OutboundError with a reason that starts with `subject` (default "URL"), e.g.
    "URL resolves to 169.254.169.254, a link-local address; ...". IP literals, however they
    are spelled, are decided without calling `resolver`.
    """
    parsed = _parse(url, subject)
    host = parsed.raw_host.decode("ascii")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)

    literal = _literal_addresses(host, port)
    if literal is not None:
        answers: Sequence[str] = literal
    else:
        try:
            answers = await (resolver or SystemResolver()).resolve(host, port)
        except (OSError, UnicodeError) as exc:
            detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise OutboundError(
                f"{subject} names host {host}, which does not resolve ({detail})"
            ) from exc
        if not answers:
            raise OutboundError(f"{subject} names host {host}, which resolves to no address")

    addresses: list[IPAddress] = []
    for answer in answers:
        try:
            addresses.append(ipaddress.ip_address(answer))
        except ValueError as exc:
            raise OutboundError(
                f"{subject} names host {host}, which resolved to {answer!r}, not an IP address"
            ) from exc

    if not allow_private:
        for ip in addresses:
            problem = address_problem(ip)
            if problem is None:
                continue
            if literal is None:
                where = f"resolves to {ip}"
            elif str(ip) != host:
                where = f"points to {ip} (written {host})"
            else:
                where = f"points to {ip}"
            raise OutboundError(f"{subject} {where}, {problem}; {_PRIVATE_HINT}")

    return CheckedURL(
        url=parsed,
        host=host,
        port=port,
        addresses=tuple(str(ip) for ip in addresses),
        allow_private=allow_private,
    )
