"""`imagegate serve | worker | keys | db`: the command line."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from collections.abc import Callable, Coroutine
from pathlib import Path
from types import FrameType
from typing import Annotated, Any, TypeVar

import typer
import uvicorn
from rich.console import Console
from rich.table import Table

from imagegate.cli_client import register as register_client_commands
from imagegate.gc_tuning import tune_gc
from imagegate.logs import setup_logging
from imagegate.settings import Settings

app = typer.Typer(
    help="imagegate: a self-hosted Freepik-compatible image generation API.", no_args_is_help=True
)
keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(db_app, name="db")

console = Console()
err = Console(stderr=True)
T = TypeVar("T")


def _settings(**overrides: Any) -> Settings:
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


def _run(factory: Callable[[Settings], Coroutine[Any, Any, T]], settings: Settings) -> T:
    return asyncio.run(factory(settings))


async def _open_store(settings: Settings) -> Any:
    from imagegate.storage import storage_from_settings
    from imagegate.store import start_store

    _, store = await start_store(settings, storage_from_settings(settings))
    return store


class DrainingServer(uvicorn.Server):
    """uvicorn's server, except that a SIGTERM/SIGINT that drained cleanly exits 0.

    uvicorn re-raises the caught signal after shutdown so the exit status reports it;
    orchestrators read that as a crash. Ours drains running tasks first: a clean exit.
    """

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        self._captured_signals.clear()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            tune_gc()


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to bind (IMAGEGATE_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on (IMAGEGATE_PORT).")] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="Data directory (IMAGEGATE_DATA_DIR).")
    ] = None,
    engine: Annotated[
        str | None, typer.Option(help="auto, offline, gemini or diffusers (IMAGEGATE_ENGINE).")
    ] = None,
    worker: Annotated[
        bool, typer.Option("--worker/--no-worker", help="Run tasks in this process too.")
    ] = True,
    log_level: Annotated[str, typer.Option(help="debug, info, warning, error.")] = "info",
) -> None:
    """Run the HTTP API (and, by default, the worker) in one process."""
    from imagegate.api.app import create_app

    settings = _settings(host=host, port=port, data_dir=data_dir, engine=engine)
    setup_logging(log_level, settings.log_format)
    application = create_app(settings, run_worker=worker)
    logging.getLogger("imagegate").info(
        "listening on http://%s:%d (docs at /docs)", settings.host, settings.port
    )
    config = uvicorn.Config(
        application,
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        access_log=False,
        log_config=None,
        timeout_graceful_shutdown=int(settings.shutdown_grace_seconds) + 5,
    )
    server = DrainingServer(config)
    server.run()
    if not server.started:
        raise typer.Exit(1)


@app.command("worker")
def worker_command(
    concurrency: Annotated[
        int | None, typer.Option(help="Tasks at once (IMAGEGATE_WORKER_CONCURRENCY).")
    ] = None,
    engine: Annotated[
        str | None, typer.Option(help="auto, offline, gemini or diffusers (IMAGEGATE_ENGINE).")
    ] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning, error.")] = "info",
) -> None:
    """Run only the worker: claim tasks from the shared store and run them."""
    settings = _settings(worker_concurrency=concurrency, engine=engine)
    setup_logging(log_level, settings.log_format)
    asyncio.run(_worker_main(settings))


async def _worker_main(settings: Settings) -> None:
    from imagegate.storage import storage_from_settings
    from imagegate.store import start_store
    from imagegate.worker.process import WorkerRuntime

    log = logging.getLogger("imagegate")
    storage = storage_from_settings(settings)
    _, store = await start_store(settings, storage)
    runtime = WorkerRuntime(store, storage, settings)
    if settings.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(settings.metrics_port, addr=settings.host)
        log.info("metrics at http://%s:%d/metrics", settings.host, settings.metrics_port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await runtime.start()
    await store.listen(runtime.on_store_event)
    tune_gc()
    await stop.wait()
    log.info("stopping: no new tasks; draining for up to %.0f s", settings.shutdown_grace_seconds)
    await runtime.stop()
    await store.close()


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Argument(help="A name to recognise the key by.")],
) -> None:
    """Make a new API key and print it (shown only this once)."""
    from imagegate.tasks.keys import CreatedKey, create_key

    async def main(settings: Settings) -> CreatedKey:
        store = await _open_store(settings)
        try:
            return await create_key(store, name)
        finally:
            await store.close()

    try:
        created = _run(main, _settings())
    except Exception as exc:
        if "UNIQUE" in str(exc).upper() or "unique" in str(exc):
            err.print(f"[red]A key named {name!r} already exists.[/red]")
            raise typer.Exit(1) from None
        raise
    console.print(f"Created key [bold]{name}[/bold]. It is shown only this once:\n")
    print(created.key)
    console.print("\nWebhooks of this key are signed (Standard Webhooks) with:\n")
    print(created.webhook_secret)


@keys_app.command("list")
def keys_list() -> None:
    """List keys (names and prefixes; keys themselves are stored only as hashes)."""
    from datetime import UTC, datetime

    async def main(settings: Settings) -> list[Any]:
        store = await _open_store(settings)
        try:
            return list(await store.list_keys())
        finally:
            await store.close()

    keys = _run(main, _settings())
    table = Table("name", "prefix", "created", "status")
    for key in keys:
        created = datetime.fromtimestamp(key.created_at, UTC).strftime("%Y-%m-%d %H:%M UTC")
        table.add_row(
            key.name, key.prefix + "…", created, "revoked" if key.revoked_at else "active"
        )
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(name: Annotated[str, typer.Argument(help="Name of the key to revoke.")]) -> None:
    """Revoke a key: requests with it get 401 within seconds."""

    async def main(settings: Settings) -> bool:
        store = await _open_store(settings)
        try:
            return bool(await store.revoke_key(name))
        finally:
            await store.close()

    if not _run(main, _settings()):
        err.print(f"[red]No active key named {name!r}.[/red]")
        raise typer.Exit(1)
    console.print(f"Revoked {name}.")


@keys_app.command("rotate-webhook-secret")
def keys_rotate(name: Annotated[str, typer.Argument(help="Name of the key.")]) -> None:
    """Give a key a new webhook secret; webhooks are signed with old and new for a grace period."""
    from imagegate.webhooks.signing import generate_secret

    secret = generate_secret()
    settings = _settings()

    async def main(settings: Settings) -> bool:
        store = await _open_store(settings)
        try:
            return bool(
                await store.rotate_webhook_secret(
                    name, secret, settings.webhook_secret_grace_seconds
                )
            )
        finally:
            await store.close()

    if not _run(main, settings):
        err.print(f"[red]No active key named {name!r}.[/red]")
        raise typer.Exit(1)
    hours = settings.webhook_secret_grace_seconds / 3600
    console.print(
        f"New webhook secret for {name} (the old one also signs for the next {hours:g} h):\n"
    )
    print(secret)


@app.command("webhooks")
def webhooks_command(
    task_id: Annotated[str, typer.Argument(help="The task whose webhook deliveries to show.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Show every webhook message of a task and each delivery attempt."""
    import json
    from datetime import UTC, datetime

    from imagegate.api.routes import delivery_json

    async def main(settings: Settings) -> list[Any] | None:
        store = await _open_store(settings)
        try:
            task = await store.get_task(task_id)
            return None if task is None else list(await store.webhook_history(task_id, task.owner))
        finally:
            await store.close()

    records = _run(main, _settings())
    if records is None:
        err.print(f"[red]No task {task_id}.[/red]")
        raise typer.Exit(1)
    if as_json:
        print(json.dumps([delivery_json(r) for r in records], indent=2))
        return

    def when(ts: float | None) -> str:
        return datetime.fromtimestamp(ts, UTC).strftime("%H:%M:%S") if ts else "-"

    table = Table("webhook-id", "status", "state", "attempt", "at", "answer", "next attempt")
    for record in records:
        for attempt in record.history or [{}]:
            answer = attempt.get("status_code") or attempt.get("error") or "-"
            table.add_row(
                record.id,
                record.status,
                record.state,
                str(attempt.get("attempt", "-")),
                when(attempt.get("at")),
                str(answer),
                when(record.next_attempt_at),
            )
    console.print(table)
    if not records:
        console.print("This task has no webhook messages (it has no webhook_url).")


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Bring the database schema up to date (the embedded default also does this on start)."""

    async def main(settings: Settings) -> None:
        store = await _open_store(settings)
        await store.close()

    settings = _settings()
    _run(main, settings)
    console.print(f"Schema is up to date ({settings.resolved_database_url.split('@')[-1]}).")


@app.command("settings")
def settings_command() -> None:
    """Print every setting with its environment variable and default, as a Markdown table."""
    from imagegate.settings_doc import settings_table

    print(settings_table(), end="")


register_client_commands(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
