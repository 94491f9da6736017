"""The OpenAI Images API, driven by the official `openai` SDK pointed at the real server."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator

import httpx
import pytest
from PIL import Image

from tests.conftest import KEY_A
from tests.support.images import decode, image_bytes
from tests.support.server import ServerProcess

openai = pytest.importorskip("openai", reason="the openai SDK is not installed")

GREEN, BLUE = (20, 210, 20), (20, 20, 230)


@pytest.fixture
def client(server: ServerProcess) -> Iterator[openai.OpenAI]:
    # No retries: a test must see the first answer, not the SDK's second try.
    with openai.OpenAI(api_key=KEY_A, base_url=server.url + "/v1", max_retries=0) as client:
        yield client


def test_generations_as_urls(client: openai.OpenAI) -> None:
    result = client.images.generate(
        model="dall-e-3", prompt="a red bicycle", n=2, size="1536x1024", response_format="url"
    )
    assert result.created > 1_700_000_000
    assert result.data is not None and len(result.data) == 2
    urls = [item.url for item in result.data]
    assert all(url and "/v1/files/outputs/" in url for url in urls)
    assert len(set(urls)) == 2  # two tasks, two pictures
    picture = decode(httpx.get(str(urls[0]), timeout=10).content)
    # 1536x1024 is 3:2, which the engines render at 1248x832.
    assert (picture.format, picture.size) == ("PNG", (1248, 832))
    assert result.output_format == "png"


def test_generations_as_base64_in_another_format(client: openai.OpenAI) -> None:
    result = client.images.generate(
        model="gpt-image-1", prompt="a teapot", output_format="jpeg", output_compression=80
    )
    assert result.data is not None and len(result.data) == 1
    assert result.data[0].url is None
    picture = decode(base64.b64decode(str(result.data[0].b64_json)))
    assert (picture.format, picture.size) == ("JPEG", (1024, 1024))
    assert result.output_format == "jpeg"


def test_generations_url_in_another_format_is_converted(client: openai.OpenAI) -> None:
    result = client.images.generate(
        prompt="a kite", response_format="url", output_format="webp", size="1024x1536"
    )
    assert result.data is not None
    response = httpx.get(str(result.data[0].url), timeout=10)
    assert response.headers["content-type"] == "image/webp"
    assert decode(response.content).size == (832, 1248)


def test_edits_with_two_images(client: openai.OpenAI) -> None:
    first = ("green.png", image_bytes("PNG", color=GREEN), "image/png")
    second = ("blue.jpg", image_bytes("JPEG", color=BLUE), "image/jpeg")
    result = client.images.edit(image=[first, second], prompt="put them side by side")
    assert result.data is not None and len(result.data) == 1
    picture = decode(base64.b64decode(str(result.data[0].b64_json))).convert("RGB")
    colours = {colour for _, colour in picture.getcolors(1 << 22) or []}
    # The offline engine pastes its references into the picture: both arrived.
    assert GREEN in colours
    assert any(
        abs(c[0] - 20) < 10 and abs(c[1] - 20) < 10 and abs(c[2] - 230) < 10 for c in colours
    )


def test_edit_with_a_single_image_field(client: openai.OpenAI) -> None:
    buffer = io.BytesIO()
    Image.new("RGBA", (48, 48), (200, 10, 10, 255)).save(buffer, format="PNG")
    result = client.images.edit(
        image=("one.png", buffer.getvalue(), "image/png"), prompt="make it pop", n=2
    )
    assert result.data is not None and len(result.data) == 2


def test_empty_prompt_is_a_bad_request_with_our_message(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.generate(prompt="  ")
    assert caught.value.status_code == 400
    assert caught.value.body == {
        "message": "prompt: must not be empty",
        "type": "invalid_request_error",
        "param": "prompt",
        "code": None,
    }


def test_bad_values_name_their_param(client: openai.OpenAI) -> None:
    for arguments, param in [
        ({"n": 5}, "n"),
        ({"size": "huge"}, "size"),
        ({"response_format": "gif"}, "response_format"),
    ]:
        with pytest.raises(openai.BadRequestError) as caught:
            client.images.generate(prompt="x", **arguments)  # type: ignore[arg-type]
        assert isinstance(caught.value.body, dict)
        assert caught.value.body["param"] == param


def test_an_edit_needs_an_image_and_refuses_masks(server: ServerProcess) -> None:
    headers = {"authorization": f"Bearer {KEY_A}"}
    no_image = httpx.post(
        server.url + "/v1/images/edits",
        data={"prompt": "x"},
        files={"other": b"x"},
        headers=headers,
    )
    assert no_image.status_code == 400
    assert no_image.json()["error"]["param"] == "image"
    png = image_bytes()
    mask = httpx.post(
        server.url + "/v1/images/edits",
        data={"prompt": "x"},
        files=[("image[]", ("a.png", png, "image/png")), ("mask", ("m.png", png, "image/png"))],
        headers=headers,
    )
    assert mask.status_code == 400
    assert mask.json()["error"]["param"] == "mask"
    not_json = httpx.post(
        server.url + "/v1/images/generations",
        content=b"{nope",
        headers={**headers, "content-type": "application/json"},
    )
    assert not_json.status_code == 400
    assert set(not_json.json()["error"]) == {"message", "type", "param", "code"}


def test_a_bad_key_is_an_authentication_error(server: ServerProcess) -> None:
    with openai.OpenAI(api_key="ig_wrong", base_url=server.url + "/v1", max_retries=0) as client:
        with pytest.raises(openai.AuthenticationError) as caught:
            client.images.generate(prompt="x")
    assert caught.value.status_code == 401
    assert caught.value.body == {
        "message": "Invalid API key",
        "type": "invalid_request_error",  # what OpenAI says for a wrong key
        "param": None,
        "code": "invalid_api_key",
    }


def test_the_freepik_key_header_also_works_and_tasks_are_listed(server: ServerProcess) -> None:
    headers = {"x-freepik-api-key": KEY_A}
    answer = httpx.post(
        server.url + "/v1/images/generations",
        json={"prompt": "listed too", "response_format": "url"},
        headers=headers,
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    url = answer.json()["data"][0]["url"]
    # The OpenAI request made an ordinary task of this key.
    listed = httpx.get(
        server.url + "/v1/ai/gemini-2-5-flash-image-preview?per_page=1", headers=headers
    ).json()["data"]
    assert listed[0]["generated"] == [url]
