from __future__ import annotations

from typing import Any

from shared.settings import CommonSettings, service_setting


def _setting(default: Any, name: str, **constraints: Any) -> Any:
    return service_setting("scheduler", name, default, **constraints)


class SchedulerSettings(CommonSettings):
    metrics_host: str = _setting("0.0.0.0", "metrics_host")  # noqa: S104 metrics and health only: compose publishes them on 127.0.0.1, Kubernetes scrapes in-cluster
    metrics_port: int = _setting(9101, "metrics_port", ge=0, le=65535)
    tick_seconds: float = _setting(2.0, "tick_seconds", gt=0)
    dispatch_batch: int = _setting(5000, "dispatch_batch", ge=1)
    messages_per_event: int = _setting(500, "messages_per_event", ge=1)
    # Outstanding = queued or retrying; 0 means no cap.
    max_outstanding: int = _setting(50000, "max_outstanding", ge=0)
    requeue_after_seconds: float = _setting(60.0, "requeue_after_seconds", gt=0)
    # A client write whose transaction started this long before an expansion may commit after it.
    client_change_margin_seconds: float = _setting(10.0, "client_change_margin_seconds", ge=0)
