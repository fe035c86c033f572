from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from services.api import mailings_service as service
from services.api.deps import PrincipalDep, SessionDep
from services.api.messages import MessageOut, message_page
from services.api.pagination import PaginationDep
from services.api.routers.mailings import INVALID, NOT_FOUND, UNAUTHORIZED
from services.api.schemas import Page
from shared.domain.statuses import MailingStatus, MessageStatus
from shared.models import Mailing, Message

router = APIRouter(tags=["statistics"])


class StatusCountsOut(BaseModel):
    """Messages in each status; every status is always present."""

    pending: int = Field(ge=0, examples=[120])
    queued: int = Field(ge=0, examples=[30])
    retrying: int = Field(ge=0, examples=[2])
    sent: int = Field(ge=0, examples=[840])
    failed: int = Field(ge=0, examples=[3])
    expired: int = Field(ge=0, examples=[5])
    cancelled: int = Field(ge=0, examples=[0])


class MailingStatsOut(BaseModel):
    id: int = Field(examples=[42])
    text: str = Field(examples=["Spring sale: -20% on everything until Sunday"])
    start_at: datetime = Field(examples=["2030-03-01T06:00:00Z"])
    end_at: datetime = Field(examples=["2030-03-02T18:00:00Z"])
    status: MailingStatus = Field(examples=[MailingStatus.RUNNING])
    total: int = Field(ge=0, description="All messages of the mailing", examples=[1000])
    counts: StatusCountsOut


def _stats_out(mailing: Mailing, counts: service.StatusCounts) -> MailingStatsOut:
    return MailingStatsOut(
        id=mailing.id,
        text=mailing.text,
        start_at=mailing.start_at,
        end_at=mailing.end_at,
        status=MailingStatus(mailing.status),
        total=counts.total,
        counts=StatusCountsOut(**counts.counts),
    )


@router.get("/stats/mailings", responses={**UNAUTHORIZED, **INVALID})
async def mailings_statistics(
    session: SessionDep,
    _: PrincipalDep,
    page: PaginationDep,
    status: Annotated[MailingStatus | None, Query(description="Only mailings in this status")] = None,
) -> Page[MailingStatsOut]:
    """Overall statistics: every mailing (deleted ones excluded), oldest first, with the number of its
    messages in total and in each status."""
    rows, total = await service.mailing_stats_page(session, status, page.limit, page.offset)
    return Page[MailingStatsOut](
        items=[_stats_out(m, c) for m, c in rows], total=total, limit=page.limit, offset=page.offset
    )


@router.get("/mailings/{mailing_id}/stats", responses={**UNAUTHORIZED, **NOT_FOUND, **INVALID})
async def mailing_statistics(mailing_id: int, session: SessionDep, _: PrincipalDep) -> MailingStatsOut:
    """Statistics of one mailing: its messages in total and in each status."""
    mailing, counts = await service.mailing_stats(session, mailing_id)
    return _stats_out(mailing, counts)


@router.get("/mailings/{mailing_id}/messages", responses={**UNAUTHORIZED, **NOT_FOUND, **INVALID})
async def mailing_messages(
    mailing_id: int,
    session: SessionDep,
    _: PrincipalDep,
    page: PaginationDep,
    status: Annotated[MessageStatus | None, Query(description="Only messages in this status")] = None,
) -> Page[MessageOut]:
    """The messages of one mailing, oldest first, optionally only those in one status: when each was
    created and sent, how many send attempts it took and the last error."""
    await service.get_mailing(session, mailing_id)
    return await message_page(session, Message.mailing_id == mailing_id, status, page)
