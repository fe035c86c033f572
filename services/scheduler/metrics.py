from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class SchedulerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.planned = Counter(
            "mailing_scheduler_messages_planned",
            "Messages created by expansion to be sent (pending, or queued and handed over at once)",
            registry=registry,
        )
        self.dispatched = Counter(
            "mailing_scheduler_messages_dispatched",
            "Messages published to the send queue for the first time",
            registry=registry,
        )
        self.expired = Counter(
            "mailing_scheduler_messages_expired",
            "Messages the scheduler ended as expired (no window before the end, or the end passed)",
            registry=registry,
        )
        self.cancelled = Counter(
            "mailing_scheduler_messages_cancelled",
            "Messages the scheduler ended as cancelled (mailing cancelled or deleted, client gone)",
            registry=registry,
        )
        self.requeued = Counter(
            "mailing_scheduler_messages_requeued",
            "Stale queued or retrying messages published again by the recovery sweep",
            registry=registry,
        )
        self.due_backlog = Gauge(
            "mailing_scheduler_due_backlog_messages",
            "Pending messages of running mailings whose send time has come, after the last tick",
            registry=registry,
        )
        self.expansion_duration = Histogram(
            "mailing_scheduler_expansion_duration_seconds",
            "Time to expand (or re-expand) one mailing into messages",
            buckets=_DURATION_BUCKETS,
            registry=registry,
        )
        self.dispatch_duration = Histogram(
            "mailing_scheduler_dispatch_batch_duration_seconds",
            "Time to claim, publish with confirms and commit one dispatch batch",
            buckets=_DURATION_BUCKETS,
            registry=registry,
        )
