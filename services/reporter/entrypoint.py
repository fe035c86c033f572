from __future__ import annotations

import sys

import uvloop

from services.reporter.app import build_reporter
from services.reporter.settings import ReporterSettings
from shared.logging import configure_logging
from shared.service import serve


def main() -> None:
    settings = ReporterSettings()
    configure_logging("reporter", json=settings.log_json, level=settings.log_level)
    if len(sys.argv) > 1:
        from services.reporter.cli import run

        raise SystemExit(uvloop.run(run(sys.argv[1:], settings)))
    uvloop.run(serve(build_reporter(settings)))
