"""The reporter against real PostgreSQL, RabbitMQ and an SMTP server (aiosmtpd) on a free port."""

from __future__ import annotations

import asyncio
import email
import email.policy
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, date, datetime, time, timedelta, timezone
from email.message import EmailMessage
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from loguru import logger
from prometheus_client import CollectorRegistry
from sqlalchemy import text
from sqlalchemy.exc import ProgrammingError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from bench.chaos import free_port
from services.reporter import store
from services.reporter.app import build_reporter
from services.reporter.mailer import SmtpMailer
from services.reporter.metrics import ReporterMetrics
from services.reporter.service import Reporter
from services.reporter.settings import ReporterSettings
from shared.broker import Publisher, confirm_channel, connect
from shared.contracts import MessageOutcome, MessagesFinalized
from shared.db import make_engine
from shared.topology import Topology, exchanges

from ..conftest import AMQP_URL, TEST_RETRY_DELAYS
from .test_scheduler_helpers import add_client, add_mailing
from .test_sender_support import eventually

pytestmark = pytest.mark.integration

# 09:00 in Moscow on 2026-11-26: the report of the 25th is due.
NOW = datetime(2026, 11, 26, 6, 0, tzinfo=UTC)
YESTERDAY = date(2026, 11, 25)
# 07:00 in Moscow: nothing is due yet.
EARLY = datetime(2026, 11, 26, 4, 0, tzinfo=UTC)


class Inbox:
    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        self.messages.append(message)
        return "250 OK"

    @property
    def subjects(self) -> list[str]:
        return [str(m["Subject"]) for m in self.messages]


class SmtpServer:
    def __init__(self, port: int) -> None:
        self.inbox = Inbox()
        self.controller = Controller(self.inbox, hostname="127.0.0.1", port=port)

    def start(self) -> None:
        self.controller.start()

    def stop(self) -> None:
        self.controller.stop()


@pytest.fixture
def smtp_port() -> int:
    return free_port()


@pytest.fixture
def smtp(smtp_port: int) -> Iterator[SmtpServer]:
    server = SmtpServer(smtp_port)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def reporter_settings(database_url: str, amqp_namespace: str, smtp_port: int) -> ReporterSettings:
    return ReporterSettings(
        database_url=database_url,
        amqp_url=AMQP_URL,
        amqp_namespace=amqp_namespace,
        retry_delays_seconds=TEST_RETRY_DELAYS,
        smtp_host="127.0.0.1",
        smtp_port=smtp_port,
        smtp_timeout_seconds=5,
        mail_to=("ops@example.org",),
        message_id_domain="test.local",
        metrics_host="127.0.0.1",
        metrics_port=0,
        tick_seconds=300,
        _env_file=None,
    )


@pytest.fixture
async def engine(reporter_settings: ReporterSettings) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(reporter_settings.database_url)
    try:
        yield engine
    finally:
        await engine.dispose()


def make_reporter(engine: AsyncEngine, settings: ReporterSettings, now: datetime = NOW) -> Reporter:
    metrics = ReporterMetrics(CollectorRegistry())
    return Reporter(engine, SmtpMailer(settings), settings, metrics, clock=lambda: now)


async def runs(engine: AsyncEngine) -> dict[date, tuple[str, int, str | None]]:
    async with engine.connect() as conn:
        rows = await conn.execute(text("SELECT day, status, attempts, last_error FROM report_runs"))
        return {r[0]: (r[1], r[2], r[3]) for r in rows}


async def add_run(
    engine: AsyncEngine,
    day: date,
    status: str,
    attempts: int,
    *,
    started_at: datetime = NOW,
    last_error: str | None = None,
) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO report_runs (day, status, attempts, started_at, last_error)"
                " VALUES (:d, :s, :a, :at, :e)"
            ),
            {"d": day, "s": status, "a": attempts, "at": started_at, "e": last_error},
        )


async def mark_sent(engine: AsyncEngine, day: date) -> None:
    await add_run(engine, day, "sent", 1)


def outcome(message_id: int, mailing_id: int, status: str, at: datetime) -> MessageOutcome:
    return MessageOutcome.model_validate(
        {
            "message_id": message_id,
            "mailing_id": mailing_id,
            "client_id": 1,
            "status": status,
            "attempts": 1,
            "occurred_at": at,
        }
    )


async def test_a_redelivered_outcome_is_counted_once(
    reporter_settings: ReporterSettings, topology: Topology, smtp: SmtpServer
) -> None:
    at = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
    registry = CollectorRegistry()
    app = build_reporter(reporter_settings, clock=lambda: EARLY, registry=registry, serve_ops=False)
    await app.start()
    try:
        connection = await connect(AMQP_URL)
        async with connection:
            events, _ = await exchanges(await confirm_channel(connection), topology)
            first = MessagesFinalized(outcomes=[outcome(1, 5, "sent", at), outcome(2, 5, "failed", at)])
            again = MessagesFinalized(outcomes=[outcome(2, 5, "failed", at), outcome(3, 5, "sent", at)])
            await Publisher(events).publish_many([(first, first.routing_key), (first, first.routing_key)])
            await Publisher(events).publish_many([(again, again.routing_key)])

        def seen() -> float:
            return float(
                app.metrics.outcomes_recorded._value.get() + app.metrics.outcomes_duplicate._value.get()
            )

        async def all_seen() -> bool:
            return seen() == 6

        await eventually(all_seen, what="six outcomes processed")
        assert app.metrics.outcomes_recorded._value.get() == 3
        async with app.engine.connect() as conn:
            rows = await conn.execute(text("SELECT message_id, status FROM report_outcomes ORDER BY 1"))
            assert [tuple(r) for r in rows] == [(1, "sent"), (2, "failed"), (3, "sent")]
        assert await app.reporter.tick() == []
    finally:
        await app.stop()
    assert smtp.inbox.messages == []


async def test_a_report_shows_the_days_outcomes_and_the_mailings_totals(
    reporter_settings: ReporterSettings, smtp: SmtpServer, engine: AsyncEngine
) -> None:
    client = await add_client(engine, "Europe/Moscow")
    mailing = await add_mailing(engine, NOW - timedelta(days=3), NOW + timedelta(days=1))
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE mailings SET text = 'Winter sale' WHERE id = :m"), {"m": mailing})
        await conn.execute(
            text(
                "INSERT INTO messages (mailing_id, client_id, status, not_before)"
                " VALUES (:m, :c, 'sent', now())"
            ),
            {"m": mailing, "c": client},
        )
    reporter = make_reporter(engine, reporter_settings)
    # 23:30 Moscow on the 25th is in the day; 00:30 Moscow on the 26th is not.
    in_day = datetime(2026, 11, 25, 20, 30, tzinfo=UTC)
    await reporter.record(
        [outcome(10, mailing, "sent", in_day), outcome(11, mailing, "expired", in_day),
         outcome(12, mailing, "sent", datetime(2026, 11, 25, 21, 30, tzinfo=UTC))]
    )  # fmt: skip
    assert await reporter.tick() == [YESTERDAY]
    [message] = smtp.inbox.messages
    assert (
        message["Subject"].strip()
        == "Mailing report for 2026-11-25: 1 sent, 0 failed, 1 expired, 0 cancelled"
    )
    assert message["Message-ID"] == "<mailing-report-2026-11-25@test.local>"
    body = message.get_body(("plain",))
    assert body is not None
    plain = body.get_content()
    assert f"Mailing {mailing}: Winter sale" in plain
    assert "that day: 1 sent, 0 failed, 1 expired, 0 cancelled" in plain
    assert "all time: 0 pending, 0 queued, 0 retrying, 1 sent" in plain


async def test_a_message_that_became_final_without_an_event_is_still_reported(
    reporter_settings: ReporterSettings, smtp: SmtpServer, engine: AsyncEngine
) -> None:
    client, other = await add_client(engine, "Europe/Moscow"), await add_client(engine, "Asia/Tokyo")
    mailing = await add_mailing(engine, NOW - timedelta(days=3), NOW + timedelta(days=1))
    in_day = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
    async with engine.begin() as conn:
        # Cancelled by the API (no event is published for that) and sent by a sender that died
        # before publishing: both final on the 25th, neither ever heard of by the reporter.
        await conn.execute(
            text(
                "INSERT INTO messages (mailing_id, client_id, status, not_before, updated_at)"
                " VALUES (:m, :c, 'cancelled', :at, :at), (:m, :o, 'sent', :at, :at)"
            ),
            {"m": mailing, "c": client, "o": other, "at": in_day},
        )
    reporter = make_reporter(engine, reporter_settings)
    assert await reporter.tick() == [YESTERDAY]
    assert reporter.metrics.outcomes_backfilled._value.get() == 2
    [message] = smtp.inbox.messages
    assert "1 sent, 0 failed, 0 expired, 1 cancelled" in message["Subject"]


async def test_two_reporters_ticking_together_send_the_report_once(
    reporter_settings: ReporterSettings, smtp: SmtpServer
) -> None:
    engines = [create_async_engine(reporter_settings.database_url) for _ in range(2)]
    try:
        reporters = [make_reporter(e, reporter_settings) for e in engines]
        results = await asyncio.gather(*(r.tick() for r in reporters for _ in range(3)))
        assert sorted(day for days in results for day in days) == [YESTERDAY]
        assert (await runs(engines[0]))[YESTERDAY][:2] == ("sent", 1)
    finally:
        for engine in engines:
            await engine.dispose()
    assert len(smtp.inbox.messages) == 1


async def test_after_a_restart_a_sent_day_is_not_sent_again(
    reporter_settings: ReporterSettings, smtp: SmtpServer, engine: AsyncEngine
) -> None:
    assert await make_reporter(engine, reporter_settings).tick() == [YESTERDAY]
    # A new process: its own engine, nothing carried over but the database.
    restarted = create_async_engine(reporter_settings.database_url)
    try:
        later = NOW + timedelta(hours=10)
        assert await make_reporter(restarted, reporter_settings, later).tick() == []
    finally:
        await restarted.dispose()
    assert len(smtp.inbox.messages) == 1


async def test_missed_days_are_sent_on_start_oldest_first(
    reporter_settings: ReporterSettings, topology: Topology, smtp: SmtpServer, engine: AsyncEngine
) -> None:
    await mark_sent(engine, date(2026, 11, 22))
    app = build_reporter(reporter_settings, clock=lambda: NOW, serve_ops=False)
    await app.start()
    try:

        async def three_mails() -> bool:
            return len(smtp.inbox.messages) == 3

        await eventually(three_mails, what="three reports")
    finally:
        await app.stop()
    assert [m["Message-ID"] for m in smtp.inbox.messages] == [
        f"<mailing-report-2026-11-{d}@test.local>" for d in (23, 24, 25)
    ]
    assert app.metrics.last_sent_day._value.get() == datetime(2026, 11, 24, 21, 0, tzinfo=UTC).timestamp()
    # All sent: the 26th's report is next, due at 08:00 Moscow on the 27th.
    assert app.metrics.next_report_due._value.get() == datetime(2026, 11, 27, 5, 0, tzinfo=UTC).timestamp()


def next_due(registry: CollectorRegistry) -> datetime | None:
    value = registry.get_sample_value("mailing_reporter_next_report_due_timestamp_seconds")
    return None if value is None else datetime.fromtimestamp(value, UTC)


async def test_the_next_report_due_is_exported_from_the_database_and_moves_on_after_a_send(
    reporter_settings: ReporterSettings, smtp: SmtpServer, engine: AsyncEngine
) -> None:
    # Reports at 14:00 Moscow (11:00 UTC); the 24th was sent, the 25th is owed from 14:00 on the 26th.
    settings = reporter_settings.model_copy(update={"send_at": time(14, 0)})
    await mark_sent(engine, date(2026, 11, 24))
    registry = CollectorRegistry()
    now = [datetime(2026, 11, 26, 7, 0, tzinfo=UTC)]  # 10:00 in Moscow
    reporter = Reporter(
        engine, SmtpMailer(settings), settings, ReporterMetrics(registry), clock=lambda: now[0]
    )
    assert await reporter.tick() == []
    assert next_due(registry) == datetime(2026, 11, 26, 11, 0, tzinfo=UTC)  # ahead: not overdue
    now[0] = datetime(2026, 11, 26, 11, 0, tzinfo=UTC)
    assert await reporter.tick() == [YESTERDAY]
    assert next_due(registry) == datetime(2026, 11, 27, 11, 0, tzinfo=UTC)
    # A new process reads the same from the database on its first tick.
    restarted = CollectorRegistry()
    later = datetime(2026, 11, 26, 20, 0, tzinfo=UTC)
    fresh = Reporter(engine, SmtpMailer(settings), settings, ReporterMetrics(restarted), clock=lambda: later)
    assert await fresh.tick() == []
    assert next_due(restarted) == datetime(2026, 11, 27, 11, 0, tzinfo=UTC)
    assert len(smtp.inbox.messages) == 1


async def test_a_report_is_not_marked_sent_while_smtp_is_down_and_goes_out_once_it_is_back(
    reporter_settings: ReporterSettings, smtp_port: int
) -> None:
    engine = create_async_engine(reporter_settings.database_url)
    now = [NOW]
    try:
        metrics = ReporterMetrics(CollectorRegistry())
        reporter = Reporter(
            engine, SmtpMailer(reporter_settings), reporter_settings, metrics, clock=lambda: now[0]
        )
        assert await reporter.tick() == []
        # Owed since 08:00 Moscow on the 26th, and still owed after the failure.
        owed = datetime(2026, 11, 26, 5, 0, tzinfo=UTC).timestamp()
        assert reporter.metrics.next_report_due._value.get() == owed
        # The next try waits a tick (300 s here), then two, four...: not at once.
        assert await reporter.tick() == []
        assert (await runs(engine))[YESTERDAY][:2] == ("sending", 1)
        now[0] += timedelta(seconds=300)
        assert await reporter.tick() == []
        now[0] += timedelta(seconds=300)
        assert await reporter.tick() == []  # 600 s after the second failure: not yet
        status, attempts, error = (await runs(engine))[YESTERDAY]
        assert (status, attempts) == ("sending", 2) and error
        assert reporter.metrics.next_report_due._value.get() == owed
        assert reporter.metrics.report_failures._value.get() == 2
        now[0] += timedelta(seconds=300)
        server = SmtpServer(smtp_port)
        server.start()
        try:
            assert await reporter.tick() == [YESTERDAY]
        finally:
            server.stop()
        assert (await runs(engine))[YESTERDAY] == ("sent", 3, None)
        assert reporter.metrics.next_report_due._value.get() == owed + 86400
        assert len(server.inbox.messages) == 1
    finally:
        await engine.dispose()


async def test_a_database_error_after_the_claim_leaves_the_day_to_its_holder_for_the_next_tick(
    reporter_settings: ReporterSettings, smtp: SmtpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = create_async_engine(reporter_settings.database_url, pool_size=1, max_overflow=0)
    try:
        reporter = make_reporter(engine, reporter_settings)

        async def broken(engine: AsyncEngine, start: datetime, end: datetime) -> int:
            async with engine.begin() as conn:
                await conn.execute(text("SELECT * FROM no_such_table"))
            return 0

        monkeypatch.setattr(store, "backfill_outcomes", broken)
        with pytest.raises(ProgrammingError):
            await reporter.tick()
        monkeypatch.undo()
        # Another reporter waits for the lease; the holder itself, on the same pooled connection, goes on.
        assert await make_reporter(engine, reporter_settings).tick() == []
        assert await reporter.tick() == [YESTERDAY]
    finally:
        await engine.dispose()
    assert len(smtp.inbox.messages) == 1


async def test_a_day_begun_but_never_finished_is_sent_again_with_a_warning(
    reporter_settings: ReporterSettings, smtp: SmtpServer
) -> None:
    # A reporter died between handing the mail over and recording it: one attempt, no error recorded.
    engine = create_async_engine(reporter_settings.database_url)
    warnings: list[str] = []
    sink = logger.add(lambda m: warnings.append(str(m)), level="WARNING")
    try:
        await add_run(engine, YESTERDAY, "sending", 1)
        assert await make_reporter(engine, reporter_settings).tick() == [YESTERDAY]
        assert (await runs(engine))[YESTERDAY] == ("sent", 2, None)
    finally:
        logger.remove(sink)
        await engine.dispose()
    assert any("may have reached the SMTP server" in w for w in warnings)
    [message] = smtp.inbox.messages
    assert message["Message-ID"] == "<mailing-report-2026-11-25@test.local>"


async def test_an_event_with_more_outcomes_than_a_statement_takes_parameters_is_recorded(
    reporter_settings: ReporterSettings, engine: AsyncEngine
) -> None:
    # 12,000 rows of six columns each would be 72,000 parameters: more than PostgreSQL takes.
    reporter = make_reporter(engine, reporter_settings)
    at = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
    await reporter.record([outcome(i, 5, "sent", at) for i in range(1, 12_001)])
    async with engine.connect() as conn:
        assert await conn.scalar(text("SELECT count(*) FROM report_outcomes")) == 12_000


async def test_recording_keeps_each_messages_first_outcome_with_every_field_and_returns_only_the_new_ones(
    engine: AsyncEngine,
) -> None:
    at = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
    # In another offset, to the microsecond: the same instant comes back.
    later = (at + timedelta(minutes=3, microseconds=654321)).astimezone(timezone(timedelta(hours=3)))
    assert await store.record_outcomes(engine, [outcome(1, 5, "sent", at)]) == [1]
    again = [outcome(1, 5, "failed", later), outcome(2, 6, "expired", later), outcome(2, 6, "sent", at)]
    again[1] = again[1].model_copy(update={"client_id": 9, "attempts": 4})
    assert await store.record_outcomes(engine, again) == [2]
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT message_id, mailing_id, client_id, status, attempts, occurred_at"
                " FROM report_outcomes ORDER BY 1"
            )
        )
        assert [tuple(r) for r in rows] == [(1, 5, 1, "sent", 1, at), (2, 6, 9, "expired", 4, later)]
        minutes = await conn.execute(
            text("SELECT mailing_id, status, minute, count FROM report_outcome_minutes ORDER BY 1")
        )
        assert [tuple(r) for r in minutes] == [
            (5, "sent", at, 1),
            (6, "expired", at + timedelta(minutes=3), 1),
        ]


async def test_a_stop_between_two_due_days_ends_the_tick_after_the_day_under_way(
    reporter_settings: ReporterSettings, smtp: SmtpServer
) -> None:
    engine = create_async_engine(reporter_settings.database_url)
    stop = asyncio.Event()

    class StopAfterOne(SmtpMailer):
        async def send(self, message: EmailMessage) -> None:
            await super().send(message)
            stop.set()  # SIGTERM arrives while the first report goes out

    try:
        await mark_sent(engine, date(2026, 11, 22))
        metrics = ReporterMetrics(CollectorRegistry())
        reporter = Reporter(
            engine, StopAfterOne(reporter_settings), reporter_settings, metrics, clock=lambda: NOW
        )
        assert await reporter.tick(stop) == [date(2026, 11, 23)]
        assert await reporter.tick() == [date(2026, 11, 24), YESTERDAY]
    finally:
        await engine.dispose()
    assert len(smtp.inbox.messages) == 3


async def test_a_first_report_that_failed_is_still_sent_days_later(
    reporter_settings: ReporterSettings, smtp: SmtpServer, engine: AsyncEngine
) -> None:
    await add_run(
        engine,
        date(2026, 11, 23),
        "sending",
        3,
        started_at=NOW - timedelta(days=2),
        last_error="SMTPConnectError: refused",
    )
    sent = await make_reporter(engine, reporter_settings).tick()
    assert sent == [date(2026, 11, 23), date(2026, 11, 24), YESTERDAY]
    assert len(smtp.inbox.messages) == 3


class FakeMailer:
    """Hands every message to `outbox`; `during_send` runs while a send is under way."""

    def __init__(
        self, outbox: list[EmailMessage], during_send: Callable[[], Awaitable[object]] | None = None
    ) -> None:
        self.outbox = outbox
        self.during_send = during_send

    async def send(self, message: EmailMessage) -> None:
        if self.during_send is not None:
            await self.during_send()
        self.outbox.append(message)


def fake_reporter(
    engine: AsyncEngine, settings: ReporterSettings, mailer: FakeMailer, holder: str | None = None
) -> Reporter:
    metrics = ReporterMetrics(CollectorRegistry())
    return Reporter(engine, mailer, settings, metrics, clock=lambda: NOW, holder=holder)


async def lease_of(engine: AsyncEngine, day: date) -> tuple[str, int, str | None, str | None, bool]:
    """status, attempts, holder, mail_message_id, and whether a lease is still running."""
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT status, attempts, holder, mail_message_id, coalesce(lease_until > now(), false)"
                    " FROM report_runs WHERE day = :d"
                ),
                {"d": day},
            )
        ).one()
        return (row[0], row[1], row[2], row[3], row[4])


async def hold(engine: AsyncEngine, day: date, holder: str, lease: str) -> None:
    """`holder` began the day once and holds it until now() + `lease` (an interval, may be negative)."""
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO report_runs (day, status, attempts, started_at, holder, lease_until)"
                " VALUES (:d, 'sending', 1, :at, :h, now() + CAST(:l AS interval))"
                " ON CONFLICT (day) DO UPDATE SET holder = :h, lease_until = now() + CAST(:l AS interval)"
            ),
            {"d": day, "at": NOW, "h": holder, "l": lease},
        )


YESTERDAYS_ID = "<mailing-report-2026-11-25@test.local>"


async def test_while_one_reporter_is_sending_the_day_another_leaves_it_alone(
    reporter_settings: ReporterSettings,
) -> None:
    outbox: list[EmailMessage] = []
    send_may_end = asyncio.Event()
    mailer = FakeMailer(outbox, during_send=send_may_end.wait)
    engines = [make_engine(reporter_settings) for _ in range(2)]
    try:
        reporters = [fake_reporter(e, reporter_settings, mailer) for e in engines]
        ticks = [asyncio.create_task(r.tick()) for r in reporters]
        done, _ = await asyncio.wait(ticks, timeout=15, return_when=asyncio.FIRST_COMPLETED)
        assert [t.result() for t in done] == [[]]
        send_may_end.set()
        results = await asyncio.gather(*ticks)
        assert sorted(results) == [[], [YESTERDAY]]
        assert (await runs(engines[0]))[YESTERDAY] == ("sent", 1, None)
    finally:
        for engine in engines:
            await engine.dispose()
    assert [m["Message-ID"] for m in outbox] == [YESTERDAYS_ID]


async def test_a_dropped_reporter_session_during_the_smtp_send_does_not_free_the_day(
    reporter_settings: ReporterSettings,
) -> None:
    outbox: list[EmailMessage] = []
    first_engine, second_engine, admin = (make_engine(reporter_settings) for _ in range(3))
    second = fake_reporter(second_engine, reporter_settings, FakeMailer(outbox))
    seen_during_send: list[tuple[int, int, list[date]]] = []

    async def drop_every_session_and_let_the_other_reporter_tick() -> None:
        async with admin.connect() as conn:
            in_transaction = await conn.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND state LIKE 'idle in transaction%'"
                )
            )
            dropped = await conn.scalar(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            )
        seen_during_send.append((int(in_transaction or 0), int(dropped or 0), await second.tick()))

    first = fake_reporter(
        first_engine,
        reporter_settings,
        FakeMailer(outbox, during_send=drop_every_session_and_let_the_other_reporter_tick),
    )
    try:
        assert await first.tick() == [YESTERDAY]
        [(in_transaction, dropped, second_sent)] = seen_during_send
        assert in_transaction == 0
        assert dropped >= 1
        assert second_sent == []
        assert await lease_of(admin, YESTERDAY) == ("sent", 1, first.holder, YESTERDAYS_ID, False)
    finally:
        for engine in (first_engine, second_engine, admin):
            await engine.dispose()
    assert [m["Message-ID"] for m in outbox] == [YESTERDAYS_ID]


async def test_a_day_held_under_a_running_lease_is_left_to_its_holder_and_later_days_wait(
    reporter_settings: ReporterSettings, engine: AsyncEngine
) -> None:
    await mark_sent(engine, date(2026, 11, 23))
    await hold(engine, date(2026, 11, 24), "elsewhere:7:cafe", "5 minutes")
    outbox: list[EmailMessage] = []
    assert await fake_reporter(engine, reporter_settings, FakeMailer(outbox)).tick() == []
    assert outbox == []
    assert await lease_of(engine, date(2026, 11, 24)) == ("sending", 1, "elsewhere:7:cafe", None, True)
    assert YESTERDAY not in await runs(engine)


async def test_a_day_whose_holder_died_is_taken_over_with_the_same_message_id_once_the_lease_ran_out(
    reporter_settings: ReporterSettings, engine: AsyncEngine
) -> None:
    await hold(engine, YESTERDAY, "crashed:7:dead", "-1 second")
    warnings: list[str] = []
    sink = logger.add(lambda m: warnings.append(str(m)), level="WARNING")
    outbox: list[EmailMessage] = []
    reporter = fake_reporter(engine, reporter_settings, FakeMailer(outbox))
    try:
        assert await reporter.tick() == [YESTERDAY]
    finally:
        logger.remove(sink)
    assert await lease_of(engine, YESTERDAY) == ("sent", 2, reporter.holder, YESTERDAYS_ID, False)
    assert [m["Message-ID"] for m in outbox] == [YESTERDAYS_ID]
    assert any("may have reached the SMTP server" in w for w in warnings)


async def test_a_send_whose_lease_went_to_another_reporter_is_not_recorded_over_theirs(
    reporter_settings: ReporterSettings, engine: AsyncEngine
) -> None:
    errors: list[str] = []
    sink = logger.add(lambda m: errors.append(str(m)), level="ERROR")

    async def lease_runs_out_and_is_taken() -> None:
        await hold(engine, YESTERDAY, "elsewhere:7:cafe", "5 minutes")

    outbox: list[EmailMessage] = []
    reporter = fake_reporter(engine, reporter_settings, FakeMailer(outbox, lease_runs_out_and_is_taken))
    try:
        assert await reporter.tick() == []
    finally:
        logger.remove(sink)
    assert await lease_of(engine, YESTERDAY) == ("sending", 1, "elsewhere:7:cafe", None, True)
    assert reporter.metrics.leases_lost._value.get() == 1
    assert any("went to another reporter" in e for e in errors)


async def test_a_send_that_outlasts_its_lease_is_abandoned_as_a_failure_and_frees_the_day(
    reporter_settings: ReporterSettings, engine: AsyncEngine
) -> None:
    settings = reporter_settings.model_copy(update={"lease_seconds": 0.5, "smtp_timeout_seconds": 0.2})
    never = asyncio.Event()
    reporter = fake_reporter(engine, settings, FakeMailer([], during_send=never.wait))
    assert await asyncio.wait_for(reporter.tick(), timeout=15) == []
    status, attempts, error = (await runs(engine))[YESTERDAY]
    assert (status, attempts) == ("sending", 1)
    assert error is not None and error.startswith("TimeoutError: sending took longer than the lease")
    assert (await lease_of(engine, YESTERDAY))[4] is False
    assert reporter.metrics.report_failures._value.get() == 1
