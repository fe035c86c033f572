from __future__ import annotations

import uvloop

from services.sender.bootstrap import build_sender
from services.sender.settings import SenderSettings
from shared.logging import configure_logging
from shared.service import serve


def main() -> None:
    settings = SenderSettings()
    configure_logging("sender", json=settings.log_json, level=settings.log_level)
    uvloop.run(serve(build_sender(settings)))
