from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class ReporterMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.outcomes_recorded = Counter(
            "mailing_reporter_outcomes_recorded",
            "Message outcomes (message.finalized) stored for the daily reports",
            registry=registry,
        )
        self.outcomes_duplicate = Counter(
            "mailing_reporter_outcomes_duplicate",
            "Message outcomes skipped because the same message was already recorded (re-delivered events)",
            registry=registry,
        )
        self.outcomes_backfilled = Counter(
            "mailing_reporter_outcomes_backfilled",
            "Final messages read from the messages table when their day was reported (no event had come)",
            registry=registry,
        )
        self.reports_sent = Counter(
            "mailing_reporter_reports_sent",
            "Daily reports the SMTP server accepted",
            registry=registry,
        )
        self.report_failures = Counter(
            "mailing_reporter_report_failures",
            "Attempts to send a daily report that failed (retried later, with growing pauses)",
            registry=registry,
        )
        self.leases_lost = Counter(
            "mailing_reporter_leases_lost",
            "Sends whose outcome could not be recorded because the day's lease had gone to another reporter",
            registry=registry,
        )
        self.last_sent_day = Gauge(
            "mailing_reporter_last_sent_day_timestamp_seconds",
            "Start (local midnight, as a Unix time) of the newest day whose report was sent",
            registry=registry,
        )
        self.next_report_due = Gauge(
            "mailing_reporter_next_report_due_timestamp_seconds",
            "When (Unix time) the oldest daily report not yet sent is due: past while one is owed. 0 until"
            " the first tick has read the database",
            registry=registry,
        )
