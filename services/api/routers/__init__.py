from __future__ import annotations

from fastapi import FastAPI


def include_routers(app: FastAPI) -> None:
    from services.api.routers import api_keys

    app.include_router(api_keys.router, prefix="/api/v1")
