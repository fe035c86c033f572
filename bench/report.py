"""What the benchmarks share: their client timezones, and the rewrite of each one's own section of
docs/benchmarks.md (the rest of the page is left as it is)."""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
# The 30 timezones the benchmarks spread their clients over.
ZONES = (
    "Europe/Kaliningrad", "Europe/Moscow", "Europe/Samara", "Asia/Yekaterinburg", "Asia/Omsk",
    "Asia/Novosibirsk", "Asia/Krasnoyarsk", "Asia/Irkutsk", "Asia/Yakutsk", "Asia/Vladivostok",
    "Asia/Magadan", "Asia/Kamchatka", "Europe/Berlin", "Europe/London", "Europe/Paris", "Europe/Istanbul",
    "Asia/Tbilisi", "Asia/Almaty", "Asia/Tashkent", "Asia/Dubai", "Asia/Kolkata", "Asia/Bangkok",
    "Asia/Shanghai", "Asia/Tokyo", "Australia/Sydney", "Pacific/Auckland", "America/New_York",
    "America/Chicago", "America/Los_Angeles", "America/Sao_Paulo",
)  # fmt: skip


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
