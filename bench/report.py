"""Each benchmark rewrites its own section of docs/benchmarks.md and leaves the rest as it is."""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def rewrite_section(title: str, body: str) -> None:
    """Replace `## <title>` (up to the next `## ` heading) with `body`, or append it when missing."""
    section = f"## {title}\n\n{body.strip()}\n\n"
    current = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(current):
        updated = pattern.sub(lambda _: section, current)
    else:
        updated = current.rstrip() + "\n\n" + section
    DOC.write_text(updated.rstrip() + "\n")
