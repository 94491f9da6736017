"""Every knob of imagegate, one pydantic-settings object; each field is an env var IMAGEGATE_*."""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

EngineName = Literal["auto", "offline", "gemini", "diffusers"]


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="IMAGEGATE_", extra="ignore")

    # --- where things live -------------------------------------------------
    data_dir: Path = Field(
        Path("./data"),
        description="Directory for the SQLite database, blobs and generated secrets.",
    )
    database_url: str | None = Field(
        None,
        description="SQLAlchemy URL of the store. Default: SQLite (WAL) at DATA_DIR/imagegate.db. "
        "postgresql://user@host/db selects PostgreSQL.",
    )
    storage_url: str | None = Field(
        None,
        description="Blob storage. Default: local directory DATA_DIR/blobs (file:///path also works).",
    )
    storage_presign: bool = Field(
        False,
        description="With s3:// storage, put presigned S3 URLs in `generated` instead of URLs served by the API "
        "(see docs/storage.md).",
    )
    storage_presign_seconds: int = Field(3600, description="How long presigned S3 URLs stay valid.")
    public_url: str | None = Field(
        None,
        description="Base URL put in front of image URLs in `generated` (e.g. https://img.example.com). "
        "Default: the URL the request came in on.",
    )

    # --- HTTP --------------------------------------------------------------
    host: str = Field("127.0.0.1", description="Address `imagegate serve` binds to.")
    port: int = Field(8000, description="Port `imagegate serve` listens on.")
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated static API keys, accepted besides keys made with `imagegate keys create`.",
    )
    max_body_bytes: int = Field(
        40 * 1024 * 1024, description="Largest request body accepted (413 above)."
    )
    max_prompt_chars: int = Field(10_000, description="Longest prompt accepted, in characters.")
    max_reference_bytes: int = Field(
        10 * 1024 * 1024,
        description="Largest decoded reference image (base64 or fetched URL), in bytes.",
    )
    max_image_pixels: int = Field(
        40_000_000,
        description="Largest reference image, in pixels (width x height); larger is refused before decoding.",
    )

    rate_limit_per_minute: int = Field(
        600,
        description="Requests per minute per API key (per client address without a key), as a token bucket; 0 turns it off.",
    )
    max_unfinished_tasks_per_key: int = Field(
        1000, description="Tasks one key may have CREATED or IN_PROGRESS at once; more is a 429."
    )
    max_queue_depth: int = Field(
        50_000, description="Tasks waiting in the whole queue before new ones are refused with 503."
    )
    retention_days: float = Field(
        7.0,
        description="Finished tasks and their images are deleted after this many days; 0 keeps them forever.",
    )
    idempotency_hours: float = Field(24.0, description="How long an Idempotency-Key is remembered.")
    retention_sweep_seconds: float = Field(
        600.0, description="How often workers look for tasks past retention."
    )

    # --- engines -------------------------------------------------------------
    engine: EngineName = Field(
        "auto",
        description="`auto` (gemini when a Google key is set, else offline), `offline`, `gemini`, `diffusers`.",
    )
    offline_delay_ms: int = Field(
        0, description="Extra latency the offline engine adds to each image (demos, benchmarks)."
    )

    gemini_model: str = Field("gemini-2.5-flash-image", description="Gemini image model id.")
    gemini_fallback_models: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["gemini-3.1-flash-image"],
        description="Comma-separated model ids tried in order when Google answers that the model does not exist.",
    )
    gemini_base_url: str | None = Field(
        None,
        description="Send Gemini requests here instead of Google's endpoint (a proxy, or a local test server).",
    )
    gemini_api_version: str | None = Field(
        None, description="Gemini API version (SDK default when unset)."
    )
    gemini_max_in_flight: int = Field(
        256, description="Gemini calls one worker process keeps in flight at most."
    )
    gemini_timeout_seconds: float = Field(120.0, description="Timeout of one Gemini HTTP call.")
    gemini_deadline_seconds: float = Field(
        600.0,
        description="How long one task keeps retrying transient Gemini errors (429, 5xx, timeouts) before FAILED.",
    )

    diffusers_model: str = Field(
        "black-forest-labs/FLUX.2-klein-4B",
        description="Hugging Face model id or local directory of a diffusers pipeline.",
    )
    diffusers_device: str = Field("auto", description="`auto`, `cuda`, `cuda:N`, `mps` or `cpu`.")
    diffusers_dtype: str = Field(
        "auto",
        description="`auto` (bf16 on GPUs, float32 on the CPU), `bfloat16`, `float16`, `float32`.",
    )
    diffusers_steps: int | None = Field(
        None, description="Inference steps (default: the model family's recommendation)."
    )
    diffusers_guidance: float | None = Field(
        None, description="Guidance scale (default: the model family's recommendation)."
    )
    diffusers_resolution: int | None = Field(
        None,
        description="Side of the square output in pixels; other ratios keep about the same area (default: the family's).",
    )
    diffusers_cpu_offload: bool = Field(
        False, description="Model CPU offload, for GPUs with little memory."
    )

    # --- operations ------------------------------------------------------------
    log_format: Literal["auto", "json", "plain"] = Field(
        "auto",
        description="`json` (one object per line), `plain`, or `auto`: plain in a terminal, JSON otherwise.",
    )
    metrics_port: int | None = Field(
        None,
        description="`imagegate worker` serves Prometheus metrics on this port (API processes serve them at /metrics).",
    )

    # --- worker --------------------------------------------------------------
    worker_concurrency: int | None = Field(
        None,
        description="Tasks one worker process runs at once (default: what the engine handles best).",
    )
    lease_seconds: float = Field(
        30.0, description="How long a claimed task stays with its worker without a heartbeat."
    )
    max_attempts: int = Field(
        3, description="Attempts per task (lease expiries and transient errors) before FAILED."
    )
    task_timeout_seconds: float = Field(
        900.0, description="Deadline of one attempt; past it the attempt fails."
    )
    shutdown_grace_seconds: float = Field(
        20.0,
        description="On SIGTERM, how long running tasks may finish before they are handed back to the queue.",
    )
    poll_interval_seconds: float = Field(
        1.0, description="Fallback poll of the queue (new tasks normally wake the worker at once)."
    )

    # --- outbound ------------------------------------------------------------
    allow_private_urls: bool = Field(
        False,
        description="Allow reference and webhook URLs that resolve to private, loopback or link-local addresses.",
    )
    fetch_timeout_seconds: float = Field(
        20.0, description="Total time allowed to fetch one reference URL."
    )

    # --- webhooks ---------------------------------------------------------------
    webhook_secret: str | None = Field(
        None,
        description="whsec_ secret that signs webhooks of static keys (IMAGEGATE_API_KEYS). Default: generated "
        "once and kept in DATA_DIR/webhook_secret (set it explicitly when several machines deliver webhooks).",
    )
    webhook_retry_delays: Annotated[list[float], NoDecode] = Field(
        default_factory=lambda: [
            5.0,
            30.0,
            120.0,
            600.0,
            1800.0,
            3600.0,
            7200.0,
            14400.0,
            28800.0,
            30000.0,
        ],
        description="Seconds between webhook delivery attempts, comma-separated (default: 11 attempts over about 24 h).",
    )
    webhook_timeout_seconds: float = Field(
        10.0, description="How long a webhook receiver has to answer."
    )
    webhook_concurrency: int = Field(
        32, description="Webhook deliveries one worker process makes at once."
    )
    webhook_secret_grace_seconds: float = Field(
        86400.0,
        description="After `keys rotate-webhook-secret`, how long webhooks are signed with the old secret too.",
    )

    @field_validator("webhook_retry_delays", mode="before")
    @classmethod
    def _split_delays(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("api_keys", "gemini_fallback_models", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        return _split_csv(value)

    @cached_property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'imagegate.db').resolve()}"

    @cached_property
    def resolved_storage_url(self) -> str:
        if self.storage_url:
            return self.storage_url
        return (self.data_dir / "blobs").resolve().as_uri()

    def google_api_key_present(self) -> bool:
        return bool(os.environ.get("GEMINI_API_KEY") or os.environ.get("GOOGLE_API_KEY"))
