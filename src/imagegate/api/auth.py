"""The `x-freepik-api-key` header: who is calling."""

from __future__ import annotations

from fastapi import Request, Security
from fastapi.security import APIKeyHeader

from imagegate.api.errors import ApiError

API_KEY_HEADER = "x-freepik-api-key"

# Declared as a security scheme so /openapi.json and /docs show it; checked by hand so the
# 401 bodies are exactly the spec's.
api_key_scheme = APIKeyHeader(
    name=API_KEY_HEADER, auto_error=False, description="Your imagegate API key."
)


async def require_owner(request: Request, key: str | None = Security(api_key_scheme)) -> str:
    if not key:
        raise ApiError(401, "Missing API key")
    owner = await request.app.state.keyring.owner_of(key)
    if owner is None:
        raise ApiError(401, "Invalid API key")
    request.state.owner = owner
    return str(owner)
