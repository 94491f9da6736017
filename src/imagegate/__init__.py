"""imagegate: a self-hosted, drop-in compatible server for Freepik's Gemini 2.5 Flash image API."""

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from imagegate.client import AsyncClient, Client

__all__ = ["AsyncClient", "Client", "__version__"]


def __getattr__(name: str) -> Any:
    # The SDK is imported on first use, so `import imagegate` (and the server) stays light.
    if name in ("Client", "AsyncClient"):
        from imagegate import client

        return getattr(client, name)
    raise AttributeError(f"module 'imagegate' has no attribute {name!r}")
