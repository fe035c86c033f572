"""API keys: stored as SHA-256 hashes, shown once at creation, revocable; admins manage them."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from loguru import logger
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.db import unit_of_work
from shared.domain.roles import Role
from shared.models import ApiKey

KEY_PREFIX = "mk_"


@dataclass(frozen=True)
class Principal:
    """Who calls the REST API: an API key (key_id set) or a subject of the provider's access token."""

    name: str
    role: Role
    key_id: int | None = None

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN

    @property
    def actor(self) -> str:
        """The name logged with each change: the key's name or the token's subject."""
        return self.name

    def describe(self) -> str:
        return f"API key {self.key_id} ({self.name})" if self.key_id is not None else f"subject {self.name}"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


# The key, and its last use recorded at most once a minute: one statement, and a write only now and then.
_AUTHENTICATE = text(
    "WITH k AS (SELECT id, name, role, last_used_at FROM api_keys"
    " WHERE key_hash = :digest AND revoked_at IS NULL),"
    " used AS (UPDATE api_keys SET last_used_at = now() FROM k WHERE api_keys.id = k.id"
    " AND (k.last_used_at IS NULL OR k.last_used_at < now() - interval '1 minute') RETURNING 1)"
    " SELECT id, name, role, EXISTS (SELECT 1 FROM used) AS used FROM k"
)


async def authenticate(session: AsyncSession, key: str) -> Principal | None:
    row = (await session.execute(_AUTHENTICATE, {"digest": hash_key(key)})).one_or_none()
    if row is None:
        return None
    if row.used:
        # The first statement of the request's session: committing it commits nothing of the route's.
        await session.commit()
    return Principal(row.name, Role(row.role), key_id=row.id)


async def ensure_bootstrap_key(sessions: async_sessionmaker[AsyncSession], key: str) -> None:
    """Create the configured first admin key if it is not stored yet (idempotent across restarts)."""
    async with unit_of_work(sessions) as session:
        digest = hash_key(key)
        exists = await session.scalar(select(ApiKey.id).where(ApiKey.key_hash == digest))
        if exists is None:
            session.add(ApiKey(name="bootstrap admin", key_hash=digest, prefix=key[:8], role=Role.ADMIN))
            logger.info("created the bootstrap admin API key (its hash only is stored)")
