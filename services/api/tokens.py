"""Bearer access tokens (JWT) of the OpenID Connect provider: signature against the provider's JWKS,
issuer, audience and expiry; roles from the configured claim."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
from loguru import logger

from services.api.settings import OidcConfig
from shared.domain.roles import Role, role_from_claims

# Clocks of the provider and of this host differ a little.
LEEWAY_SECONDS = 30
HTTP_TIMEOUT_SECONDS = 5.0
# Asymmetric algorithms only: a token "signed" with HS256 and the public key, or with none, never passes.
ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"]


def looks_like_jwt(credential: str) -> bool:
    """A JWT has three dot-separated parts; API keys (`mk_...`, the bootstrap key) have no dots."""
    return credential.count(".") == 2


class InvalidToken(Exception):
    """The token is not one of the provider's valid tokens; the reason is safe to log (no token)."""


class ProviderUnavailable(Exception):
    """The provider's discovery document or keys could not be fetched."""


@dataclass(frozen=True)
class TokenIdentity:
    subject: str
    name: str
    role: Role | None


class TokenVerifier:
    """Verifies access tokens; keeps the provider's discovery and JWKS, fetching the keys again when a
    token names a key id it does not know (the provider rotated its keys), at most once per
    `refetch_seconds`, so forged key ids cannot make it hammer the provider."""

    def __init__(
        self,
        config: OidcConfig,
        *,
        refetch_seconds: float,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.refetch_seconds = refetch_seconds
        self._transport = transport
        self._clock = clock
        self._metadata: dict[str, Any] | None = None
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at: float | None = None
        self._lock = asyncio.Lock()

    async def verify(self, token: str) -> TokenIdentity:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise InvalidToken(f"malformed token: {exc}") from None
        if header.get("alg") not in ALGORITHMS:
            raise InvalidToken(f"algorithm {header.get('alg')!r} is not accepted")
        key = await self._key(header.get("kid"))
        metadata = await self._discovery()
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=[header["alg"]],
                audience=self.config.audience,
                issuer=metadata["issuer"],
                leeway=LEEWAY_SECONDS,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.PyJWTError as exc:
            raise InvalidToken(f"{type(exc).__name__}: {exc}") from None
        subject = str(claims["sub"])
        name = str(claims.get("preferred_username") or claims.get("name") or claims.get("email") or subject)
        return TokenIdentity(
            subject, name, role_from_claims(claims, self.config.role_claim, self.config.role_map)
        )

    async def _key(self, kid: object) -> jwt.PyJWK:
        async with self._lock:
            if self._fetched_at is None:
                await self._fetch_keys()
            found = self._find(kid)
            if found is None and self._clock() - (self._fetched_at or 0.0) >= self.refetch_seconds:
                logger.info("unknown signing key id {!r}: fetching the provider's keys again", kid)
                await self._fetch_keys()
                found = self._find(kid)
        if found is None:
            raise InvalidToken(f"unknown signing key id {kid!r}")
        return found

    def _find(self, kid: object) -> jwt.PyJWK | None:
        if kid is None:
            return next(iter(self._keys.values())) if len(self._keys) == 1 else None
        return self._keys.get(str(kid))

    async def _discovery(self) -> dict[str, Any]:
        if self._metadata is None:
            self._metadata = await self._get_json(self.config.discovery_url)
            if "jwks_uri" not in self._metadata or "issuer" not in self._metadata:
                self._metadata = None
                raise ProviderUnavailable("the discovery document names no jwks_uri or issuer")
        return self._metadata

    async def _fetch_keys(self) -> None:
        metadata = await self._discovery()
        document = await self._get_json(metadata["jwks_uri"])
        keys: dict[str, jwt.PyJWK] = {}
        for entry in document.get("keys", []):
            if entry.get("use", "sig") != "sig":
                continue
            try:
                key = jwt.PyJWK(entry)
            except jwt.PyJWTError as exc:
                logger.warning("skipping a key of the provider's JWKS: {}", exc)
                continue
            keys[str(entry.get("kid", ""))] = key
        self._keys, self._fetched_at = keys, self._clock()

    async def _get_json(self, url: str) -> dict[str, Any]:
        try:
            async with httpx.AsyncClient(transport=self._transport, timeout=HTTP_TIMEOUT_SECONDS) as http:
                response = await http.get(url)
                response.raise_for_status()
                body = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise ProviderUnavailable(f"{url}: {exc!r}") from None
        if not isinstance(body, dict):
            raise ProviderUnavailable(f"{url}: not a JSON object")
        return body
