"""The one place that maps domain and data errors to HTTP answers."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from shared.domain.errors import DomainValidationError


class NotFound(Exception):
    def __init__(self, what: str, ident: object) -> None:
        super().__init__(f"{what} {ident} not found")


class Conflict(Exception):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def field_error(field: str, message: str, kind: str = "value_error") -> dict[str, object]:
    return {"loc": ["body", field], "msg": message, "type": kind}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(DomainValidationError)
    async def domain_invalid(_: Request, exc: DomainValidationError) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": [field_error(exc.field, exc.message)]})

    @app.exception_handler(NotFound)
    async def not_found(_: Request, exc: NotFound) -> JSONResponse:
        return JSONResponse(status_code=404, content={"detail": str(exc)})

    @app.exception_handler(Conflict)
    async def conflict(_: Request, exc: Conflict) -> JSONResponse:
        return JSONResponse(
            status_code=409, content={"detail": [field_error(exc.field, exc.message, "conflict")]}
        )
