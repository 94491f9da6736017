"""Result rows and the one table `python -m bench` prints."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from rich.console import Console
from rich.table import Table


@dataclass(frozen=True, slots=True)
class Row:
    """One measured figure, next to its baseline and target.

    `passed` is None when the row is informative only (no target, or a target we cannot
    judge from this run).
    """

    benchmark: str
    metric: str
    imagegate: float | None
    baseline: float | None = None
    unit: str = ""
    target: str = ""
    passed: bool | None = None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.imagegate is None or not self.baseline:
            return None
        return self.imagegate / self.baseline


def at_least(value: float | None, floor: float) -> bool | None:
    return None if value is None else value >= floor


def at_most(value: float | None, ceiling: float) -> bool | None:
    return None if value is None else value <= ceiling


def _number(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    text = f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}" if value else "0"
    return f"{text} {unit}".rstrip()


def _verdict(passed: bool | None) -> str:
    return "—" if passed is None else "PASS" if passed else "FAIL"


def cells(row: Row) -> list[str]:
    return [
        row.benchmark,
        row.metric,
        _number(row.imagegate, row.unit),
        _number(row.baseline, row.unit),
        "—" if row.ratio is None else f"{row.ratio:.2f}",
        row.target or "—",
        _verdict(row.passed),
    ]


HEADERS = ["benchmark", "metric", "imagegate", "baseline", "ratio", "target", "pass/fail"]


def print_table(rows: Sequence[Row], console: Console | None = None) -> None:
    # Piped or captured output would otherwise wrap at 80 columns.
    console = console or Console(width=None if Console().is_terminal else 160)
    table = Table(*HEADERS, title="imagegate benchmarks")
    for header in ("imagegate", "baseline", "ratio"):
        table.columns[HEADERS.index(header)].justify = "right"
    for row in rows:
        style = {True: None, False: "bold red", None: "dim"}[row.passed]
        table.add_row(*cells(row), style=style)
    console.print(table)
    notes = [f"[{i}] {row.benchmark} / {row.metric}: {row.note}" for i, row in _noted(rows)]
    for line in notes:
        console.print(line, highlight=False, soft_wrap=True)


def _noted(rows: Sequence[Row]) -> list[tuple[int, Row]]:
    return [(i, row) for i, row in enumerate(rows, start=1) if row.note]


def markdown_table(rows: Sequence[Row]) -> str:
    """The same table as GitHub markdown, for docs/benchmarks.md."""
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(cells(row)) + " |" for row in rows]
    return "\n".join(lines)


def write_json(rows: Sequence[Row], path: str) -> None:
    with open(path, "w") as out:
        json.dump([{**asdict(row), "ratio": row.ratio} for row in rows], out, indent=2)


Benchmark = Callable[[bool], list[Row]]
