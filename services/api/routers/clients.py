from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, cast

from fastapi import APIRouter, Depends, File, Query, UploadFile, status
from fastapi.exceptions import RequestValidationError
from loguru import logger
from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, field_validator
from pydantic.config import JsonDict
from pydantic_core import PydanticCustomError

from services.api import clients_service
from services.api.clients_import import ImportReport, import_clients_csv, log_after_answer
from services.api.deps import MetricsDep, SessionDep, SettingsDep, get_principal, get_writer
from services.api.messages import MessageOut, message_page
from services.api.pagination import PaginationDep
from services.api.schemas import Page
from shared.domain.clients import (
    MAX_TAG_LENGTH,
    normalize_phone,
    resolve_operator_code,
    validate_tag,
    validate_timezone,
)
from shared.domain.errors import DomainValidationError
from shared.domain.statuses import MessageStatus
from shared.models import Client, Message

PHONE_SCHEMA: JsonDict = {"type": "string", "pattern": "^7[0-9]{10}$", "examples": ["79001234567"]}
OPERATOR_CODE_SCHEMA: JsonDict = {"pattern": "^[0-9]{3}$", "examples": ["900"]}
TAG_SCHEMA: JsonDict = {
    "examples": ["vip"],
    "description": f"Free-form label, at most {MAX_TAG_LENGTH} characters",
}
TIMEZONE_SCHEMA: JsonDict = {"examples": ["Europe/Moscow"], "description": "An IANA timezone name"}


def _invalid(exc: DomainValidationError) -> PydanticCustomError:
    return PydanticCustomError("value_error", exc.message)


def check_phone(value: object) -> str:
    try:
        return normalize_phone(value)  # type: ignore[arg-type]
    except DomainValidationError as exc:
        raise _invalid(exc) from None


def check_operator_code(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        # The phone only matters when no code is given, so any phone validates the code's format.
        return resolve_operator_code("", value)
    except DomainValidationError as exc:
        raise _invalid(exc) from None


def check_tag(value: str | None) -> str:
    try:
        return validate_tag(value)
    except DomainValidationError as exc:
        raise _invalid(exc) from None


def check_timezone(value: str) -> str:
    try:
        return validate_timezone(value)
    except DomainValidationError as exc:
        raise _invalid(exc) from None


EXAMPLE: JsonDict = {
    "phone": "79001234567",
    "operator_code": "900",
    "tag": "vip",
    "timezone": "Europe/Moscow",
}


class ClientCreate(BaseModel):
    """A client; `operator_code` defaults to digits 2-4 of the phone."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [EXAMPLE]})

    phone: str = Field(json_schema_extra=PHONE_SCHEMA)
    operator_code: str | None = Field(default=None, json_schema_extra=OPERATOR_CODE_SCHEMA)
    tag: str | None = Field(default="", json_schema_extra=TAG_SCHEMA)
    timezone: str = Field(json_schema_extra=TIMEZONE_SCHEMA)

    _phone = field_validator("phone", mode="before")(check_phone)
    _operator_code = field_validator("operator_code")(check_operator_code)
    _tag = field_validator("tag")(check_tag)
    _timezone = field_validator("timezone")(check_timezone)

    def fields(self) -> clients_service.ClientFields:
        """Every field; an omitted operator code is None, which the service derives from the phone."""
        return cast(clients_service.ClientFields, self.model_dump())


class ClientPatch(BaseModel):
    """Only the fields given change. A new phone without an `operator_code` re-derives the code from it."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"tag": "churned"}, {"timezone": "Asia/Omsk"}]}
    )

    # Null is refused for these two, so the schema offers strings only.
    phone: Annotated[str | None, WithJsonSchema(PHONE_SCHEMA)] = None
    operator_code: str | None = Field(
        default=None, json_schema_extra=OPERATOR_CODE_SCHEMA, description="Null derives it from the phone"
    )
    tag: str | None = Field(default=None, json_schema_extra=TAG_SCHEMA)
    timezone: Annotated[str | None, WithJsonSchema({"type": "string", **TIMEZONE_SCHEMA})] = None

    @field_validator("phone", mode="before")
    @classmethod
    def _phone(cls, value: object) -> str:
        if value is None:
            raise PydanticCustomError("value_error", "phone cannot be null")
        return check_phone(value)

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str | None) -> str:
        if value is None:
            raise PydanticCustomError("value_error", "timezone cannot be null")
        return check_timezone(value)

    _operator_code = field_validator("operator_code")(check_operator_code)
    _tag = field_validator("tag")(check_tag)

    def fields(self) -> clients_service.ClientFields:
        """Only the fields the request names."""
        return cast(clients_service.ClientFields, self.model_dump(exclude_unset=True))


class ClientOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": 1,
                    **EXAMPLE,
                    "created_at": "2026-11-26T10:00:00Z",
                    "updated_at": "2026-11-26T10:00:00Z",
                }
            ]
        }
    )

    id: int
    phone: str
    operator_code: str
    tag: str
    timezone: str
    created_at: datetime
    updated_at: datetime


class ErrorOut(BaseModel):
    detail: str = Field(examples=["client 42 not found"])


class FieldProblem(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ConflictOut(BaseModel):
    detail: list[FieldProblem] = Field(
        examples=[[{"loc": ["body", "phone"], "msg": "phone 79001234567 is taken", "type": "conflict"}]]
    )


router = APIRouter(
    prefix="/clients",
    tags=["clients"],
    dependencies=[Depends(get_principal)],
    responses={401: {"model": ErrorOut, "description": "No, unknown or revoked API key"}},
)
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorOut, "description": "No such client"}}
CONFLICT: dict[int | str, dict[str, Any]] = {409: {"model": ConflictOut, "description": "The phone is taken"}}
WRITE = [Depends(get_writer)]


def _out(row: Client) -> ClientOut:
    return ClientOut(
        id=row.id,
        phone=row.phone,
        operator_code=row.operator_code,
        tag=row.tag,
        timezone=row.timezone,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _query_tag(tag: str) -> str:
    try:
        return check_tag(tag)
    except PydanticCustomError as exc:
        raise RequestValidationError(
            [{"type": "value_error", "loc": ("query", "tag"), "msg": exc.message(), "input": tag}]
        ) from None


@router.post("", status_code=status.HTTP_201_CREATED, responses=CONFLICT, dependencies=WRITE)
async def create_client(body: ClientCreate, session: SessionDep) -> ClientOut:
    """Add a client. The phone must not belong to another (live) client."""
    row = await clients_service.create_client(session, body.fields())
    await session.commit()
    return _out(row)


@router.get("")
async def list_clients(
    session: SessionDep,
    page: PaginationDep,
    tag: Annotated[
        str | None, Query(max_length=MAX_TAG_LENGTH, description="Only clients with this tag")
    ] = None,
    operator_code: Annotated[
        str | None, Query(pattern="^[0-9]{3}$", description="Only clients of this operator code")
    ] = None,
    phone_prefix: Annotated[
        str | None, Query(pattern="^[0-9]{1,11}$", description="Only phones starting with these digits")
    ] = None,
    timezone: Annotated[
        str | None, Query(max_length=64, description="Only clients in this IANA timezone")
    ] = None,
) -> Page[ClientOut]:
    """List live clients by id, filtered by tag, operator code, timezone and phone prefix (all optional)."""
    conditions = clients_service.live_clients(
        tag=None if tag is None else _query_tag(tag),
        operator_code=operator_code,
        timezone=timezone,
        phone_prefix=phone_prefix,
    )
    rows, total = await clients_service.list_clients(session, conditions, page.limit, page.offset)
    return Page(items=[_out(r) for r in rows], total=total, limit=page.limit, offset=page.offset)


@router.post("/import", dependencies=WRITE, responses={413: {"description": "the file is too large"}})
async def import_clients(
    file: Annotated[UploadFile, File(description="CSV, UTF-8, header `phone,operator_code,tag,timezone`")],
    session: SessionDep,
    settings: SettingsDep,
    metrics: MetricsDep,
) -> ImportReport:
    """Import clients from a CSV file (hundreds of thousands of rows are fine).

    The header names the columns: `phone` and `timezone` are required, `operator_code` and `tag` may be
    left out or empty. A phone already in the directory updates that client. Valid rows are kept;
    every invalid row is listed in `errors` by line number (the list stops at 1,000 entries,
    `rejected` still counts them all). A second row with the same phone in one file is rejected.
    A file over `MAILING_CSV_IMPORT_MAX_BYTES` or `MAILING_CSV_IMPORT_MAX_ROWS` is refused whole (413).
    """
    result = await import_clients_csv(
        session, file, chunk_rows=settings.csv_import_chunk_rows, max_rows=settings.csv_import_max_rows
    )
    try:
        await session.commit()
    except BaseException:
        result.close()
        raise
    report = result.report
    metrics.clients_imported.inc(report.created + report.updated)
    # One line per client, so a client's log shows this operation too: written from a worker thread while
    # the answer goes out.
    log_after_answer(result)
    logger.info(
        "clients imported from {!r}: {} created, {} updated, {} rejected",
        file.filename,
        report.created,
        report.updated,
        report.rejected,
    )
    return report


@router.get("/{client_id}", responses=NOT_FOUND)
async def get_client(client_id: int, session: SessionDep) -> ClientOut:
    """One client."""
    return _out(await clients_service.get_client(session, client_id))


async def _update(session: SessionDep, client_id: int, body: ClientCreate | ClientPatch) -> ClientOut:
    row = await clients_service.update_client(session, client_id, body.fields())
    await session.commit()
    return _out(row)


@router.put("/{client_id}", responses={**NOT_FOUND, **CONFLICT}, dependencies=WRITE)
async def replace_client(client_id: int, body: ClientCreate, session: SessionDep) -> ClientOut:
    """Replace every attribute of a client (an omitted `operator_code` is derived from the phone)."""
    return await _update(session, client_id, body)


@router.patch("/{client_id}", responses={**NOT_FOUND, **CONFLICT}, dependencies=WRITE)
async def update_client(client_id: int, body: ClientPatch, session: SessionDep) -> ClientOut:
    """Change the attributes given; the others keep their values."""
    return await _update(session, client_id, body)


@router.delete(
    "/{client_id}", status_code=status.HTTP_204_NO_CONTENT, responses=NOT_FOUND, dependencies=WRITE
)
async def delete_client(client_id: int, session: SessionDep) -> None:
    """Delete a client. Its messages not sent yet are cancelled; sent ones stay for the statistics."""
    await clients_service.delete_client(session, client_id, datetime.now(UTC))
    await session.commit()


@router.get("/{client_id}/messages", responses=NOT_FOUND)
async def list_client_messages(
    client_id: int,
    session: SessionDep,
    page: PaginationDep,
    message_status: Annotated[
        MessageStatus | None, Query(alias="status", description="Only messages in this status")
    ] = None,
) -> Page[MessageOut]:
    """Messages of one client across all mailings, oldest first."""
    await clients_service.require_client(session, client_id)
    return await message_page(session, Message.client_id == client_id, message_status, page)
