"""Reading the client directory: the listing filters and how many clients a mailing filter matches."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import ColumnElement, func, literal, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from shared.models import Client


def next_prefix(digits: str) -> str | None:
    """The smallest string of digits after every string that starts with `digits` (None when there is
    none: all nines): "7916" -> "7917", "7919" -> "792"."""
    kept = digits.rstrip("9")
    if not kept:
        return None
    return kept[:-1] + str(int(kept[-1]) + 1)


def phone_starts_with(column: InstrumentedAttribute[str], digits: str) -> ColumnElement[bool]:
    """`column LIKE 'digits%'` for a column of digits only (the phone's check constraint), written as a
    range that a plain btree index on it serves in any collation (a LIKE prefix needs the C collation or
    text_pattern_ops to use one)."""
    condition: ColumnElement[bool] = column >= digits
    upper = next_prefix(digits)
    if upper is not None:
        condition = condition & (column < upper)
    return condition


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
        conditions.append(phone_starts_with(Client.phone, phone_prefix))
    return conditions


async def list_clients(
    session: AsyncSession,
    conditions: Sequence[ColumnElement[bool]],
    limit: int,
    offset: int,
    *,
    count_cap: int | None = None,
    by_phone: bool = False,
) -> tuple[list[Client], int]:
    """A page of clients by id (`by_phone`: by phone, the order a phone search's index range gives) and
    how many match: all of them, or with `count_cap` no more than `count_cap + 1` (more than the cap: the
    caller shows "cap+"), which stops counting early."""
    if count_cap is None:
        total = await session.scalar(select(func.count()).select_from(Client).where(*conditions))
    else:
        capped = select(literal(1)).select_from(Client).where(*conditions).limit(count_cap + 1).subquery()
        total = await session.scalar(select(func.count()).select_from(capped))
    rows = await session.scalars(
        select(Client)
        .where(*conditions)
        .order_by(Client.phone if by_phone else Client.id)
        .limit(limit)
        .offset(offset)
    )
    return list(rows), total or 0


async def count_matching(session: AsyncSession, tags: Sequence[str], operator_codes: Sequence[str]) -> int:
    """Live clients a mailing filter matches now: one of the tags (if any) and one of the codes (if any),
    as the scheduler selects them when it expands the mailing. Counted from the partial index on
    (tag, operator_code) of live clients alone (migration 0008)."""
    conditions = live_clients()
    if tags:
        conditions.append(Client.tag.in_(sorted(set(tags))))
    if operator_codes:
        conditions.append(Client.operator_code.in_(sorted(set(operator_codes))))
    return int(await session.scalar(select(func.count()).select_from(Client).where(*conditions)) or 0)
