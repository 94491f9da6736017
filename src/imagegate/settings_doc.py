"""The settings table of the README, made from `Settings` so the two never drift apart."""

from __future__ import annotations

from imagegate.settings import Settings


def _default(value: object) -> str:
    if value is None:
        return "—"
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or "—"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def settings_table() -> str:
    rows = ["| Environment variable | Default | What it does |", "| --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        default = field.default_factory() if field.default_factory is not None else field.default  # type: ignore[call-arg]
        rows.append(
            f"| `IMAGEGATE_{name.upper()}` | `{_default(default)}` | {field.description or ''} |"
        )
    return "\n".join(rows) + "\n"
