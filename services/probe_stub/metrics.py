from typing import Literal

from prometheus_client import CollectorRegistry, Counter

Result = Literal[
    "accepted", "error", "timeout", "malformed", "rejected", "rate_limited", "unauthorized", "outage"
]
RESULTS: tuple[Result, ...] = (
    "accepted",
    "error",
    "timeout",
    "malformed",
    "rejected",
    "rate_limited",
    "unauthorized",
    "outage",
)


class ProbeStubMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        requests = Counter(
            "mailing_probe_stub_requests",
            "Send requests received by the probe stand-in, by how they were answered",
            ["result"],
            registry=registry,
        )
        # Resolved once: looking up a labelled child on every request costs more than the increment.
        self._requests = {result: requests.labels(result=result) for result in RESULTS}

    def count(self, result: Result) -> None:
        self._requests[result].inc()
