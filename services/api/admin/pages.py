"""The admin UI's pages and the fragments htmx swaps into them. Every read and write goes through the
service functions (and request schemas) the REST API uses; forms show those rules' errors at their fields."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import date, datetime, timedelta
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fastapi import APIRouter, Depends, File, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from pydantic import ValidationError

from services.api import api_keys_service, clients_service, dashboard_service
from services.api import mailings_service as service
from services.api.admin import HERE
from services.api.admin.identity import Role, UiUser, csrf_token, current_user, require_role, verify_csrf
from services.api.admin.settings import AdminSettings
from services.api.clients_import import TooManyRows, import_clients_csv, log_after_answer
from services.api.deps import KeyCacheDep, SessionDep, SettingsDep
from services.api.errors import Conflict, NotFound
from services.api.routers.api_keys import ApiKeyCreate
from services.api.routers.clients import ClientCreate
from services.api.routers.mailings import MailingCreate, MailingFilter, changes_from, create_from
from shared.clock import utc_now
from shared.domain.errors import DomainValidationError
from shared.domain.statuses import (
    FINAL_MAILING_STATUSES,
    MailingStatus,
    MessageStatus,
    can_transition_mailing,
)
from shared.models import Mailing
from shared.reports import FINAL_STATUSES, FIRST_DAY, LAST_DAY, daily_report

templates = Jinja2Templates(directory=HERE / "templates")
templates.env.globals["statuses"] = [s.value for s in MessageStatus]
templates.env.globals["MessageStatus"] = MessageStatus
templates.env.globals["final_statuses"] = FINAL_STATUSES

UserDep = Annotated[UiUser, Depends(current_user)]
WriterDep = Annotated[UiUser, Depends(require_role(Role.ADMIN, Role.OPERATOR))]
AdminUserDep = Annotated[UiUser, Depends(require_role(Role.ADMIN))]

router = APIRouter(prefix="/admin", include_in_schema=False, dependencies=[Depends(current_user)])
writes = APIRouter(dependencies=[Depends(verify_csrf)])

MESSAGES_PAGE = 25
CLIENTS_PAGE = 50
CLIENT_FORM_FIELDS = ("phone", "operator_code", "tag", "timezone")
# Lists page through their first PAGED_ROWS rows only (an OFFSET walks every row it skips); beyond, a
# filter or a search narrows the list. The clients list counts its matches up to the same bound and
# shows "10000+" past it, instead of counting a million rows on each view.
PAGED_ROWS = 10_000
# A search of a mailing's messages by phone counts its matches up to this bound ("1000+" past it): a
# short prefix matches thousands of clients, each looked up in the mailing.
SEARCH_ROWS = 1_000
Errors = dict[str, str]
SECTIONS = (("/admin/clients", "clients"), ("/admin/reports", "reports"), ("/admin/api-keys", "keys"))
Action = Literal["pause", "resume", "cancel", "delete"]


def _admin_settings(request: Request) -> AdminSettings:
    settings: AdminSettings = request.app.state.admin_settings
    return settings


AdminSettingsDep = Annotated[AdminSettings, Depends(_admin_settings)]


def render(
    request: Request, user: UiUser, name: str, context: Mapping[str, Any], status_code: int = 200
) -> HTMLResponse:
    path = request.url.path
    section = next((s for prefix, s in SECTIONS if path.startswith(prefix)), "dashboard")
    return templates.TemplateResponse(
        request,
        name,
        {
            "section": section,
            "user": user,
            "csrf": csrf_token(request),
            "can_write": user.role in (Role.ADMIN, Role.OPERATOR),
            "is_admin": user.role == Role.ADMIN,
            **context,
        },
        status_code=status_code,
    )


def see_other(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


Pager = dict[str, int | bool]
PageFetch = Callable[[int], Awaitable[tuple[Sequence[Any], Pager]]]


def _pages(total: int, size: int, page: int, *, more: bool = False) -> Pager:
    """The pager of a list of `total` rows (`more`: at least that many), paging through the first
    PAGED_ROWS at most; `page` is the one shown, brought within those."""
    pages = max(1, math.ceil(min(total, PAGED_ROWS) / size))
    return {
        "page": min(page, pages),
        "pages": pages,
        "total": total,
        "size": size,
        "more": more,
        "limited": more or total > PAGED_ROWS,
        "paged": min(total, PAGED_ROWS) if more else PAGED_ROWS,
    }


def _offset(page: int, size: int) -> int:
    """The OFFSET of `page`, within the first PAGED_ROWS rows."""
    last = max(1, math.ceil(PAGED_ROWS / size))
    return (min(page, last) - 1) * size


async def _within_pages(fetch: PageFetch, page: int) -> tuple[Sequence[Any], Pager]:
    """`fetch(page)`: its rows and their pager; a page past the last (a stale link after deletions) is
    fetched again as the last page, the one its pager shows."""
    rows, pager = await fetch(page)
    if not rows and int(pager["page"]) < page:
        return await fetch(int(pager["page"]))
    return rows, pager


def _errors(exc: ValidationError | RequestValidationError, field_of: Any = None) -> Errors:
    errors: Errors = {}
    for error in exc.errors():
        loc = [str(part) for part in error["loc"] if part != "body"]
        field = field_of(loc) if field_of is not None else (loc[0] if loc else "form")
        errors.setdefault(field, str(error["msg"]).removeprefix("Value error, "))
    return errors


def _split(value: str) -> list[str]:
    return [part.strip() for part in value.replace("\n", ",").split(",") if part.strip()]


def _progress(counts: service.StatusCounts) -> dict[str, Any]:
    final = sum(counts.counts[s] for s in FINAL_STATUSES)
    return {
        "final": final,
        "total": counts.total,
        "percent": 0 if counts.total == 0 else math.floor(100 * final / counts.total),
        "counts": counts.counts,
        "series": [counts.counts[s.value] for s in MessageStatus],
    }


# Pages refresh themselves while a mailing runs, or is scheduled to start within this time (a mailing
# created to start now stays scheduled until the scheduler's next tick).
SOON = timedelta(minutes=5)


def _may_send_soon(mailing: Mailing, now: datetime) -> bool:
    status = MailingStatus(mailing.status)
    return status == MailingStatus.RUNNING or (
        status == MailingStatus.SCHEDULED and mailing.start_at <= now + SOON
    )


# Dashboard


async def _overview(
    request: Request, session: SessionDep, settings: AdminSettings, page: int
) -> dict[str, Any]:
    size = settings.dashboard_page_size
    rows, total = await service.mailing_stats_page(session, None, size, (page - 1) * size)
    now = utc_now()
    report = await daily_report(
        await session.connection(),
        now.astimezone(ZoneInfo(settings.report_timezone)).date(),
        settings.report_timezone,
    )
    any_running = any(_may_send_soon(m, now) for m, _ in rows)
    return {
        "mailings": [(m, _progress(c)) for m, c in rows],
        "pager": _pages(total, size, page),
        "today": report,
        "delivery": await dashboard_service.delivery_path(session, now),
        "rate": await dashboard_service.send_rate(session, now),
        "poll": any_running,
        "refresh_seconds": settings.refresh_seconds,
        "now": now,
    }


@router.get("/", response_class=HTMLResponse)
async def dashboard(
    request: Request,
    user: UserDep,
    session: SessionDep,
    settings: AdminSettingsDep,
    page: Annotated[int, Query(ge=1)] = 1,
) -> HTMLResponse:
    return render(request, user, "dashboard.html", await _overview(request, session, settings, page))


@router.get("/fragments/overview", response_class=HTMLResponse)
async def overview_fragment(
    request: Request,
    user: UserDep,
    session: SessionDep,
    settings: AdminSettingsDep,
    page: Annotated[int, Query(ge=1)] = 1,
) -> HTMLResponse:
    return render(request, user, "partials/overview.html", await _overview(request, session, settings, page))


# Mailings


@router.get("/mailings/preview", response_class=HTMLResponse)
async def matching_clients(
    request: Request, user: UserDep, session: SessionDep, tags: str = "", operator_codes: str = ""
) -> HTMLResponse:
    """How many clients the form's filter matches now, validated by the API's own filter schema."""
    context: dict[str, Any] = {"count": None, "errors": {}}
    try:
        chosen = MailingFilter.model_validate(
            {"tags": _split(tags), "operator_codes": _split(operator_codes)}
        )
    except ValidationError as exc:
        context["errors"] = _errors(exc)
    else:
        context["count"] = await clients_service.count_matching(session, chosen.tags, chosen.operator_codes)
    return render(request, user, "partials/matching.html", context)


@router.get("/mailings/new", response_class=HTMLResponse)
async def new_mailing(request: Request, user: WriterDep, settings: AdminSettingsDep) -> HTMLResponse:
    form = {"timezone": settings.report_timezone}
    return render(request, user, "mailing_form.html", {"form": form, "errors": {}, "mailing": None})


def _mailing_field(loc: list[str]) -> str:
    if not loc:
        return "form"
    if loc[0] == "filter" and len(loc) > 1:
        return loc[1]
    return loc[0]


def _instant(value: str, zone: ZoneInfo | None) -> str | None:
    """A datetime-local value in the form's timezone as ISO 8601 with its offset; the schema validates it."""
    if not value:
        return None
    try:
        naive = datetime.fromisoformat(value)
    except ValueError:
        return value
    if naive.tzinfo is None and zone is not None:
        return naive.replace(tzinfo=zone).isoformat()
    return naive.isoformat()


def _mailing_body(form: Mapping[str, str], errors: Errors) -> dict[str, Any]:
    zone: ZoneInfo | None = None
    try:
        zone = ZoneInfo(form.get("timezone") or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        errors["timezone"] = (
            f"unknown timezone {form.get('timezone')!r}; use an IANA name such as Europe/Moscow"
        )
    body: dict[str, Any] = {
        "text": form.get("text", ""),
        "start_at": _instant(form.get("start_at", ""), zone),
        "end_at": _instant(form.get("end_at", ""), zone),
        "filter": {
            "tags": _split(form.get("tags", "")),
            "operator_codes": _split(form.get("operator_codes", "")),
        },
        "window": None,
    }
    if form.get("window_start") or form.get("window_end"):
        body["window"] = {"start": form.get("window_start", ""), "end": form.get("window_end", "")}
    return body


async def _form_fields(request: Request) -> dict[str, str]:
    data = await request.form()
    return {k: str(v) for k, v in data.items() if isinstance(v, str)}


FormFields = Annotated[dict[str, str], Depends(_form_fields)]


def _form_of(mailing: Mailing, zone: str) -> dict[str, str]:
    tz = ZoneInfo(zone)
    return {
        "text": mailing.text,
        "start_at": mailing.start_at.astimezone(tz).strftime("%Y-%m-%dT%H:%M"),
        "end_at": mailing.end_at.astimezone(tz).strftime("%Y-%m-%dT%H:%M"),
        "timezone": zone,
        "tags": ", ".join(mailing.filter_tags),
        "operator_codes": ", ".join(mailing.filter_operator_codes),
        "window_start": "" if mailing.window_start is None else mailing.window_start.strftime("%H:%M"),
        "window_end": "" if mailing.window_end is None else mailing.window_end.strftime("%H:%M"),
    }


async def _save_mailing(
    request: Request, session: SessionDep, form: dict[str, str], mailing_id: int | None
) -> tuple[int | None, Errors]:
    errors: Errors = {}
    body = _mailing_body(form, errors)
    try:
        valid = MailingCreate.model_validate(body)
    except ValidationError as exc:
        return None, {**_errors(exc, _mailing_field), **errors}
    if errors:
        return None, errors
    try:
        if mailing_id is None:
            mailing = await create_from(session, valid)
        else:
            changes = changes_from(valid, {"text", "start_at", "end_at", "filter", "window"})
            mailing = await service.update_mailing(session, mailing_id, changes, utc_now())
    except DomainValidationError as exc:
        await session.rollback()
        return None, {exc.field: exc.message}
    except Conflict as exc:
        await session.rollback()
        return None, {exc.field: exc.message}
    await session.commit()
    request.app.state.relay.wake()
    return mailing.id, {}


@writes.post("/mailings/new", response_class=HTMLResponse)
async def create_mailing(
    request: Request, user: WriterDep, session: SessionDep, form: FormFields
) -> Response:
    mailing_id, errors = await _save_mailing(request, session, form, None)
    if mailing_id is not None:
        return see_other(f"/admin/mailings/{mailing_id}")
    context = {"form": form, "errors": errors, "mailing": None}
    return render(request, user, "mailing_form.html", context, status_code=422)


@router.get("/mailings/{mailing_id}/edit", response_class=HTMLResponse)
async def edit_mailing(
    request: Request, mailing_id: int, user: WriterDep, session: SessionDep, settings: AdminSettingsDep
) -> HTMLResponse:
    mailing = await service.get_mailing(session, mailing_id)
    context = {"form": _form_of(mailing, settings.report_timezone), "errors": {}, "mailing": mailing}
    return render(request, user, "mailing_form.html", context)


@writes.post("/mailings/{mailing_id}/edit", response_class=HTMLResponse)
async def update_mailing(
    request: Request, mailing_id: int, user: WriterDep, session: SessionDep, form: FormFields
) -> Response:
    saved, errors = await _save_mailing(request, session, form, mailing_id)
    if saved is not None:
        return see_other(f"/admin/mailings/{saved}")
    mailing = await service.get_mailing(session, mailing_id)
    return render(
        request, user, "mailing_form.html", {"form": form, "errors": errors, "mailing": mailing}, 422
    )


async def _mailing_live(
    session: SessionDep, settings: AdminSettings, mailing: Mailing, counts: service.StatusCounts
) -> dict[str, Any]:
    """The mailing page's top part: attributes, progress and charts; refreshed by itself while the
    mailing runs or is about to."""
    status = MailingStatus(mailing.status)
    return {
        "mailing": mailing,
        "progress": _progress(counts),
        "sends": await dashboard_service.mailing_sends(session, mailing.id),
        "parked": await service.parked_summary(session, mailing.id),
        "final": status in FINAL_MAILING_STATUSES,
        "can_pause": can_transition_mailing(status, MailingStatus.PAUSED),
        "can_resume": status == MailingStatus.PAUSED,
        "poll": _may_send_soon(mailing, utc_now()),
        "refresh_seconds": settings.refresh_seconds,
    }


@router.get("/mailings/{mailing_id}", response_class=HTMLResponse)
async def mailing_page(
    request: Request, mailing_id: int, user: UserDep, session: SessionDep, settings: AdminSettingsDep
) -> HTMLResponse:
    mailing, counts = await service.mailing_stats(session, mailing_id)
    messages = await _messages_context(session, mailing_id, counts, None, "", 1)
    context = {**messages, **await _mailing_live(session, settings, mailing, counts)}
    return render(request, user, "mailing.html", context)


@router.get("/mailings/{mailing_id}/fragments/live", response_class=HTMLResponse)
async def mailing_live_fragment(
    request: Request, mailing_id: int, user: UserDep, session: SessionDep, settings: AdminSettingsDep
) -> HTMLResponse:
    mailing, counts = await service.mailing_stats(session, mailing_id)
    context = await _mailing_live(session, settings, mailing, counts)
    return render(request, user, "partials/mailing_live.html", context)


async def _messages_context(
    session: SessionDep,
    mailing_id: int,
    counts: service.StatusCounts,
    status: MessageStatus | None,
    q: str,
    page: int,
) -> dict[str, Any]:
    async def fetch(page: int) -> tuple[Sequence[Any], Pager]:
        rows, total = await dashboard_service.mailing_messages(
            session, mailing_id, status, q, counts, MESSAGES_PAGE, _offset(page, MESSAGES_PAGE), SEARCH_ROWS
        )
        more = bool(q.strip()) and total > SEARCH_ROWS
        return rows, _pages(min(total, SEARCH_ROWS) if more else total, MESSAGES_PAGE, page, more=more)

    rows, pager = await _within_pages(fetch, page)
    return {
        "mailing_id": mailing_id,
        "messages": rows,
        "pager": pager,
        "status": "" if status is None else status.value,
        "q": q,
    }


@router.get("/mailings/{mailing_id}/messages", response_class=HTMLResponse)
async def messages_fragment(
    request: Request,
    mailing_id: int,
    user: UserDep,
    session: SessionDep,
    settings: AdminSettingsDep,
    status: str = "",
    q: Annotated[str, Query(max_length=40)] = "",
    page: Annotated[int, Query(ge=1)] = 1,
) -> HTMLResponse:
    mailing, counts = await service.mailing_stats(session, mailing_id)
    chosen = MessageStatus(status) if status in MessageStatus.__members__.values() else None
    context = await _messages_context(session, mailing_id, counts, chosen, q, page)
    context.update(poll=_may_send_soon(mailing, utc_now()), refresh_seconds=settings.refresh_seconds)
    name = "partials/messages.html" if request.headers.get("hx-request") else "messages_page.html"
    return render(request, user, name, context)


ACTIONS: dict[str, str] = {
    "pause": "Pause",
    "resume": "Resume",
    "cancel": "Cancel",
    "delete": "Delete",
}


@router.get("/mailings/{mailing_id}/{action}", response_class=HTMLResponse)
async def confirm_action(
    request: Request, mailing_id: int, action: Action, user: WriterDep, session: SessionDep
) -> HTMLResponse:
    mailing = await service.get_mailing(session, mailing_id)
    return render(request, user, "confirm_mailing.html", {"mailing": mailing, "action": action})


@writes.post("/mailings/{mailing_id}/{action}", response_class=HTMLResponse)
async def mailing_action(
    request: Request, mailing_id: int, action: Action, user: WriterDep, session: SessionDep
) -> Response:
    now = utc_now()
    try:
        if action == "pause":
            await service.pause_mailing(session, mailing_id, now)
        elif action == "resume":
            await service.resume_mailing(session, mailing_id, now)
        elif action == "cancel":
            await service.cancel_mailing(session, mailing_id, now)
        else:
            await service.delete_mailing(session, mailing_id, now)
    except Conflict as exc:
        await session.rollback()
        mailing = await service.get_mailing(session, mailing_id)
        context = {"mailing": mailing, "action": action, "error": exc.message}
        return render(request, user, "confirm_mailing.html", context, status_code=409)
    await session.commit()
    request.app.state.relay.wake()
    return see_other("/admin/" if action == "delete" else f"/admin/mailings/{mailing_id}")


# Clients


@router.get("/clients", response_class=HTMLResponse)
async def clients(
    request: Request,
    user: UserDep,
    session: SessionDep,
    tag: str = "",
    operator_code: str = "",
    timezone: str = "",
    phone: Annotated[str, Query(max_length=20)] = "",
    page: Annotated[int, Query(ge=1)] = 1,
) -> HTMLResponse:
    digits = phone.strip().lstrip("+")
    prefix = digits if digits.isascii() and digits.isdigit() else None
    conditions = clients_service.live_clients(
        tag=tag or None,
        operator_code=operator_code.strip() or None,
        timezone=timezone.strip() or None,
        phone_prefix=prefix,
    )

    # A phone search lists by phone: the range of the phone index, in its order.
    async def fetch(page: int) -> tuple[Sequence[Any], Pager]:
        rows, counted = await clients_service.list_clients(
            session,
            conditions,
            CLIENTS_PAGE,
            _offset(page, CLIENTS_PAGE),
            count_cap=PAGED_ROWS,
            by_phone=prefix is not None,
        )
        return rows, _pages(min(counted, PAGED_ROWS), CLIENTS_PAGE, page, more=counted > PAGED_ROWS)

    rows, pager = await _within_pages(fetch, page)
    context = {
        "clients": rows,
        "pager": pager,
        "filters": {"tag": tag, "operator_code": operator_code, "timezone": timezone, "phone": phone},
    }
    name = "partials/clients_table.html" if request.headers.get("hx-request") else "clients.html"
    return render(request, user, name, context)


@router.get("/clients/new", response_class=HTMLResponse)
async def new_client(request: Request, user: WriterDep) -> HTMLResponse:
    return render(request, user, "client_form.html", {"form": {}, "errors": {}, "client_id": None})


async def _save_client(session: SessionDep, form: dict[str, str], client_id: int | None) -> Errors:
    body = {
        "phone": form.get("phone", "").strip(),
        "operator_code": form.get("operator_code", "").strip() or None,
        "tag": form.get("tag", ""),
        "timezone": form.get("timezone", "").strip(),
    }
    try:
        fields = ClientCreate.model_validate(body).fields()
        if client_id is None:
            await clients_service.create_client(session, fields)
        else:
            await clients_service.update_client(session, client_id, fields)
        await session.commit()
    except ValidationError as exc:
        return _errors(exc)
    except (Conflict, DomainValidationError) as exc:
        return {exc.field: exc.message}
    return {}


@writes.post("/clients/new", response_class=HTMLResponse)
async def create_client_page(
    request: Request, user: WriterDep, session: SessionDep, form: FormFields
) -> Response:
    errors = await _save_client(session, form, None)
    if not errors:
        return see_other("/admin/clients")
    return render(request, user, "client_form.html", {"form": form, "errors": errors, "client_id": None}, 422)


@router.get("/clients/import", response_class=HTMLResponse)
async def import_page(request: Request, user: WriterDep) -> HTMLResponse:
    return render(request, user, "import.html", {"report": None, "errors": {}})


@writes.post("/clients/import", response_class=HTMLResponse)
async def import_clients(
    request: Request,
    user: WriterDep,
    session: SessionDep,
    settings: SettingsDep,
    file: Annotated[UploadFile, File()],
) -> HTMLResponse:
    try:
        result = await import_clients_csv(
            session, file, chunk_rows=settings.csv_import_chunk_rows, max_rows=settings.csv_import_max_rows
        )
    except RequestValidationError as exc:
        await session.rollback()
        return render(request, user, "import.html", {"report": None, "errors": _errors(exc)}, 422)
    except TooManyRows as exc:
        await session.rollback()
        return render(request, user, "import.html", {"report": None, "errors": {"file": str(exc)}}, 413)
    try:
        await session.commit()
    except BaseException:
        result.close()
        raise
    # One line per client, as the API's import writes them (requirement 12).
    log_after_answer(result)
    return render(
        request, user, "import.html", {"report": result.report, "errors": {}, "filename": file.filename}
    )


@router.get("/clients/{client_id}/edit", response_class=HTMLResponse)
async def edit_client(request: Request, client_id: int, user: WriterDep, session: SessionDep) -> HTMLResponse:
    client = await clients_service.get_client(session, client_id)
    form = {name: getattr(client, name) for name in CLIENT_FORM_FIELDS}
    return render(request, user, "client_form.html", {"form": form, "errors": {}, "client_id": client_id})


@writes.post("/clients/{client_id}/edit", response_class=HTMLResponse)
async def update_client_page(
    request: Request, client_id: int, user: WriterDep, session: SessionDep, form: FormFields
) -> Response:
    errors = await _save_client(session, form, client_id)
    if not errors:
        return see_other("/admin/clients")
    context = {"form": form, "errors": errors, "client_id": client_id}
    return render(request, user, "client_form.html", context, 422)


@router.get("/clients/{client_id}/delete", response_class=HTMLResponse)
async def confirm_delete_client(
    request: Request, client_id: int, user: WriterDep, session: SessionDep
) -> HTMLResponse:
    client = await clients_service.get_client(session, client_id)
    return render(request, user, "confirm_client.html", {"client": client})


@writes.post("/clients/{client_id}/delete")
async def delete_client_page(client_id: int, user: WriterDep, session: SessionDep) -> Response:
    await clients_service.delete_client(session, client_id, utc_now())
    await session.commit()
    return see_other("/admin/clients")


# Daily report


@router.get("/reports", response_class=HTMLResponse)
async def report_page(
    request: Request,
    user: UserDep,
    session: SessionDep,
    settings: AdminSettingsDep,
    day: Annotated[date | None, Query(ge=FIRST_DAY, le=LAST_DAY)] = None,
) -> HTMLResponse:
    zone = settings.report_timezone
    chosen = day or utc_now().astimezone(ZoneInfo(zone)).date()
    report = await daily_report(await session.connection(), chosen, zone)
    return render(request, user, "report.html", {"report": report, "totals": report.totals})


# API keys


async def _keys_page(request: Request, user: UiUser, session: SessionDep, **context: Any) -> HTMLResponse:
    status_code = context.pop("status", 200)
    keys = await api_keys_service.list_keys(session)
    base: dict[str, Any] = {"keys": keys, "created": None, "key": None, "errors": {}, "form": {}}
    return render(request, user, "api_keys.html", {**base, **context}, status_code=status_code)


@router.get("/api-keys", response_class=HTMLResponse)
async def api_keys(request: Request, user: AdminUserDep, session: SessionDep) -> HTMLResponse:
    return await _keys_page(request, user, session)


@writes.post("/api-keys", response_class=HTMLResponse)
async def create_api_key(
    request: Request, user: AdminUserDep, session: SessionDep, form: FormFields
) -> HTMLResponse:
    try:
        body = ApiKeyCreate.model_validate(
            {"name": form.get("name", "").strip(), "role": form.get("role", "")}
        )
    except ValidationError as exc:
        return await _keys_page(request, user, session, errors=_errors(exc), form=form, status=422)
    row, key = await api_keys_service.create_key(session, body.name, body.role, f"UI user {user.subject}")
    await session.commit()
    return await _keys_page(request, user, session, created=row, key=key)


@router.get("/api-keys/{key_id}/revoke", response_class=HTMLResponse)
async def confirm_revoke(
    request: Request, key_id: int, user: AdminUserDep, session: SessionDep
) -> HTMLResponse:
    keys = {k.id: k for k in await api_keys_service.list_keys(session)}
    if key_id not in keys or keys[key_id].revoked_at is not None:
        raise NotFound("api key", key_id)
    return render(request, user, "confirm_revoke.html", {"key": keys[key_id]})


@writes.post("/api-keys/{key_id}/revoke")
async def revoke_api_key(
    key_id: int, user: AdminUserDep, session: SessionDep, key_cache: KeyCacheDep
) -> Response:
    await api_keys_service.revoke_key(session, key_id, f"UI user {user.subject}")
    await session.commit()
    key_cache.clear()
    return see_other("/admin/api-keys")


router.include_router(writes)
