"""API keys: creating (the key returned once, stored hashed), listing and revoking."""

from __future__ import annotations

from datetime import UTC, datetime

from loguru import logger
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.api.auth import hash_key, new_key
from services.api.errors import NotFound
from services.api.schemas import MAX_ID
from shared.models import ApiKey


async def create_key(session: AsyncSession, name: str, role: str, by: str) -> tuple[ApiKey, str]:
    key = new_key()
    row = ApiKey(name=name, role=role, key_hash=hash_key(key), prefix=key[:8])
    session.add(row)
    await session.flush()
    logger.info("API key {} ({}, {}) created by {}", row.id, name, role, by)
    return row, key


async def list_keys(session: AsyncSession) -> list[ApiKey]:
    return list(await session.scalars(select(ApiKey).order_by(ApiKey.id)))


async def revoke_key(session: AsyncSession, key_id: int, by: str) -> None:
    if not 1 <= key_id <= MAX_ID:
        raise NotFound("api key", key_id)
    result = await session.execute(
        update(ApiKey)
        .where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
        .values(revoked_at=datetime.now(UTC))
        .returning(ApiKey.id)
    )
    if result.scalar_one_or_none() is None:
        raise NotFound("api key", key_id)
    logger.info("API key {} revoked by {}", key_id, by)
