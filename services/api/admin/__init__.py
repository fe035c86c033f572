"""The admin web UI under /admin/: sign-in and identity (login.py, identity.py) and server-rendered pages over
the same service functions as the REST API."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from services.api.admin.settings import AdminSettings

HERE = Path(__file__).resolve().parent
NODE_MODULES = HERE.parents[2] / "node_modules"
# Only the files the pages load, never the whole node_modules tree.
VENDOR_DIRS = {
    "htmx": NODE_MODULES / "htmx.org" / "dist",
    "pico": NODE_MODULES / "@picocss" / "pico" / "css",
    "chartjs": NODE_MODULES / "chart.js" / "dist",
}


def install_admin(app: FastAPI, settings: AdminSettings) -> None:
    from services.api.admin.pages import router

    app.state.admin_settings = settings
    for name, directory in VENDOR_DIRS.items():
        app.mount(
            f"/admin/static/vendor/{name}",
            StaticFiles(directory=directory, check_dir=False),
            name=f"admin-vendor-{name}",
        )
    app.mount("/admin/static/app", StaticFiles(directory=HERE / "static"), name="admin-static")
    app.include_router(router)
