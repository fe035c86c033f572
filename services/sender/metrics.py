from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class SenderMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.attempts = Counter(
            "mailing_sender_attempts_total",
            "Calls to the external API by result (ok, timeout, connection, http_5xx, http_429, ...)",
            ["result"],
            registry=registry,
        )
        self.outcomes = Counter(
            "mailing_sender_outcomes_total",
            "Status writes by resulting status (sent, retrying, failed, expired, cancelled, pending, queued)",
            ["status"],
            registry=registry,
        )
        self.latency = Histogram(
            "mailing_sender_provider_latency_seconds",
            "Duration of calls to the external API, answered or not",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            "mailing_sender_in_flight_requests", "Calls to the external API in flight", registry=registry
        )
        self.pacing_interval = Gauge(
            "mailing_sender_pacing_interval_seconds",
            "Least time between two call starts (the lowest recent latency / (callers x 1.25))",
            registry=registry,
        )
        self.retry_depth = Gauge(
            "mailing_sender_retry_queue_depth_messages",
            "Ready AMQP messages in each retry tier queue and the parking lot",
            ["queue"],
            registry=registry,
        )
        self.circuit_state = Gauge(
            "mailing_sender_circuit_state",
            "Circuit breaker state: 0 closed, 1 half-open, 2 open",
            registry=registry,
        )
        self.circuit_opened = Counter(
            "mailing_sender_circuit_opened_total", "Times the circuit breaker opened", registry=registry
        )
        self.flush_seconds = Histogram(
            "mailing_sender_status_flush_seconds",
            "Duration of one batched status write",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=registry,
        )
        self.flush_rows = Counter(
            "mailing_sender_status_rows_total",
            "Message rows written by batched status writes",
            registry=registry,
        )
        self.deliveries = Counter(
            "mailing_sender_deliveries_total",
            "SendMessages deliveries handled to the end, by result",
            ["result"],
            registry=registry,
        )
