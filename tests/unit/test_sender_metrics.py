from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter

from services.sender.metrics import SenderMetrics

pytestmark = pytest.mark.unit


def test_call_stats_read_as_a_labelled_counter_and_a_cumulative_histogram() -> None:
    registry = CollectorRegistry()
    metrics = SenderMetrics(registry)
    for result, seconds in [("ok", 0.003), ("ok", 0.05), ("http_5xx", 0.051), ("timeout", 60.0)]:
        metrics.calls.record(result, seconds)

    def sample(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    assert sample("mailing_sender_attempts_total", result="ok") == 2
    assert sample("mailing_sender_attempts_total", result="http_5xx") == 1
    assert sample("mailing_sender_attempts_total", result="timeout") == 1
    latency = "mailing_sender_provider_latency_seconds"
    assert sample(f"{latency}_bucket", le="0.005") == 1
    assert sample(f"{latency}_bucket", le="0.05") == 2  # a bucket's bound is inclusive
    assert sample(f"{latency}_bucket", le="0.1") == 3
    assert sample(f"{latency}_bucket", le="10.0") == 3
    assert sample(f"{latency}_bucket", le="+Inf") == 4
    assert sample(f"{latency}_count") == 4
    assert sample(f"{latency}_sum") == pytest.approx(60.104)
    # Like prometheus_client's own counters and histograms: each series says when it began.
    assert sample("mailing_sender_attempts_created", result="timeout") is not None
    assert sample(f"{latency}_created") is not None


def test_no_other_metric_can_take_the_call_stats_names() -> None:
    registry = CollectorRegistry()
    SenderMetrics(registry)
    with pytest.raises(ValueError, match="Duplicated"):
        Counter("mailing_sender_attempts", "another", registry=registry)


def test_every_outcome_status_is_exported_from_zero_before_its_first_write() -> None:
    # A series born at its first write would hide that write from increase() (the parked-sends alerts).
    registry = CollectorRegistry()
    SenderMetrics(registry)
    for status in ("sent", "failed", "retrying", "expired", "cancelled", "pending", "queued"):
        assert registry.get_sample_value("mailing_sender_outcomes_total", {"status": status}) == 0.0
