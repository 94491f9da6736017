"""The README's settings table is generated from Settings; this keeps it from drifting."""

from __future__ import annotations

import re
from pathlib import Path

from imagegate.settings_doc import settings_table

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_lists_every_setting() -> None:
    block = re.search(
        r"<!-- settings:start -->\n(.*)<!-- settings:end -->", README.read_text(), re.S
    )
    assert block, "README.md lost its settings markers"
    assert block.group(1) == settings_table(), (
        "README.md's settings table is stale: run `.venv/bin/python -m imagegate settings` and paste it "
        "between the markers (or `make readme-settings`)"
    )
