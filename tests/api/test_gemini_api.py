"""The whole API round trip on the Gemini engine: `imagegate serve` with a Google key and
IMAGEGATE_GEMINI_BASE_URL pointing at the loopback Gemini stub, driven by the real SDK."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import KEY_A, Api
from tests.support.gemini_stub import GeminiStub, Reply
from tests.support.images import b64, decode, image_bytes
from tests.support.server import ServerProcess

GOOGLE_KEY = "stub-api-key"


@pytest.fixture(scope="module")
def stub() -> Iterator[GeminiStub]:
    with GeminiStub(api_key=GOOGLE_KEY, missing_models=["gemini-2.5-flash-image"]) as server:
        yield server


@pytest.fixture(scope="module")
def gemini_server(
    stub: GeminiStub, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    env = {
        "IMAGEGATE_API_KEYS": KEY_A,
        "GEMINI_API_KEY": GOOGLE_KEY,  # engine=auto picks gemini when a Google key is set
        "IMAGEGATE_GEMINI_BASE_URL": stub.url,
        "IMAGEGATE_GEMINI_DEADLINE_SECONDS": "10",
    }
    with ServerProcess(tmp_path_factory.mktemp("gemini"), env) as server:
        yield server


def test_auto_selects_gemini_and_the_retired_model_falls_back(
    gemini_server: ServerProcess, stub: GeminiStub
) -> None:
    api = Api(gemini_server.url, KEY_A)
    stub.reset()
    ref = image_bytes("PNG", color=(1, 2, 3))
    task = api.create(
        {
            "prompt": "a fox in the snow",
            "reference_images": [b64(ref)],
            "aspect_ratio": "widescreen_16_9",
        }
    )
    done = api.wait(task.json()["data"]["task_id"])
    assert done["status"] == "COMPLETED", done
    # gemini-2.5-flash-image answers 404 on this stub: the fallback made the image and the task says so.
    assert done["model"] == "gemini-3.1-flash-image"
    image = httpx.get(done["generated"][0])
    assert image.headers["content-type"] == "image/png"
    decode(image.content)
    used = [r for r in stub.requests if r.model == "gemini-3.1-flash-image"][-1]
    assert used.generation_config["imageConfig"]["aspectRatio"] == "16:9"
    assert [p.text for p in used.parts] == ["a fox in the snow", None]
    assert used.parts[1].data == ref  # the reference went to Google as it was sent
    assert "engine: gemini" in gemini_server.logs() or "gemini (model" in gemini_server.logs()
    assert GOOGLE_KEY not in gemini_server.logs()
    api.http.close()


def test_refused_prompt_fails_the_task_with_the_reason(
    gemini_server: ServerProcess, stub: GeminiStub
) -> None:
    api = Api(gemini_server.url, KEY_A)
    stub.script(Reply.blocked("SAFETY"))
    done = api.wait(api.create({"prompt": "something refused"}).json()["data"]["task_id"])
    assert done["status"] == "FAILED"
    assert "SAFETY" in done["error"]
    assert GOOGLE_KEY not in done["error"]
    api.http.close()


def test_several_images_and_commentary(gemini_server: ServerProcess, stub: GeminiStub) -> None:
    api = Api(gemini_server.url, KEY_A)
    stub.script(Reply.image(2, text="Here are two takes."))
    done = api.wait(api.create({"prompt": "two takes"}).json()["data"]["task_id"])
    assert done["status"] == "COMPLETED"
    assert len(done["generated"]) == 2
    assert "two takes" in done["text"]
    api.http.close()
