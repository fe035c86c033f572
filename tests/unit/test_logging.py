"""What the hot paths ask the logging set-up before building a record."""

from __future__ import annotations

import json
from datetime import datetime

import pytest
from loguru import logger

from shared.logging import configure_logging, info_enabled

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("level", "enabled"), [("WARNING", False), ("error", False), ("INFO", True), ("DEBUG", True)]
)
def test_info_is_enabled_exactly_when_the_configured_level_takes_it(level: str, enabled: bool) -> None:
    configure_logging("test", level=level)
    try:
        assert info_enabled() is enabled
    finally:
        configure_logging("test")
    assert info_enabled()


def test_json_lines_are_flat_objects_with_the_bound_fields_and_the_traceback(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("sender", json=True)
    try:
        logger.bind(mailing_id=42, message_id=7).info('said "hi"\nto {}', "them")
        try:
            raise ValueError("no such thing")
        except ValueError:
            logger.bind(client_id=3).exception("failed")
        logger.debug("not logged at INFO")
    finally:
        configure_logging("test")

    lines = capsys.readouterr().err.splitlines()
    first, second = (json.loads(line) for line in lines)
    assert first["message"] == 'said "hi"\nto them'
    assert (first["service"], first["level"], first["mailing_id"], first["message_id"]) == (
        "sender",
        "INFO",
        42,
        7,
    )
    assert datetime.fromisoformat(first["time"]).utcoffset() is not None
    assert "exception" not in first
    assert (second["level"], second["client_id"], second["message"]) == ("ERROR", 3, "failed")
    assert "ValueError: no such thing" in second["exception"]
    # As the greps in docs/operations.md expect them.
    assert '"mailing_id": 42,' in lines[0]
