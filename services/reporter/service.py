"""The reporter: records outcome events, and on each tick sends the daily reports that are due."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from datetime import date, timedelta

from loguru import logger
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.reporter import store
from services.reporter.mailer import Mailer
from services.reporter.metrics import ReporterMetrics
from services.reporter.report import DailyReport, render, report_message_id
from services.reporter.schedule import day_bounds, due_days, local_midnight
from services.reporter.settings import ReporterSettings
from shared.broker import Delivery
from shared.clock import Clock, utc_now
from shared.contracts import MessageOutcome, MessagesFinalized

RETRY_BACKOFF_MAX_SECONDS = 3600.0


class Reporter:
    def __init__(
        self,
        engine: AsyncEngine,
        mailer: Mailer,
        settings: ReporterSettings,
        metrics: ReporterMetrics,
        *,
        clock: Clock = utc_now,
    ) -> None:
        self.engine = engine
        self.mailer = mailer
        self.settings = settings
        self.metrics = metrics
        self.clock = clock

    async def on_finalized(self, delivery: Delivery[MessagesFinalized]) -> None:
        """Store the outcomes; the consumer acks only after this returns, i.e. after the commit."""
        await self.record(delivery.body.outcomes)

    async def record(self, outcomes: Sequence[MessageOutcome]) -> None:
        inserted = set(await store.record_outcomes(self.engine, outcomes))
        self.metrics.outcomes_recorded.inc(len(inserted))
        self.metrics.outcomes_duplicate.inc(len(outcomes) - len(inserted))
        per_mailing = Counter(o.mailing_id for o in outcomes if o.message_id in inserted)
        for mailing_id, n in per_mailing.items():
            logger.bind(mailing_id=mailing_id).debug("recorded {} outcomes for the daily report", n)
        if len(inserted) < len(outcomes):
            logger.info("skipped {} outcomes already recorded", len(outcomes) - len(inserted))

    async def tick(self, stop: asyncio.Event | None = None) -> list[date]:
        """Send every due report not yet sent, oldest first; returns the days sent. Does nothing while
        another reporter holds the lock; stops at the first failure so days never go out of order, and
        between two days once `stop` is set."""
        sent: list[date] = []
        async with self.engine.connect() as conn:
            if not await store.try_lock(conn):
                logger.debug("another reporter is sending; skipping this tick")
                return sent
            try:
                last = await store.last_sent_day(conn)
                if last is not None:
                    self._set_last_sent(last)
                else:
                    # Nothing sent yet: a first report that failed is still owed, whatever day it is now.
                    unsent = await store.oldest_unsent_day(conn)
                    last = None if unsent is None else unsent - timedelta(days=1)
                zone, send_at = self.settings.zone, self.settings.send_at
                for day in due_days(
                    self.clock(), zone, send_at, last, max_days=self.settings.max_missed_days
                ):
                    if stop is not None and stop.is_set():
                        break
                    if not await self._retry_due(conn, day) or not await self._send_day(conn, day):
                        break
                    sent.append(day)
            finally:
                await store.unlock(conn)
        return sent

    async def _retry_due(self, conn: AsyncConnection, day: date) -> bool:
        """After a failed attempt, wait before the next: the tick doubled for each failure, at most
        RETRY_BACKOFF_MAX_SECONDS, so a refusing SMTP server is neither hammered nor forgotten."""
        failed = await store.failed_attempt(conn, day)
        if failed is None:
            return True
        attempts, last_began = failed
        pause = min(self.settings.tick_seconds * 2 ** (attempts - 1), RETRY_BACKOFF_MAX_SECONDS)
        return self.clock() >= last_began + timedelta(seconds=pause)

    async def _send_day(self, conn: AsyncConnection, day: date) -> bool:
        log = logger.bind(report_day=day.isoformat())
        run = await store.begin_run(conn, day, self.clock())
        if run is None:
            return True
        attempts, last_error = run
        if attempts and last_error is None:
            # An attempt began and never recorded how it ended: it may have handed the mail over.
            log.warning("an earlier attempt may have reached the SMTP server; sending again with the same id")
        start, end = day_bounds(day, self.settings.zone)
        backfilled = await store.backfill_outcomes(conn, start, end)
        if backfilled:
            self.metrics.outcomes_backfilled.inc(backfilled)
            log.info(
                "{} final messages of the day had no outcome event; taken from the messages table", backfilled
            )
        figures = await store.day_figures(conn, start, end)
        report = DailyReport(day, self.settings.timezone, figures)
        mail_message_id = report_message_id(day, self.settings.message_id_domain)
        message = render(
            report,
            sender=self.settings.mail_from,
            recipients=self.settings.mail_to,
            domain=self.settings.message_id_domain,
        )
        try:
            await self.mailer.send(message)
        except Exception as exc:
            await store.fail_run(conn, day, f"{type(exc).__name__}: {exc}")
            self.metrics.report_failures.inc()
            log.warning("sending the report failed (attempt {}), retrying later: {}", attempts + 1, exc)
            return False
        await store.finish_run(conn, day, self.clock(), mail_message_id)
        self.metrics.reports_sent.inc()
        self._set_last_sent(day)
        for m in figures:
            log.bind(mailing_id=m.mailing_id).info("mailing included in the daily report: {}", dict(m.day))
        log.info("daily report sent to {}: {}", ", ".join(self.settings.mail_to), message["Subject"])
        return True

    def _set_last_sent(self, day: date) -> None:
        self.metrics.last_sent_day.set(local_midnight(day, self.settings.zone).timestamp())
