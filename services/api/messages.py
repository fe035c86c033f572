"""Listing messages, as the mailing and the client endpoints both answer them."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field
from sqlalchemy import ColumnElement, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from services.api.pagination import Pagination
from services.api.schemas import Page
from shared.domain.statuses import MessageStatus
from shared.models import Message


class MessageOut(BaseModel):
    id: int = Field(examples=[1001])
    mailing_id: int = Field(examples=[42])
    client_id: int = Field(examples=[7])
    status: MessageStatus = Field(examples=[MessageStatus.SENT])
    created_at: datetime
    sent_at: datetime | None = Field(examples=["2030-03-01T06:00:03Z"])
    attempts: int = Field(ge=0, examples=[1])
    last_error: str | None = Field(description="Why it is not sent, or the last failure", examples=[None])


async def message_page(
    session: AsyncSession, which: ColumnElement[bool], status: MessageStatus | None, page: Pagination
) -> Page[MessageOut]:
    """The chosen messages, oldest first, optionally only those in one status."""
    conditions = [which] if status is None else [which, Message.status == status.value]
    total = await session.scalar(select(func.count()).select_from(Message).where(*conditions))
    rows = await session.scalars(
        select(Message).where(*conditions).order_by(Message.id).limit(page.limit).offset(page.offset)
    )
    items = [
        MessageOut(
            id=m.id,
            mailing_id=m.mailing_id,
            client_id=m.client_id,
            status=MessageStatus(m.status),
            created_at=m.created_at,
            sent_at=m.sent_at,
            attempts=m.attempts,
            last_error=m.last_error,
        )
        for m in rows
    ]
    return Page[MessageOut](items=items, total=total or 0, limit=page.limit, offset=page.offset)
