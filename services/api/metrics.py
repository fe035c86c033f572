from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class ApiMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter(
            "mailing_api_requests_total",
            "HTTP requests answered, by method, route template and status code",
            ["method", "route", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "mailing_api_request_duration_seconds",
            "Time to answer an HTTP request, by method and route template",
            ["method", "route"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=registry,
        )
        self.outbox_published = Counter(
            "mailing_api_outbox_published_total",
            "Mailing events relayed from the outbox to RabbitMQ and confirmed",
            registry=registry,
        )
        self.outbox_backlog = Gauge(
            "mailing_api_outbox_backlog",
            "Outbox events not yet confirmed by RabbitMQ (as of the relay's last pass)",
            registry=registry,
        )
        self.outbox_failures = Counter(
            "mailing_api_outbox_relay_failures_total",
            "Relay passes that failed (broker unreachable, publish not confirmed)",
            registry=registry,
        )
        self.clients_imported = Counter(
            "mailing_api_clients_imported_total",
            "Clients created or updated by CSV import",
            registry=registry,
        )
