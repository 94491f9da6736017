"""The baseline: what any FastAPI server must do for imagegate's POST, and nothing more.

It validates the same body shape (pydantic: `prompt`, `reference_images` ≤ 3, `webhook_url`,
extra fields allowed), base64-decodes the references it is sent, and answers a constant
task. No auth, no database, no storage. imagegate's figures are read as a ratio to this,
served by uvicorn with the same defaults (uvloop, httptools, no access log):

    .venv/bin/python -m uvicorn bench.baseline_app:app --host 127.0.0.1 --port 8001
"""

from __future__ import annotations

import base64
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

ENDPOINT = "/v1/ai/gemini-2-5-flash-image-preview"
CONSTANT_TASK = {
    "data": {
        "task_id": "046b6c7f-0b8a-43b9-b35d-6489e6daee91",
        "status": "CREATED",
        "generated": [],
    }
}


class CreateTaskRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    prompt: str
    reference_images: list[Any] | None = Field(default=None, max_length=3)
    webhook_url: str | None = None


app = FastAPI(title="imagegate benchmark baseline")


@app.post(ENDPOINT)
async def create_task(body: CreateTaskRequest) -> JSONResponse:
    for item in body.reference_images or []:
        if isinstance(item, str) and not item.startswith(("http://", "https://")):
            payload = item.split(",", 1)[1] if item.startswith("data:") else item
            base64.b64decode(payload, validate=True)
    return JSONResponse(CONSTANT_TASK)


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}
