"""Admin UI sessions ended by a sign-out (table admin_sessions_ended).

A session is a signed cookie: without a record of its end, a copy of it would stay valid, and be renewed
by every use, until its lifetime runs out. Rows are kept until that lifetime would have ended."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import delete, exists, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from shared.models import AdminSessionEnded


async def is_ended(db: AsyncSession, session_id: str) -> bool:
    return bool(await db.scalar(select(exists().where(AdminSessionEnded.session_id == session_id))))


async def end(db: AsyncSession, session_id: str, expires_at: float) -> None:
    """Record the session's end (the caller commits); rows of sessions expired by now go."""
    await db.execute(
        insert(AdminSessionEnded)
        .values(session_id=session_id, expires_at=datetime.fromtimestamp(expires_at, UTC))
        .on_conflict_do_nothing()
    )
    await db.execute(delete(AdminSessionEnded).where(AdminSessionEnded.expires_at < datetime.now(UTC)))
