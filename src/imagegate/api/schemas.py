"""HTTP bodies, as the spec writes them (they also make /openapi.json)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

TASK_ID_EXAMPLE = "046b6c7f-0b8a-43b9-b35d-6489e6daee91"


class CreateTaskRequest(BaseModel):
    # Real clients send aspect_ratio, resolution, seed, model, filter_nsfw, ...: never a 400.
    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "example": {
                "prompt": "A beautiful sunset over mountains with vibrant orange and purple skies",
                "reference_images": [
                    "iVBORw0KGgoAAAANSUhEUgAAASwAAAEsAQAAAABRBrPYAAABrElEQVR4nO3BMQEAAADCoPVPbQ0Po...",
                    "https://example.com/reference-image.jpg",
                ],
                "webhook_url": "https://www.example.com/webhook",
            }
        },
    )

    prompt: str = Field(
        description="A short text that describes the image you want to generate or edit. Required.",
        examples=["A beautiful sunset over mountains with vibrant orange and purple skies"],
    )
    reference_images: list[Any] | None = Field(
        default=None,
        max_length=3,
        description="Optional reference images for editing or style transfer: Base64 (raw or a data: URI) "
        "or a publicly accessible http(s) URL. At most 3.",
        json_schema_extra={"items": {"type": "string"}},
    )
    webhook_url: str | None = Field(
        default=None,
        description="Optional URL that receives a signed notification whenever the task changes status. "
        "The payload is the GET response's task object without the `data` wrapper.",
        json_schema_extra={"format": "uri"},
    )
    aspect_ratio: str | None = Field(
        default=None,
        description="Extension: `square_1_1`, `widescreen_16_9`, `social_story_9_16`, ... or `16:9`.",
    )
    seed: int | None = Field(
        default=None, description="Extension: makes results reproducible where the engine allows."
    )


class TaskDetail(BaseModel):
    task_id: str = Field(
        description="Task identifier",
        json_schema_extra={"format": "uuid"},
        examples=[TASK_ID_EXAMPLE],
    )
    status: str = Field(
        description="Task status",
        json_schema_extra={"enum": ["CREATED", "IN_PROGRESS", "COMPLETED", "FAILED"]},
        examples=["COMPLETED"],
    )
    generated: list[str] = Field(
        description="URLs of the generated images",
        json_schema_extra={"items": {"type": "string", "format": "uri"}},
    )
    error: str | None = Field(default=None, description="Extension: why a FAILED task failed.")
    model: str | None = Field(
        default=None, description="Extension: the model that made the images."
    )
    text: str | None = Field(
        default=None, description="Extension: text the model returned with its images."
    )


class TaskEnvelope(BaseModel):
    data: TaskDetail


class TaskListEnvelope(BaseModel):
    data: list[TaskDetail]


class MessageBody(BaseModel):
    message: str


class InvalidParamBody(BaseModel):
    name: str
    reason: str


class ValidationProblemBody(BaseModel):
    message: str = Field(examples=["Your request parameters didn't validate."])
    invalid_params: list[InvalidParamBody]


def _message_example(message: str) -> dict[str, Any]:
    return {"application/json": {"example": {"message": message}}}


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {
        "model": ValidationProblemBody,
        "description": "Bad Request - the request parameters didn't validate.",
        "content": {
            "application/json": {
                "example": {
                    "message": "Your request parameters didn't validate.",
                    "invalid_params": [
                        {"name": "page", "reason": "Parameter 'page' must be greater than 0"}
                    ],
                }
            }
        },
    },
    401: {
        "model": MessageBody,
        "description": "Unauthorized - missing or invalid API key.",
        "content": _message_example("Invalid API key"),
    },
    500: {
        "model": MessageBody,
        "description": "Internal Server Error",
        "content": _message_example("Internal Server Error"),
    },
    503: {
        "model": MessageBody,
        "description": "Service Unavailable",
        "content": _message_example("Service Unavailable. Please try again later."),
    },
}

NOT_FOUND_RESPONSE: dict[int | str, dict[str, Any]] = {
    404: {
        "model": MessageBody,
        "description": "Not Found - no such task for this key.",
        "content": _message_example("Not Found"),
    }
}
TOO_LARGE_RESPONSE: dict[int | str, dict[str, Any]] = {
    413: {
        "model": MessageBody,
        "description": "Request body too large.",
        "content": _message_example("Request body is larger than the limit"),
    }
}
