"""Webhooks through the real server: signed, in order, retried, durable across kill -9."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from tests.conftest import ENDPOINT, KEY_A, Api
from tests.support.receiver import Receiver
from tests.support.server import ServerProcess, wait_until

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
FAST_RETRIES = {
    "IMAGEGATE_API_KEYS": KEY_A,
    "IMAGEGATE_WEBHOOK_SECRET": SECRET,
    "IMAGEGATE_WEBHOOK_RETRY_DELAYS": "0.2,0.2,0.2,0.3,0.3,0.5,0.5,1,1,1,1,1",
    "IMAGEGATE_POLL_INTERVAL_SECONDS": "0.1",
    "IMAGEGATE_WEBHOOK_TIMEOUT_SECONDS": "2",
}


@pytest.fixture(scope="module")
def hook_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path_factory.mktemp("webhooks"), FAST_RETRIES).start()
    yield server
    server.stop()


@pytest.fixture
def api(hook_server: ServerProcess) -> Iterator[Api]:
    client = Api(hook_server.url, KEY_A)
    yield client
    client.http.close()


def statuses(received: list) -> list[str]:  # type: ignore[type-arg]
    return [json.loads(r.body)["status"] for r in received]


def test_every_status_arrives_in_order_and_verifies(api: Api) -> None:
    with Receiver() as receiver:
        task_id = api.create({"prompt": "hooked", "webhook_url": receiver.url}).json()["data"][
            "task_id"
        ]
        wait_until(lambda: len(receiver.for_task(task_id)) >= 2, 20, message="two webhooks")
        received = receiver.for_task(task_id)
        assert statuses(received) == ["IN_PROGRESS", "COMPLETED"]
        verifier = Webhook(SECRET)
        for message in received:
            payload = verifier.verify(message.body, message.headers)
            assert payload["task_id"] == task_id
            assert message.headers["webhook-id"].startswith("msg_")
        final = json.loads(received[-1].body)
        # The payload is exactly the GET body's `data`.
        assert final == api.get(task_id).json()["data"]
        assert len(final["generated"]) == 1
        assert received[0].headers["webhook-id"] != received[1].headers["webhook-id"]


def test_failed_task_payload_carries_the_error(api: Api) -> None:
    with Receiver() as receiver:
        body = {
            "prompt": "x",
            "webhook_url": receiver.url,
            "reference_images": ["http://127.0.0.1:1/nothing.png"],
        }
        task_id = api.create(body).json()["data"]["task_id"]
        wait_until(
            lambda: "FAILED" in statuses(receiver.for_task(task_id)), 20, message="FAILED webhook"
        )
        failed = json.loads(receiver.for_task(task_id)[-1].body)
        assert failed["status"] == "FAILED"
        assert "reference_images[0]" in failed["error"]


def test_tampered_body_fails_verification(api: Api) -> None:
    with Receiver() as receiver:
        task_id = api.create({"prompt": "tamper", "webhook_url": receiver.url}).json()["data"][
            "task_id"
        ]
        wait_until(lambda: receiver.for_task(task_id), 20, message="a webhook")
        message = receiver.for_task(task_id)[0]
        tampered = message.body.replace(b"IN_PROGRESS", b"COMPLETED")
        with pytest.raises(WebhookVerificationError):
            Webhook(SECRET).verify(tampered, message.headers)
        with pytest.raises(WebhookVerificationError):
            Webhook("whsec_" + "A" * 32).verify(message.body, message.headers)


def test_500_three_times_then_200_is_delivered_once_more_and_stops(api: Api) -> None:
    with Receiver() as receiver:
        receiver.script = [500, 500, 500]
        task_id = api.create({"prompt": "flaky receiver", "webhook_url": receiver.url}).json()[
            "data"
        ]["task_id"]
        wait_until(
            lambda: "COMPLETED" in statuses(receiver.for_task(task_id)),
            30,
            message="COMPLETED webhook",
        )
        received = receiver.for_task(task_id)
        # Three refused IN_PROGRESS attempts, the fourth accepted, then COMPLETED once.
        assert statuses(received) == ["IN_PROGRESS"] * 4 + ["COMPLETED"]
        assert len({r.headers["webhook-id"] for r in received[:4]}) == 1  # stable across retries
        # The receiver sees the request a moment before the server records the answer.
        history = wait_until(
            lambda: (
                (h := api.http.get(f"{ENDPOINT}/{task_id}/webhooks").json()["data"])
                and all(m["state"] == "delivered" for m in h)
                and h
            ),
            10,
            message="both messages recorded as delivered",
        )
        assert len(history) == 2
        assert [a["status_code"] for a in history[0]["history"]] == [500, 500, 500, 200]


def test_410_stops_retries(api: Api) -> None:
    with Receiver() as receiver:
        receiver.default = 410
        task_id = api.create({"prompt": "gone", "webhook_url": receiver.url}).json()["data"][
            "task_id"
        ]
        api.wait(task_id)

        def settled() -> bool:
            history = api.http.get(f"{ENDPOINT}/{task_id}/webhooks").json()["data"]
            return len(history) == 2 and all(h["state"] == "failed" for h in history)

        wait_until(settled, 20, message="both messages settled as failed")
        # Each message was tried once: 410 means "stop".
        assert statuses(receiver.for_task(task_id)) == ["IN_PROGRESS", "COMPLETED"]


def test_receiver_down_then_up_is_delivered(api: Api) -> None:
    receiver = Receiver()  # not listening yet: connection refused
    task_id = api.create({"prompt": "later", "webhook_url": receiver.url}).json()["data"]["task_id"]
    api.wait(task_id)

    def attempted_twice() -> bool:
        history = api.http.get(f"{ENDPOINT}/{task_id}/webhooks").json()["data"]
        return bool(history) and history[0]["attempts"] >= 2

    wait_until(attempted_twice, 20, message="failed attempts while the receiver is down")
    history = api.http.get(f"{ENDPOINT}/{task_id}/webhooks").json()["data"]
    assert history[0]["history"][0]["status_code"] is None
    assert history[0]["history"][0]["error"]
    with receiver:
        wait_until(
            lambda: statuses(receiver.for_task(task_id)) == ["IN_PROGRESS", "COMPLETED"],
            30,
            message="delivery",
        )


def test_delivery_history_is_the_owners_only(api: Api, hook_server: ServerProcess) -> None:
    task_id = api.create({"prompt": "no hook"}).json()["data"]["task_id"]
    assert api.http.get(f"{ENDPOINT}/{task_id}/webhooks").json() == {"data": []}
    other = Api(hook_server.url, None)
    assert other.http.get(f"{ENDPOINT}/{task_id}/webhooks").status_code == 401
    assert (
        api.http.get(f"{ENDPOINT}/00000000-0000-4000-8000-000000000000/webhooks").status_code == 404
    )


def test_private_webhook_url_is_refused_without_the_setting(tmp_path: Path) -> None:
    env = {"IMAGEGATE_API_KEYS": KEY_A, "IMAGEGATE_ALLOW_PRIVATE_URLS": "false"}
    with ServerProcess(tmp_path, env) as server:
        api = Api(server.url, KEY_A)
        for url in ("http://127.0.0.1:9/hook", "http://169.254.169.254/latest", "http://[::1]/x"):
            response = api.create({"prompt": "x", "webhook_url": url})
            assert response.status_code == 400, response.text
            assert response.json()["invalid_params"][0]["name"] == "webhook_url"
        api.http.close()


def test_kill_9_with_a_pending_retry_then_restart_delivers(tmp_path: Path) -> None:
    env = dict(FAST_RETRIES, IMAGEGATE_WEBHOOK_RETRY_DELAYS="1,1,1,1,1,1,1,1")
    receiver = Receiver()  # down: every attempt fails, a retry is always pending
    first = ServerProcess(tmp_path, env).start()
    api = Api(first.url, KEY_A)
    task_id = api.create({"prompt": "outlive me", "webhook_url": receiver.url}).json()["data"][
        "task_id"
    ]
    api.wait(task_id)
    wait_until(
        lambda: api.http.get(f"{ENDPOINT}/{task_id}/webhooks").json()["data"][0]["attempts"] >= 1,
        10,
        message="a failed attempt",
    )
    first.kill()
    with receiver:
        second = ServerProcess(tmp_path, env, port=first.port).start()
        try:
            wait_until(
                lambda: statuses(receiver.for_task(task_id)) == ["IN_PROGRESS", "COMPLETED"],
                30,
                message="delivery after restart",
            )
        finally:
            second.stop()
    api.http.close()


def test_keys_cli_secret_rotation_signs_with_both(tmp_path: Path) -> None:
    env = dict(FAST_RETRIES)
    env.pop("IMAGEGATE_API_KEYS")
    server = ServerProcess(tmp_path, env)
    cli = [sys.executable, "-m", "imagegate"]

    def run(*args: str) -> str:
        done = subprocess.run(
            [*cli, *args], env=server.env(), capture_output=True, text=True, check=True
        )
        return done.stdout

    created = run("keys", "create", "hooks").split()
    key = next(w for w in created if w.startswith("ig_"))
    old_secret = next(w for w in created if w.startswith("whsec_"))
    new_secret = next(
        w for w in run("keys", "rotate-webhook-secret", "hooks").split() if w.startswith("whsec_")
    )
    assert new_secret != old_secret
    with server, Receiver() as receiver:
        api = Api(server.url, key)
        task_id = api.create({"prompt": "rotated", "webhook_url": receiver.url}).json()["data"][
            "task_id"
        ]
        wait_until(lambda: receiver.for_task(task_id), 20, message="a webhook")
        message = receiver.for_task(task_id)[0]
        assert len(message.headers["webhook-signature"].split()) == 2
        Webhook(old_secret).verify(message.body, message.headers)
        Webhook(new_secret).verify(message.body, message.headers)
        api.wait(task_id)
        table = run("webhooks", task_id, "--json")
        assert json.loads(table)[0]["status"] == "IN_PROGRESS"
        api.http.close()
