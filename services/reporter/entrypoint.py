from __future__ import annotations

import uvloop

from services.reporter.app import serve
from services.reporter.settings import ReporterSettings
from shared.logging import configure_logging


def main() -> None:
    settings = ReporterSettings()
    configure_logging("reporter", json=settings.log_json, level=settings.log_level)
    uvloop.run(serve(settings))
