"""The one place that maps domain and data errors to HTTP answers."""

from __future__ import annotations

import json
import time

import psycopg
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from loguru import logger
from markupsafe import Markup
from sqlalchemy import exc as sa_exc

from services.api.admin.html import page
from services.api.admin.identity import AccessDenied, LoginRequired, LoginUnavailable, login_url
from services.api.clients_import import TooManyRows
from shared.domain.errors import DomainValidationError

# Long enough for a restart or a failover to finish, short enough that a client does not idle after it.
DATABASE_RETRY_AFTER_SECONDS = 5
DATABASE_WARNING_EVERY_SECONDS = 30.0


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


UNSTORABLE = {
    "loc": ["request"],
    "msg": "a value holds what the database cannot store (a NUL character, or a number out of range)",
    "type": "value_error",
}


class AsciiJSONResponse(JSONResponse):
    def render(self, content: object) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode()


def unstorable_value(exc: BaseException) -> bool:
    """A value the database refused as data (NUL in text, a number out of range): the caller's input,
    refused before anything was written, so a 422."""
    cause = exc.orig if isinstance(exc, sa_exc.DBAPIError) else exc
    return isinstance(cause, psycopg.DataError)


def database_unavailable(exc: BaseException) -> bool:
    """The database could not be reached or did not answer in time: worth trying again, not a bug.

    psycopg's OperationalError covers a refused or dropped connection, a server shutting down, a
    statement timeout (QueryCanceled) and lock or serialization conflicts, all of which pass."""
    if isinstance(exc, sa_exc.TimeoutError):  # no pooled connection came free in time
        return True
    if isinstance(exc, sa_exc.DBAPIError):
        return exc.connection_invalidated or isinstance(
            exc.orig, psycopg.OperationalError | psycopg.InterfaceError
        )
    return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError | ConnectionError)


class OutageLog:
    """One warning when the database goes away and then at most one every
    DATABASE_WARNING_EVERY_SECONDS: an outage fails every request, and a traceback for each would bury
    the logs. Each request still has its own access line with the 503."""

    def __init__(self) -> None:
        self._last_warning: float | None = None
        self._quiet = 0

    def note(self, exc: BaseException) -> None:
        now = time.monotonic()
        if self._last_warning is not None and now - self._last_warning < DATABASE_WARNING_EVERY_SECONDS:
            self._quiet += 1
            return
        logger.warning(
            "database unavailable, answering 503 ({} more since the last warning): {}",
            self._quiet,
            _first_line(exc),
        )
        self._last_warning, self._quiet = now, 0


def _first_line(exc: BaseException) -> str:
    cause = exc.orig if isinstance(exc, sa_exc.DBAPIError) and exc.orig is not None else exc
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[0] if text else ''}"


def database_unavailable_answer(request: Request, exc: BaseException) -> JSONResponse:
    outages: OutageLog = request.app.state.database_outages
    outages.note(exc)
    return JSONResponse(
        status_code=503,
        content={
            "detail": "the database is unavailable, try again shortly",
            "request_id": getattr(request.state, "request_id", None),
        },
        headers={"Retry-After": str(DATABASE_RETRY_AFTER_SECONDS)},
    )


def install_error_handlers(app: FastAPI) -> None:
    app.state.database_outages = OutageLog()

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        # As FastAPI's own answer, but ASCII JSON: an error echoes its input, which may hold a lone
        # surrogate that UTF-8 cannot encode (it is written \ud800 instead of failing with a 500).
        return AsciiJSONResponse(status_code=422, content={"detail": jsonable_encoder(exc.errors())})

    @app.exception_handler(sa_exc.DBAPIError)
    @app.exception_handler(sa_exc.TimeoutError)
    @app.exception_handler(psycopg.Error)
    async def database_error(request: Request, exc: Exception) -> JSONResponse:
        if unstorable_value(exc):
            return JSONResponse(status_code=422, content={"detail": [UNSTORABLE]})
        if not database_unavailable(exc):
            # An integrity or programming error is a bug or a conflict: the 500 path logs its traceback.
            raise exc
        return database_unavailable_answer(request, exc)

    @app.exception_handler(DomainValidationError)
    async def domain_invalid(_: Request, exc: DomainValidationError) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": [field_error(exc.field, exc.message)]})

    @app.exception_handler(TooManyRows)
    async def too_many_rows(_: Request, exc: TooManyRows) -> JSONResponse:
        return JSONResponse(status_code=413, content={"detail": str(exc)})

    @app.exception_handler(NotFound)
    async def not_found(_: Request, exc: NotFound) -> JSONResponse:
        return JSONResponse(status_code=404, content={"detail": str(exc)})

    @app.exception_handler(Conflict)
    async def conflict(_: Request, exc: Conflict) -> JSONResponse:
        return JSONResponse(
            status_code=409, content={"detail": [field_error(exc.field, exc.message, "conflict")]}
        )

    @app.exception_handler(LoginRequired)
    async def login_required(request: Request, exc: LoginRequired) -> Response:
        target = login_url(exc.next_url)
        if request.headers.get("HX-Request"):
            # htmx would swap the login page into a fragment: it is told to load the whole page instead.
            return Response(status_code=401, headers={"HX-Redirect": target})
        return RedirectResponse(target, status_code=303)

    @app.exception_handler(AccessDenied)
    async def access_denied(_: Request, exc: AccessDenied) -> HTMLResponse:
        body = Markup('<p>{}</p><p><a href="/admin/">Back to the dashboard</a></p>').format(exc.reason)
        return HTMLResponse(page("Not allowed", body), status_code=403)

    @app.exception_handler(LoginUnavailable)
    async def login_unavailable(_: Request, __: LoginUnavailable) -> HTMLResponse:
        body = Markup(
            "<p>Sign-in to the admin UI is not configured: set <code>MAILING_OIDC_ISSUER</code>, "
            "<code>MAILING_OIDC_CLIENT_ID</code>, <code>MAILING_OIDC_CLIENT_SECRET</code> and "
            "<code>MAILING_SESSION_SECRET</code> (see docs/admin.md). The REST API works with API keys.</p>"
        )
        return HTMLResponse(page("Sign-in is not configured", body), status_code=503)
