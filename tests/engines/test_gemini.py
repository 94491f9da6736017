"""The Gemini engine through the real google-genai SDK, against a loopback Gemini stub."""

from __future__ import annotations

import asyncio
import io
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from PIL import Image

from imagegate.engines.base import EngineError, EngineRequest, InputImage
from imagegate.engines.gemini import GeminiEngine, parse_retry_delay
from imagegate.settings import Settings
from tests.support.gemini_stub import GeminiStub, Reply, draw_png
from tests.support.server import wait_until

API_KEY = "AIzaSy-imagegate-test-key-do-not-leak-7f3a"
MODEL = "gemini-2.5-flash-image"
FALLBACK = "gemini-3.1-flash-image"

EngineFactory = Callable[..., GeminiEngine]


@pytest.fixture
def stub() -> Iterator[GeminiStub]:
    with GeminiStub(api_key=API_KEY) as server:
        yield server


@pytest.fixture
async def make_engine(stub: GeminiStub) -> AsyncIterator[EngineFactory]:
    """Engines pointed at the stub, with backoff shrunk to milliseconds; closed after the test."""
    engines: list[GeminiEngine] = []

    def factory(**overrides: Any) -> GeminiEngine:
        options: dict[str, Any] = {
            "model": MODEL,
            "fallback_models": (),
            "base_url": stub.url,
            "api_key": API_KEY,
            "max_in_flight": 16,
            "timeout_seconds": 5.0,
            "deadline_seconds": 10.0,
            "backoff_base_seconds": 0.01,
            "backoff_max_seconds": 0.05,
        }
        options.update(overrides)
        engine = GeminiEngine(**options)
        engines.append(engine)
        return engine

    yield factory
    for engine in engines:
        await engine.close()


def reference(index: int) -> InputImage:
    data = draw_png(32 + index, 24, index)
    return InputImage(data=data, mime_type="image/png", width=32 + index, height=24)


def size_of(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return image.size


# --- answers -------------------------------------------------------------------------


async def test_text_to_image(stub: GeminiStub, make_engine: EngineFactory) -> None:
    engine = make_engine()
    await engine.start()

    result = await engine.generate(EngineRequest(prompt="a red fox in the snow"))

    assert result.model == MODEL
    assert len(result.images) == 1
    assert result.images[0].mime_type == "image/png"
    assert size_of(result.images[0].data) == (64, 64)
    assert result.text is None
    [sent] = stub.requests
    assert sent.model == MODEL
    assert sent.api_key == API_KEY
    assert sent.prompt == "a red fox in the snow"
    assert sent.images == []
    assert sent.response_modalities == ["IMAGE"]
    assert sent.aspect_ratio is None


@pytest.mark.parametrize("count", [1, 3])
async def test_references_arrive_as_inline_parts_in_order(
    stub: GeminiStub, make_engine: EngineFactory, count: int
) -> None:
    references = [reference(index) for index in range(count)]
    engine = make_engine()

    result = await engine.generate(
        EngineRequest(prompt="put them side by side", images=references, seed=42)
    )

    assert len(result.images) == 1
    [sent] = stub.requests
    assert sent.parts[0].text == "put them side by side"
    assert [(part.mime_type, part.data) for part in sent.parts[1:]] == [
        (image.mime_type, image.data) for image in references
    ]
    assert sent.seed == 42


@pytest.mark.parametrize(
    ("asked", "sent_ratio", "size"),
    [
        ("16:9", "16:9", (84, 48)),
        ("9:16", "9:16", (48, 84)),
        ("2:1", "16:9", (84, 48)),
        ("3:1", "21:9", (96, 42)),
        ("1:1", "1:1", (64, 64)),
        ("5:4", "5:4", (72, 56)),
    ],
)
async def test_aspect_ratio_is_mapped_to_the_nearest_supported(
    stub: GeminiStub,
    make_engine: EngineFactory,
    asked: str,
    sent_ratio: str,
    size: tuple[int, int],
) -> None:
    result = await make_engine().generate(EngineRequest(prompt="a lake", aspect_ratio=asked))

    assert stub.requests[0].aspect_ratio == sent_ratio
    assert size_of(result.images[0].data) == size


async def test_several_images_and_text_in_one_answer(
    stub: GeminiStub, make_engine: EngineFactory
) -> None:
    stub.script(Reply.image(3, text="Here are three variations."))
    engine = make_engine(response_modalities=("TEXT", "IMAGE"))

    result = await engine.generate(EngineRequest(prompt="three cats"))

    assert stub.requests[0].response_modalities == ["TEXT", "IMAGE"]
    assert [image.data for image in result.images] == [draw_png(64, 64, i) for i in range(3)]
    assert result.text == "Here are three variations."


async def test_thought_parts_are_not_the_answer(
    stub: GeminiStub, make_engine: EngineFactory
) -> None:
    stub.script(Reply.image(1, text="Done.", thoughts=2))

    result = await make_engine().generate(EngineRequest(prompt="a cat"))

    assert [image.data for image in result.images] == [draw_png(64, 64, 0)]
    assert result.text == "Done."


async def test_output_keeps_the_mime_type_google_gives() -> None:
    jpeg = io.BytesIO()
    Image.new("RGB", (40, 30), (10, 20, 30)).save(jpeg, format="JPEG")
    with GeminiStub(api_key=None, image_bytes=jpeg.getvalue(), image_mime_type="image/jpeg") as jp:
        engine = GeminiEngine(base_url=jp.url, api_key="any")
        try:
            result = await engine.generate(EngineRequest(prompt="a photo"))
        finally:
            await engine.close()

    assert [(image.mime_type, image.data) for image in result.images] == [
        ("image/jpeg", jpeg.getvalue())
    ]


async def test_text_only_answer_fails_with_what_the_model_said(
    stub: GeminiStub, make_engine: EngineFactory
) -> None:
    stub.script(Reply.text_only("I can only describe a cat, not draw one."))

    with pytest.raises(EngineError) as caught:
        await make_engine().generate(EngineRequest(prompt="a cat"))

    assert not caught.value.retryable
    assert "without an image" in caught.value.message
    assert "I can only describe a cat, not draw one." in caught.value.message
    assert len(stub.requests) == 1


async def test_blocked_prompt_is_final(stub: GeminiStub, make_engine: EngineFactory) -> None:
    stub.script(Reply.blocked("PROHIBITED_CONTENT"))

    with pytest.raises(EngineError) as caught:
        await make_engine().generate(EngineRequest(prompt="something forbidden"))

    assert not caught.value.retryable
    assert caught.value.message.startswith("Gemini blocked the prompt (PROHIBITED_CONTENT)")
    assert "Rephrase" in caught.value.message
    assert len(stub.requests) == 1


@pytest.mark.parametrize(
    ("reason", "words"),
    [
        ("IMAGE_SAFETY", "refused"),
        ("IMAGE_PROHIBITED_CONTENT", "refused"),
        ("IMAGE_RECITATION", "copy existing work"),
        ("NO_IMAGE", "made no image"),
        ("IMAGE_OTHER", "made no image"),
    ],
)
async def test_finish_without_image_is_final(
    stub: GeminiStub, make_engine: EngineFactory, reason: str, words: str
) -> None:
    stub.script(Reply.finished(reason, text="Sorry, I cannot draw that."))

    with pytest.raises(EngineError) as caught:
        await make_engine().generate(EngineRequest(prompt="a portrait"))

    message = caught.value.message
    assert not caught.value.retryable
    assert f"({reason})" in message
    assert words in message
    assert "The model said: Sorry, I cannot draw that." in message
    assert len(stub.requests) == 1


# --- transient failures ------------------------------------------------------------------


async def test_rate_limit_honours_retry_delay(stub: GeminiStub, make_engine: EngineFactory) -> None:
    stub.script(Reply.error(429, message="Quota exceeded for this model.", retry_delay="0.2s"))

    result = await make_engine().generate(EngineRequest(prompt="a fox"))

    assert len(result.images) == 1
    first, second = stub.requests
    assert first.status == 429 and second.status == 200
    assert first.answered_at is not None
    waited = second.received_at - first.answered_at
    # 0.2 s from Google, up to 10 % spread, plus slack for a busy machine.
    assert 0.2 <= waited < 0.7


async def test_rate_limit_pauses_every_call_of_the_engine(
    stub: GeminiStub, make_engine: EngineFactory
) -> None:
    engine = make_engine()
    stub.script(Reply.error(429, message="Quota exceeded.", retry_delay="0.3s"))

    first = asyncio.create_task(engine.generate(EngineRequest(prompt="first")))
    # The stub counts a request answered before the engine has read the 429: wait for the
    # engine itself to be paused.
    await asyncio.to_thread(wait_until, lambda: engine.rate_limited_for > 0, 5.0, 0.002)
    others = [engine.generate(EngineRequest(prompt=f"other {i}")) for i in range(5)]
    results = await asyncio.gather(first, *others)

    assert all(len(result.images) == 1 for result in results)
    rate_limited = stub.requests[0]
    assert rate_limited.status == 429 and rate_limited.answered_at is not None
    later = stub.requests[1:]
    assert len(later) == 6
    # Calls that started after the 429 waited for the pause too instead of hitting Google.
    assert min(r.received_at for r in later) - rate_limited.answered_at >= 0.3 - 0.01


async def test_server_errors_are_retried(stub: GeminiStub, make_engine: EngineFactory) -> None:
    stub.script(
        Reply.error(500, message="Internal error encountered."),
        Reply.error(500, message="Internal error encountered."),
    )

    result = await make_engine().generate(EngineRequest(prompt="a boat"))

    assert len(result.images) == 1
    assert [r.status for r in stub.requests] == [500, 500, 200]


async def test_overload_until_the_deadline_fails_with_the_last_reason(
    stub: GeminiStub, make_engine: EngineFactory
) -> None:
    stub.default_reply = Reply.error(503, message="The model is overloaded. Please try later.")
    engine = make_engine(deadline_seconds=0.5)
    started = time.monotonic()

    with pytest.raises(EngineError) as caught:
        await engine.generate(EngineRequest(prompt="a boat"))

    elapsed = time.monotonic() - started
    assert not caught.value.retryable
    assert caught.value.message.startswith("Gemini kept answering 503 UNAVAILABLE for ")
    assert "The model is overloaded" in caught.value.message
    assert elapsed < 1.5
    assert len(stub.requests) >= 3


async def test_timeouts_are_retried_until_the_deadline(
    stub: GeminiStub, make_engine: EngineFactory
) -> None:
    stub.default_reply = Reply.hang(5.0)
    engine = make_engine(timeout_seconds=0.1, deadline_seconds=0.6)
    started = time.monotonic()

    with pytest.raises(EngineError) as caught:
        await engine.generate(EngineRequest(prompt="a slow boat"))

    elapsed = time.monotonic() - started
    assert not caught.value.retryable
    assert "kept timing out" in caught.value.message
    assert 0.5 <= elapsed < 1.5
    assert len(stub.requests) >= 3


async def test_refused_connections_are_retried_then_reported(
    make_engine: EngineFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="imagegate.engines.gemini")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    engine = make_engine(base_url=f"http://127.0.0.1:{closed_port}", deadline_seconds=0.3)

    with pytest.raises(EngineError) as caught:
        await engine.generate(EngineRequest(prompt="anything"))

    assert not caught.value.retryable
    assert "kept failing to connect" in caught.value.message
    # httpx2's ConnectError, or aiohttp's ClientConnectorError when the SDK uses aiohttp.
    assert "Connect" in caught.value.message
    assert "failed (attempt 2)" in caplog.text


# --- models ----------------------------------------------------------------------------


async def test_missing_model_falls_back_once_for_the_whole_engine(
    stub: GeminiStub, make_engine: EngineFactory, caplog: pytest.LogCaptureFixture
) -> None:
    stub.missing_models.add(MODEL)
    engine = make_engine(fallback_models=(FALLBACK,))
    caplog.set_level(logging.WARNING, logger="imagegate.engines.gemini")

    first = await engine.generate(EngineRequest(prompt="one"))
    second = await engine.generate(EngineRequest(prompt="two"))

    assert first.model == FALLBACK and second.model == FALLBACK
    assert [(r.model, r.status) for r in stub.requests] == [
        (MODEL, 404),
        (FALLBACK, 200),
        (FALLBACK, 200),
    ]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert MODEL in warnings[0].getMessage() and FALLBACK in warnings[0].getMessage()
    assert engine.model == FALLBACK
    assert "model gemini-3.1-flash-image" in engine.describe()


async def test_missing_model_without_fallback_is_final(
    stub: GeminiStub, make_engine: EngineFactory
) -> None:
    stub.missing_models.update({MODEL, FALLBACK})
    engine = make_engine(fallback_models=(FALLBACK,))

    with pytest.raises(EngineError) as caught:
        await engine.generate(EngineRequest(prompt="one"))

    message = caught.value.message
    assert not caught.value.retryable
    assert f"models/{FALLBACK} is not found" in message
    assert "IMAGEGATE_GEMINI_MODEL" in message
    assert [r.model for r in stub.requests] == [MODEL, FALLBACK]


# --- keys and secrets -------------------------------------------------------------------


async def test_the_key_never_appears_in_errors_or_logs(
    stub: GeminiStub, make_engine: EngineFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    engine = make_engine(deadline_seconds=0.3)
    stub.script(
        # A proxy that echoes the key back must not get it into a task's error.
        Reply.error(400, message=f"API key {API_KEY} is not valid."),
        Reply.error(403, message=f"Permission denied for key {API_KEY}."),
        Reply.blocked("SAFETY", message=f"blocked for {API_KEY}"),
    )
    messages: list[str] = []
    for _ in range(3):
        with pytest.raises(EngineError) as caught:
            await engine.generate(EngineRequest(prompt="x"))
        messages.append(str(caught.value))
    stub.default_reply = Reply.error(503, message=f"overloaded ({API_KEY})")
    with pytest.raises(EngineError) as caught:
        await engine.generate(EngineRequest(prompt="x"))
    messages.append(str(caught.value))

    assert messages[0].startswith("Gemini rejected the request (400 INVALID_ARGUMENT)")
    assert messages[1].startswith("Gemini refused access (403 PERMISSION_DENIED): Permission")
    assert all("[redacted]" in message for message in messages)
    assert not any(API_KEY in message for message in messages)
    assert API_KEY not in caplog.text
    assert API_KEY not in repr(engine) and API_KEY not in engine.describe()


async def test_wrong_key_is_final_with_googles_message(make_engine: EngineFactory) -> None:
    engine = make_engine(api_key="not-the-right-key")

    with pytest.raises(EngineError) as caught:
        await engine.generate(EngineRequest(prompt="x"))

    assert not caught.value.retryable
    assert "API key not valid" in caught.value.message
    assert "not-the-right-key" not in caught.value.message


async def test_key_from_the_environment(
    stub: GeminiStub, make_engine: EngineFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    monkeypatch.delenv("GOOGLE_GENAI_USE_VERTEXAI", raising=False)
    monkeypatch.delenv("GOOGLE_GENAI_USE_ENTERPRISE", raising=False)
    monkeypatch.setenv("GEMINI_API_KEY", API_KEY)

    await make_engine(api_key=None).generate(EngineRequest(prompt="x"))

    assert stub.requests[0].api_key == API_KEY


async def test_no_key_is_a_clear_start_up_error(
    make_engine: EngineFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("GEMINI_API_KEY", "GOOGLE_API_KEY", "GOOGLE_GENAI_USE_VERTEXAI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("GOOGLE_GENAI_USE_ENTERPRISE", raising=False)

    with pytest.raises(EngineError, match="GEMINI_API_KEY"):
        await make_engine(api_key=None).start()


async def test_vertex_ai_is_left_to_the_sdk_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    express_key = "vertex-express-key-0000-do-not-leak"
    monkeypatch.setenv("GOOGLE_GENAI_USE_VERTEXAI", "true")
    monkeypatch.delenv("GOOGLE_GENAI_USE_ENTERPRISE", raising=False)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    monkeypatch.delenv("GOOGLE_CLOUD_PROJECT", raising=False)
    monkeypatch.delenv("GOOGLE_CLOUD_LOCATION", raising=False)
    monkeypatch.setenv("GEMINI_API_KEY", express_key)
    with GeminiStub(api_key=None) as vertex:
        vertex.script(Reply.image(), Reply.error(400, message=f"Key {express_key} is invalid."))
        engine = GeminiEngine(base_url=vertex.url)
        try:
            result = await engine.generate(EngineRequest(prompt="a fox"))
            with pytest.raises(EngineError) as caught:
                await engine.generate(EngineRequest(prompt="a fox"))
        finally:
            await engine.close()

    assert engine.describe().startswith("gemini (model gemini-2.5-flash-image via Vertex AI")
    assert len(result.images) == 1
    assert vertex.requests[0].vertex_ai
    assert express_key not in caught.value.message
    assert "[redacted]" in caught.value.message


# --- settings and throughput --------------------------------------------------------------


def test_from_settings_and_describe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GOOGLE_GENAI_USE_VERTEXAI", raising=False)
    monkeypatch.delenv("GOOGLE_GENAI_USE_ENTERPRISE", raising=False)
    settings = Settings(
        gemini_model="gemini-2.5-flash-image",
        gemini_fallback_models=["gemini-3.1-flash-image", "gemini-3-pro-image"],
        gemini_max_in_flight=64,
    )

    engine = GeminiEngine.from_settings(settings)

    assert engine.concurrency == 64
    assert engine.describe() == (
        "gemini (model gemini-2.5-flash-image via https://generativelanguage.googleapis.com, "
        "fallbacks: gemini-3.1-flash-image, gemini-3-pro-image)"
    )


def test_retry_delay_parsing() -> None:
    body = {
        "error": {
            "code": 429,
            "details": [
                {"@type": "type.googleapis.com/google.rpc.Help"},
                {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "47s"},
            ],
        }
    }
    assert parse_retry_delay(body) == 47.0
    assert parse_retry_delay({"error": {"details": [{"retryDelay": "1.5s"}]}}) is None
    assert parse_retry_delay("not json") is None


async def test_hundreds_of_concurrent_calls_share_one_bounded_pool(
    stub: GeminiStub, make_engine: EngineFactory
) -> None:
    stub.delay = 1.0
    # Above httpx's default pool of 100 connections, which must not cap it.
    engine = make_engine(max_in_flight=150)
    await engine.start()

    results = await asyncio.gather(
        *(engine.generate(EngineRequest(prompt=f"cat {i}")) for i in range(300))
    )

    assert len(results) == 300
    assert all(len(result.images) == 1 for result in results)
    assert len(stub.requests) == 300
    assert stub.peak_in_flight == 150
