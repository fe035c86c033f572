from enum import StrEnum

from prometheus_client import CollectorRegistry, Counter


class Result(StrEnum):
    """How the stand-in answered a send: its metric's label and its request log's `result`."""

    ACCEPTED = "accepted"
    ERROR = "error"
    TIMEOUT = "timeout"
    MALFORMED = "malformed"
    REJECTED = "rejected"
    RATE_LIMITED = "rate_limited"
    UNAUTHORIZED = "unauthorized"
    OUTAGE = "outage"


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
        self._requests = {result: requests.labels(result=result) for result in Result}

    def count(self, result: Result) -> None:
        self._requests[result].inc()
