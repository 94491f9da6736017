"""What an operator sees: Prometheus metrics, JSON logs that follow a request into the
worker and the webhook, and no secrets in them."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from tests.conftest import ENDPOINT, KEY_A, Api
from tests.support.receiver import Receiver
from tests.support.server import ServerProcess, wait_until


def test_metrics_and_logs_follow_a_request(tmp_path: Path) -> None:
    env = {
        "IMAGEGATE_API_KEYS": KEY_A,
        "IMAGEGATE_WEBHOOK_SECRET": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    }
    with ServerProcess(tmp_path, env) as server, Receiver() as receiver:
        api = Api(server.url, KEY_A)
        created = api.http.post(
            ENDPOINT, json={"prompt": "observe me", "webhook_url": receiver.url}
        )
        request_id = created.headers["x-request-id"]
        task_id = created.json()["data"]["task_id"]
        assert api.wait(task_id)["status"] == "COMPLETED"
        wait_until(lambda: len(receiver.for_task(task_id)) == 2, 20, message="both webhooks")
        api.get(task_id)
        api.get("00000000-0000-4000-8000-000000000000")

        metrics = httpx.get(server.url + "/metrics").text
        assert (
            'imagegate_http_requests_total{method="POST",route="/v1/ai/gemini-2-5-flash-image-preview",status="200"}'
            in metrics
        )
        assert 'route="/v1/ai/gemini-2-5-flash-image-preview/{task_id}",status="404"' in metrics
        assert 'imagegate_tasks_finished_total{engine="offline",status="COMPLETED"} 1.0' in metrics
        assert "imagegate_engine_duration_seconds_count" in metrics
        assert 'imagegate_tasks{state="queued"} 0.0' in metrics
        assert "imagegate_webhook_backlog 0.0" in metrics
        assert 'imagegate_webhook_deliveries_total{outcome="delivered"} 2.0' in metrics
        assert "imagegate_oldest_queued_task_age_seconds" in metrics

        def entries() -> list[dict[str, object]]:
            # Not a terminal: one JSON object per line.
            return [json.loads(line) for line in server.logs().splitlines() if line.startswith("{")]

        wait_until(
            lambda: any("delivered" in str(e["msg"]) for e in entries()),
            10,
            message="delivery logged",
        )
        tagged = [e for e in entries() if e.get("request_id") == request_id]
        loggers = {str(e["logger"]) for e in tagged}
        assert "imagegate.worker" in loggers  # the request id followed the task into the worker
        assert "imagegate.webhooks" in loggers  # ... and into the webhook delivery
        assert all(e.get("task_id") == task_id for e in tagged if e["logger"] != "imagegate.api")
        assert KEY_A not in server.logs()
        api.http.close()
