"""Summarise a py-spy profile (collapsed stacks, `--format raw --threads`).

    .venv/bin/python -m bench create --profile /tmp/prof      # records the server under load
    .venv/bin/python -m bench.profile /tmp/prof/create-api-only.txt

Prints where the samples are, per thread: self time by library (the innermost frame that
belongs to a known package) and the functions most often on the stack (inclusive time).
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
# Innermost match wins, so the order here only breaks ties inside one frame's path.
LIBRARIES = (
    ("imagegate/", "imagegate"),
    ("sqlalchemy/", "sqlalchemy"),
    ("aiosqlite/", "aiosqlite"),
    ("sqlite3/", "sqlite3"),
    ("pydantic", "pydantic"),
    ("fastapi/", "fastapi"),
    ("starlette/", "starlette"),
    ("uvicorn/", "uvicorn"),
    ("httptools", "uvicorn"),
    ("httpx/", "httpx"),
    ("httpcore/", "httpx"),
    ("PIL/", "pillow"),
    ("json/", "json"),
    ("base64", "base64"),
    ("asyncio/", "asyncio"),
    ("concurrent/", "threads"),
    ("threading", "threads"),
    ("logging/", "logging"),
)


def library_of(path: str) -> str | None:
    for needle, name in LIBRARIES:
        if needle in path:
            return name
    return None


@dataclass
class ThreadProfile:
    samples: int = 0
    by_library: Counter[str] = field(default_factory=Counter)
    inclusive: Counter[str] = field(default_factory=Counter)
    leaf: Counter[str] = field(default_factory=Counter)


def parse(path: Path) -> dict[str, ThreadProfile]:
    threads: dict[str, ThreadProfile] = {}
    for line in path.read_text().splitlines():
        stack_text, _, count_text = line.rpartition(" ")
        if not stack_text or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack_text.split(";")
        thread = frames[0] if frames[0].startswith("thread") else "?"
        if len(frames) > 1 and frames[0].startswith("thread"):
            # "thread (123): MainThread" is how py-spy names threads in raw output.
            thread = frames[0].split(": ", 1)[-1] if ": " in frames[0] else frames[0]
            frames = frames[1:]
        if thread.startswith("thread") and frames:
            thread = "worker threads"
        elif thread != "MainThread":
            thread = "worker threads"
        profile = threads.setdefault(thread, ThreadProfile())
        profile.samples += count
        parsed = [_FRAME.match(f) for f in frames]
        names = [
            f"{m.group('func')} ({m.group('file')})" if m else frame
            for m, frame in zip(parsed, frames, strict=True)
        ]
        for name in set(names):
            profile.inclusive[name] += count
        if names:
            profile.leaf[names[-1]] += count
        library = next(
            (
                lib
                for m in reversed(parsed)
                if m and (lib := library_of(m.group("file"))) is not None
            ),
            "other",
        )
        profile.by_library[library] += count
    return threads


def summary(path: Path, top: int = 25) -> str:
    threads = parse(path)
    total = sum(t.samples for t in threads.values()) or 1
    out = [f"{path}: {total} samples"]
    for name, profile in sorted(threads.items(), key=lambda kv: -kv[1].samples):
        share = 100 * profile.samples / total
        out.append(f"\n== {name}: {profile.samples} samples ({share:.0f}% of all)")
        out.append("  self time by library (innermost known frame):")
        for lib, count in profile.by_library.most_common():
            out.append(f"    {100 * count / profile.samples:5.1f}%  {lib}")
        out.append("  on the stack (inclusive):")
        for func, count in profile.inclusive.most_common(top):
            out.append(f"    {100 * count / profile.samples:5.1f}%  {func}")
        out.append("  innermost frame (self):")
        for func, count in profile.leaf.most_common(top // 2):
            out.append(f"    {100 * count / profile.samples:5.1f}%  {func}")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("profiles", nargs="+", type=Path)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    for path in args.profiles:
        print(summary(path, args.top))


if __name__ == "__main__":
    main()
