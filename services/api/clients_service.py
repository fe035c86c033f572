"""The client directory: adding, changing and deleting a client (a deleted client's unsent messages are
cancelled with it), in the caller's transaction, which the caller commits; the listing filters; and how
many clients a mailing filter matches."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, TypedDict

from loguru import logger
from sqlalchemy import ColumnElement, Executable, func, insert, literal, literal_column, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from services.api.errors import Conflict, NotFound
from services.api.schemas import MAX_ID
from shared.domain.clients import operator_code_sql, resolve_operator_code
from shared.domain.statuses import Reason
from shared.messages import cancel_open_messages
from shared.models import Client, Message

LIVE_PHONE_INDEX = "uq_clients_phone_live"


class ClientFields(TypedDict, total=False):
    """A client's attributes as given; an `operator_code` of None is derived from the phone."""

    phone: str
    operator_code: str | None
    tag: str
    timezone: str


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


def _live(client_id: int) -> ColumnElement[bool]:
    if not 1 <= client_id <= MAX_ID:
        raise NotFound("client", client_id)
    return (Client.id == client_id) & Client.deleted_at.is_(None)


async def _write(session: AsyncSession, statement: Executable, phone: str | None) -> Client | None:
    try:
        row: Client | None = (await session.scalars(statement)).one_or_none()
    except IntegrityError as exc:
        constraint = getattr(getattr(exc.orig, "diag", None), "constraint_name", None)
        await session.rollback()
        if constraint == LIVE_PHONE_INDEX:
            raise Conflict("phone", f"phone {phone} belongs to another client") from None
        raise
    return row


async def create_client(session: AsyncSession, fields: ClientFields) -> Client:
    """Add a client; `Conflict` when the phone belongs to another live client."""
    values: dict[str, Any] = {
        **fields,
        "operator_code": resolve_operator_code(fields["phone"], fields.get("operator_code")),
    }
    row = await _write(session, insert(Client).values(**values).returning(Client), fields["phone"])
    assert row is not None  # noqa: S101 narrows a type for mypy; an INSERT ... RETURNING returns its row
    logger.bind(client_id=row.id).info("client {} created: {}", row.id, values)
    return row


async def get_client(session: AsyncSession, client_id: int) -> Client:
    row = (await session.scalars(select(Client).where(_live(client_id)))).one_or_none()
    if row is None:
        raise NotFound("client", client_id)
    return row


async def require_client(session: AsyncSession, client_id: int) -> None:
    """`NotFound` unless the client exists and is not deleted."""
    if await session.scalar(select(Client.id).where(_live(client_id))) is None:
        raise NotFound("client", client_id)


async def update_client(session: AsyncSession, client_id: int, changes: ClientFields) -> Client:
    """Change the attributes given. A new phone without an operator code re-derives the code from it; an
    operator code given as None alone derives it from the phone the client has."""
    values: dict[str, Any] = dict(changes)
    if values.get("operator_code") is None and "phone" in values:
        values["operator_code"] = resolve_operator_code(values["phone"], None)
    elif "operator_code" in values and values["operator_code"] is None:
        values["operator_code"] = literal_column(operator_code_sql(Client.phone.name))
    if not values:
        return await get_client(session, client_id)
    where = _live(client_id)
    statement = update(Client).where(where).values(**values, updated_at=func.now()).returning(Client)
    row = await _write(session, statement, values.get("phone"))
    if row is None:
        raise NotFound("client", client_id)
    logger.bind(client_id=row.id).info("client {} updated: {}", row.id, values)
    return row


async def delete_client(session: AsyncSession, client_id: int, now: datetime) -> list[int]:
    """Delete a client (soft: its sent messages keep their history) and cancel its messages not final
    yet; answers the ids of the cancelled ones."""
    deleted = await session.scalar(
        update(Client)
        .where(_live(client_id))
        .values(deleted_at=func.now(), updated_at=func.now())  # a change the scheduler picks up
        .returning(Client.id)
    )
    if deleted is None:
        raise NotFound("client", client_id)
    cancelled = await session.scalars(
        cancel_open_messages(Message.client_id == client_id, Reason.CLIENT_DELETED, now)
    )
    cancelled_ids = list(cancelled.all())
    logger.bind(client_id=client_id).info(
        "client {} deleted, its unsent messages cancelled: {}", client_id, cancelled_ids
    )
    return cancelled_ids
