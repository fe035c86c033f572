from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from loguru import logger
from sqlalchemy.ext.asyncio import AsyncSession

from services.api.auth import Principal, authenticate, hash_key
from services.api.auth_guard import FailedAuthentications, KeyCache, client_address
from services.api.metrics import ApiMetrics
from services.api.settings import ApiSettings
from services.api.tokens import InvalidToken, ProviderUnavailable, TokenVerifier, looks_like_jwt

bearer = HTTPBearer(
    auto_error=False,
    description="An API key or an access token of the OpenID Connect provider: `Authorization: Bearer <it>`",
)
PROVIDER_RETRY_AFTER_SECONDS = 5


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """A session for the request; the route commits what it wants kept, anything else is rolled back."""
    async with request.app.state.sessions() as session:
        yield session


def get_settings(request: Request) -> ApiSettings:
    settings: ApiSettings = request.app.state.settings
    return settings


def get_metrics(request: Request) -> ApiMetrics:
    metrics: ApiMetrics = request.app.state.metrics
    return metrics


def get_key_cache(request: Request) -> KeyCache:
    cache: KeyCache = request.app.state.key_cache
    return cache


SessionDep = Annotated[AsyncSession, Depends(get_session)]
KeyCacheDep = Annotated[KeyCache, Depends(get_key_cache)]
SettingsDep = Annotated[ApiSettings, Depends(get_settings)]
MetricsDep = Annotated[ApiMetrics, Depends(get_metrics)]


def _unauthorized(request: Request, reason: str, detail: str) -> HTTPException:
    logger.info("401 on {} {}: {}", request.method, request.url.path, reason)
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail, headers={"WWW-Authenticate": "Bearer"})


def forbidden(request: Request, principal: Principal, detail: str) -> HTTPException:
    logger.info(
        "403 on {} {}: {} has role {}", request.method, request.url.path, principal.describe(), principal.role
    )
    return HTTPException(status.HTTP_403_FORBIDDEN, detail)


async def _from_token(request: Request, token: str) -> Principal:
    verifier: TokenVerifier | None = request.app.state.token_verifier
    if verifier is None:
        raise _unauthorized(request, "a JWT, but no OpenID Connect provider is configured", "unknown API key")
    try:
        identity = await verifier.verify(token)
    except InvalidToken as exc:
        raise _unauthorized(
            request, f"invalid access token: {exc}", "invalid or expired access token"
        ) from None
    except ProviderUnavailable as exc:
        logger.warning("cannot check an access token, the OpenID Connect provider is unavailable: {}", exc)
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            "the identity provider is unavailable, try again shortly",
            headers={"Retry-After": str(PROVIDER_RETRY_AFTER_SECONDS)},
        ) from None
    if identity.role is None:
        logger.info(
            "403 on {} {}: subject {} has no known role in claim {}",
            request.method,
            request.url.path,
            identity.subject,
            verifier.config.role_claim,
        )
        raise HTTPException(status.HTTP_403_FORBIDDEN, "the access token carries no role of this service")
    return Principal(identity.subject, identity.role)


def _source(request: Request) -> str:
    settings: ApiSettings = request.app.state.settings
    peer = request.client.host if request.client is not None else None
    return client_address(peer, request.headers.get("x-forwarded-for"), settings.trusted_proxy_hops)


async def _from_key(request: Request, session: AsyncSession, key: str) -> Principal:
    cache: KeyCache = request.app.state.key_cache
    digest = hash_key(key)
    found, principal = cache.get(digest, time.monotonic())
    if not found:
        principal = await authenticate(session, key)
        cache.put(digest, principal, time.monotonic())
    if principal is None:
        raise _unauthorized(request, "unknown or revoked API key", "unknown or revoked API key")
    return principal


async def get_principal(
    request: Request,
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> AsyncIterator[Principal]:
    """The caller, from an API key or a provider's access token; its name is bound as `actor` to every
    log line of the request. A source that failed too often lately is refused before anything is looked
    up; each of its further failures is answered more slowly."""
    failures: FailedAuthentications = request.app.state.failed_authentications
    source = _source(request)
    retry_after = failures.retry_after(source, time.monotonic())
    if retry_after is not None:
        logger.info(
            "429 on {} {}: too many failed authentications from {}", request.method, request.url.path, source
        )
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            "too many failed authentications from this address, try again later",
            headers={"Retry-After": str(retry_after)},
        )
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise _unauthorized(
            request, "no bearer credentials", "missing credentials: send Authorization: Bearer <key or token>"
        )
    try:
        if looks_like_jwt(credentials.credentials):
            principal = await _from_token(request, credentials.credentials)
        else:
            principal = await _from_key(request, session, credentials.credentials)
    except HTTPException as exc:
        if exc.status_code == status.HTTP_401_UNAUTHORIZED:
            delay = failures.fail(source, time.monotonic())
            if delay > 0:
                await asyncio.sleep(delay)
        raise
    request.state.actor = principal.actor
    with logger.contextualize(actor=principal.actor):
        yield principal


PrincipalDep = Annotated[Principal, Depends(get_principal)]


async def get_writer(request: Request, principal: PrincipalDep) -> Principal:
    if not principal.role.can_write:
        raise forbidden(request, principal, "this operation changes data: a viewer may only read")
    return principal


WriterDep = Annotated[Principal, Depends(get_writer)]


async def get_admin(request: Request, principal: PrincipalDep) -> Principal:
    if not principal.is_admin:
        raise forbidden(request, principal, "this operation needs the admin role")
    return principal


AdminDep = Annotated[Principal, Depends(get_admin)]
