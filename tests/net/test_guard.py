"""The guard's decisions, with stub resolvers. Nothing here opens a connection."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence

import pytest

from imagegate.net import (
    MAX_URL_LENGTH,
    OutboundError,
    SystemResolver,
    address_problem,
    check_url,
    redact_url,
    validate_url_syntax,
)

HINT = "set IMAGEGATE_ALLOW_PRIVATE_URLS=true on trusted networks"


class StubResolver:
    """Answers from a fixed table and counts lookups; unknown names fail like real DNS."""

    def __init__(self, table: dict[str, Sequence[str]]) -> None:
        self.table = table
        self.lookups: list[str] = []

    async def resolve(self, host: str, port: int) -> Sequence[str]:
        self.lookups.append(host)
        if host not in self.table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return self.table[host]


class NoLookups:
    """For IP literals: the decision must not depend on a resolver at all."""

    async def resolve(self, host: str, port: int) -> Sequence[str]:
        raise AssertionError(f"resolver called for {host!r}")


# --- syntax ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://images.example/cat.png",
        "https://images.example:8443/a/b.jpg?size=large#frag",
        "https://user:secret@hooks.example/receive",
        "http://[2606:2800:21f:cb07:6820:80da:af6b:8b2c]/x",
        "https://bücher.example/x.png",
        "http://93.184.215.14/x",
    ],
)
def test_syntax_accepts_absolute_http_urls(url: str) -> None:
    assert validate_url_syntax(url) is None


@pytest.mark.parametrize(
    ("url", "reason_part"),
    [
        ("ftp://images.example/cat.png", "uses scheme 'ftp'; only http and https"),
        ("file:///etc/passwd", "uses scheme 'file'"),
        ("gopher://images.example:70/", "uses scheme 'gopher'"),
        ("javascript:alert(1)", "uses scheme 'javascript'"),
        ("//images.example/cat.png", "is not absolute"),
        ("images.example/cat.png", "is not absolute"),
        ("http:///cat.png", "has no host name"),
        ("https://", "has no host name"),
        ("http://images.example:99999/", "has port 99999"),
        ("http://images.example:0/", "has port 0"),
        ("http://exa mple.com/", "contains spaces or control characters"),
        ("http://images.example/\r\nX-Injected: 1", "contains spaces or control characters"),
        ("http://0177.0.0.1/", "is malformed"),
        ("http://images.example/" + "a" * MAX_URL_LENGTH, "longer than 2048 characters"),
    ],
)
def test_syntax_refuses_with_a_reason(url: str, reason_part: str) -> None:
    reason = validate_url_syntax(url)
    assert reason is not None
    assert reason.startswith("URL ")
    assert reason_part in reason


def test_syntax_limit_is_inclusive() -> None:
    base = "http://images.example/"
    assert validate_url_syntax(base + "a" * (MAX_URL_LENGTH - len(base))) is None
    assert validate_url_syntax(base + "a" * (MAX_URL_LENGTH - len(base) + 1)) is not None


def test_reasons_and_redaction_never_show_credentials() -> None:
    reason = validate_url_syntax("ftp://alice:s3cret@images.example/")
    assert reason is not None and "s3cret" not in reason
    assert redact_url("https://alice:s3cret@hooks.example/r?a=1") == "https://hooks.example/r?a=1"


async def test_refusal_of_a_url_with_credentials_does_not_show_them() -> None:
    with pytest.raises(OutboundError) as caught:
        await check_url("http://alice:s3cret@127.0.0.1/", allow_private=False)
    assert "s3cret" not in caught.value.reason and "alice" not in caught.value.reason


# --- address classes --------------------------------------------------------------------

REFUSED = [
    ("127.0.0.1", "a loopback address"),
    ("127.255.255.254", "a loopback address"),
    ("::1", "a loopback address"),
    ("10.1.2.3", "a private address"),
    ("172.16.0.1", "a private address"),
    ("172.31.255.255", "a private address"),
    ("192.168.1.1", "a private address"),
    ("169.254.169.254", "a link-local address"),
    ("fe80::1", "a link-local address"),
    ("fe80::1%eth0", "a link-local address"),
    ("100.64.0.1", "a carrier-grade NAT (shared) address"),
    ("100.127.255.254", "a carrier-grade NAT (shared) address"),
    ("224.0.0.1", "a multicast address"),
    ("239.255.255.250", "a multicast address"),
    ("ff02::1", "a multicast address"),
    ("240.0.0.1", "a reserved address"),
    ("255.255.255.255", "a reserved address"),
    ("0.0.0.0", "an unspecified ('this network') address"),
    ("0.1.2.3", "an unspecified ('this network') address"),
    ("::", "an unspecified address"),
    ("fc00::1", "a unique local (private) address"),
    ("fd12:3456:789a::1", "a unique local (private) address"),
    ("fec0::1", "a site-local address"),
    ("198.18.0.1", "a benchmarking address"),
    ("198.19.255.255", "a benchmarking address"),
    ("2001:2::1", "a benchmarking address"),
    ("192.0.2.1", "a documentation address"),
    ("198.51.100.7", "a documentation address"),
    ("203.0.113.9", "a documentation address"),
    ("2001:db8::1", "a documentation address"),
    ("3fff::1", "a documentation address"),
    ("192.0.0.8", "a reserved (IETF protocol assignment) address"),
    ("192.88.99.1", "a reserved (6to4 relay anycast) address"),
    ("100::1", "a discard-only address"),
    ("64:ff9b:1::1", "a local-use NAT64 address"),
    ("4000::1", "a reserved address"),
    ("::ffff:127.0.0.1", "an IPv4-mapped form of 127.0.0.1, a loopback address"),
    ("::ffff:169.254.169.254", "an IPv4-mapped form of 169.254.169.254, a link-local address"),
    ("::ffff:10.0.0.1", "an IPv4-mapped form of 10.0.0.1, a private address"),
    ("::127.0.0.1", "an IPv4-compatible form of 127.0.0.1, a loopback address"),
    ("::5db8:d70e", "a deprecated IPv4-compatible address"),
    ("64:ff9b::7f00:1", "a NAT64 form of 127.0.0.1, a loopback address"),
    ("64:ff9b::a9fe:a9fe", "a NAT64 form of 169.254.169.254, a link-local address"),
    ("2002:7f00:1::1", "a 6to4 address embedding 127.0.0.1, a loopback address"),
    ("2002:a9fe:a9fe::1", "a 6to4 address embedding 169.254.169.254, a link-local address"),
    ("2002:c0a8:101::1", "a 6to4 address embedding 192.168.1.1, a private address"),
    # Teredo: server 65.54.227.120, client 127.0.0.1 (stored inverted in the last 32 bits).
    (
        "2001:0:4136:e378:8000:63bf:80ff:fffe",
        "a Teredo address embedding 127.0.0.1, a loopback address",
    ),
    (
        "2001:0:a00:1:8000:63bf:a247:28f1",
        "a Teredo address relayed through 10.0.0.1, a private address",
    ),
    ("2001:0:4136:e378:8000:63bf:a247:28f1", "a Teredo tunnel address"),
]

ALLOWED = [
    "93.184.215.14",
    "8.8.8.8",
    "1.1.1.1",
    "100.63.255.255",  # just below carrier-grade NAT
    "172.32.0.1",  # just above 172.16/12
    "198.20.0.1",  # just above benchmarking
    "2606:2800:21f:cb07:6820:80da:af6b:8b2c",
    "2001:4860:4860::8888",
    "::ffff:93.184.215.14",
    "64:ff9b::5db8:d70e",  # what DNS64 hands an IPv6-only host for 93.184.215.14
    "2002:5db8:d70e::1",
]


@pytest.mark.parametrize(("address", "description"), REFUSED)
def test_address_problem_names_the_class(address: str, description: str) -> None:
    assert address_problem(ipaddress.ip_address(address)) == description


@pytest.mark.parametrize("address", ALLOWED)
def test_public_addresses_have_no_problem(address: str) -> None:
    assert address_problem(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize(("address", "description"), REFUSED)
async def test_host_resolving_to_refused_address_is_refused(address: str, description: str) -> None:
    resolver = StubResolver({"images.example": [address]})
    with pytest.raises(OutboundError) as caught:
        await check_url("https://images.example/cat.png", allow_private=False, resolver=resolver)
    reason = caught.value.reason
    assert reason.startswith(f"URL resolves to {ipaddress.ip_address(address)}, {description}; ")
    assert HINT in reason
    assert resolver.lookups == ["images.example"]


@pytest.mark.parametrize("address", ALLOWED)
async def test_host_resolving_to_public_address_is_allowed(address: str) -> None:
    resolver = StubResolver({"images.example": [address]})
    checked = await check_url(
        "https://images.example/cat.png", allow_private=False, resolver=resolver
    )
    assert checked.host == "images.example"
    assert checked.port == 443
    assert checked.addresses == (str(ipaddress.ip_address(address)),)
    assert checked.allow_private is False


async def test_the_metadata_service_reason_reads_well_after_a_field_name() -> None:
    resolver = StubResolver({"metadata.example": ["169.254.169.254"]})
    with pytest.raises(OutboundError) as caught:
        await check_url("http://metadata.example/", allow_private=False, resolver=resolver)
    assert caught.value.reason == (
        "URL resolves to 169.254.169.254, a link-local address; imagegate does not connect to "
        "private or reserved addresses (set IMAGEGATE_ALLOW_PRIVATE_URLS=true on trusted networks)"
    )


async def test_every_resolved_address_is_checked() -> None:
    resolver = StubResolver(
        {"images.example": ["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c", "10.0.0.1"]}
    )
    with pytest.raises(OutboundError) as caught:
        await check_url("http://images.example/", allow_private=False, resolver=resolver)
    assert "resolves to 10.0.0.1, a private address" in caught.value.reason


async def test_all_public_answers_are_kept_in_order() -> None:
    answers = ["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"]
    resolver = StubResolver({"images.example": answers})
    checked = await check_url("http://images.example:8080/", allow_private=False, resolver=resolver)
    assert checked.addresses == tuple(answers)
    assert checked.port == 8080


# --- IP literals, in every spelling the system resolver accepts -------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://127.0.0.1/", "points to 127.0.0.1, a loopback address"),
        ("http://[::1]:8080/", "points to ::1, a loopback address"),
        ("http://169.254.169.254/latest/meta-data/", "points to 169.254.169.254, a link-local"),
        ("http://[fd00::1]/", "points to fd00::1, a unique local (private) address"),
        ("http://[::ffff:127.0.0.1]/", "an IPv4-mapped form of 127.0.0.1, a loopback address"),
        ("http://2130706433/", "points to 127.0.0.1 (written 2130706433), a loopback address"),
        ("http://017700000001/", "points to 127.0.0.1 (written 017700000001), a loopback"),
        ("http://0x7f.1/", "points to 127.0.0.1 (written 0x7f.1), a loopback address"),
        ("http://0x7f000001/", "points to 127.0.0.1 (written 0x7f000001), a loopback address"),
        ("http://127.1/", "points to 127.0.0.1 (written 127.1), a loopback address"),
        ("http://0xa9.0xfe.0xa9.0xfe/", "points to 169.254.169.254 (written 0xa9.0xfe.0xa9.0xfe)"),
        ("http://0/", "points to 0.0.0.0 (written 0), an unspecified"),
        ("http://10.1/", "points to 10.0.0.1 (written 10.1), a private address"),
    ],
)
async def test_ip_literals_are_decided_on_the_address_they_name(url: str, expected: str) -> None:
    with pytest.raises(OutboundError) as caught:
        await check_url(url, allow_private=False, resolver=NoLookups())
    assert expected in caught.value.reason
    assert HINT in caught.value.reason


async def test_public_ip_literal_is_allowed_without_lookup() -> None:
    checked = await check_url(
        "http://93.184.215.14:81/x", allow_private=False, resolver=NoLookups()
    )
    assert checked.addresses == ("93.184.215.14",)
    assert checked.host == "93.184.215.14"


async def test_odd_spelling_of_a_public_address_is_allowed_and_normalised() -> None:
    checked = await check_url("http://1572394766/x", allow_private=False, resolver=NoLookups())
    assert checked.addresses == ("93.184.215.14",)
    assert checked.host == "1572394766"  # the name the HTTP stack uses; the socket uses addresses


# --- allow_private ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:9/", "http://[::1]/", "http://2130706433/", "http://internal.test/"]
)
async def test_allow_private_lifts_the_address_check(url: str) -> None:
    resolver = StubResolver({"internal.test": ["10.0.0.5"]})
    checked = await check_url(url, allow_private=True, resolver=resolver)
    assert checked.allow_private is True
    assert checked.addresses


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://127.0.0.1/",
        "gopher://127.0.0.1:70/_",
        "dict://127.0.0.1:11211/",
    ],
)
async def test_allow_private_never_lifts_the_scheme_check(url: str) -> None:
    with pytest.raises(OutboundError) as caught:
        await check_url(url, allow_private=True, resolver=NoLookups())
    assert "only http and https URLs are allowed" in caught.value.reason


# --- resolution failures --------------------------------------------------------------------


async def test_unknown_host_is_a_clear_error() -> None:
    with pytest.raises(OutboundError) as caught:
        await check_url("http://nowhere.test/", allow_private=False, resolver=StubResolver({}))
    assert caught.value.reason == (
        "URL names host nowhere.test, which does not resolve (Name or service not known)"
    )


async def test_empty_answer_is_refused() -> None:
    with pytest.raises(OutboundError) as caught:
        await check_url(
            "http://empty.test/", allow_private=True, resolver=StubResolver({"empty.test": []})
        )
    assert "resolves to no address" in caught.value.reason


async def test_resolver_sees_the_idna_host_name() -> None:
    resolver = StubResolver({"xn--bcher-kva.example": ["93.184.215.14"]})
    checked = await check_url("https://Bücher.example/x", allow_private=False, resolver=resolver)
    assert resolver.lookups == ["xn--bcher-kva.example"]
    assert checked.host == "xn--bcher-kva.example"


async def test_subject_prefixes_the_reason() -> None:
    with pytest.raises(OutboundError) as caught:
        await check_url(
            "http://127.0.0.1/", allow_private=False, subject="URL redirects to x, which"
        )
    assert caught.value.reason.startswith("URL redirects to x, which points to 127.0.0.1, ")


async def test_system_resolver_returns_numeric_addresses() -> None:
    # Numeric hosts only: getaddrinfo parses them locally, so no DNS query leaves the machine.
    resolver = SystemResolver()
    assert list(await resolver.resolve("127.0.0.1", 80)) == ["127.0.0.1"]
    assert list(await resolver.resolve("::1", 80)) == ["::1"]
