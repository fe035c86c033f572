from __future__ import annotations

import math
import time
from bisect import bisect_left
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from shared.domain.statuses import MessageStatus

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class CallStats(Collector):
    """`mailing_sender_attempts_total{result}` and `mailing_sender_provider_latency_seconds`: updated by
    the event loop's thread only, and read by the ops server on that same loop."""

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.bounds = buckets
        self.by_result: dict[str, int] = {}
        # As prometheus_client's own metrics do: when each series began (its `_created` sample).
        self.created = time.time()
        self.result_created: dict[str, float] = {}
        self.bucket_counts = [0] * (len(buckets) + 1)
        self.duration_sum = 0.0

    def record(self, result: str, duration: float) -> None:
        by_result = self.by_result
        count = by_result.get(result)
        if count is None:
            self.result_created[result] = time.time()
            count = 0
        by_result[result] = count + 1
        self.bucket_counts[bisect_left(self.bounds, duration)] += 1
        self.duration_sum += duration

    def describe(self) -> Iterator[Metric]:
        """The two names, so the registry refuses another metric that would take one of them."""
        return self._families(with_samples=False)

    def collect(self) -> Iterator[Metric]:
        return self._families(with_samples=True)

    def _families(self, *, with_samples: bool) -> Iterator[Metric]:
        attempts = CounterMetricFamily(
            "mailing_sender_attempts",
            "Calls to the external API by result (ok, timeout, connection, http_5xx, http_429, ...)",
            labels=["result"],
        )
        if with_samples:
            for result, count in sorted(self.by_result.items()):
                attempts.add_metric([result], count, created=self.result_created[result])
        yield attempts
        latency = HistogramMetricFamily(
            "mailing_sender_provider_latency_seconds",
            "Duration of calls to the external API, answered or not",
        )
        if with_samples:
            cumulative, buckets = 0, []
            for bound, count in zip((*self.bounds, math.inf), self.bucket_counts, strict=True):
                cumulative += count
                buckets.append(("+Inf" if bound == math.inf else repr(bound), cumulative))
            latency.add_metric([], buckets, self.duration_sum)
            latency.add_sample(f"{latency.name}_created", {}, self.created)
        yield latency


class SenderMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        # Counted on every call: plain numbers in a collector of ours, read when scraped, instead of
        # a locked update of a labelled counter and a histogram per call.
        self.calls = CallStats(LATENCY_BUCKETS)
        registry.register(self.calls)
        self.outcomes = Counter(
            "mailing_sender_outcomes_total",
            "Status writes by resulting status (sent, retrying, failed, expired, cancelled, pending, queued)",
            ["status"],
            registry=registry,
        )
        # Every status from 0 at the start: a series born at its first write, holding that write's count,
        # would hide it from increase() (a new sender's first failures, the alerts on parked sends).
        for status in MessageStatus:
            self.outcomes.labels(status)
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
            "Duration of one flush's status write (one transaction of one or two statements)",
            # Up to past the fence (3 s), where calls stop for a write that does not finish.
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 2.5, 5.0),
            registry=registry,
        )
        self.flush_rows = Counter(
            "mailing_sender_status_rows_total",
            "Message rows written by batched status writes",
            registry=registry,
        )
        self.outcomes_unwritten = Counter(
            "mailing_sender_outcomes_unwritten_total",
            "Outcomes not written because the message was final already or its claim had passed on",
            registry=registry,
        )
        self.fenced = Gauge(
            "mailing_sender_fenced",
            "1 while the sender makes no calls because its outcomes cannot be recorded",
            registry=registry,
        )
        self.deliveries = Counter(
            "mailing_sender_deliveries_total",
            "SendMessages deliveries handled to the end, by result",
            ["result"],
            registry=registry,
        )
