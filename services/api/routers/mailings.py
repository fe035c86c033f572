from __future__ import annotations

from datetime import UTC, datetime, time
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response, status
from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, model_validator
from sqlalchemy.ext.asyncio import AsyncSession

from services.api import clients_service
from services.api import mailings_service as service
from services.api.deps import PrincipalDep, SessionDep, WriterDep
from services.api.pagination import PaginationDep
from services.api.routers.clients import check_tag
from services.api.schemas import Page
from shared.clock import utc_now
from shared.domain.clients import MAX_TAG_LENGTH
from shared.domain.errors import DomainValidationError
from shared.domain.statuses import MailingStatus
from shared.domain.windows import DailyWindow, parse_window
from shared.models import Mailing

router = APIRouter(prefix="/mailings", tags=["mailings"])

MAX_TEXT_LENGTH = 2000
MAX_FILTER_ITEMS = 1000


class Problem(BaseModel):
    detail: str = Field(examples=["mailing 42 not found"])


class FieldProblem(BaseModel):
    loc: list[str | int] = Field(examples=[["body", "text"]])
    msg: str = Field(examples=["the text can no longer change: messages of this mailing were already sent"])
    type: str = Field(examples=["conflict"])


class FieldProblems(BaseModel):
    detail: list[FieldProblem]


UNAUTHORIZED: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "No or unknown API key"}
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": Problem, "description": "No such mailing (or it was deleted)"}
}
CONFLICT: dict[int | str, dict[str, Any]] = {
    409: {"model": FieldProblems, "description": "The mailing's status does not allow this; `loc` names why"}
}
INVALID: dict[int | str, dict[str, Any]] = {
    422: {"model": FieldProblems, "description": "Invalid input; `loc` names the field"}
}


def _storable(value: str) -> str:
    # PostgreSQL text cannot hold NUL, and lone surrogates cannot be encoded for it.
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError("must be valid Unicode text") from exc
    return value


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value


def _storable_instant(value: datetime) -> datetime:
    try:
        utc = value.astimezone(UTC)
    except OverflowError as exc:
        raise ValueError("is out of range") from exc
    if not 1970 <= utc.year <= 9998:
        raise ValueError("must lie between the years 1970 and 9998")
    return utc


Text = Annotated[
    str,
    Field(min_length=1, max_length=MAX_TEXT_LENGTH),
    AfterValidator(_storable),
    AfterValidator(_not_blank),
]
Instant = Annotated[AwareDatetime, AfterValidator(_storable_instant)]
Tag = Annotated[str, Field(max_length=MAX_TAG_LENGTH), AfterValidator(check_tag)]
OperatorCode = Annotated[str, Field(pattern=r"^[0-9]{3}$")]


class MailingFilter(BaseModel):
    """Which clients get the mailing: a client matches when it has one of the tags (if any are named)
    and one of the operator codes (if any are named). An empty filter means every client."""

    model_config = ConfigDict(extra="forbid")

    tags: list[Tag] = Field(default_factory=list, max_length=MAX_FILTER_ITEMS, examples=[["vip", "moscow"]])
    operator_codes: list[OperatorCode] = Field(
        default_factory=list, max_length=MAX_FILTER_ITEMS, examples=[["900", "916"]]
    )


class MailingWindow(BaseModel):
    """A daily window in each client's own local time; it may wrap midnight (22:00-06:00)."""

    model_config = ConfigDict(extra="forbid")

    start: str = Field(max_length=8, examples=["09:00"])
    end: str = Field(max_length=8, examples=["21:00"])

    @model_validator(mode="after")
    def _parses(self) -> MailingWindow:
        try:
            self.to_domain()
        except DomainValidationError as exc:
            raise ValueError(exc.message) from exc
        return self

    def to_domain(self) -> DailyWindow:
        return parse_window(self.start, self.end)


def _clock(value: time) -> str:
    return value.strftime("%H:%M:%S" if value.second else "%H:%M")


_CREATE_EXAMPLE: dict[str, Any] = {
    "text": "Spring sale: -20% on everything until Sunday",
    "start_at": "2030-03-01T09:00:00+03:00",
    "end_at": "2030-03-02T21:00:00+03:00",
    "filter": {"tags": ["vip"], "operator_codes": ["916"]},
    "window": {"start": "09:00", "end": "21:00"},
}


class MailingCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [_CREATE_EXAMPLE]})

    text: Text = Field(description="The SMS text", examples=[_CREATE_EXAMPLE["text"]])
    start_at: Instant = Field(description="When sending starts (ISO 8601 with offset)")
    end_at: Instant = Field(description="No message is sent at or after this instant (ISO 8601 with offset)")
    filter: MailingFilter = Field(default_factory=MailingFilter)
    window: MailingWindow | None = Field(default=None, description="Daily window in the client's local time")


class MailingPatch(BaseModel):
    """Only the fields present change; `window: null` removes the window."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"text": "New text"}]})

    text: Text | None = None
    start_at: Instant | None = None
    end_at: Instant | None = None
    filter: MailingFilter | None = None
    window: MailingWindow | None = None


class MailingOut(BaseModel):
    id: int = Field(examples=[42])
    text: str = Field(examples=[_CREATE_EXAMPLE["text"]])
    start_at: datetime = Field(examples=["2030-03-01T06:00:00Z"])
    end_at: datetime = Field(examples=["2030-03-02T18:00:00Z"])
    filter: MailingFilter
    window: MailingWindow | None
    status: MailingStatus = Field(examples=[MailingStatus.SCHEDULED])
    created_at: datetime
    updated_at: datetime


def mailing_out(row: Mailing) -> MailingOut:
    window = (
        None
        if row.window_start is None or row.window_end is None
        else MailingWindow.model_construct(start=_clock(row.window_start), end=_clock(row.window_end))
    )
    return MailingOut(
        id=row.id,
        text=row.text,
        start_at=row.start_at,
        end_at=row.end_at,
        filter=MailingFilter.model_construct(
            tags=list(row.filter_tags), operator_codes=list(row.filter_operator_codes)
        ),
        window=window,
        status=MailingStatus(row.status),
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


class ParkedReasonOut(BaseModel):
    reason: str = Field(description="The message's `last_error`", examples=["http 400"])
    count: int = Field(ge=0, examples=[12])


class ParkedOut(BaseModel):
    mailing_id: int = Field(examples=[42])
    count: int = Field(ge=0, description="Every parked (`failed`) message of the mailing", examples=[17])
    reasons: list[ParkedReasonOut] = Field(
        description=f"The {service.PARKED_REASONS_SHOWN} most frequent reasons at most, most frequent first"
    )


class RequeuedOut(BaseModel):
    mailing_id: int = Field(examples=[42])
    requeued: int = Field(ge=0, description="Messages sent back for delivery", examples=[17])


def _wake_relay(request: Request) -> None:
    request.app.state.relay.wake()


def _unique(values: list[str]) -> list[str]:
    return sorted(set(values))


async def create_from(session: AsyncSession, body: MailingCreate) -> Mailing:
    """Create the mailing a request (REST or the admin UI's form) describes."""
    return await service.create_mailing(
        session,
        text=body.text,
        start_at=body.start_at,
        end_at=body.end_at,
        filter_tags=_unique(body.filter.tags),
        filter_operator_codes=_unique(body.filter.operator_codes),
        window=None if body.window is None else body.window.to_domain(),
        now=utc_now(),
    )


def changes_from(body: MailingPatch | MailingCreate, present: set[str]) -> service.MailingChanges:
    changes: service.MailingChanges = {}
    for name in ("text", "start_at", "end_at", "filter"):
        if name in present and getattr(body, name) is None:
            raise DomainValidationError(name, f"{name} may be left out but not null")
    if "text" in present and body.text is not None:
        changes["text"] = body.text
    if "start_at" in present and body.start_at is not None:
        changes["start_at"] = body.start_at
    if "end_at" in present and body.end_at is not None:
        changes["end_at"] = body.end_at
    if "filter" in present and body.filter is not None:
        changes["filter_tags"] = _unique(body.filter.tags)
        changes["filter_operator_codes"] = _unique(body.filter.operator_codes)
    if "window" in present:
        changes["window"] = None if body.window is None else body.window.to_domain()
    return changes


@router.post("", status_code=status.HTTP_201_CREATED, responses={**UNAUTHORIZED, **INVALID})
async def create_mailing(
    body: MailingCreate, request: Request, response: Response, session: SessionDep, _: WriterDep
) -> MailingOut:
    """Create a mailing. It starts as `scheduled`; the scheduler starts sending at `start_at` (at once if
    that has passed) to every client that matches the filter, each inside the window in its local time."""
    mailing = await create_from(session, body)
    await session.commit()
    _wake_relay(request)
    response.headers["Location"] = f"{request.url.path}/{mailing.id}"
    return mailing_out(mailing)


class MailingPreview(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"filter": _CREATE_EXAMPLE["filter"]}]}
    )

    filter: MailingFilter = Field(default_factory=MailingFilter)


class MailingPreviewOut(BaseModel):
    matching_clients: int = Field(ge=0, description="Live clients the filter matches now", examples=[1234])


@router.post("/preview", responses={**UNAUTHORIZED, **INVALID})
async def preview_mailing(body: MailingPreview, session: SessionDep, _: PrincipalDep) -> MailingPreviewOut:
    """How many clients a mailing's filter matches now, before the mailing is saved (the same filter and
    rules as `POST /mailings`; clients added or changed later still join a running mailing)."""
    count = await clients_service.count_matching(session, body.filter.tags, body.filter.operator_codes)
    return MailingPreviewOut(matching_clients=count)


@router.get("", responses={**UNAUTHORIZED, **INVALID})
async def list_mailings(
    session: SessionDep,
    _: PrincipalDep,
    page: PaginationDep,
    status: Annotated[MailingStatus | None, Query(description="Only mailings in this status")] = None,
) -> Page[MailingOut]:
    """List mailings (deleted ones excluded), oldest first, optionally only those in one status."""
    rows, total = await service.list_mailings(session, status, page.limit, page.offset)
    return Page[MailingOut](
        items=[mailing_out(r) for r in rows], total=total, limit=page.limit, offset=page.offset
    )


@router.get("/{mailing_id}", responses={**UNAUTHORIZED, **NOT_FOUND, **INVALID})
async def get_mailing(mailing_id: int, session: SessionDep, _: PrincipalDep) -> MailingOut:
    """One mailing."""
    return mailing_out(await service.get_mailing(session, mailing_id))


@router.put("/{mailing_id}", responses={**UNAUTHORIZED, **NOT_FOUND, **CONFLICT, **INVALID})
async def replace_mailing(
    mailing_id: int, body: MailingCreate, request: Request, session: SessionDep, _: WriterDep
) -> MailingOut:
    """Replace a mailing's text, period, filter and window (a missing filter or window means none).

    A running mailing's new filter and window apply to the messages not sent yet; the text may change only
    while none of its messages was sent or attempted (409 naming `text` otherwise). A finished or cancelled
    mailing cannot change (409 naming `status`). The status changes only through pause, resume and cancel."""
    changes = changes_from(body, {"text", "start_at", "end_at", "filter", "window"})
    mailing = await service.update_mailing(session, mailing_id, changes, utc_now())
    await session.commit()
    _wake_relay(request)
    return mailing_out(mailing)


@router.patch("/{mailing_id}", responses={**UNAUTHORIZED, **NOT_FOUND, **CONFLICT, **INVALID})
async def update_mailing(
    mailing_id: int, body: MailingPatch, request: Request, session: SessionDep, _: WriterDep
) -> MailingOut:
    """Change some of a mailing's fields; the rules of `PUT` apply."""
    changes = changes_from(body, set(body.model_fields_set))
    mailing = await service.update_mailing(session, mailing_id, changes, utc_now())
    await session.commit()
    _wake_relay(request)
    return mailing_out(mailing)


@router.delete(
    "/{mailing_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={**UNAUTHORIZED, **NOT_FOUND, **INVALID},
)
async def delete_mailing(mailing_id: int, request: Request, session: SessionDep, _: WriterDep) -> None:
    """Delete a mailing: its messages not sent yet are cancelled in the same transaction; the ones already
    sent keep their history for reports. A deleted mailing answers 404 and leaves lists and statistics."""
    await service.delete_mailing(session, mailing_id, utc_now())
    await session.commit()
    _wake_relay(request)


@router.post("/{mailing_id}/pause", responses={**UNAUTHORIZED, **NOT_FOUND, **CONFLICT, **INVALID})
async def pause_mailing(mailing_id: int, request: Request, session: SessionDep, _: WriterDep) -> MailingOut:
    """Pause a scheduled or running mailing: nothing more is sent until it is resumed (409 otherwise)."""
    mailing = await service.pause_mailing(session, mailing_id, utc_now())
    await session.commit()
    _wake_relay(request)
    return mailing_out(mailing)


@router.post("/{mailing_id}/resume", responses={**UNAUTHORIZED, **NOT_FOUND, **CONFLICT, **INVALID})
async def resume_mailing(mailing_id: int, request: Request, session: SessionDep, _: WriterDep) -> MailingOut:
    """Resume a paused mailing: `running` if its start has passed, else `scheduled` (409 if not paused)."""
    mailing = await service.resume_mailing(session, mailing_id, utc_now())
    await session.commit()
    _wake_relay(request)
    return mailing_out(mailing)


@router.post("/{mailing_id}/cancel", responses={**UNAUTHORIZED, **NOT_FOUND, **CONFLICT, **INVALID})
async def cancel_mailing(mailing_id: int, request: Request, session: SessionDep, _: WriterDep) -> MailingOut:
    """Cancel a mailing for good: every message not sent yet becomes `cancelled` in the same transaction
    (409 if it is already finished or cancelled)."""
    mailing = await service.cancel_mailing(session, mailing_id, utc_now())
    await session.commit()
    _wake_relay(request)
    return mailing_out(mailing)


@router.get("/{mailing_id}/parked", responses={**UNAUTHORIZED, **NOT_FOUND, **INVALID})
async def parked_messages(mailing_id: int, session: SessionDep, _: PrincipalDep) -> ParkedOut:
    """The mailing's parked messages: those that can never be sent as they are (`failed`: the provider
    refused them with 400, or their attempts ran out). How many, and why, grouped by reason."""
    summary = await service.parked_summary(session, mailing_id)
    return ParkedOut(
        mailing_id=mailing_id,
        count=summary.count,
        reasons=[ParkedReasonOut(reason=r, count=n) for r, n in summary.reasons],
    )


@router.post("/{mailing_id}/parked/requeue", responses={**UNAUTHORIZED, **NOT_FOUND, **CONFLICT, **INVALID})
async def requeue_parked_messages(
    mailing_id: int, request: Request, session: SessionDep, principal: WriterDep
) -> RequeuedOut:
    """Send a running mailing's parked messages back for delivery (409 naming `status` for any other
    status): every `failed` message of a client not deleted becomes `pending` with its attempts reset to
    0 and is sent again as soon as the client's window allows. `last_error` keeps the earlier reason after
    `requeued by an operator after: `. This is the one way a final status changes."""
    requeued = await service.requeue_parked(session, mailing_id, utc_now(), by=principal.describe())
    await session.commit()
    _wake_relay(request)
    return RequeuedOut(mailing_id=mailing_id, requeued=requeued)
