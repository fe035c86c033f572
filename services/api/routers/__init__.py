from __future__ import annotations

from fastapi import FastAPI


def include_routers(app: FastAPI) -> None:
    from services.api.routers import api_keys, clients, mailings, stats

    app.include_router(api_keys.router, prefix="/api/v1")
    app.include_router(clients.router, prefix="/api/v1")
    app.include_router(mailings.router, prefix="/api/v1")
    app.include_router(stats.router, prefix="/api/v1")
