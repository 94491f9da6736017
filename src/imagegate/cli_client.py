"""`imagegate generate` and `imagegate tasks`: the SDK from the command line.

Exit status of `generate`: 0 done, 1 the API refused the request or could not be reached,
2 wrong usage (a missing reference file, a bad option), 3 the task ended FAILED, 124 it was not
finished within --timeout (it keeps running on the server).
"""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Column, Table
from rich.text import Text

if TYPE_CHECKING:
    from imagegate.client import Client, Task

EXIT_API_ERROR = 1
EXIT_USAGE = 2
EXIT_TASK_FAILED = 3
EXIT_TIMEOUT = 124

# Image extensions a user may ask for with -o, and the Pillow format that writes each.
_FORMATS = {
    ".png": ("png", "PNG"),
    ".jpg": ("jpg", "JPEG"),
    ".jpeg": ("jpg", "JPEG"),
    ".webp": ("webp", "WEBP"),
}
T = TypeVar("T")

stderr = Console(stderr=True)

UrlOption = Annotated[
    str | None,
    typer.Option(
        "--url",
        envvar="IMAGEGATE_URL",
        help="Base URL of the server (default http://127.0.0.1:8000).",
        show_default=False,
    ),
]
KeyOption = Annotated[
    str | None,
    typer.Option("--key", envvar="IMAGEGATE_KEY", help="API key.", show_default=False),
]
JsonOption = Annotated[
    bool,
    typer.Option("--json", help="Print JSON on stdout (and nothing else there), for scripts."),
]


def register(app: typer.Typer) -> None:
    app.command("generate")(generate)
    app.command("tasks")(tasks)


def generate(
    prompt: Annotated[str, typer.Argument(help="What to draw, or how to change the references.")],
    ref: Annotated[
        list[str] | None,
        typer.Option(
            "--ref",
            "-r",
            help="A reference image: a file or an http(s) URL. Repeat for up to 3.",
            show_default=False,
        ),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Where to write the image (several: out-1.png, out-2.png, ...). "
            "Default: <task id>.<ext>. The extension picks the format (png, jpg, webp).",
            show_default=False,
        ),
    ] = None,
    aspect_ratio: Annotated[
        str | None,
        typer.Option(
            help="1:1, 16:9, 9:16, 4:3, 3:2, ... (or widescreen_16_9).", show_default=False
        ),
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="Same seed, same picture (where the engine allows).")
    ] = None,
    webhook_url: Annotated[
        str | None, typer.Option(help="Also notify this URL at each status change.")
    ] = None,
    wait: Annotated[
        bool,
        typer.Option("--wait/--no-wait", help="Wait for the images, or only create the task."),
    ] = True,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the task.")] = 300.0,
    as_json: JsonOption = False,
    url: UrlOption = None,
    key: KeyOption = None,
) -> None:
    """Generate or edit an image, wait for it with a live status, and save it."""
    from imagegate.client import Client

    references = _references(ref or [])
    with Client(api_key=key, base_url=url) as client:
        task = _run_api(
            lambda: _create_and_wait(
                client,
                prompt,
                references,
                wait,
                timeout,
                as_json,
                aspect_ratio=aspect_ratio,
                seed=seed,
                webhook_url=webhook_url,
            ),
            as_json,
        )
        if not task.images:
            _report_task(task, [], as_json)
            return
        try:
            files = _save(task, output)
        except OSError as exc:
            _fail(f"Cannot write the image: {exc}", EXIT_USAGE, as_json)
    _report_task(task, files, as_json)


def tasks(
    page: Annotated[int, typer.Option(help="Page, from 1.")] = 1,
    per_page: Annotated[int, typer.Option(help="Tasks per page (at most 100).")] = 20,
    as_json: JsonOption = False,
    url: UrlOption = None,
    key: KeyOption = None,
) -> None:
    """List your recent tasks, newest first."""
    from imagegate.client import Client

    with Client(api_key=key, base_url=url) as client:
        listed = _run_api(lambda: client.list(page=page, per_page=per_page), as_json)
    if as_json:
        print(json.dumps([task.to_json() for task in listed], indent=2))
        return
    if not listed:
        stderr.print("No tasks on this page.")
        return
    # Ids and statuses are what users read and copy: never wrapped or cut.
    table = Table(
        Column("task id", no_wrap=True, min_width=36),
        Column("status", no_wrap=True, min_width=11),
        Column("model"),
        Column("result", ratio=1),
    )
    for task in listed:
        colour = {"COMPLETED": "green", "FAILED": "red", "IN_PROGRESS": "yellow"}.get(
            task.status, "white"
        )
        # A reason is read whole; URLs are cut to the terminal (--json has them in full).
        result = (
            Text(task.error or "", overflow="fold")
            if task.status == "FAILED"
            else Text("\n".join(task.generated), overflow="ellipsis", no_wrap=True)
        )
        table.add_row(
            task.task_id, f"[{colour}]{task.status}[/{colour}]", escape(task.model or "-"), result
        )
    Console().print(table)


# --- generate, step by step ----------------------------------------------------------------
def _references(items: list[str]) -> list[str | Path]:
    references: list[str | Path] = []
    for item in items:
        if item.startswith(("http://", "https://", "data:")):
            references.append(item)
            continue
        path = Path(item).expanduser()
        if not path.is_file():
            stderr.print(f"[red]--ref {escape(item)}: no such file[/red]")
            raise typer.Exit(EXIT_USAGE)
        references.append(path)
    return references


def _create_and_wait(
    client: Client,
    prompt: str,
    references: list[str | Path],
    wait: bool,
    timeout: float,
    as_json: bool,
    **options: Any,
) -> Task:
    from rich.progress import Progress, SpinnerColumn, TextColumn

    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TextColumn("[yellow]{task.elapsed:.1f} s"),
        console=stderr,
        transient=True,
        # Not a terminal (a pipe, CI): no spinner frames in the captured output.
        disable=not stderr.is_terminal,
    ) as progress:
        line = progress.add_task("sending the request")
        created = client.create(prompt, list(references), **options)
        if not as_json:
            print(f"Task {created.task_id}")
        if not wait:
            return created

        def show(task: Task) -> None:
            progress.update(line, description=f"task {task.task_id[:8]} [bold]{task.status}[/bold]")

        show(created)
        done = client.wait(created.task_id, timeout, on_update=show)
        progress.update(line, description=f"downloading {len(done.generated)} image(s)")
        return client.download(done)


def _run_api(call: Callable[[], T], as_json: bool) -> T:
    """Run an SDK call; turn its errors into a message and an exit status."""
    from imagegate.client import (
        AuthenticationError,
        ImagegateError,
        TaskFailedError,
        ValidationError,
        WaitTimeout,
    )

    try:
        return call()
    except TaskFailedError as exc:
        if as_json:
            print(json.dumps(exc.task.to_json(), indent=2))
        stderr.print(f"[red]Task {exc.task.task_id} FAILED:[/red] {escape(exc.message)}")
        raise typer.Exit(EXIT_TASK_FAILED) from None
    except WaitTimeout as exc:
        if as_json and exc.task is not None:
            print(json.dumps(exc.task.to_json(), indent=2))
        hint = " Check later with: imagegate tasks" if exc.task else ""
        stderr.print(f"[yellow]{escape(exc.message)}.[/yellow]{hint}")
        raise typer.Exit(EXIT_TIMEOUT) from None
    except ValidationError as exc:
        lines = [f"  {p.name}: {p.reason}" for p in exc.invalid_params]
        _fail(exc.message, EXIT_API_ERROR, as_json, exc, lines)
    except AuthenticationError as exc:
        hint = "  (pass --key or set IMAGEGATE_KEY)"
        _fail(exc.message, EXIT_API_ERROR, as_json, exc, [hint])
    except ImagegateError as exc:
        _fail(exc.message, EXIT_API_ERROR, as_json, exc)
    except (FileNotFoundError, TypeError) as exc:
        _fail(str(exc), EXIT_USAGE, as_json)


def _fail(
    message: str,
    code: int,
    as_json: bool,
    exc: Any = None,
    details: list[str] | None = None,
) -> NoReturn:
    if as_json:
        error: dict[str, Any] = {"message": message}
        if exc is not None:
            error["status_code"] = exc.status_code
            if getattr(exc, "invalid_params", None):
                error["invalid_params"] = [
                    {"name": p.name, "reason": p.reason} for p in exc.invalid_params
                ]
        print(json.dumps({"error": error}, indent=2))
    stderr.print(f"[red]Error:[/red] {escape(message)}")
    for line in details or []:
        stderr.print(escape(line))
    raise typer.Exit(code)


def _save(task: Task, output: Path | None) -> list[Path]:
    from imagegate.client._task import output_paths

    paths = output_paths(output, task.images, default_stem=task.task_id)
    for path, data in zip(paths, task.images, strict=True):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_in_format_of(path, data))
    return paths


def _in_format_of(path: Path, data: bytes) -> bytes:
    """The image in the format the file name asks for (`-o out.jpg` with a PNG from the engine)."""
    from imagegate.client._task import image_extension

    wanted = _FORMATS.get(path.suffix.lower())
    if wanted is None or wanted[0] == image_extension(data):
        return data
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        converted = image.convert("RGB") if wanted[1] == "JPEG" else image.copy()
    out = io.BytesIO()
    converted.save(out, format=wanted[1])
    return out.getvalue()


def _report_task(task: Task, files: list[Path], as_json: bool) -> None:
    if as_json:
        print(json.dumps({**task.to_json(), "files": [str(p) for p in files]}, indent=2))
        return
    if not files:
        stderr.print(f"Task {task.task_id} is {task.status}.")
        return
    for path in files:
        print(path)
    if task.text:
        stderr.print(f"[dim]{escape(task.text)}[/dim]")
    sys.stdout.flush()
