"""What the hot paths ask the logging set-up before building a record."""

from __future__ import annotations

import pytest
from loguru import logger

from shared.logging import configure_logging, info_enabled

pytestmark = pytest.mark.unit


def test_info_is_enabled_exactly_while_some_sink_takes_it() -> None:
    configure_logging("test", level="WARNING")
    try:
        assert not info_enabled()
        sink = logger.add(lambda _: None, level="INFO")
        assert info_enabled()
        logger.remove(sink)
        assert not info_enabled()
        configure_logging("test", level="DEBUG")
        assert info_enabled()
    finally:
        configure_logging("test")
