"""The Gemini engine: Google's image models through the official google-genai SDK.

One engine per worker process keeps many calls in flight (`gemini_max_in_flight`) on one
async SDK client. It owns the retry policy: transient answers (429, 5xx, timeouts, broken
connections) are retried with exponential backoff and full jitter until the task's
deadline, honouring Google's `RetryInfo.retryDelay`; a 429 pauses every call of the process,
so a rate limit slows work down instead of failing it. Refusals and answers without an
image are final and say why. A model Google no longer serves (404) is replaced by the next
id of `gemini_fallback_models`, once for the whole process.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import random
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from imagegate.engines.aspect import GEMINI_SIZES, nearest_ratio
from imagegate.engines.base import EngineError, EngineRequest, EngineResult, OutputImage
from imagegate.settings import Settings

logger = logging.getLogger(__name__)

GOOGLE_AI_BASE_URL = "https://generativelanguage.googleapis.com"
SUPPORTED_RATIOS: list[str] = list(GEMINI_SIZES)

RETRYABLE_STATUS_CODES = frozenset({429, 500, 502, 503, 504})

# Finish reasons Google gives when a candidate carries no image, grouped by what the user
# can do about it.
_REFUSED = frozenset({"SAFETY", "PROHIBITED_CONTENT", "IMAGE_SAFETY", "IMAGE_PROHIBITED_CONTENT"})
_RECITED = frozenset({"RECITATION", "IMAGE_RECITATION"})
_NO_IMAGE = frozenset({"NO_IMAGE", "IMAGE_OTHER", "OTHER"})

# httpcore scans every connection of a pool on each request and each response (O(pool) per
# call), which at hundreds of connections costs more CPU than the call itself; several
# smaller pools keep that scan short. See docs/engines/gemini.md, "Benchmark".
CONNECTIONS_PER_POOL = 50

_RETRY_INFO_TYPE = "type.googleapis.com/google.rpc.RetryInfo"
_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?)s\s*$")

# Fallback warnings already logged in this process, as (from_model, to_model): a switch is
# news once, not once per engine or per task.
_announced_fallbacks: set[tuple[str, str]] = set()


def _exception_family(*names: tuple[str, str]) -> tuple[type[BaseException], ...]:
    """Exception classes of the HTTP stacks the SDK may use, skipping those not installed."""
    found: list[type[BaseException]] = []
    for module_name, attribute in names:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        found.append(getattr(module, attribute))
    return tuple(found)


# The SDK does not wrap transport failures: they arrive as its HTTP client's own exceptions
# (httpx2 in google-genai 3.x, httpx before it, aiohttp when that extra is installed), and as
# google-auth's TransportError when a Vertex AI token refresh cannot reach Google.
_TIMEOUT_ERRORS: tuple[type[BaseException], ...] = (
    TimeoutError,
    *_exception_family(("httpx2", "TimeoutException"), ("httpx", "TimeoutException")),
)
_TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    *_TIMEOUT_ERRORS,
    *_exception_family(
        ("httpx2", "TransportError"),
        ("httpx", "TransportError"),
        ("aiohttp", "ClientError"),
        ("google.auth.exceptions", "TransportError"),
    ),
)


def _vertex_ai_enabled() -> bool:
    """The SDK's own switch (GOOGLE_GENAI_USE_ENTERPRISE wins over GOOGLE_GENAI_USE_VERTEXAI)."""
    for name in ("GOOGLE_GENAI_USE_ENTERPRISE", "GOOGLE_GENAI_USE_VERTEXAI"):
        value = os.environ.get(name)
        if value is not None:
            return value.strip().lower() in ("true", "1")
    return False


def _env_api_key() -> str | None:
    return os.environ.get("GEMINI_API_KEY") or os.environ.get("GOOGLE_API_KEY") or None


def parse_retry_delay(details: object) -> float | None:
    """Seconds from a `google.rpc.RetryInfo` detail ("47s", "0.5s") in Google's error body."""
    error = details.get("error", details) if isinstance(details, dict) else None
    entries = error.get("details") if isinstance(error, dict) else None
    if not isinstance(entries, list):
        return None
    for entry in entries:
        if isinstance(entry, dict) and entry.get("@type") == _RETRY_INFO_TYPE:
            match = _DURATION.match(str(entry.get("retryDelay", "")))
            if match:
                return float(match.group(1))
    return None


def _sniff_mime_type(data: bytes) -> str:
    if data.startswith(b"\x89PNG"):
        return "image/png"
    if data.startswith(b"\xff\xd8"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "application/octet-stream"


def _sentence(text: str) -> str:
    text = text.strip()
    return text if text.endswith((".", "!", "?")) else f"{text}."


def _seconds(value: float) -> str:
    return f"{value:.1f}" if value < 10 else f"{value:.0f}"


@dataclass(frozen=True, slots=True)
class _Transient:
    """Why the last attempt failed in a way worth retrying, worded for the final message."""

    doing: str  # "answering 503 UNAVAILABLE", read after "Gemini kept"
    detail: str
    retry_delay: float | None = None
    rate_limited: bool = False


class GeminiEngine:
    """Gemini image generation and editing; see the module docstring for the policy."""

    name = "gemini"

    def __init__(
        self,
        *,
        model: str = "gemini-2.5-flash-image",
        fallback_models: Sequence[str] = (),
        base_url: str | None = None,
        api_version: str | None = None,
        max_in_flight: int = 256,
        timeout_seconds: float = 120.0,
        deadline_seconds: float = 600.0,
        api_key: str | None = None,
        response_modalities: Sequence[str] = ("IMAGE",),
        backoff_base_seconds: float = 1.0,
        backoff_max_seconds: float = 30.0,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError("IMAGEGATE_GEMINI_MAX_IN_FLIGHT must be at least 1")
        if timeout_seconds <= 0 or deadline_seconds <= 0:
            raise ValueError("Gemini timeout and deadline must be positive")
        self._models = [model, *(m for m in fallback_models if m and m != model)]
        self._model_index = 0
        self._base_url = base_url.rstrip("/") if base_url else None
        self._api_version = api_version
        self._vertex_ai = _vertex_ai_enabled() and api_key is None
        # With Vertex AI the SDK's own environment rules choose between a project (Application
        # Default Credentials) and express mode (a key); passing a key would force the latter.
        self._api_key = (
            api_key if api_key is not None else (None if self._vertex_ai else _env_api_key())
        )
        # The SDK may still pick a key up from the environment (Vertex AI express mode), so
        # every key in sight is scrubbed from messages, not only the one passed here.
        self._secrets = [
            key
            for key in {api_key, os.environ.get("GEMINI_API_KEY"), os.environ.get("GOOGLE_API_KEY")}
            if key
        ]
        self._response_modalities = list(response_modalities)
        self._timeout = timeout_seconds
        self._deadline = deadline_seconds
        self._backoff_base = backoff_base_seconds
        self._backoff_max = backoff_max_seconds
        self.concurrency = max_in_flight
        self._slots = asyncio.Semaphore(max_in_flight)
        self._clients: list[genai.Client] = []
        # Calls in flight on each client; a call goes to the least busy one, so no pool is
        # asked for more connections than it has.
        self._client_load: list[int] = []
        # Engine-wide rate-limit pause (time.monotonic()), set by any 429.
        self._paused_until = 0.0
        self._pause_reason: _Transient | None = None
        self._rate_limit_streak = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> GeminiEngine:
        return cls(
            model=settings.gemini_model,
            fallback_models=settings.gemini_fallback_models,
            base_url=settings.gemini_base_url,
            api_version=settings.gemini_api_version,
            max_in_flight=settings.gemini_max_in_flight,
            timeout_seconds=settings.gemini_timeout_seconds,
            deadline_seconds=settings.gemini_deadline_seconds,
        )

    @property
    def model(self) -> str:
        """The model calls go to now (the configured one, or the fallback that replaced it)."""
        return self._models[self._model_index]

    @property
    def rate_limited_for(self) -> float:
        """Seconds left of the pause a 429 imposed on every call of this engine (0 if none)."""
        return max(0.0, self._paused_until - time.monotonic())

    def describe(self) -> str:
        where = self._base_url or GOOGLE_AI_BASE_URL
        if self._vertex_ai:
            where = f"Vertex AI{f' at {self._base_url}' if self._base_url else ''}"
        fallbacks = ", ".join(self._models[self._model_index + 1 :]) or "none"
        return f"gemini (model {self.model} via {where}, fallbacks: {fallbacks})"

    # --- lifecycle --------------------------------------------------------------

    async def start(self) -> None:
        self._connect()

    async def close(self) -> None:
        clients, self._clients, self._client_load = self._clients, [], []
        for client in clients:
            await client.aio.aclose()

    def _connect(self) -> list[genai.Client]:
        if self._clients:
            return self._clients
        if self._api_key is None and not self._vertex_ai:
            raise EngineError(
                "The Gemini engine needs a Google API key: set GEMINI_API_KEY (or GOOGLE_API_KEY), "
                "or use Vertex AI with GOOGLE_GENAI_USE_VERTEXAI=true, GOOGLE_CLOUD_PROJECT and "
                "GOOGLE_CLOUD_LOCATION."
            )
        pools = -(-self.concurrency // CONNECTIONS_PER_POOL)
        http_options = types.HttpOptions(
            base_url=self._base_url,
            api_version=self._api_version,
            timeout=self._timeout_ms(self._timeout),
            # For the SDK's httpx transports: their pools allow 100 connections by default,
            # which would quietly cap the calls in flight below gemini_max_in_flight. The aiohttp
            # transport (the one used, imagegate installs it) has no cap and ignores this.
            async_client_args={"limits": self._pool_limits(-(-self.concurrency // pools))},
            # One attempt per call: the engine owns retries. Without this, the SDK's aiohttp
            # transport (used when aiohttp is installed) retries a failed connection once on
            # its own after sleeping 1 to 10 s.
            retry_options=types.HttpRetryOptions(attempts=1),
        )
        try:
            self._clients = [
                genai.Client(api_key=self._api_key, http_options=http_options) for _ in range(pools)
            ]
        except ValueError as exc:
            raise EngineError(self._redact(f"Cannot set up the Gemini client: {exc}")) from None
        self._client_load = [0] * pools
        return self._clients

    @staticmethod
    def _pool_limits(size: int) -> Any:
        if os.environ.get("GOOGLE_GENAI_HTTP_CLIENT", "").strip().lower() != "httpx":
            try:
                import httpx2

                return httpx2.Limits(max_connections=size, max_keepalive_connections=size)
            except ImportError:
                pass
        import httpx

        return httpx.Limits(max_connections=size, max_keepalive_connections=size)

    # --- generation -------------------------------------------------------------

    async def generate(self, request: EngineRequest) -> EngineResult:
        clients = self._connect()
        started = time.monotonic()
        deadline = started + self._deadline
        contents = self._contents(request)
        config = self._config(request)
        attempt = 0
        last: _Transient | None = None
        while True:
            await self._wait_out_rate_limit(deadline, started, last)
            model_index = self._model_index
            model = self._models[model_index]
            async with self._slots:
                remaining = deadline - time.monotonic()
                attempt_timeout = min(self._timeout, remaining)
                if remaining <= 0:
                    raise self._gave_up(last or self._pause_reason, started)
                attempt_config = config.model_copy(
                    update={
                        "http_options": types.HttpOptions(timeout=self._timeout_ms(attempt_timeout))
                    }
                )
                load = self._client_load
                shard = load.index(min(load))
                load[shard] += 1
                try:
                    response = await clients[shard].aio.models.generate_content(
                        model=model, contents=contents, config=attempt_config
                    )
                except genai_errors.APIError as exc:
                    if exc.code == 404 and self._fall_back(model_index, exc):
                        continue
                    if exc.code not in RETRYABLE_STATUS_CODES:
                        # `from None`: the SDK's error holds the request, and its headers the key.
                        raise self._rejected(exc, model) from None
                    last = self._transient_api_error(exc)
                except _TRANSPORT_ERRORS as exc:
                    reason = self._transient_transport_error(exc, attempt_timeout)
                    if attempt_timeout < self._timeout and isinstance(exc, _TIMEOUT_ERRORS):
                        # The deadline cut this attempt short, not a slow Gemini: the reason
                        # worth reporting is the one that made the engine retry until now.
                        raise self._gave_up(last or reason, started) from None
                    last = reason
                else:
                    self._rate_limit_streak = 0
                    return self._result(response, model)
                finally:
                    load[shard] -= 1

            attempt += 1
            logger.info(
                "Gemini call for %s failed (attempt %d): %s; retrying",
                model,
                attempt,
                self._redact(f"{last.doing}: {last.detail}"),
            )
            if last.rate_limited:
                self._pause_for_rate_limit(last)
                continue
            if last.retry_delay:
                wait = last.retry_delay
            else:
                ceiling = min(self._backoff_max, self._backoff_base * 2 ** (attempt - 1))
                wait = random.uniform(0, ceiling)
            if time.monotonic() + wait >= deadline:
                raise self._gave_up(last, started)
            await asyncio.sleep(wait)

    def _contents(self, request: EngineRequest) -> list[types.PartUnion]:
        parts: list[types.PartUnion] = [types.Part.from_text(text=request.prompt)]
        parts.extend(
            types.Part.from_bytes(data=image.data, mime_type=image.mime_type)
            for image in request.images
        )
        return parts

    def _config(self, request: EngineRequest) -> types.GenerateContentConfig:
        image_config = None
        if request.aspect_ratio is not None:
            image_config = types.ImageConfig(
                aspect_ratio=nearest_ratio(request.aspect_ratio, SUPPORTED_RATIOS)
            )
        return types.GenerateContentConfig(
            response_modalities=self._response_modalities,
            image_config=image_config,
            seed=request.seed,
            # No tools are declared; turning automatic function calling off skips its
            # bookkeeping and its INFO log line on every call.
            automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
        )

    @staticmethod
    def _timeout_ms(seconds: float) -> int:
        # The SDK reads a timeout of 0 as "none"; a positive remainder must stay positive.
        return max(1, int(seconds * 1000))

    # --- failures -----------------------------------------------------------------

    def _fall_back(self, model_index: int, exc: genai_errors.APIError) -> bool:
        """Move past a model Google does not serve; False when no fallback is left."""
        if self._model_index != model_index:
            # Another call already moved on while this one was in flight.
            return True
        if model_index + 1 >= len(self._models):
            return False
        failed, replacement = self._models[model_index], self._models[model_index + 1]
        self._model_index = model_index + 1
        if (failed, replacement) not in _announced_fallbacks:
            _announced_fallbacks.add((failed, replacement))
            logger.warning(
                "GEMINI MODEL %s IS NOT AVAILABLE (%s); using %s from now on. "
                "Set IMAGEGATE_GEMINI_MODEL=%s to make this the configured model.",
                failed,
                self._redact(f"{exc.code} {exc.status}: {exc.message}"),
                replacement,
                replacement,
            )
        return True

    @staticmethod
    def _transient_api_error(exc: genai_errors.APIError) -> _Transient:
        return _Transient(
            doing=f"answering {exc.code} {exc.status or ''}".rstrip(),
            detail=exc.message or "no message",
            retry_delay=parse_retry_delay(exc.details),
            rate_limited=exc.code == 429,
        )

    @staticmethod
    def _transient_transport_error(exc: BaseException, timeout: float) -> _Transient:
        if isinstance(exc, _TIMEOUT_ERRORS):
            return _Transient(doing="timing out", detail=f"no answer within {_seconds(timeout)} s")
        detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return _Transient(doing="failing to connect", detail=detail)

    def _rejected(self, exc: genai_errors.APIError, model: str) -> EngineError:
        said = f"{exc.code} {exc.status or ''}".rstrip()
        message = exc.message or "no message"
        if exc.code == 404:
            tried = ", ".join(self._models)
            text = (
                f"Gemini does not serve the model {model} ({said}): {_sentence(message)} "
                f"Models tried: {tried}. Set IMAGEGATE_GEMINI_MODEL or "
                "IMAGEGATE_GEMINI_FALLBACK_MODELS to a current Gemini image model."
            )
        elif exc.code == 403:
            text = (
                f"Gemini refused access ({said}): {_sentence(message)} Check that the API key "
                f"or project may use the Gemini API and the model {model}."
            )
        else:
            text = f"Gemini rejected the request ({said}): {message}"
        return EngineError(self._redact(text))

    def _pause_for_rate_limit(self, reason: _Transient) -> None:
        """A 429 holds back every call of this engine, not just the one that got it."""
        self._rate_limit_streak += 1
        if reason.retry_delay:
            pause = reason.retry_delay
        else:
            pause = min(self._backoff_max, self._backoff_base * 2 ** (self._rate_limit_streak - 1))
        until = time.monotonic() + pause
        if until > self._paused_until:
            if self._paused_until < time.monotonic():
                logger.warning(
                    "Gemini is rate limiting this key (%s); pausing new calls for %s s",
                    self._redact(reason.detail),
                    _seconds(pause),
                )
            self._paused_until = until
            self._pause_reason = reason

    async def _wait_out_rate_limit(
        self, deadline: float, started: float, last: _Transient | None
    ) -> None:
        while (pause := self._paused_until - time.monotonic()) > 0:
            if self._paused_until >= deadline:
                raise self._gave_up(self._pause_reason or last, started)
            # Spread the restart a little so the paused calls do not hit Google in one burst.
            spread = random.uniform(0, min(pause * 0.1, 5.0))
            await asyncio.sleep(min(pause + spread, deadline - time.monotonic()))

    def _gave_up(self, last: _Transient | None, started: float) -> EngineError:
        waited = _seconds(time.monotonic() - started)
        if last is None:
            text = f"Gemini did not answer within {waited} s. Try again later."
        else:
            detail = _sentence(last.detail)
            text = f"Gemini kept {last.doing} for {waited} s: {detail} Try again later."
        return EngineError(self._redact(text), retryable=False)

    # --- answers --------------------------------------------------------------------

    def _result(self, response: types.GenerateContentResponse, model: str) -> EngineResult:
        feedback = response.prompt_feedback
        if feedback is not None and feedback.block_reason is not None:
            reason = _enum_name(feedback.block_reason)
            why = f": {feedback.block_reason_message}" if feedback.block_reason_message else ""
            raise EngineError(
                self._redact(
                    f"Gemini blocked the prompt ({reason}){why}. Rephrase the prompt or use "
                    "other reference images."
                )
            )
        images: list[OutputImage] = []
        texts: list[str] = []
        finish_reason: str | None = None
        finish_message: str | None = None
        for candidate in response.candidates or []:
            if candidate.finish_reason is not None and finish_reason in (None, "STOP"):
                finish_reason = _enum_name(candidate.finish_reason)
                finish_message = candidate.finish_message
            for part in (candidate.content.parts if candidate.content else None) or []:
                # Thinking models show drafts and reasoning as thought parts: not the answer.
                if part.thought:
                    continue
                if part.inline_data is not None and part.inline_data.data:
                    data = part.inline_data.data
                    mime_type = part.inline_data.mime_type or _sniff_mime_type(data)
                    images.append(OutputImage(data=data, mime_type=mime_type))
                elif part.text:
                    texts.append(part.text)
        text = "\n".join(texts) or None
        if images:
            return EngineResult(images=images, model=model, text=text)
        raise EngineError(self._redact(_no_image_message(finish_reason, finish_message, text)))

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "[redacted]")
        return text


def _enum_name(value: object) -> str:
    name = getattr(value, "value", value)
    return str(name)


def _no_image_message(reason: str | None, finish_message: str | None, text: str | None) -> str:
    if reason in _REFUSED:
        message = (
            f"Gemini refused to make the image ({reason}): it judged the request or the result "
            "unsafe. Rephrase the prompt or use other reference images."
        )
    elif reason in _RECITED:
        message = (
            f"Gemini stopped because the image would copy existing work too closely ({reason}). "
            "Ask for something more original."
        )
    elif reason in _NO_IMAGE or reason not in (None, "STOP"):
        message = (
            f"Gemini made no image ({reason}). Ask for the picture explicitly "
            "(e.g. 'Generate an image of ...') or simplify the request."
        )
    else:
        message = (
            "Gemini answered without an image. Ask for the picture explicitly "
            "(e.g. 'Generate an image of ...') or rephrase the prompt."
        )
    if finish_message:
        message += f" Google said: {_sentence(finish_message)}"
    if text:
        message += f" The model said: {_sentence(text)}"
    return message
