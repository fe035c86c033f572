"""Every service is wired in one shape: `build_<service>(settings)` connects to nothing and answers an
object whose `start()` and `stop()` are coroutines; `serve` runs one as its process."""

from __future__ import annotations

import asyncio
import gc
import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager

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
from shared import service as serving
from shared.service import GC_YOUNG_THRESHOLD, Service, serve

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


@pytest.fixture
def default_collector() -> Iterator[None]:
    """The collector as Python starts it; the test process gets its own settings back afterwards."""
    threshold = gc.get_threshold()
    gc.unfreeze()
    gc.set_threshold(700, 10, 10)
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


class _SeesTheCollector:
    """Asks to be stopped as soon as it has started (as SIGTERM would), and notes what the collector is
    like when it starts and when it stops."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, int]] = []
        self.stop_requested: asyncio.Event | None = None

    async def start(self) -> None:
        self.seen.append((gc.get_freeze_count(), gc.get_threshold()[0]))
        assert self.stop_requested is not None
        asyncio.get_running_loop().call_soon(self.stop_requested.set)

    async def stop(self) -> None:
        self.seen.append((gc.get_freeze_count(), gc.get_threshold()[0]))


@pytest.mark.usefixtures("default_collector")
async def test_a_served_service_runs_with_its_start_up_heap_frozen_and_a_larger_young_generation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    service = _SeesTheCollector()

    @contextmanager
    def signals(stop: asyncio.Event) -> Iterator[None]:
        service.stop_requested = stop
        yield

    monkeypatch.setattr(serving, "stop_on_signals", signals)

    await serve(service)

    (frozen_at_start, young_at_start), (frozen_running, young_running) = service.seen
    assert (frozen_at_start, young_at_start) == (0, 700)
    assert frozen_running > 0  # what `start` built is no longer walked
    assert young_running == GC_YOUNG_THRESHOLD
