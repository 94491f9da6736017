"""Every refusal is a clear JSON answer in the spec's shapes."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import ENDPOINT, KEY_PAGES, Api
from tests.support.images import b64, image_bytes
from tests.support.server import ServerProcess

VALIDATION = "Your request parameters didn't validate."


def _invalid(response: httpx.Response) -> dict[str, str]:
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["message"] == VALIDATION
    assert "detail" not in body
    return {p["name"]: p["reason"] for p in body["invalid_params"]}


def test_missing_key_is_401(server: ServerProcess) -> None:
    for method, path in (("POST", ENDPOINT), ("GET", ENDPOINT), ("GET", ENDPOINT + "/x")):
        response = httpx.request(method, server.url + path, json={"prompt": "x"})
        assert response.status_code == 401
        assert response.json() == {"message": "Missing API key"}


def test_invalid_key_is_401(server: ServerProcess) -> None:
    response = httpx.post(
        server.url + ENDPOINT, json={"prompt": "x"}, headers={"x-freepik-api-key": "nope"}
    )
    assert response.status_code == 401
    assert response.json() == {"message": "Invalid API key"}


def test_four_references_is_400(alice: Api) -> None:
    ref = b64(image_bytes())
    params = _invalid(alice.create({"prompt": "x", "reference_images": [ref] * 4}))
    assert "reference_images" in params
    assert "3" in params["reference_images"]


def test_bad_base64_names_the_item(alice: Api) -> None:
    params = _invalid(
        alice.create({"prompt": "x", "reference_images": [b64(image_bytes()), "not base64 !!!"]})
    )
    assert list(params) == ["reference_images[1]"]


def test_non_image_data_names_the_item(alice: Api) -> None:
    params = _invalid(
        alice.create({"prompt": "x", "reference_images": [b64(b"just some text, not a picture")]})
    )
    assert "not an image" in params["reference_images[0]"]


def test_truncated_png_is_refused(alice: Api) -> None:
    png = image_bytes("PNG", size=(300, 300))
    params = _invalid(
        alice.create({"prompt": "x", "reference_images": [b64(png[: len(png) // 2])]})
    )
    assert "reference_images[0]" in params


def test_non_http_url_is_refused(alice: Api) -> None:
    params = _invalid(
        alice.create({"prompt": "x", "reference_images": ["ftp://example.com/a.png"]})
    )
    assert "reference_images[0]" in params


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "prompt"),
        ({"prompt": 5}, "prompt"),
        ({"prompt": "   "}, "prompt"),
        ({"prompt": "x", "reference_images": "abc"}, "reference_images"),
        ({"prompt": "x", "webhook_url": "not a url"}, "webhook_url"),
        ({"prompt": "x", "webhook_url": "ftp://example.com/hook"}, "webhook_url"),
    ],
)
def test_field_errors_name_the_field(alice: Api, body: dict[str, object], field: str) -> None:
    assert field in _invalid(alice.create(body))


def test_body_that_is_not_json(alice: Api) -> None:
    response = alice.http.post(
        ENDPOINT, content=b"{not json", headers={"content-type": "application/json"}
    )
    assert "body" in _invalid(response)


def test_pagination_errors_use_the_spec_text(alice: Api) -> None:
    assert _invalid(alice.http.get(ENDPOINT, params={"page": 0})) == {
        "page": "Parameter 'page' must be greater than 0"
    }
    assert _invalid(alice.http.get(ENDPOINT, params={"per_page": 0})) == {
        "per_page": "Parameter 'per_page' must be greater than 0"
    }
    both = _invalid(alice.http.get(ENDPOINT, params={"page": 0, "per_page": 0}))
    assert set(both) == {"page", "per_page"}
    assert "per_page" in _invalid(alice.http.get(ENDPOINT, params={"per_page": 101}))
    assert "page" in _invalid(alice.http.get(ENDPOINT, params={"page": "abc"}))


def test_list_is_newest_first_and_paginates(server: ServerProcess) -> None:
    api = Api(server.url, KEY_PAGES)
    ids = [api.create({"prompt": f"page test {i}"}).json()["data"]["task_id"] for i in range(5)]
    newest_first = list(reversed(ids))
    listed = api.http.get(ENDPOINT).json()["data"]
    assert [t["task_id"] for t in listed] == newest_first
    assert all({"task_id", "status", "generated"} <= set(t) for t in listed)
    page1 = api.http.get(ENDPOINT, params={"page": 1, "per_page": 2}).json()["data"]
    page2 = api.http.get(ENDPOINT, params={"page": 2, "per_page": 2}).json()["data"]
    page3 = api.http.get(ENDPOINT, params={"page": 3, "per_page": 2}).json()["data"]
    page4 = api.http.get(ENDPOINT, params={"page": 4, "per_page": 2}).json()["data"]
    assert [t["task_id"] for t in page1 + page2 + page3] == newest_first
    assert page4 == []
    # Far past the end (an offset no database integer holds, found by the fuzzer): empty too.
    far = api.http.get(ENDPOINT, params={"page": 10**20, "per_page": 100})
    assert far.status_code == 200 and far.json() == {"data": []}


def test_isolation_between_keys(alice: Api, bob: Api) -> None:
    task_id = alice.create({"prompt": "alice's secret"}).json()["data"]["task_id"]
    done = alice.wait(task_id)
    not_found = bob.get(task_id)
    assert not_found.status_code == 404
    assert not_found.json() == {"message": "Not Found"}
    assert task_id not in [
        t["task_id"] for t in bob.http.get(ENDPOINT, params={"per_page": 100}).json()["data"]
    ]
    assert all(
        done["generated"][0] not in t["generated"]
        for t in bob.http.get(ENDPOINT, params={"per_page": 100}).json()["data"]
    )


def test_unknown_task_is_404(alice: Api) -> None:
    assert alice.get("00000000-0000-4000-8000-000000000000").status_code == 404
    assert alice.get("not-a-uuid").json() == {"message": "Not Found"}


def test_guessed_image_url_is_404(alice: Api, server: ServerProcess) -> None:
    done = alice.wait(alice.create({"prompt": "guess me"}).json()["data"]["task_id"])
    url = done["generated"][0]
    tampered = url.rsplit("/", 1)[0] + "/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA-1.png"
    assert httpx.get(tampered).status_code == 404
    assert httpx.get(server.url + "/v1/files/../imagegate.db").status_code == 404
    assert httpx.get(server.url + "/v1/files/references/x/0.png").status_code == 404


def test_body_over_the_limit_is_413(server: ServerProcess, alice: Api) -> None:
    # The session server keeps the default 40 MB limit; send just over it without building
    # a valid request (the size alone must be refused).
    big = b"{" + b" " * (40 * 1024 * 1024 + 10) + b"}"
    response = alice.http.post(ENDPOINT, content=big, headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert "limit" in response.json()["message"]
    assert alice.create({"prompt": "still serving"}).status_code == 200


def test_openapi_documents_the_endpoints(server: ServerProcess) -> None:
    spec = httpx.get(server.url + "/openapi.json").json()
    post = spec["paths"][ENDPOINT]["post"]
    assert {"200", "400", "401", "500", "503"} <= set(post["responses"])
    body = post["requestBody"]["content"]["application/json"]["schema"]
    assert "CreateTaskRequest" in body["$ref"]
    schema = spec["components"]["schemas"]["CreateTaskRequest"]
    assert schema["properties"]["reference_images"]["anyOf"][0]["maxItems"] == 3
    assert spec["paths"][ENDPOINT + "/{task_id}"]["get"]["responses"]["404"]
    assert httpx.get(server.url + "/docs").status_code == 200
