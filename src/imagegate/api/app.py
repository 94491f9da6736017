"""The app factory: wires settings, store, storage, engine and worker behind the routes."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from PIL import Image

from imagegate import __version__
from imagegate.api.errors import install_error_handlers
from imagegate.api.middleware import BodySizeLimitMiddleware, RequestIdMiddleware
from imagegate.api.openai import router as openai_router
from imagegate.api.playground import router as playground_router
from imagegate.api.ratelimit import RateLimitMiddleware
from imagegate.api.routes import create_task_route, router
from imagegate.api.schemas import CreateTaskRequest
from imagegate.metrics import MetricsMiddleware, exposition, update_queue_gauges
from imagegate.settings import Settings
from imagegate.storage import storage_from_settings
from imagegate.store import start_store
from imagegate.tasks.events import TaskEvents
from imagegate.tasks.keys import KeyRing, create_key
from imagegate.tasks.service import SERVICE_UNAVAILABLE, TaskService
from imagegate.worker.process import WorkerRuntime

log = logging.getLogger("imagegate")

DESCRIPTION = """A self-hosted, drop-in compatible server for Freepik's *image generation and
editing with Gemini 2.5 Flash* API. Create a task with a prompt and up to 3 reference images,
then poll it (or receive a signed webhook) for the URLs of the generated images."""


def create_app(settings: Settings | None = None, *, run_worker: bool = True) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Pillow's own bomb guard, matched to ours: refuse before decoding, never after.
        Image.MAX_IMAGE_PIXELS = settings.max_image_pixels
        storage = storage_from_settings(settings)
        presenter, store = await start_store(settings, storage)
        await storage.ping()
        keyring = KeyRing(store, settings.api_keys)
        if not settings.api_keys and await store.count_keys() == 0:
            created = await create_key(store, "default")
            print(
                "\nNo API keys yet, so imagegate made one. It is shown only this once:\n\n"
                f"    {created.key}\n\n"
                "Send it as the x-freepik-api-key header. Manage keys with `imagegate keys`.\n"
                f"Webhooks of this key are signed with {created.webhook_secret}\n",
                flush=True,
            )
        events = TaskEvents()
        runtime: WorkerRuntime | None = None
        if run_worker:
            runtime = WorkerRuntime(store, storage, settings, events=events)
        else:
            log.info("API only (--no-worker): tasks are run by `imagegate worker` processes")
        app.state.settings = settings
        app.state.storage = storage
        app.state.store = store
        app.state.presenter = presenter
        app.state.keyring = keyring
        app.state.runtime = runtime
        app.state.tasks = TaskService(
            store,
            storage,
            settings,
            on_created=runtime.notify if runtime else lambda: None,
            events=events,
        )
        if runtime:
            await runtime.start()
            await store.listen(runtime.on_store_event)
        else:
            await store.listen(lambda kind, task_id: events.publish(task_id) if task_id else None)
        try:
            yield
        finally:
            if runtime:
                await runtime.stop()
            await store.close()

    app = FastAPI(
        title="imagegate",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        servers=[{"url": settings.public_url}] if settings.public_url else None,
    )
    install_error_handlers(app)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
                servers=app.servers,
            )
            # The create route reads its body by hand; its schema is registered here.
            schema.setdefault("components", {}).setdefault("schemas", {})["CreateTaskRequest"] = (
                CreateTaskRequest.model_json_schema(ref_template="#/components/schemas/{model}")
            )
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.include_router(router)
    app.router.routes.insert(0, create_task_route)
    app.include_router(openai_router)
    app.include_router(playground_router)

    @app.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        try:
            update_queue_gauges(await request.app.state.store.queue_stats())
        except Exception as exc:
            log.warning("queue gauges not updated: %s", exc)
        body, content_type = exposition()
        return Response(body, media_type=content_type)

    @app.get("/healthz", tags=["health"], summary="The process is alive")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], summary="Store and blob storage are reachable")
    async def readyz(request: Request) -> JSONResponse:
        try:
            await request.app.state.store.ping()
            await request.app.state.storage.ping()
        except Exception as exc:
            log.warning("not ready: %s", exc)
            return JSONResponse(
                {"message": SERVICE_UNAVAILABLE, "reason": type(exc).__name__}, status_code=503
            )
        return JSONResponse({"status": "ready"})

    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes)
    if settings.rate_limit_per_minute > 0:
        app.add_middleware(RateLimitMiddleware, per_minute=settings.rate_limit_per_minute)
    app.add_middleware(MetricsMiddleware)
    app.add_middleware(RequestIdMiddleware)
    return app
