from __future__ import annotations

import uvicorn

from services.api.app import create_app
from services.api.settings import ApiSettings
from shared.logging import configure_logging


def main() -> int:
    settings = ApiSettings()
    configure_logging("api", json=settings.log_json, level=settings.log_level)
    app = create_app(settings)
    uvicorn.run(
        app,
        host=settings.api_host,
        port=settings.api_port,
        log_config=None,
        access_log=False,
        loop="uvloop",
        timeout_graceful_shutdown=10,
    )
    return 0
