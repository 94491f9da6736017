"""`imagegate generate` and `imagegate tasks` through the real entry point, against a real server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import KEY_A
from tests.support.fileserver import FileServer
from tests.support.images import decode, image_bytes
from tests.support.server import ServerProcess


def imagegate(
    *args: str, server: ServerProcess, cwd: Path, key: str | None = KEY_A
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEGATE_")}
    env["IMAGEGATE_URL"] = server.url
    if key is not None:
        env["IMAGEGATE_KEY"] = key
    env["COLUMNS"] = "200"  # rich tables: room for whole task ids
    return subprocess.run(
        [sys.executable, "-m", "imagegate", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_generate_writes_the_image_and_prints_the_task_id(
    server: ServerProcess, file_server: FileServer, tmp_path: Path
) -> None:
    (tmp_path / "ref.png").write_bytes(image_bytes("PNG", color=(0, 0, 240)))
    url = file_server.add("/cli-ref.jpg", image_bytes("JPEG"), "image/jpeg")
    result = imagegate(
        "generate",
        "a harbour at night",
        "--ref",
        "ref.png",
        "--ref",
        url,
        "-o",
        "out/harbour.png",
        "--aspect-ratio",
        "16:9",
        server=server,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    picture = decode((tmp_path / "out" / "harbour.png").read_bytes())
    assert (picture.format, picture.size) == ("PNG", (1344, 768))
    first, second = result.stdout.splitlines()
    assert first.startswith("Task ") and len(first.split()[1]) == 36
    assert second == "out/harbour.png"
    assert "/cli-ref.jpg" in file_server.requests


def test_generate_json_is_the_only_thing_on_stdout(server: ServerProcess, tmp_path: Path) -> None:
    result = imagegate(
        "generate", "json please", "-o", "shot.jpg", "--json", server=server, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    output = json.loads(result.stdout)
    assert output["status"] == "COMPLETED"
    assert output["files"] == ["shot.jpg"]
    assert len(output["generated"]) == 1
    # The engine made a PNG; the file name asked for JPEG.
    assert decode((tmp_path / "shot.jpg").read_bytes()).format == "JPEG"

    listed = imagegate("tasks", "--per-page", "3", "--json", server=server, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout)[0]["task_id"] == output["task_id"]

    table = imagegate("tasks", "--per-page", "3", server=server, cwd=tmp_path)
    assert table.returncode == 0, table.stderr
    assert output["task_id"] in table.stdout and "COMPLETED" in table.stdout


def test_generate_without_output_names_the_file_after_the_task(
    server: ServerProcess, tmp_path: Path
) -> None:
    result = imagegate("generate", "default name", "--json", server=server, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    task_id = json.loads(result.stdout)["task_id"]
    assert (tmp_path / f"{task_id}.png").read_bytes().startswith(b"\x89PNG")


def test_validation_errors_list_every_invalid_param(server: ServerProcess, tmp_path: Path) -> None:
    result = imagegate("generate", "  ", server=server, cwd=tmp_path)
    assert result.returncode == 1
    assert "Your request parameters didn't validate." in result.stderr
    assert "prompt: must not be empty" in result.stderr
    assert result.stdout == ""

    as_json = imagegate("generate", "", "--json", server=server, cwd=tmp_path)
    assert as_json.returncode == 1
    error = json.loads(as_json.stdout)["error"]
    assert error["status_code"] == 400
    assert error["invalid_params"] == [{"name": "prompt", "reason": "must not be empty"}]


def test_a_failed_task_exits_3_with_its_reason(
    server: ServerProcess, file_server: FileServer, tmp_path: Path
) -> None:
    missing = file_server.url + "/cli-missing.png"
    result = imagegate("generate", "x", "--ref", missing, "--json", server=server, cwd=tmp_path)
    assert result.returncode == 3
    task = json.loads(result.stdout)
    assert task["status"] == "FAILED"
    assert "FAILED" in result.stderr and "404" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_bad_key_missing_file_and_timeout(
    server: ServerProcess, slow_server: ServerProcess, tmp_path: Path
) -> None:
    bad_key = imagegate("generate", "x", server=server, cwd=tmp_path, key="ig_wrong")
    assert bad_key.returncode == 1
    assert "Invalid API key" in bad_key.stderr

    no_key = imagegate("tasks", server=server, cwd=tmp_path, key=None)
    assert no_key.returncode == 1
    assert "Missing API key" in no_key.stderr and "IMAGEGATE_KEY" in no_key.stderr

    missing_file = imagegate("generate", "x", "--ref", "nope.png", server=server, cwd=tmp_path)
    assert missing_file.returncode == 2
    assert "nope.png" in missing_file.stderr

    late = imagegate("generate", "slow", "--timeout", "0.05", server=slow_server, cwd=tmp_path)
    assert late.returncode == 124
    assert "did not finish" in late.stderr
