"""A loopback server that speaks Gemini's `generateContent` REST protocol.

Tests and benchmarks point the real google-genai SDK at it (`HttpOptions(base_url=stub.url)`)
so the Gemini engine is exercised over a real socket, with Google's JSON shapes:

    with GeminiStub(delay=0.5) as stub:
        stub.script(Reply.error(429, "RESOURCE_EXHAUSTED", "Quota exceeded", retry_delay="0.2s"))
        ...  # the next call gets the 429, the ones after it an image
        assert stub.requests[0].model == "gemini-2.5-flash-image"

Every request is recorded (`stub.requests`) with its decoded parts, aspect ratio and
timestamps. Each call takes the next `Reply` from the script; with the script empty it
answers `default_reply`: by default one PNG drawn with Pillow (shaped like Gemini's output
for the requested ratio, 16 times smaller), or `image_bytes` when given. Models listed in
`missing_models` answer 404 NOT_FOUND the way a retired model does, without consuming the
script.

`GeminiStub.in_subprocess(...)` runs one in another process, for benchmarks that must not
share an event loop (or a GIL) with the stub.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import collections
import io
import json
import multiprocessing
import multiprocessing.connection
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

import uvicorn
from PIL import Image, ImageDraw
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

# Gemini 2.5 Flash Image's ratios and output sizes (from Google's model card).
SUPPORTED_RATIOS: dict[str, tuple[int, int]] = {
    "1:1": (1024, 1024),
    "2:3": (832, 1248),
    "3:2": (1248, 832),
    "3:4": (864, 1184),
    "4:3": (1184, 864),
    "4:5": (896, 1152),
    "5:4": (1152, 896),
    "9:16": (768, 1344),
    "16:9": (1344, 768),
    "21:9": (1536, 672),
}
# Real outputs are ~1 MP; the drawn ones keep the shape at 1/16 of the side so tests stay fast.
_SCALE = 16
_PALETTE = [(220, 60, 60), (60, 160, 90), (60, 90, 220), (230, 180, 40), (150, 70, 200)]
_STATUS_BY_CODE = {
    400: "INVALID_ARGUMENT",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


@dataclass(frozen=True, slots=True)
class Reply:
    """One canned answer to one generateContent call. Build them with the class methods."""

    status: int = 200
    images: int = 1
    text: str | None = None
    finish_reason: str | None = "STOP"
    finish_message: str | None = None
    block_reason: str | None = None
    error_status: str | None = None
    error_message: str | None = None
    retry_delay: str | None = None
    # Draft images a thinking model (Gemini 3) shows before its answer, marked `thought`.
    thoughts: int = 0
    # Seconds before answering; None means the stub's default delay.
    delay: float | None = None

    @classmethod
    def image(
        cls,
        count: int = 1,
        *,
        text: str | None = None,
        thoughts: int = 0,
        delay: float | None = None,
    ) -> Reply:
        """`count` images (and `text` before them when given), finishReason STOP; `thoughts`
        draft images and a thought text come first, as a thinking model sends them."""
        return cls(images=count, text=text, thoughts=thoughts, delay=delay)

    @classmethod
    def text_only(cls, text: str, *, finish_reason: str = "STOP") -> Reply:
        """The model talks instead of drawing: a text part and no image."""
        return cls(images=0, text=text, finish_reason=finish_reason)

    @classmethod
    def blocked(cls, reason: str = "SAFETY", message: str | None = None) -> Reply:
        """`promptFeedback.blockReason`: no candidates at all."""
        return cls(images=0, finish_reason=None, block_reason=reason, finish_message=message)

    @classmethod
    def finished(cls, reason: str, *, text: str | None = None, message: str | None = None) -> Reply:
        """A candidate without an image that stopped for `reason` (IMAGE_SAFETY, NO_IMAGE, ...)."""
        return cls(images=0, text=text, finish_reason=reason, finish_message=message)

    @classmethod
    def error(
        cls,
        code: int,
        status: str | None = None,
        message: str = "stub error",
        *,
        retry_delay: str | None = None,
        delay: float | None = None,
    ) -> Reply:
        """Google's error body; `retry_delay` ("47s") adds a google.rpc.RetryInfo detail."""
        return cls(
            status=code,
            images=0,
            error_status=status or _STATUS_BY_CODE.get(code, "UNKNOWN"),
            error_message=message,
            retry_delay=retry_delay,
            delay=delay,
        )

    @classmethod
    def hang(cls, seconds: float) -> Reply:
        """Answer an image only after `seconds`: longer than the client's timeout, it is one."""
        return cls(delay=seconds)


@dataclass(frozen=True, slots=True)
class RequestPart:
    """One part of the user's content: `text`, or an inline image (`mime_type`, `data`)."""

    text: str | None = None
    mime_type: str | None = None
    data: bytes | None = None


@dataclass(slots=True)
class RecordedRequest:
    api_version: str
    model: str
    method: str
    api_key: str | None
    body: dict[str, Any]
    # time.monotonic() when the body was read, and when the answer was sent.
    received_at: float
    answered_at: float | None = None
    status: int | None = None
    vertex_ai: bool = False
    authorization: str | None = None
    parts: list[RequestPart] = field(default_factory=list)

    @property
    def generation_config(self) -> dict[str, Any]:
        config = _field(self.body, "generationConfig", "generation_config")
        return config if isinstance(config, dict) else {}

    @property
    def aspect_ratio(self) -> str | None:
        image_config = _field(self.generation_config, "imageConfig", "image_config")
        if not isinstance(image_config, dict):
            return None
        ratio = _field(image_config, "aspectRatio", "aspect_ratio")
        return ratio if isinstance(ratio, str) else None

    @property
    def response_modalities(self) -> list[str] | None:
        value = _field(self.generation_config, "responseModalities", "response_modalities")
        return list(value) if isinstance(value, list) else None

    @property
    def seed(self) -> int | None:
        value = _field(self.generation_config, "seed")
        return value if isinstance(value, int) else None

    @property
    def prompt(self) -> str:
        return "".join(part.text for part in self.parts if part.text is not None)

    @property
    def images(self) -> list[RequestPart]:
        return [part for part in self.parts if part.data is not None]


def _field(mapping: dict[str, Any], *names: str) -> Any:
    """Google accepts both camelCase and snake_case field names; so does the stub."""
    for name in names:
        if name in mapping:
            return mapping[name]
    return None


def _decode_base64(text: str) -> bytes:
    """Either alphabet (the SDK sends URL-safe), padding optional, like Google's server."""
    normalized = text.replace("-", "+").replace("_", "/")
    return base64.b64decode(normalized + "=" * (-len(normalized) % 4), validate=True)


def _parse_parts(body: dict[str, Any]) -> list[RequestPart]:
    parts: list[RequestPart] = []
    contents = body.get("contents")
    if not isinstance(contents, list):
        raise ValueError("contents must be a list")
    for content in contents:
        for part in content.get("parts") or []:
            if "text" in part:
                parts.append(RequestPart(text=part["text"]))
                continue
            blob = _field(part, "inlineData", "inline_data")
            if not isinstance(blob, dict):
                raise ValueError(f"unsupported part: {sorted(part)}")
            mime_type = _field(blob, "mimeType", "mime_type")
            data = _field(blob, "data")
            if not isinstance(mime_type, str) or not isinstance(data, str):
                raise ValueError("inlineData needs mimeType and data")
            parts.append(RequestPart(mime_type=mime_type, data=_decode_base64(data)))
    return parts


def draw_png(width: int, height: int, index: int = 0) -> bytes:
    """A real PNG: a colour field with a stripe, different for each `index`."""
    colour = _PALETTE[index % len(_PALETTE)]
    image = Image.new("RGB", (width, height), colour)
    ImageDraw.Draw(image).rectangle((0, 0, width // 3, height), fill=(250, 250, 250))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def noise_png(megabytes: float = 1.5) -> bytes:
    """A PNG of random pixels of about `megabytes`: noise does not compress, like a photo."""
    side = int((megabytes * 1_000_000 / 3) ** 0.5)
    image = Image.frombytes("RGB", (side, side), os.urandom(side * side * 3))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def error_body(
    code: int, status: str, message: str, *, retry_delay: str | None = None
) -> dict[str, Any]:
    """Google's error envelope; a 429 also carries QuotaFailure/Help details like the real one."""
    details: list[dict[str, Any]] = []
    if code == 429:
        details.append(
            {
                "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                "violations": [
                    {
                        "quotaMetric": (
                            "generativelanguage.googleapis.com/generate_content_requests"
                        ),
                        "quotaId": "GenerateRequestsPerMinutePerProjectPerModel",
                    }
                ],
            }
        )
    if retry_delay is not None:
        details.append(
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": retry_delay}
        )
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details:
        error["details"] = details
    return {"error": error}


class GeminiStub:
    """A real HTTP server on 127.0.0.1 answering `POST /{version}/models/{model}:generateContent`.

    `delay`: seconds before each answer (unless the reply says otherwise).
    `image_bytes`/`image_mime_type`: the image every successful answer carries (default: a
    small PNG drawn for the requested aspect ratio). `api_key`: the `x-goog-api-key` it
    accepts (None accepts any); a wrong key gets Google's 400 API_KEY_INVALID.
    `missing_models`: model ids that answer 404 NOT_FOUND. `default_reply`: the answer once
    the script is used up (one image unless told otherwise).
    """

    def __init__(
        self,
        *,
        delay: float = 0.0,
        image_bytes: bytes | None = None,
        image_mime_type: str = "image/png",
        api_key: str | None = "stub-api-key",
        missing_models: tuple[str, ...] | list[str] = (),
        default_reply: Reply | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        record: bool = True,
    ) -> None:
        self.delay = delay
        self.image_mime_type = image_mime_type
        self.api_key = api_key
        self.missing_models: set[str] = set(missing_models)
        self.default_reply = default_reply or Reply.image()
        self.record = record
        self.requests: list[RecordedRequest] = []
        self.in_flight = 0
        self.peak_in_flight = 0
        self.answered = 0
        self._image_b64 = base64.b64encode(image_bytes).decode() if image_bytes else None
        self._drawn: dict[tuple[str, int], str] = {}
        self._bodies: dict[tuple[str, str, int, str | None], bytes] = {}
        self._script: collections.deque[Reply] = collections.deque()
        self._host = host
        self._port = port
        self._socket: socket.socket | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._failure: BaseException | None = None

    # --- scripting ------------------------------------------------------------

    def script(self, *replies: Reply) -> None:
        """Queue replies for the next calls, in order; once used up, calls get `default_reply`."""
        self._script.extend(replies)

    @property
    def pending(self) -> int:
        """Scripted replies not yet used."""
        return len(self._script)

    def reset(self) -> None:
        """Forget recorded requests, the script and the peak, keeping the server up."""
        self.requests.clear()
        self._script.clear()
        self.peak_in_flight = self.in_flight
        self.answered = 0

    def wait_for_requests(self, count: int, timeout: float = 5.0) -> list[RecordedRequest]:
        """Poll until `count` requests were answered (or raise TimeoutError)."""
        deadline = time.monotonic() + timeout
        while self.answered < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"stub answered {self.answered} of {count} requests")
            time.sleep(0.005)
        return list(self.requests)

    # --- lifecycle ------------------------------------------------------------

    @property
    def url(self) -> str:
        if self._socket is None:
            raise RuntimeError("GeminiStub is not started")
        host, port = self._socket.getsockname()[:2]
        return f"http://{host}:{port}"

    def start(self, timeout: float = 10.0) -> Self:
        if self._thread is not None:
            raise RuntimeError("GeminiStub is already started")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self._host, self._port))
        self._socket = sock
        config = uvicorn.Config(
            self._app(),
            log_level="warning",
            lifespan="off",
            access_log=False,
            # Hundreds of clients connect at once in the concurrency tests and benchmarks.
            backlog=4096,
            timeout_keep_alive=60,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, name="gemini-stub", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if self._failure is not None or not self._thread.is_alive():
                raise RuntimeError("GeminiStub failed to start") from self._failure
            if time.monotonic() > deadline:
                raise TimeoutError("GeminiStub did not start in time")
            time.sleep(0.005)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        if self._thread is None or self._server is None:
            return
        self._server.should_exit = True
        if self._loop is not None and self._stopping is not None:
            # Wakes handlers still sleeping out a delay, so shutdown does not wait for them.
            self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(timeout)
        if self._socket is not None:
            self._socket.close()
        self._thread = None
        self._server = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _run(self) -> None:
        try:
            loop_factory = None
            try:
                import uvloop

                loop_factory = uvloop.new_event_loop
            except ImportError:
                pass
            with asyncio.Runner(loop_factory=loop_factory) as runner:
                runner.run(self._serve())
        except BaseException as exc:
            self._failure = exc
            raise

    async def _serve(self) -> None:
        assert self._server is not None and self._socket is not None
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        await self._server.serve(sockets=[self._socket])

    # --- HTTP -----------------------------------------------------------------

    def _app(self) -> Starlette:
        # Vertex AI's paths (what the SDK sends with GOOGLE_GENAI_USE_VERTEXAI=true) answer
        # the same way; `RecordedRequest.vertex_ai` tells them apart.
        return Starlette(
            routes=[
                Route("/{version}/models/{target}", self._handle, methods=["POST"]),
                Route(
                    "/{version}/publishers/google/models/{target}", self._handle, methods=["POST"]
                ),
                Route(
                    "/{version}/projects/{project}/locations/{location}"
                    "/publishers/google/models/{target}",
                    self._handle,
                    methods=["POST"],
                ),
            ]
        )

    async def _handle(self, request: Request) -> Response:
        version = request.path_params["version"]
        model, _, method = str(request.path_params["target"]).partition(":")
        try:
            body = json.loads(await request.body())
        except ValueError:
            return self._json(400, error_body(400, "INVALID_ARGUMENT", "Invalid JSON payload."))
        recorded = RecordedRequest(
            api_version=version,
            model=model,
            method=method,
            api_key=request.headers.get("x-goog-api-key"),
            body=body if isinstance(body, dict) else {},
            received_at=time.monotonic(),
            vertex_ai="/publishers/" in request.url.path,
            authorization=request.headers.get("authorization"),
        )
        if self.record:
            self.requests.append(recorded)
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            status, payload = await self._answer(recorded)
        finally:
            self.in_flight -= 1
        recorded.status = status
        recorded.answered_at = time.monotonic()
        self.answered += 1
        return Response(payload, status_code=status, media_type="application/json")

    async def _answer(self, recorded: RecordedRequest) -> tuple[int, bytes]:
        if recorded.method != "generateContent":
            return self._error(404, "NOT_FOUND", f"Method {recorded.method} not found.")
        if self.api_key is not None and recorded.api_key != self.api_key:
            body = error_body(
                400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key."
            )
            body["error"]["details"] = [
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": "API_KEY_INVALID",
                    "domain": "googleapis.com",
                }
            ]
            return 400, json.dumps(body).encode()
        if recorded.model in self.missing_models:
            return self._error(
                404,
                "NOT_FOUND",
                f"models/{recorded.model} is not found for API version {recorded.api_version}, "
                "or is not supported for generateContent. Call ListModels to see the list of "
                "available models and their supported methods.",
            )
        try:
            recorded.parts = _parse_parts(recorded.body)
        except (ValueError, KeyError, TypeError, AttributeError, binascii.Error) as exc:
            return self._error(400, "INVALID_ARGUMENT", f"Invalid request: {exc}")
        ratio = recorded.aspect_ratio or "1:1"
        if ratio not in SUPPORTED_RATIOS:
            return self._error(400, "INVALID_ARGUMENT", f"Unsupported aspect ratio: {ratio}")

        reply = self._script.popleft() if self._script else self.default_reply
        delay = self.delay if reply.delay is None else reply.delay
        if delay > 0:
            await self._sleep(delay)
        if reply.status != 200:
            assert reply.error_status is not None and reply.error_message is not None
            body = error_body(
                reply.status,
                reply.error_status,
                reply.error_message,
                retry_delay=reply.retry_delay,
            )
            return reply.status, json.dumps(body).encode()
        return 200, self._success_body(reply, recorded.model, ratio)

    async def _sleep(self, seconds: float) -> None:
        assert self._stopping is not None
        try:
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)
        except TimeoutError:
            pass

    def _error(self, code: int, status: str, message: str) -> tuple[int, bytes]:
        return code, json.dumps(error_body(code, status, message)).encode()

    @staticmethod
    def _json(code: int, body: dict[str, Any]) -> Response:
        return Response(json.dumps(body).encode(), status_code=code, media_type="application/json")

    def _success_body(self, reply: Reply, model: str, ratio: str) -> bytes:
        usage = {"promptTokenCount": 12, "candidatesTokenCount": 1290 * reply.images}
        usage["totalTokenCount"] = usage["promptTokenCount"] + usage["candidatesTokenCount"]
        if reply.block_reason is not None:
            feedback: dict[str, Any] = {"blockReason": reply.block_reason}
            if reply.finish_message:
                feedback["blockReasonMessage"] = reply.finish_message
            return json.dumps(
                {"promptFeedback": feedback, "usageMetadata": usage, "modelVersion": model}
            ).encode()
        key = (model, ratio, reply.images, reply.text)
        plain = (
            reply.finish_reason == "STOP" and reply.finish_message is None and not reply.thoughts
        )
        if plain and key in self._bodies:
            return self._bodies[key]
        parts: list[dict[str, Any]] = []
        if reply.thoughts:
            parts.append({"text": "Sketching the composition first.", "thought": True})
        for index in range(reply.thoughts):
            draft = {"mimeType": "image/png", "data": self._image(ratio, len(_PALETTE) - 1 - index)}
            parts.append({"inlineData": draft, "thought": True})
        if reply.text is not None:
            parts.append({"text": reply.text})
        for index in range(reply.images):
            parts.append(
                {"inlineData": {"mimeType": self._mime_type(), "data": self._image(ratio, index)}}
            )
        candidate: dict[str, Any] = {"index": 0}
        if parts:
            candidate["content"] = {"role": "model", "parts": parts}
        if reply.finish_reason is not None:
            candidate["finishReason"] = reply.finish_reason
        if reply.finish_message is not None:
            candidate["finishMessage"] = reply.finish_message
        body = json.dumps(
            {
                "candidates": [candidate],
                "usageMetadata": usage,
                "modelVersion": model,
                "responseId": uuid.uuid4().hex,
            }
        ).encode()
        if plain:
            # Encoding a large image answer again for every call would make the stub, not the
            # client under test, the bottleneck of a benchmark.
            self._bodies[key] = body
        return body

    def _mime_type(self) -> str:
        return self.image_mime_type if self._image_b64 is not None else "image/png"

    def _image(self, ratio: str, index: int) -> str:
        if self._image_b64 is not None:
            return self._image_b64
        if (ratio, index) not in self._drawn:
            width, height = SUPPORTED_RATIOS[ratio]
            png = draw_png(width // _SCALE, height // _SCALE, index)
            self._drawn[(ratio, index)] = base64.b64encode(png).decode()
        return self._drawn[(ratio, index)]

    # --- another process ------------------------------------------------------

    @classmethod
    def in_subprocess(
        cls, *, delay: float = 0.0, image_bytes: bytes | None = None, api_key: str | None = None
    ) -> SubprocessStub:
        """Start a stub in a child process (requests are not recorded there); stop() ends it."""
        return SubprocessStub(delay=delay, image_bytes=image_bytes, api_key=api_key)


class SubprocessStub:
    """A GeminiStub in its own process: `.url`, `.stats()` (peak in flight, answered), `.stop()`."""

    def __init__(self, *, delay: float, image_bytes: bytes | None, api_key: str | None) -> None:
        context = multiprocessing.get_context("spawn")
        parent, child = context.Pipe()
        self._conn = parent
        self._process = context.Process(
            target=_serve_in_child,
            args=(child, delay, image_bytes, api_key),
            name="gemini-stub",
            daemon=True,
        )
        self._process.start()
        if not parent.poll(30):
            self._process.kill()
            raise TimeoutError("the stub process did not start in time")
        self.url: str = parent.recv()

    def stats(self) -> dict[str, float]:
        """`peak_in_flight` and `answered` since the last reset; `cpu_seconds` of the process."""
        self._conn.send("stats")
        result: dict[str, float] = self._conn.recv()
        return result

    def reset_peak(self) -> None:
        self._conn.send("reset")
        self._conn.recv()

    def stop(self) -> None:
        if self._process.is_alive():
            self._conn.send("stop")
            self._process.join(10)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def _serve_in_child(
    conn: multiprocessing.connection.Connection,
    delay: float,
    image_bytes: bytes | None,
    api_key: str | None,
) -> None:
    with GeminiStub(delay=delay, image_bytes=image_bytes, api_key=api_key, record=False) as stub:
        conn.send(stub.url)
        while True:
            command = conn.recv()
            if command == "stats":
                conn.send(
                    {
                        "peak_in_flight": stub.peak_in_flight,
                        "answered": stub.answered,
                        "cpu_seconds": time.process_time(),
                    }
                )
            elif command == "reset":
                stub.reset()
                conn.send("ok")
            else:
                break


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Serve a Gemini generateContent stub on 127.0.0.1."
    )
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each answer")
    parser.add_argument("--api-key", default=None, help="accepted x-goog-api-key (default: any)")
    parser.add_argument("--noise-mb", type=float, default=0.0, help="answer a noise PNG this big")
    args = parser.parse_args()
    image = noise_png(args.noise_mb) if args.noise_mb > 0 else None
    stub = GeminiStub(delay=args.delay, image_bytes=image, api_key=args.api_key, port=args.port)
    with stub:
        print(stub.url, flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
