"""The operator API: app factory, lifespan, middleware and the service endpoints."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from loguru import logger
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.sessions import SessionMiddleware

from services.api.admin import install_admin
from services.api.admin.settings import AdminSettings
from services.api.auth import ensure_bootstrap_key
from services.api.auth_guard import FailedAuthentications, FailurePolicy, KeyCache
from services.api.clients_import import log_writers_done
from services.api.errors import database_unavailable, database_unavailable_answer, install_error_handlers
from services.api.headers import SecurityHeadersMiddleware
from services.api.limits import BodyLimitMiddleware, BodyLimits
from services.api.metrics import ApiMetrics
from services.api.relay import OutboxRelay
from services.api.settings import ApiSettings
from services.api.tokens import TokenVerifier
from shared.db import make_engine, make_sessionmaker
from shared.domain.statuses import Health
from shared.readiness import broker_ready, database_ready

DESCRIPTION = """
Operators keep the client directory, create SMS mailings and watch how each one goes.

Every endpoint except `/healthz`, `/readyz`, `/metrics`, `/docs/` and `/openapi.json` needs an API key
or an access token of the configured OpenID Connect provider: `Authorization: Bearer <key or token>` (use
**Authorize** above). `401`: no, unknown, revoked or invalid credentials; `403`: valid, but the role may
not do it (`viewer` reads only; `operator` changes clients and mailings; `admin` also manages API keys).
The first admin key comes from `MAILING_BOOTSTRAP_API_KEY` (in development, generated into
`.local/admin-api-key`); admins create and revoke further keys under `/api/v1/api-keys`.

Errors: `422` names each bad field in `detail[].loc`, `404` an unknown id, `409` a conflict such as a
duplicate phone, `413` a body over the limits (before authentication), `429` too many failed
authentications from one address (see `Retry-After`).
"""

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
SESSION_COOKIE = "mailing_session"
BOOTSTRAP_WAIT_SECONDS = 5.0
BOOTSTRAP_FIRST_PAUSE_SECONDS = 0.5
BOOTSTRAP_MAX_PAUSE_SECONDS = 10.0
GRACEFUL_SHUTDOWN_SECONDS = 10
STARTED_POLL_SECONDS = 0.05

TAGS = [
    {"name": "clients", "description": "The client directory."},
    {"name": "mailings", "description": "Mailings: create, change, pause, resume, cancel, delete."},
    {"name": "statistics", "description": "What happened to every message."},
    {"name": "api-keys", "description": "API keys (admin only)."},
    {"name": "service", "description": "Health, readiness and Prometheus metrics."},
]


class _Server(uvicorn.Server):
    """uvicorn without signal handlers of its own: `shared.service.serve` owns SIGTERM and SIGINT in every
    service and stops this one as it stops the others (uvicorn's handlers would replace it, and re-raise
    the signal once the server is down)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class Api:
    """The operator API. `app` is the ASGI application, whose lifespan opens and closes the database pool,
    the bootstrap key and the outbox relay (tests drive it in-process); `start()` serves it on
    `MAILING_API_HOST:MAILING_API_PORT` and returns once it listens; `stop()` stops taking connections,
    lets the requests under way finish (`GRACEFUL_SHUTDOWN_SECONDS` at most), then ends the lifespan."""

    def __init__(self, settings: ApiSettings, app: FastAPI) -> None:
        self.settings = settings
        self.app = app
        self._server: uvicorn.Server | None = None
        self._serving: asyncio.Task[None] | None = None

    async def start(self) -> None:
        server = _Server(
            uvicorn.Config(
                self.app,
                host=self.settings.api_host,
                port=self.settings.api_port,
                lifespan="on",
                log_config=None,
                access_log=False,
                # The client address behind proxies is decided by MAILING_TRUSTED_PROXY_HOPS, not by uvicorn.
                proxy_headers=False,
                timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
            )
        )
        serving = asyncio.create_task(_serve(server), name="api-server")
        while not server.started:
            if serving.done():
                await serving
                raise RuntimeError("the API server ended before it started")
            await asyncio.sleep(STARTED_POLL_SECONDS)
        self._server, self._serving = server, serving

    async def stop(self) -> None:
        if self._server is None or self._serving is None:
            return
        self._server.should_exit = True
        await self._serving
        self._server = self._serving = None
        logger.info("api stopped")


async def _serve(server: uvicorn.Server) -> None:
    try:
        await server.serve()
    except SystemExit as exc:
        # uvicorn exits the process when the lifespan's start fails or the address is taken.
        raise RuntimeError(f"the API could not start (uvicorn exit status {exc.code})") from None


def build_api(settings: ApiSettings, *, registry: CollectorRegistry | None = None) -> Api:
    return Api(settings, _create_app(settings, ApiMetrics(registry or CollectorRegistry())))


def _create_app(settings: ApiSettings, metrics: ApiMetrics) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine: AsyncEngine = make_engine(settings)
        app.state.engine = engine
        app.state.sessions = make_sessionmaker(engine)
        bootstrap = (
            asyncio.create_task(_store_bootstrap_key(app.state.sessions, settings), name="bootstrap-key")
            if settings.bootstrap_api_key is not None
            else None
        )
        if bootstrap is not None:
            # Normally done at once; with the database down the API starts anyway and answers 503.
            await asyncio.wait({bootstrap}, timeout=BOOTSTRAP_WAIT_SECONDS)
            if bootstrap.done():
                bootstrap.result()
        relay = OutboxRelay(settings, app.state.sessions, metrics)
        app.state.relay = relay
        relay_task = asyncio.create_task(relay.run(), name="outbox-relay") if settings.relay_enabled else None
        logger.info("api ready on {}:{}", settings.api_host, settings.api_port)
        try:
            yield
        finally:
            # A CSV import's per-client lines still being written go out before the process stops.
            await log_writers_done()
            relay.stop()
            if relay_task is not None:
                await relay_task
            if bootstrap is not None and not bootstrap.done():
                bootstrap.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await bootstrap
            await engine.dispose()

    app = FastAPI(
        title="Mailing service API",
        version="1.0.0",
        description=DESCRIPTION,
        openapi_tags=TAGS,
        docs_url="/docs/",
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.key_cache = KeyCache(settings.key_cache_seconds, settings.key_cache_negative_seconds)
    app.state.failed_authentications = FailedAuthentications(
        FailurePolicy(
            window_seconds=settings.auth_failure_window_seconds,
            before_delay=settings.auth_failures_before_delay,
            before_refusal=settings.auth_failures_before_refusal,
            delay_step_seconds=settings.auth_failure_delay_step_seconds,
            max_delay_seconds=settings.auth_failure_max_delay_seconds,
        )
    )
    install_error_handlers(app)
    # Added first, so it runs inside the access log (which records its 413s) and before everything else.
    app.add_middleware(BodyLimitMiddleware, limits=body_limits(settings))
    _install_identity(app, settings)
    _install_middleware(app, metrics)
    _install_service_routes(app, metrics)
    from services.api.routers import include_routers

    include_routers(app)
    install_admin(app, AdminSettings())
    _install_browser_policy(app, settings)
    return app


def _install_browser_policy(app: FastAPI, settings: ApiSettings) -> None:
    """Cross-origin calls only from the configured origins (none by default); security headers on every
    answer, 413s and 401s included (added last, so outermost)."""
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type"],
            max_age=600,
        )
    oidc = settings.oidc()
    # The provider's origin, where logout sends the browser on (its end-session page).
    provider = [] if oidc is None else ["{0.scheme}://{0.netloc}".format(urlsplit(oidc.issuer))]
    app.add_middleware(SecurityHeadersMiddleware, form_targets=provider)


CSV_IMPORT_PATHS = ("/api/v1/clients/import", "/admin/clients/import")


def body_limits(settings: ApiSettings) -> BodyLimits:
    return BodyLimits(
        default_bytes=settings.max_json_body_bytes,
        by_path=dict.fromkeys(CSV_IMPORT_PATHS, settings.csv_import_max_bytes),
    )


def _install_identity(app: FastAPI, settings: ApiSettings) -> None:
    """API bearer tokens of the provider, and the admin UI's login and session (when both a provider and
    a session secret are configured; otherwise /admin/ says that sign-in is not configured)."""
    from services.api.admin import login

    oidc = settings.oidc()
    app.state.token_verifier = (
        TokenVerifier(oidc, refetch_seconds=settings.oidc_jwks_refetch_seconds) if oidc is not None else None
    )
    app.state.oauth_client = None
    app.include_router(login.router)
    if settings.session_secret is None:
        logger.warning("no MAILING_SESSION_SECRET: the admin UI's sign-in is off")
        return
    # The session outlives no provider: pages read who is signed in; only signing in needs the provider.
    app.add_middleware(
        SessionMiddleware,
        secret_key=settings.session_secret.get_secret_value(),
        session_cookie=SESSION_COOKIE,
        max_age=settings.session_max_age_seconds,
        path="/admin",
        same_site="lax",
        https_only=settings.secure_cookies,
    )
    if oidc is None:
        logger.info("no OpenID Connect provider: the admin UI's sign-in is off; the API takes API keys")
        return
    if oidc.development:
        logger.warning(
            "using the DEVELOPMENT OpenID Connect provider at {} (development only; set MAILING_OIDC_ISSUER)",
            oidc.issuer,
        )
    app.state.oauth_client = login.oauth_client(oidc)


async def _store_bootstrap_key(sessions: async_sessionmaker[AsyncSession], settings: ApiSettings) -> None:
    """Stores the bootstrap key, retrying with growing pauses while the database is unreachable."""
    assert settings.bootstrap_api_key is not None  # noqa: S101 narrows a type for mypy; the lines above establish it
    pause = BOOTSTRAP_FIRST_PAUSE_SECONDS
    for attempt in itertools.count(1):
        try:
            await ensure_bootstrap_key(sessions, settings.bootstrap_api_key.get_secret_value())
            if attempt > 1:
                logger.info("bootstrap key stored at attempt {}", attempt)
            return
        except Exception as exc:
            if not database_unavailable(exc):
                raise
            (logger.warning if attempt == 1 else logger.debug)(
                "database unavailable at start, the bootstrap key is not stored yet: {!r}", exc
            )
        await asyncio.sleep(pause)
        pause = min(pause * 2, BOOTSTRAP_MAX_PAUSE_SECONDS)


def _install_middleware(app: FastAPI, metrics: ApiMetrics) -> None:
    @app.middleware("http")
    async def observe(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        request.state.request_id = request_id
        started = time.perf_counter()
        with logger.contextualize(request_id=request_id):
            try:
                response = await call_next(request)
            except Exception as exc:
                if database_unavailable(exc):
                    # Raised outside the route's handlers, e.g. by the session closing after the route.
                    response = database_unavailable_answer(request, exc)
                else:
                    logger.exception("unhandled error on {} {}", request.method, request.url.path)
                    response = JSONResponse(
                        {"detail": "internal error", "request_id": request_id}, status_code=500
                    )
            elapsed = time.perf_counter() - started
            route = getattr(request.scope.get("route"), "path", "unmatched")
            metrics.requests.labels(request.method, route, str(response.status_code)).inc()
            metrics.latency.labels(request.method, route).observe(elapsed)
            if route not in ("/metrics", "/healthz", "/readyz"):
                actor: str | None = getattr(request.state, "actor", None)
                bound = logger.bind(**_ids_in_path(request), **({"actor": actor} if actor else {}))
                bound.info(
                    "{} {} -> {} in {:.1f} ms",
                    request.method,
                    request.url.path,
                    response.status_code,
                    elapsed * 1000,
                )
                if actor and request.method in WRITE_METHODS:
                    bound.info(
                        "change by {}: {} {} -> {}",
                        actor,
                        request.method,
                        request.url.path,
                        response.status_code,
                    )
        response.headers["X-Request-ID"] = request_id
        return response


def _ids_in_path(request: Request) -> dict[str, int]:
    """The mailing or client id a request names, so its log line is found with the rest of that story."""
    found = {}
    for key, value in request.scope.get("path_params", {}).items():
        if key in ("mailing_id", "client_id") and str(value).isdigit():
            found[key] = int(value)
    return found


def _install_service_routes(app: FastAPI, metrics: ApiMetrics) -> None:
    @app.get("/healthz", tags=["service"])
    async def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": Health.OK}

    @app.get("/readyz", tags=["service"], responses={503: {"description": "a dependency is unreachable"}})
    async def readyz(request: Request) -> JSONResponse:
        """Readiness: PostgreSQL answers. Whether the outbox relay holds a RabbitMQ connection is reported
        too, but does not take the API out of service: its writes wait in the outbox meanwhile."""
        checks = {
            "database": await database_ready(request.app.state.engine),
            "rabbitmq": broker_ready(request.app.state.relay.connection),
        }
        ready = checks["database"]
        return JSONResponse(
            {"status": Health.READY if ready else Health.NOT_READY, "checks": checks},
            status_code=200 if ready else 503,
        )

    @app.get("/metrics", tags=["service"], response_class=Response)
    async def prometheus_metrics() -> Response:
        """Prometheus metrics of this process (see docs/metrics.md)."""
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
