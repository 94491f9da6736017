"""Outbound HTTP safety (SSRF guard) shared by reference-image fetching and webhook delivery.

`check_url` decides (syntax, scheme, every resolved address); `fetch_image_bytes` and
`post_json_guarded` send through a `GuardedClient` that connects only to checked addresses.
"""

from imagegate.net.fetch import (
    USER_AGENT,
    FetchResult,
    GuardedClient,
    PostResult,
    fetch_image_bytes,
    make_client,
    post_json_guarded,
)
from imagegate.net.guard import (
    ALLOWED_SCHEMES,
    MAX_URL_LENGTH,
    CheckedURL,
    IPAddress,
    OutboundError,
    Resolver,
    SystemResolver,
    address_problem,
    check_url,
    redact_url,
    validate_url_syntax,
)

__all__ = [
    "ALLOWED_SCHEMES",
    "MAX_URL_LENGTH",
    "USER_AGENT",
    "CheckedURL",
    "FetchResult",
    "GuardedClient",
    "IPAddress",
    "OutboundError",
    "PostResult",
    "Resolver",
    "SystemResolver",
    "address_problem",
    "check_url",
    "fetch_image_bytes",
    "make_client",
    "post_json_guarded",
    "redact_url",
    "validate_url_syntax",
]
