from __future__ import annotations

import uvloop

from services.scheduler.app import build_scheduler
from services.scheduler.settings import SchedulerSettings
from shared.logging import configure_logging
from shared.service import serve


def main() -> None:
    settings = SchedulerSettings()
    configure_logging("scheduler", json=settings.log_json, level=settings.log_level)
    uvloop.run(serve(build_scheduler(settings)))
