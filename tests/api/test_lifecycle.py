"""A task's life through the real server: create, poll, download, with 0, 1 and 3 references."""

from __future__ import annotations

import io
import uuid

import httpx
import pytest
from PIL import Image

from tests.conftest import Api
from tests.support.fileserver import FileServer
from tests.support.images import b64, data_uri, decode, image_bytes


def _download(url: str) -> httpx.Response:
    # No key header: image URLs work on their own, like the hosted API's CDN URLs.
    return httpx.get(url, timeout=10)


def test_text_to_image_completes_with_a_downloadable_png(alice: Api) -> None:
    response = alice.create({"prompt": "a lighthouse at dusk"})
    assert response.status_code == 200, response.text
    created = response.json()["data"]
    assert created["status"] == "CREATED"
    assert created["generated"] == []
    assert uuid.UUID(created["task_id"]).version == 4

    done = alice.wait(created["task_id"])
    assert done["status"] == "COMPLETED", done
    assert len(done["generated"]) == 1
    image = _download(done["generated"][0])
    assert image.status_code == 200
    assert image.headers["content-type"] == "image/png"
    picture = decode(image.content)
    assert picture.size == (1024, 1024)


def test_offline_output_is_deterministic(alice: Api) -> None:
    first = alice.wait(
        alice.create({"prompt": "same prompt, same picture"}).json()["data"]["task_id"]
    )
    second = alice.wait(
        alice.create({"prompt": "same prompt, same picture"}).json()["data"]["task_id"]
    )
    assert first["generated"] != second["generated"]  # different tasks, different URLs
    assert _download(first["generated"][0]).content == _download(second["generated"][0]).content


def test_one_base64_reference(alice: Api) -> None:
    ref = image_bytes("PNG", color=(10, 200, 10))
    task = alice.create({"prompt": "make it blue", "reference_images": [b64(ref)]}).json()["data"]
    done = alice.wait(task["task_id"])
    assert done["status"] == "COMPLETED", done
    picture = decode(_download(done["generated"][0]).content).convert("RGB")
    # The offline engine pastes references along the bottom: the green is in the picture.
    assert (10, 200, 10) in {color for _, color in picture.getcolors(1 << 20) or []}


def test_three_references_base64_data_uri_and_url(alice: Api, file_server: FileServer) -> None:
    url = file_server.add("/ref-three.jpg", image_bytes("JPEG", color=(0, 0, 250)), "image/jpeg")
    body = {
        "prompt": "combine these",
        "reference_images": [
            b64(image_bytes("PNG", color=(250, 0, 0))),
            data_uri(image_bytes("WEBP", color=(0, 250, 0)), "image/webp"),
            url,
        ],
    }
    task = alice.create(body).json()["data"]
    done = alice.wait(task["task_id"])
    assert done["status"] == "COMPLETED", done
    assert "/ref-three.jpg" in file_server.requests


def test_unreachable_reference_url_fails_the_task_with_a_reason(
    alice: Api, file_server: FileServer
) -> None:
    url = file_server.url + "/missing.png"
    task = alice.create({"prompt": "x", "reference_images": [url]}).json()["data"]
    done = alice.wait(task["task_id"])
    assert done["status"] == "FAILED"
    assert "reference_images[0]" in done["error"]
    assert "404" in done["error"]
    assert done["generated"] == []


def test_reference_url_that_is_not_an_image_fails_the_task(
    alice: Api, file_server: FileServer
) -> None:
    url = file_server.add("/page.html", b"<html>hello</html>", "text/html")
    done = alice.wait(
        alice.create({"prompt": "x", "reference_images": [url]}).json()["data"]["task_id"]
    )
    assert done["status"] == "FAILED"
    assert "reference_images[0]" in done["error"]
    assert "not an image" in done["error"]


@pytest.mark.parametrize(
    ("ratio", "size"),
    [
        ("widescreen_16_9", (1344, 768)),
        ("social_story_9_16", (768, 1344)),
        ("4:3", (1184, 864)),
        ("square_1_1", (1024, 1024)),
    ],
)
def test_aspect_ratio_is_honoured(alice: Api, ratio: str, size: tuple[int, int]) -> None:
    done = alice.wait(
        alice.create({"prompt": "ratio", "aspect_ratio": ratio}).json()["data"]["task_id"]
    )
    assert done["status"] == "COMPLETED"
    assert Image.open(io.BytesIO(_download(done["generated"][0]).content)).size == size


def test_extra_fields_are_ignored(alice: Api) -> None:
    body = {
        "prompt": "extras",
        "resolution": "2k",
        "model": "whatever",
        "filter_nsfw": True,
        "num_images": 1,
        "styling": {"colors": []},
        "aspect_ratio": "not-a-ratio",
        "reference_images": None,
    }
    response = alice.create(body)
    assert response.status_code == 200, response.text
    assert alice.wait(response.json()["data"]["task_id"])["status"] == "COMPLETED"


def test_unknown_route_and_method_are_json(alice: Api) -> None:
    missing = alice.http.get("/v1/nope")
    assert missing.status_code == 404
    assert missing.json() == {"message": "Not Found"}
    wrong = alice.http.delete("/v1/ai/gemini-2-5-flash-image-preview")
    assert wrong.status_code == 405
    assert wrong.json() == {"message": "Method Not Allowed"}


def test_every_response_has_a_request_id(alice: Api) -> None:
    assert alice.http.get("/healthz").headers["x-request-id"]
    assert alice.http.get("/v1/ai/gemini-2-5-flash-image-preview/" + str(uuid.uuid4())).headers[
        "x-request-id"
    ]


def test_prefer_wait_answers_with_the_finished_task(alice: Api) -> None:
    response = alice.http.post(
        "/v1/ai/gemini-2-5-flash-image-preview",
        json={"prompt": "wait for me"},
        headers={"Prefer": "wait=20"},
    )
    assert response.status_code == 200
    assert response.headers["preference-applied"] == "wait=20"
    data = response.json()["data"]
    assert data["status"] == "COMPLETED"
    assert len(data["generated"]) == 1
