"""Reading the client directory: the listing filters and how many clients a mailing filter matches."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from shared.models import Client


def live_clients(
    *,
    tag: str | None = None,
    operator_code: str | None = None,
    timezone: str | None = None,
    phone_prefix: str | None = None,
) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = [Client.deleted_at.is_(None)]
    if tag is not None:
        conditions.append(Client.tag == tag)
    if operator_code is not None:
        conditions.append(Client.operator_code == operator_code)
    if timezone is not None:
        conditions.append(Client.timezone == timezone)
    if phone_prefix is not None:
        conditions.append(Client.phone.startswith(phone_prefix, autoescape=True))
    return conditions


async def list_clients(
    session: AsyncSession, conditions: Sequence[ColumnElement[bool]], limit: int, offset: int
) -> tuple[list[Client], int]:
    total = await session.scalar(select(func.count()).select_from(Client).where(*conditions))
    rows = await session.scalars(
        select(Client).where(*conditions).order_by(Client.id).limit(limit).offset(offset)
    )
    return list(rows), total or 0


async def count_matching(session: AsyncSession, tags: Sequence[str], operator_codes: Sequence[str]) -> int:
    """Live clients a mailing filter matches now: one of the tags (if any) and one of the codes (if any),
    as the scheduler selects them when it expands the mailing."""
    conditions = live_clients()
    if tags:
        conditions.append(Client.tag.in_(sorted(set(tags))))
    if operator_codes:
        conditions.append(Client.operator_code.in_(sorted(set(operator_codes))))
    return int(await session.scalar(select(func.count()).select_from(Client).where(*conditions)) or 0)
