"""The Python SDK of imagegate (and of Freepik's hosted Gemini 2.5 Flash image API).

from imagegate import Client

with Client() as client:  # IMAGEGATE_URL and IMAGEGATE_KEY from the environment
    task = client.generate("a lighthouse at dusk", references=["photo.png"])
    task.save("lighthouse.png")
"""

from imagegate.client._async import AsyncClient
from imagegate.client._references import Reference
from imagegate.client._sync import Client
from imagegate.client._task import Task
from imagegate.client.errors import (
    APIConnectionError,
    AuthenticationError,
    ImagegateError,
    InvalidParam,
    NotFoundError,
    RateLimitError,
    ServerError,
    TaskFailedError,
    ValidationError,
    WaitTimeout,
)

__all__ = [
    "APIConnectionError",
    "AsyncClient",
    "AuthenticationError",
    "Client",
    "ImagegateError",
    "InvalidParam",
    "NotFoundError",
    "RateLimitError",
    "Reference",
    "ServerError",
    "Task",
    "TaskFailedError",
    "ValidationError",
    "WaitTimeout",
]
