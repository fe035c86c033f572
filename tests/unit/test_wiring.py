"""Every service is wired in one shape: `build_<service>(settings)` connects to nothing and answers an
object whose `start()` and `stop()` are coroutines."""

from __future__ import annotations

import inspect
from collections.abc import Callable

import pytest

from services.api.app import build_api
from services.api.settings import ApiSettings
from services.probe_stub.app import build_probe_stub
from services.probe_stub.settings import ProbeStubSettings
from services.reporter.app import build_reporter
from services.reporter.settings import ReporterSettings
from services.scheduler.app import build_scheduler
from services.scheduler.settings import SchedulerSettings
from services.sender.bootstrap import build_sender
from services.sender.settings import SenderSettings
from shared.service import Service

pytestmark = pytest.mark.unit

# Nothing listens on port 1: a build that connected would fail.
DATABASE = "postgresql+psycopg://nobody@127.0.0.1:1/nothing"
BROKER = "amqp://nobody:nothing@127.0.0.1:1/"

BUILDS: dict[str, Callable[[], Service]] = {
    "api": lambda: build_api(ApiSettings(database_url=DATABASE, amqp_url=BROKER, _env_file=None)),
    "scheduler": lambda: build_scheduler(
        SchedulerSettings(database_url=DATABASE, amqp_url=BROKER, _env_file=None)
    ),
    "sender": lambda: build_sender(SenderSettings(database_url=DATABASE, amqp_url=BROKER, _env_file=None)),
    "reporter": lambda: build_reporter(
        ReporterSettings(database_url=DATABASE, amqp_url=BROKER, _env_file=None)
    ),
    "probe stand-in": lambda: build_probe_stub(ProbeStubSettings(port=1, _env_file=None)),
}


@pytest.mark.parametrize("name", BUILDS)
def test_a_service_is_built_without_connecting_and_starts_and_stops(name: str) -> None:
    service = BUILDS[name]()

    assert inspect.iscoroutinefunction(service.start)
    assert inspect.iscoroutinefunction(service.stop)
