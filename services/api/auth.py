"""API keys: stored as SHA-256 hashes, shown once at creation, revocable; admins manage them."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from loguru import logger
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.db import unit_of_work
from shared.models import ApiKey

KEY_PREFIX = "mk_"


@dataclass(frozen=True)
class Principal:
    key_id: int
    name: str
    role: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


async def authenticate(session: AsyncSession, key: str) -> Principal | None:
    row = (
        await session.execute(
            select(ApiKey.id, ApiKey.name, ApiKey.role).where(
                ApiKey.key_hash == hash_key(key), ApiKey.revoked_at.is_(None)
            )
        )
    ).one_or_none()
    return None if row is None else Principal(row.id, row.name, row.role)


async def ensure_bootstrap_key(sessions: async_sessionmaker[AsyncSession], key: str) -> None:
    """Create the configured first admin key if it is not stored yet (idempotent across restarts)."""
    async with unit_of_work(sessions) as session:
        digest = hash_key(key)
        exists = await session.scalar(select(ApiKey.id).where(ApiKey.key_hash == digest))
        if exists is None:
            session.add(ApiKey(name="bootstrap admin", key_hash=digest, prefix=key[:8], role="admin"))
            logger.info("created the bootstrap admin API key ({}...)", key[:8])
