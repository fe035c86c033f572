"""The reporter: records outcome events, and on each tick sends the daily reports that are due."""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
from collections import Counter
from collections.abc import Sequence
from datetime import date, timedelta
from typing import TYPE_CHECKING

from loguru import logger
from sqlalchemy.ext.asyncio import AsyncEngine

from services.reporter import store
from services.reporter.mailer import Mailer
from services.reporter.metrics import ReporterMetrics
from services.reporter.report import DailyReport, render, report_message_id
from services.reporter.schedule import day_bounds, due_days, local_midnight, next_report_due_at
from services.reporter.settings import ReporterSettings
from shared.broker import Delivery
from shared.clock import Clock, utc_now
from shared.contracts import MessageOutcome, MessagesFinalized

if TYPE_CHECKING:
    from loguru import Logger

RETRY_BACKOFF_MAX_SECONDS = 3600.0
# Events are recorded one at a time (one insert of a few hundred rows takes a few milliseconds): up to
# `prefetch` deliveries arrive together, and recording them all at once took every connection the pool
# could open, each opened anew and closed again past the pool's size, a PostgreSQL process forked for
# every event (docs/benchmarks.md, "Where the end-to-end CPU goes").
RECORDING_CONNECTIONS = 1
# The engine's pool: the recording's, and one for the daily reports and the health checks.
POOL_SIZE = RECORDING_CONNECTIONS + 1


def new_holder() -> str:
    """This process's name on the days it leases: readable in report_runs, and unique even for two
    reporters of one process."""
    return f"{socket.gethostname()[:70]}:{os.getpid()}:{secrets.token_hex(4)}"


class Reporter:
    def __init__(
        self,
        engine: AsyncEngine,
        mailer: Mailer,
        settings: ReporterSettings,
        metrics: ReporterMetrics,
        *,
        clock: Clock = utc_now,
        holder: str | None = None,
    ) -> None:
        self.engine = engine
        self.mailer = mailer
        self.settings = settings
        self.metrics = metrics
        self.clock = clock
        self.holder = holder or new_holder()
        self._ticking = asyncio.Lock()
        self._recording = asyncio.Semaphore(RECORDING_CONNECTIONS)

    async def on_finalized(self, delivery: Delivery[MessagesFinalized]) -> None:
        """Store the outcomes; the consumer acks only after this returns, i.e. after the commit."""
        await self.record(delivery.body.outcomes)

    async def record(self, outcomes: Sequence[MessageOutcome]) -> None:
        async with self._recording:
            inserted = set(await store.record_outcomes(self.engine, outcomes))
        self.metrics.outcomes_recorded.inc(len(inserted))
        self.metrics.outcomes_duplicate.inc(len(outcomes) - len(inserted))
        per_mailing = Counter(o.mailing_id for o in outcomes if o.message_id in inserted)
        for mailing_id, n in per_mailing.items():
            logger.bind(mailing_id=mailing_id).debug("recorded {} outcomes for the daily report", n)
        if len(inserted) < len(outcomes):
            logger.info("skipped {} outcomes already recorded", len(outcomes) - len(inserted))

    async def tick(self, stop: asyncio.Event | None = None) -> list[date]:
        """Send every due report not yet sent, oldest first; returns the days sent. Stops at a day that
        another reporter holds and at the first failure, so days never go out of order, and between two
        days once `stop` is set. Does nothing while a tick of this reporter is still running."""
        sent: list[date] = []
        if self._ticking.locked():
            return sent
        async with self._ticking:
            last = await store.last_sent_day(self.engine)
            if last is not None:
                self._set_last_sent(last)
            else:
                # Nothing sent yet: a first report that failed is still owed, whatever day it is now.
                unsent = await store.oldest_unsent_day(self.engine)
                last = None if unsent is None else unsent - timedelta(days=1)
            self._set_next_due(last)
            zone, send_at = self.settings.zone, self.settings.send_at
            for day in due_days(self.clock(), zone, send_at, last, max_days=self.settings.max_missed_days):
                if stop is not None and stop.is_set():
                    break
                if not await self._retry_due(day) or not await self._send_day(day):
                    break
                sent.append(day)
        return sent

    async def _retry_due(self, day: date) -> bool:
        """After a failed attempt, wait before the next: the tick doubled for each failure, at most
        RETRY_BACKOFF_MAX_SECONDS, so a refusing SMTP server is neither hammered nor forgotten."""
        failed = await store.failed_attempt(self.engine, day)
        if failed is None:
            return True
        attempts, last_began = failed
        pause = min(self.settings.tick_seconds * 2 ** (attempts - 1), RETRY_BACKOFF_MAX_SECONDS)
        return self.clock() >= last_began + timedelta(seconds=pause)

    async def _send_day(self, day: date) -> bool:
        log = logger.bind(report_day=day.isoformat(), holder=self.holder)
        lease = self.settings.lease_seconds
        loop = asyncio.get_running_loop()
        # Read before the claim, so the local deadline falls before the one the database keeps.
        claimed_at = loop.time()
        claim = await store.claim_run(self.engine, day, self.holder, lease, self.clock())
        if claim is store.Refused.SENT:
            self._set_next_due(day)
            return True
        if claim is store.Refused.HELD:
            log.info("another reporter holds the day's report under a lease; leaving it to them")
            return False
        if claim.attempts and claim.last_error is None:
            # An attempt began and never recorded how it ended: it may have handed the mail over.
            log.warning("an earlier attempt may have reached the SMTP server; sending again with the same id")
        start, end = day_bounds(day, self.settings.zone)
        backfilled = await store.backfill_outcomes(self.engine, start, end)
        if backfilled:
            self.metrics.outcomes_backfilled.inc(backfilled)
            log.info(
                "{} final messages of the day had no outcome event; taken from the messages table", backfilled
            )
        figures = await store.day_figures(self.engine, start, end)
        report = DailyReport(day, self.settings.timezone, figures)
        mail_message_id = report_message_id(day, self.settings.message_id_domain)
        message = render(
            report,
            sender=self.settings.mail_from,
            recipients=self.settings.mail_to,
            domain=self.settings.message_id_domain,
        )
        # No connection is held from here to the outcome's write: a dropped one cannot free the day.
        deadline = asyncio.timeout_at(claimed_at + lease)
        try:
            async with deadline:
                await self.mailer.send(message)
        except Exception as exc:
            error = f"sending took longer than the lease ({lease} s)" if deadline.expired() else str(exc)
            error = f"{type(exc).__name__}: {error}"
            self.metrics.report_failures.inc()
            log.warning(
                "sending the report failed (attempt {}), retrying later: {}", claim.attempts + 1, error
            )
            if not await store.fail_run(self.engine, day, self.holder, error):
                self._lease_lost(log)
            return False
        self.metrics.reports_sent.inc()
        if not await store.finish_run(self.engine, day, self.holder, self.clock(), mail_message_id):
            self._lease_lost(log)
            return False
        self._set_last_sent(day)
        self._set_next_due(day)
        for m in figures:
            log.bind(mailing_id=m.mailing_id).info("mailing included in the daily report: {}", dict(m.day))
        log.info("daily report sent to {}: {}", ", ".join(self.settings.mail_to), message["Subject"])
        return True

    def _lease_lost(self, log: Logger) -> None:
        self.metrics.leases_lost.inc()
        log.error(
            "the lease on this day's report went to another reporter during the send, which was not"
            " recorded: the other reporter may send the day again, with the same Message-ID"
        )

    def _set_last_sent(self, day: date) -> None:
        self.metrics.last_sent_day.set(local_midnight(day, self.settings.zone).timestamp())

    def _set_next_due(self, last: date | None) -> None:
        """When the oldest report still owed after `last` is due: what MailingReporterReportOverdue
        measures from. Set on each tick from the database and after each send."""
        settings = self.settings
        due = next_report_due_at(
            self.clock(), settings.zone, settings.send_at, last, max_days=settings.max_missed_days
        )
        self.metrics.next_report_due.set(due.timestamp())
