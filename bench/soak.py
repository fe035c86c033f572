"""`python -m bench.soak [--clients N] [--quick]`: every service as its own process (two senders, two
schedulers, the API, the reporter, the stand-in) against a private RabbitMQ node and a private PostgreSQL
cluster, seven overlapping mailings, and a timeline of faults; then an audit of what reached the stand-in.

The audit and what each line means: docs/reliability.md. The exit code is 1 when an audited line is
violated.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import itertools
import json
import math
import random
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from datetime import time as dtime
from pathlib import Path
from typing import Any, Final
from zoneinfo import ZoneInfo

import aiohttp
import psycopg

from bench.chaos import ROOT, FreezingProxy, PrivatePostgres, PrivateRabbit, Services, free_port
from services.probe_stub.token import make_token
from shared.domain.statuses import FINAL_MESSAGE_STATUSES, MessageStatus

API_KEY: Final = "soak-bootstrap-key-0123456789abcdef"
AUTH: Final = {"Authorization": f"Bearer {API_KEY}"}
RETRY_DELAYS: Final = (0.5, 1.0, 2.0)
RETRY_JITTER: Final = 0.1
REQUEST_TIMEOUT: Final = 2.0
RECHECK_SECONDS: Final = 0.5
IN_FLIGHT_GAUGES: Final = ("mailing_sender_in_flight_requests", "mailing_sender_calls_in_flight")
# Every call the sender made, by result: read with the in-flight gauge, the calls made between two reads.
CALLS_ENDED: Final = "mailing_sender_attempts_total"
REQUEUED: Final = "mailing_scheduler_messages_requeued_total"
SWEEP_LOG_LINE: Final = "message re-published by the recovery sweep"
FINAL: Final = tuple(sorted(FINAL_MESSAGE_STATUSES))
BASELINE_FAULTS: Final = {
    "latency_ms": 150.0,
    "latency_jitter_ms": 200.0,
    "error_rate": 0.1,
    "timeout_rate": 0.01,
    "malformed_rate": 0.03,
}
# Offsets in November: inside the window (UTC-3:30 .. UTC+4:30) or at least an hour before its opening.
TIMEZONES: Final = (
    "UTC",
    "Europe/London",
    "Europe/Berlin",
    "Europe/Kaliningrad",
    "Europe/Moscow",
    "Asia/Dubai",
    "America/Sao_Paulo",
    "America/New_York",
    "America/Los_Angeles",
    "Asia/Kolkata",
    "Asia/Yekaterinburg",
    "Asia/Novosibirsk",
    "Asia/Tokyo",
    "Asia/Vladivostok",
    "Pacific/Auckland",
)
# Mailing name -> share of the clients loaded before the run (each mailing's filter names its tag).
SHARES: Final = {
    "future": 0.15,
    "window": 0.20,
    "ending": 0.15,
    "pause_resume": 0.10,
    "cancel_midway": 0.10,
    "narrowed": 0.15,
    "growing": 0.15,
}
GROWTH_SHARE: Final = 0.05
NARROW_KEPT, NARROW_REMOVED = "900", "901"


@dataclass
class SoakConfig:
    clients: int = 50_000
    # Seconds between the timeline's events are multiplied by this.
    scale: float = 4.0
    freeze_seconds: float = 180.0
    lease_seconds: float = 60.0
    requeue_after_seconds: float = 60.0
    # Time after the last fault for every message to become final.
    deadline_seconds: float = 1800.0
    seed: int = 20261130
    label: str = "full"

    @classmethod
    def quick(cls, clients: int = 5_000) -> SoakConfig:
        return cls(
            clients=clients,
            scale=1.0,
            freeze_seconds=30.0,
            lease_seconds=10.0,
            requeue_after_seconds=20.0,
            deadline_seconds=600.0,
            label="quick",
        )

    @classmethod
    def for_tests(cls, clients: int = 3_000) -> SoakConfig:
        return cls(
            clients=clients,
            scale=0.8,
            freeze_seconds=20.0,
            lease_seconds=8.0,
            requeue_after_seconds=15.0,
            deadline_seconds=120.0,
            label="test",
        )

    @property
    def timeline_seconds(self) -> float:
        return max(90.0 * self.scale, 22.0 * self.scale + self.freeze_seconds + 10.0)

    @property
    def rate_per_second(self) -> float:
        deliverable = self.clients * (1.0 - SHARES["cancel_midway"] / 2)
        return max(20.0, round(deliverable / (self.timeline_seconds * 0.9), 1))

    @property
    def in_flight_per_sender(self) -> int:
        # Few calls at once against the stand-in's latency spread delivery over the whole timeline, so
        # every fault lands mid-delivery whatever the machine's speed. Not the senders' shared rate limit:
        # its bucket lives in PostgreSQL, and a sender whose database is frozen would then call nobody,
        # which is not the case the freeze is there to test. 1.2 for the retries.
        mean_latency = (BASELINE_FAULTS["latency_ms"] + BASELINE_FAULTS["latency_jitter_ms"] / 2) / 1000
        return max(2, math.ceil(self.rate_per_second * 1.2 * mean_latency / 2))


@dataclass
class Phase:
    name: str
    start: float
    end: float
    # API errors in these phases are audited; the others (the API's own dependencies down) only reported.
    audited: bool


@dataclass
class Kill:
    service: str
    at: float
    in_flight: float | None = None
    requeued_before: float | None = None


@dataclass
class AuditLine:
    name: str
    value: float
    bound: float | None
    ok: bool
    note: str = ""


@dataclass
class SoakResult:
    config: SoakConfig
    started_at: float
    t0: float
    events: list[tuple[float, str]]
    phases: list[Phase]
    kills: list[Kill]
    lines: list[AuditLine]
    statuses: dict[str, int]
    per_mailing: dict[str, dict[str, int]]
    api_phases: dict[str, dict[str, float]]
    details: dict[str, Any]
    logs: str

    @property
    def ok(self) -> bool:
        return all(line.ok for line in self.lines)

    def violated(self) -> list[AuditLine]:
        return [line for line in self.lines if not line.ok]

    def to_json(self) -> dict[str, Any]:
        return {
            "config": asdict(self.config),
            "ok": self.ok,
            "started_at": datetime.fromtimestamp(self.started_at, UTC).isoformat(),
            "events": [{"t": round(t, 2), "event": e} for t, e in self.events],
            "phases": [
                {**asdict(p), "start": round(p.start - self.t0, 2), "end": round(p.end - self.t0, 2)}
                for p in self.phases
            ],
            "kills": [{**asdict(k), "at": round(k.at - self.t0, 2)} for k in self.kills],
            "audit": [asdict(line) for line in self.lines],
            "statuses": self.statuses,
            "per_mailing": self.per_mailing,
            "api_phases": self.api_phases,
            "details": self.details,
            "logs": self.logs,
        }

    def markdown(self) -> str:
        out = io.StringIO()
        c = self.config
        out.write(
            f"# Soak ({c.label}), {datetime.fromtimestamp(self.started_at, UTC):%Y-%m-%d %H:%M} UTC\n\n"
        )
        out.write(
            f"**{'PASS' if self.ok else 'FAIL'}**: {len(self.violated())} audited line(s) violated.\n\n"
        )
        out.write(
            f"{c.clients} clients loaded before the run, {int(c.clients * GROWTH_SHARE)} imported during it; "
            f"2 senders, 2 schedulers, api, reporter, stand-in, each its own process; private RabbitMQ and "
            f"PostgreSQL. Retry delays {list(RETRY_DELAYS)} s (jitter {RETRY_JITTER}), request timeout "
            f"{REQUEST_TIMEOUT} s, sender lease {c.lease_seconds} s, sweep after "
            f"{c.requeue_after_seconds} s, "
            f"{c.in_flight_per_sender} calls in flight per sender (about {c.rate_per_second}/s in all), "
            f"DB freeze {c.freeze_seconds} s, seed {c.seed}. "
            f"Logs: `{self.logs}`.\n\n"
        )
        out.write("## Audit\n\n| line | value | bound | result | note |\n|---|---|---|---|---|\n")
        for line in self.lines:
            bound = "" if line.bound is None else f"{line.bound:g}"
            verdict = "ok" if line.ok else "**VIOLATED**"
            if line.bound is None and line.ok:
                verdict = "info"
            out.write(f"| {line.name} | {line.value:g} | {bound} | {verdict} | {line.note} |\n")
        out.write("\n## Messages by final status\n\n| mailing | " + " | ".join(FINAL) + " | other |\n")
        out.write("|---" * (len(FINAL) + 2) + "|\n")
        for name, counts in {**self.per_mailing, "all": self.statuses}.items():
            other = sum(v for k, v in counts.items() if k not in FINAL)
            out.write(f"| {name} | " + " | ".join(str(counts.get(s, 0)) for s in FINAL) + f" | {other} |\n")
        out.write("\n## Kills (in-flight calls read from /metrics just before SIGKILL)\n\n")
        out.write("| t (s) | service | in flight | requeued counter before |\n|---|---|---|---|\n")
        for k in self.kills:
            out.write(f"| {k.at - self.t0:.1f} | {k.service} | {k.in_flight} | {k.requeued_before} |\n")
        out.write("\n## API during each phase\n\n")
        out.write("| phase | requests | 5xx | 5xx share | no answer | audited | errors audited |\n")
        out.write("|---|---|---|---|---|---|---|\n")
        for name, row in self.api_phases.items():
            out.write(
                f"| {name} | {row['requests']:g} | {row['5xx']:g} | {row['share']:.3%} | "
                f"{row['no_answer']:g} | {'yes' if row['audited'] else 'no'} | {row['audited_errors']:g} |\n"
            )
        out.write("\n## Timeline (seconds after the mailings were created)\n\n")
        for t, event in self.events:
            out.write(f"- {t:7.1f} {event}\n")
        out.write("\n## Details\n\n```json\n" + json.dumps(self.details, indent=1, default=str) + "\n```\n")
        return out.getvalue()


class Harness:
    """Owns the private servers, the processes and what was observed while the faults ran."""

    def __init__(self, config: SoakConfig, logs: Path) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.logs = logs
        self.rabbit = PrivateRabbit()
        self.postgres = PrivatePostgres()
        self.proxy: FreezingProxy | None = None
        self.services: Services | None = None
        self.http: aiohttp.ClientSession | None = None
        self.database_url = ""
        self.t0 = 0.0
        self.events: list[tuple[float, str]] = []
        self.phases: list[Phase] = []
        self.kills: list[Kill] = []
        self.api_samples: list[tuple[float, int]] = []
        self.mailings: dict[str, int] = {}
        self.mailing_end: dict[str, datetime] = {}
        self.window: tuple[dtime, dtime] | None = None
        self.narrowed_at: float | None = None
        # (seconds since the freeze, calls in flight, calls ended so far) at the frozen sender.
        self.fence_samples: list[tuple[float, float, float]] = []
        self.freeze_started: float | None = None
        self.requeued_final: dict[str, float] = {}
        self.load_stop = asyncio.Event()

    # ----- set-up -----

    async def start(self) -> None:
        await asyncio.gather(self.rabbit.start(), self.postgres.start())
        self.database_url = await self.postgres.create_database("soak")
        self.proxy = FreezingProxy(self.postgres.port)
        await self.proxy.start()
        c = self.config
        common = {
            "MAILING_DATABASE_URL": self.database_url,
            "MAILING_AMQP_URL": self.rabbit.url,
            "MAILING_AMQP_NAMESPACE": "soak",
            "MAILING_RETRY_DELAYS_SECONDS": json.dumps(list(RETRY_DELAYS)),
            "MAILING_BOOTSTRAP_API_KEY": API_KEY,
            "MAILING_DB_POOL_SIZE": "5",
            "MAILING_PROBE_TOKEN": make_token("local-probe-secret"),
            "MAILING_SCHEDULER_TICK_SECONDS": "1",
            "MAILING_SCHEDULER_REQUEUE_AFTER_SECONDS": str(c.requeue_after_seconds),
            "MAILING_SENDER_REQUEST_TIMEOUT_SECONDS": str(REQUEST_TIMEOUT),
            "MAILING_SENDER_LEASE_SECONDS": str(c.lease_seconds),
            "MAILING_SENDER_MAX_ATTEMPTS": "10",
            "MAILING_SENDER_MAX_IN_FLIGHT": str(c.in_flight_per_sender),
            "MAILING_SENDER_RETRY_JITTER": str(RETRY_JITTER),
            "MAILING_SENDER_MAILING_RECHECK_SECONDS": str(RECHECK_SECONDS),
            "MAILING_SENDER_BREAKER_COOLDOWN_SECONDS": "2",
            "MAILING_REPORTER_SMTP_PORT": str(free_port()),
            "MAILING_REPORTER_TICK_SECONDS": "5",
        }
        services = self.services = Services(self.logs, common)
        stub = services.add(
            "stub",
            "probe_stub",
            **{f"MAILING_PROBE_{k.upper()}": str(v) for k, v in BASELINE_FAULTS.items()},
        )
        services.common_env["MAILING_PROBE_BASE_URL"] = stub.base
        services.add("api", "api")
        services.add("scheduler1", "scheduler")
        services.add("scheduler2", "scheduler")
        services.add("sender1", "sender")
        frozen_url = self.database_url.replace(f":{self.postgres.port}/", f":{self.proxy.port}/")
        services.add("sender2", "sender", MAILING_DATABASE_URL=frozen_url)
        services.add("reporter", "reporter")
        for name in ("stub", "api"):
            await services.start(name)
            await services.wait_healthy(name)
        for name in ("scheduler1", "scheduler2", "sender1", "sender2", "reporter"):
            await services.start(name)
        for name in ("scheduler1", "scheduler2", "sender1", "sender2", "reporter"):
            await services.wait_healthy(name)
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))

    async def close(self) -> None:
        self.load_stop.set()
        if self.http is not None:
            await self.http.close()
        if self.services is not None:
            await self.services.stop_all()
        if self.proxy is not None:
            await self.proxy.stop()
        await asyncio.gather(self.rabbit.stop(), self.postgres.stop(), return_exceptions=True)

    # ----- helpers -----

    def note(self, event: str) -> None:
        t = time.time() - self.t0 if self.t0 else 0.0
        self.events.append((t, event))
        print(f"[soak {t:7.1f}s] {event}", flush=True)

    @property
    def svc(self) -> Services:
        assert self.services is not None
        return self.services

    @property
    def client(self) -> aiohttp.ClientSession:
        assert self.http is not None
        return self.http

    async def api(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        async with self.client.request(method, self.svc["api"].base + path, headers=AUTH, **kwargs) as r:
            body = await r.json() if r.content_type == "application/json" else await r.text()
            return r.status, body

    async def stub_faults(self, **faults: float) -> None:
        async with self.client.put(self.svc["stub"].base + "/_stub/faults", json=faults) as r:
            r.raise_for_status()

    async def in_flight(self, name: str) -> float:
        values = await self.svc.metrics(name)
        return sum(values.get(g, 0.0) for g in IN_FLIGHT_GAUGES)

    async def calls(self, name: str) -> tuple[float, float]:
        """A sender's calls in flight, and the calls it has ended so far (answered or not)."""
        values = await self.svc.metrics(name)
        return sum(values.get(g, 0.0) for g in IN_FLIGHT_GAUGES), values.get(CALLS_ENDED, 0.0)

    # ----- data -----

    async def load_clients(self) -> None:
        c = self.config
        rows: list[tuple[str, str, str, str]] = []
        n = 0
        for name, share in SHARES.items():
            for i in range(int(c.clients * share)):
                code = (
                    (NARROW_KEPT if i % 2 == 0 else NARROW_REMOVED)
                    if name == "narrowed"
                    else f"9{n % 100:02d}"
                )
                rows.append((f"79{n:09d}", code, name, TIMEZONES[n % len(TIMEZONES)]))
                n += 1
        async with await psycopg.AsyncConnection.connect(self.postgres.dsn("soak")) as conn:
            async with (
                conn.cursor() as cur,
                cur.copy("COPY clients (phone, operator_code, tag, timezone) FROM STDIN") as copy,
            ):
                for row in rows:
                    await copy.write_row(row)
            await conn.commit()
        self.note(f"{len(rows)} clients loaded with COPY")

    async def create_mailings(self) -> None:
        now = datetime.now(UTC)
        far = now + timedelta(hours=2)
        start = now - timedelta(seconds=1)
        opening = (now - timedelta(hours=3, minutes=30)).time().replace(second=0, microsecond=0)
        closing = (now + timedelta(hours=4, minutes=30)).time().replace(second=0, microsecond=0)
        self.window = (opening, closing)
        s = self.config.scale
        specs: dict[str, dict[str, Any]] = {
            "future": {"start_at": now + timedelta(seconds=20 * s), "end_at": far},
            "window": {
                "start_at": start,
                "end_at": now + timedelta(minutes=30),
                "window": {"start": opening.strftime("%H:%M"), "end": closing.strftime("%H:%M")},
            },
            # Its end falls in the provider's outage: what is still retrying then must expire, never be sent.
            "ending": {"start_at": start, "end_at": now + timedelta(seconds=11 * s)},
            "pause_resume": {"start_at": start, "end_at": far},
            "cancel_midway": {"start_at": start, "end_at": far},
            "narrowed": {"start_at": start, "end_at": far},
            "growing": {"start_at": start, "end_at": far},
        }
        for name, spec in specs.items():
            codes = [NARROW_KEPT, NARROW_REMOVED] if name == "narrowed" else []
            body = {
                "text": f"soak {name}",
                "filter": {"tags": [name], "operator_codes": codes},
                **{k: v.isoformat() if isinstance(v, datetime) else v for k, v in spec.items()},
            }
            status, answer = await self.api("POST", "/api/v1/mailings", json=body)
            if status != 201:
                raise RuntimeError(f"creating mailing {name}: {status} {answer}")
            self.mailings[name] = int(answer["id"])
            self.mailing_end[name] = spec["end_at"]
        self.t0 = time.time()
        self.note(f"mailings created: {self.mailings}; window {opening:%H:%M}-{closing:%H:%M}")

    # ----- faults -----

    def phase(self, name: str, start: float, audited: bool) -> None:
        self.phases.append(Phase(name, start, time.time(), audited))

    async def provider_phase(self, name: str, seconds: float, **faults: float) -> None:
        start = time.time()
        self.note(f"provider: {name} {faults} for {seconds:.0f} s")
        await self.stub_faults(**faults)
        await asyncio.sleep(seconds)
        await self.stub_faults(**BASELINE_FAULTS)
        self.phase(f"provider {name}", start, audited=True)

    async def outage(self, seconds: float) -> None:
        start = time.time()
        self.note(f"provider: outage {seconds:.0f} s")
        await self.stub_faults(outage_seconds=seconds)
        await asyncio.sleep(seconds)
        self.phase("provider outage", start, audited=True)

    async def kill(self, name: str, down: float) -> None:
        kill = Kill(name, time.time())
        service = self.svc[name]
        if service.kind == "sender":
            kill.in_flight = await self.in_flight(name)
        if service.kind == "scheduler":
            kill.requeued_before = await self.svc.metric(name, REQUEUED)
        kill.at = time.time()
        await self.svc.kill(name)
        self.kills.append(kill)
        self.note(f"SIGKILL {name} (in flight {kill.in_flight}, requeued so far {kill.requeued_before})")
        await asyncio.sleep(down)
        await self.svc.start(name)
        await self.svc.wait_healthy(name, within=120)
        self.note(f"{name} back")
        self.phase(f"{name} killed", kill.at, audited=name != "api")

    async def restart_rabbit(self) -> None:
        start = time.time()
        self.note("RabbitMQ stop_app")
        await self.rabbit.stop_app()
        await asyncio.sleep(7)
        await self.rabbit.start_app()
        self.note("RabbitMQ start_app done")
        await asyncio.sleep(5)
        self.phase("rabbitmq restart", start, audited=False)

    async def restart_postgres(self) -> None:
        start = time.time()
        self.note("PostgreSQL restart (-m fast)")
        await self.postgres.restart()
        self.note("PostgreSQL back")
        await asyncio.sleep(5)
        self.phase("postgresql restart", start, audited=False)

    async def freeze(self) -> None:
        assert self.proxy is not None
        c = self.config
        start = self.freeze_started = time.time()
        sampler = asyncio.create_task(self._sample_frozen_sender())
        self.fence_samples.append((0.0, *await self.calls("sender2")))
        self.proxy.freeze()
        self.note(
            f"sender2's database connection frozen for {c.freeze_seconds:.0f} s (lease {c.lease_seconds} s)"
        )
        try:
            await asyncio.sleep(c.freeze_seconds)
        finally:
            self.proxy.unfreeze()
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
        self.note("sender2's database connection flows again")
        self.phase("sender2 db frozen", start, audited=True)

    async def _sample_frozen_sender(self) -> None:
        assert self.freeze_started is not None
        while True:
            await asyncio.sleep(0.5)
            with contextlib.suppress(Exception):
                in_flight, ended = await self.calls("sender2")
                self.fence_samples.append((time.time() - self.freeze_started, in_flight, ended))

    async def pause_and_resume(self, paused_for: float) -> None:
        mid = self.mailings["pause_resume"]
        status, body = await self.api("POST", f"/api/v1/mailings/{mid}/pause")
        self.note(f"pause 'pause_resume': {status}")
        await asyncio.sleep(paused_for)
        status, body = await self.api("POST", f"/api/v1/mailings/{mid}/resume")
        self.note(f"resume 'pause_resume': {status} {'' if status == 200 else body}")

    async def narrow(self) -> None:
        mid = self.mailings["narrowed"]
        body = {"filter": {"tags": ["narrowed"], "operator_codes": [NARROW_KEPT]}}
        status, answer = await self.api("PATCH", f"/api/v1/mailings/{mid}", json=body)
        if status == 200:
            self.narrowed_at = time.time()
        self.note(f"narrow 'narrowed' to operator {NARROW_KEPT}: {status} {'' if status == 200 else answer}")

    async def cancel(self) -> None:
        status, _ = await self.api("POST", f"/api/v1/mailings/{self.mailings['cancel_midway']}/cancel")
        self.note(f"cancel 'cancel_midway': {status}")

    async def grow(self) -> None:
        count = int(self.config.clients * GROWTH_SHARE)
        rows = ["phone,operator_code,tag,timezone"]
        rows += [f"78{n:09d},950,growing,{TIMEZONES[n % len(TIMEZONES)]}" for n in range(count)]
        form = aiohttp.FormData()
        form.add_field("file", "\n".join(rows).encode(), filename="growing.csv", content_type="text/csv")
        async with self.client.post(
            self.svc["api"].base + "/api/v1/clients/import", data=form, headers=AUTH
        ) as r:
            self.note(f"CSV import of {count} clients tagged 'growing': {r.status} {await r.text()}")

    async def timeline(self) -> None:
        s = self.config.scale
        rng = self.rng

        def at(seconds: float) -> float:
            return max(0.5, seconds * s + rng.uniform(-1.0, 1.0) * s)

        steps: list[tuple[float, Callable[[], Awaitable[None]]]] = [
            (at(3), lambda: self.pause_and_resume(20 * s)),
            (at(5), self.narrow),
            (
                at(6),
                lambda: self.provider_phase("slow answers", 8 * s, latency_ms=600, latency_jitter_ms=400),
            ),
            (8 * s, lambda: self.outage(6 * s)),
            (at(13), self.grow),
            (at(16), lambda: self.kill("sender1", 3)),
            (at(18), self.cancel),
            (22 * s, self.freeze),
            (at(28), lambda: self.provider_phase("errors 50%", 10 * s, error_rate=0.5)),
            (at(32), lambda: self.kill("scheduler1", 4)),
            (40 * s, self.restart_rabbit),
            (at(55), lambda: self.kill("api", 3)),
            (at(60), lambda: self.kill("reporter", 3)),
            (65 * s, self.restart_postgres),
            (
                at(72),
                lambda: self.provider_phase(
                    "malformed and timeouts", 10 * s, malformed_rate=0.3, timeout_rate=0.1
                ),
            ),
            (at(85), lambda: self.kill("scheduler2", 4)),
        ]

        async def run_at(when: float, step: Callable[[], Awaitable[None]]) -> None:
            await asyncio.sleep(max(0.0, self.t0 + when - time.time()))
            try:
                await step()
            except Exception as exc:
                self.note(f"fault step failed: {exc!r}")

        await asyncio.gather(*(run_at(when, step) for when, step in steps))
        self.note("timeline done")

    # ----- background API load -----

    async def api_load(self) -> None:
        paths = ["/api/v1/mailings", "/api/v1/stats/mailings", "/api/v1/clients?limit=50"]
        paths += [f"/api/v1/mailings/{m}/stats" for m in self.mailings.values()]
        paths += [f"/api/v1/mailings/{m}/messages?limit=20" for m in self.mailings.values()]
        n = 0
        timeout = aiohttp.ClientTimeout(total=10)
        while not self.load_stop.is_set():
            n += 1
            started = time.time()
            try:
                if n % 10 == 0:
                    body = {"phone": f"77{n:09d}", "tag": "load", "timezone": "Europe/Moscow"}
                    async with self.client.post(
                        self.svc["api"].base + "/api/v1/clients", json=body, headers=AUTH, timeout=timeout
                    ) as r:
                        await r.read()
                        status = r.status
                else:
                    path = self.rng.choice(paths)
                    async with self.client.get(
                        self.svc["api"].base + path, headers=AUTH, timeout=timeout
                    ) as r:
                        await r.read()
                        status = r.status
            except (aiohttp.ClientError, TimeoutError):
                status = 0
            self.api_samples.append((started, status))
            await asyncio.sleep(0.1)

    # ----- the end -----

    async def wait_final(self, within: float) -> bool:
        deadline = time.time() + within
        future_start = self.t0 + 20 * self.config.scale
        async with await psycopg.AsyncConnection.connect(self.postgres.dsn("soak"), autocommit=True) as conn:
            while time.time() < deadline:
                with contextlib.suppress(psycopg.Error):
                    open_count = await _scalar(
                        conn, "SELECT count(*) FROM messages WHERE status <> ALL(%s)", (list(FINAL),)
                    )
                    future = await _scalar(
                        conn,
                        "SELECT count(*) FROM messages WHERE mailing_id = %s",
                        (self.mailings["future"],),
                    )
                    if open_count == 0 and future > 0 and time.time() > future_start:
                        self.note("every message is final")
                        return True
                await asyncio.sleep(2)
        self.note(f"deadline of {within:.0f} s passed with messages not final")
        return False

    async def collect_scheduler_metrics(self) -> None:
        for name in ("scheduler1", "scheduler2"):
            self.requeued_final[name] = await self.svc.metric(name, REQUEUED)

    async def stand_in(self, path: str) -> Any:
        async with self.client.get(self.svc["stub"].base + path) as r:
            r.raise_for_status()
            return await r.json()


async def _scalar(conn: psycopg.AsyncConnection[Any], query: str, params: tuple[Any, ...] = ()) -> int:
    cursor = await conn.execute(query, params)
    row = await cursor.fetchone()
    return int(row[0]) if row is not None else 0


def _at(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def _inside(window: tuple[dtime, dtime], local: dtime) -> bool:
    start, end = window
    return start <= local < end if start < end else (local >= start or local < end)


@dataclass
class Observed:
    """Everything the audit reads, gathered after the run: the database, the stand-in, the harness."""

    messages: list[dict[str, Any]]
    missing: dict[str, int]
    accepted: list[dict[str, Any]]
    requests: list[dict[str, Any]]
    mailings: dict[str, int]
    mailing_end: dict[str, float]
    window: tuple[dtime, dtime] | None
    narrowed_at: float | None
    kills: list[Kill]
    fence_samples: list[tuple[float, float, float]]
    lease_seconds: float
    requeued_final: dict[str, float]
    sweep_log_lines: int
    api_samples: list[tuple[float, int]]
    phases: list[Phase]
    t0: float
    reached_final: bool
    unexpected_exits: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


# After a dependency (or the API itself) is back, the requests of the next seconds are reported, not audited.
RECOVERY_GRACE_SECONDS = 5.0


def frozen_calls(samples: Sequence[tuple[float, float, float]], window: float) -> float:
    """The calls a sender whose database froze may have made without recording their outcome: those in
    flight at the freeze and those started after it, read within `window` seconds. At each read that is
    the calls ended since the freeze plus those still in flight (a call in flight at the freeze counts
    once, when it ends or while it runs)."""
    inside = [sample for sample in samples if sample[0] <= window]
    if not inside:
        return 0.0
    ended_at_freeze = inside[0][2]
    return max(in_flight + ended - ended_at_freeze for _, in_flight, ended in inside)


def audit(o: Observed) -> tuple[list[AuditLine], dict[str, Any], dict[str, dict[str, float]]]:
    """The audit lines, their details (ids of offenders, figures) and the API's errors per phase."""
    lines: list[AuditLine] = []
    details: dict[str, Any] = dict(o.extra)
    by_id = {m["id"]: m for m in o.messages}
    names = {mid: name for name, mid in o.mailings.items()}
    statuses = Counter(m["status"] for m in o.messages)

    not_final = [m["id"] for m in o.messages if m["status"] not in FINAL]
    accepted_ids = Counter(r["msg_id"] for r in o.accepted)
    sent_ids = {m["id"] for m in o.messages if m["status"] == MessageStatus.SENT}
    sent_not_accepted = sorted(sent_ids - set(accepted_ids))
    accepted_not_sent = sorted(i for i in accepted_ids if i not in sent_ids)
    missing = sum(o.missing.values())
    lines.append(
        AuditLine(
            "lost: not final, or sent in the DB but never accepted at the stand-in",
            len(not_final) + len(sent_not_accepted),
            0,
            not not_final and not sent_not_accepted,
            f"{len(not_final)} not final ({'after all final' if o.reached_final else 'deadline passed'}), "
            f"{len(sent_not_accepted)} sent-not-accepted",
        )
    )
    lines.append(
        AuditLine(
            "clients matching a live mailing with no message",
            missing,
            0,
            missing == 0,
            json.dumps(o.missing),
        )
    )
    details["not_final_sample"] = not_final[:20]
    details["sent_not_accepted_sample"] = sent_not_accepted[:20]
    details["accepted_not_sent_sample"] = accepted_not_sent[:20]

    after_end = []
    outside = []
    excluded = []
    excluded_strict = 0
    tolerance = REQUEST_TIMEOUT
    for record in o.accepted:
        m = by_id.get(record["msg_id"])
        if m is None:
            continue
        at = _at(record["received_at"])
        name = names.get(m["mailing_id"], "?")
        if at > o.mailing_end.get(name, float("inf")):
            after_end.append(record["msg_id"])
        if name == "window" and o.window is not None:
            zone = ZoneInfo(m["timezone"])
            local = datetime.fromtimestamp(at, zone).time()
            local_before = datetime.fromtimestamp(at - tolerance, zone).time()
            if not (_inside(o.window, local) or _inside(o.window, local_before)):
                outside.append(record["msg_id"])
        if name == "narrowed" and o.narrowed_at is not None and m["operator_code"] == NARROW_REMOVED:
            if at > o.narrowed_at:
                excluded_strict += 1
            if at > o.narrowed_at + RECHECK_SECONDS + REQUEST_TIMEOUT:
                excluded.append(record["msg_id"])
    lines.append(
        AuditLine(
            "sent after the mailing's end (stand-in received_at > end_at)", len(after_end), 0, not after_end
        )
    )
    lines.append(
        AuditLine(
            "sent outside the client's window (client's local time)",
            len(outside),
            0,
            not outside,
            f"tolerance {tolerance:g} s (the request timeout): a call started inside may be accepted later",
        )
    )
    lines.append(
        AuditLine(
            "sent to a client the narrowed filter excludes, after the narrowing's 200",
            len(excluded),
            0,
            not excluded,
            f"counted when accepted > 200 + {RECHECK_SECONDS + REQUEST_TIMEOUT:g} s (sender's recheck "
            f"{RECHECK_SECONDS:g} s + request timeout); {excluded_strict} accepted any time after the 200",
        )
    )
    details["after_end_sample"] = after_end[:20]
    details["outside_window_sample"] = outside[:20]
    details["excluded_sample"] = excluded[:20]

    duplicates = sum(n - 1 for n in accepted_ids.values() if n > 1)
    killed_in_flight = sum(k.in_flight or 0.0 for k in o.kills if k.in_flight is not None)
    fence_window = o.lease_seconds + REQUEST_TIMEOUT
    fence = frozen_calls(o.fence_samples, fence_window)
    bound = killed_in_flight + fence
    # A call the provider accepted whose outcome died with its sender either goes out again once the lease
    # ends (a duplicate) or meets a message another path ended meanwhile (a cancel, the end): both spend
    # the same budget, the calls in flight that no outcome recorded.
    not_recorded = duplicates + len(accepted_not_sent)
    lines.append(
        AuditLine(
            "calls whose outcome was never recorded: duplicates at the stand-in, and accepted but not `sent`",
            not_recorded,
            bound,
            not_recorded <= bound,
            f"bound = sum of in-flight of SIGKILLed senders ({killed_in_flight:g}) + the calls the frozen "
            f"sender had in flight at the freeze or started after it, until its fence (read up to lease +"
            f" request timeout = {fence_window:g} s after the freeze: {fence:g}); {duplicates} duplicates"
            f" ({sum(1 for n in accepted_ids.values() if n > 1)} "
            f"messages accepted twice or more), {len(accepted_not_sent)} accepted but recorded as "
            + json.dumps(
                Counter(by_id[i]["status"] if i in by_id else "unknown id" for i in accepted_not_sent)
            ),
        )
    )
    details["duplicated_sample"] = [i for i, n in accepted_ids.items() if n > 1][:20]
    details["fence_samples"] = [(round(t, 1), v, ended) for t, v, ended in o.fence_samples]

    requeued_before_kills = sum(k.requeued_before or 0.0 for k in o.kills if k.requeued_before is not None)
    requeued = requeued_before_kills + sum(o.requeued_final.values())
    lines.append(
        AuditLine(
            "copies made by the recovery sweep (requeued counter, both schedulers, over restarts)",
            requeued,
            None,
            True,
            f"{o.sweep_log_lines} '{SWEEP_LOG_LINE}' log lines",
        )
    )

    min_delay = min(RETRY_DELAYS) * (1 - RETRY_JITTER)
    per_msg: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for r in o.requests:
        if r["msg_id"] is not None:
            per_msg[r["msg_id"]].append(r)
    early: list[tuple[int, float, str]] = []
    for msg_id, calls in per_msg.items():
        calls.sort(key=lambda r: r["received_at"])
        for before, after in itertools.pairwise(calls):
            if before["result"] == "accepted":
                continue
            gap = _at(after["received_at"]) - _at(before["answered_at"])
            if gap < min_delay:
                early.append((msg_id, round(gap, 3), before["result"]))
    lines.append(
        AuditLine(
            "attempts spent early (called again sooner than the smallest retry delay after a failure)",
            len(early),
            0,
            not early,
            f"smallest delay {min(RETRY_DELAYS):g} s x (1 - jitter {RETRY_JITTER:g}) = {min_delay:g} s, "
            "from the stand-in's answer (or the caller's hang-up) to the next arrival; "
            f"{len(o.requests)} requests recorded",
        )
    )
    details["early_sample"] = early[:20]
    details["early_by_previous_result"] = dict(Counter(e[2] for e in early))

    api_phases: dict[str, dict[str, float]] = {}
    groups: dict[str, list[int]] = defaultdict(list)
    audited_errors: dict[str, int] = Counter()
    for at, status in o.api_samples:
        # A restart's phase lasts until the API has had a few seconds to find its dependency again.
        active = [
            p for p in o.phases if p.start <= at <= p.end + (0 if p.audited else RECOVERY_GRACE_SECONDS)
        ] or [Phase("no fault", 0, 0, True)]
        # A request made while the API's own dependencies were down counts for no audited phase.
        counted = all(p.audited for p in active)
        for p in active:
            groups[p.name].append(status)
            if counted and (status >= 500 or status == 0):
                audited_errors[p.name] += 1
    audited = {p.name: p.audited for p in o.phases} | {"no fault": True}
    for name, statuses_seen in groups.items():
        errors = sum(1 for s in statuses_seen if s >= 500)
        answered = sum(1 for s in statuses_seen if s)
        api_phases[name] = {
            "requests": len(statuses_seen),
            "5xx": errors,
            "share": errors / answered if answered else 0.0,
            "no_answer": len(statuses_seen) - answered,
            "audited": audited.get(name, True),
            "audited_errors": audited_errors.get(name, 0),
        }
    lines.append(
        AuditLine(
            "API 5xx or unanswered requests during faults the API does not depend on",
            sum(audited_errors.values()),
            0,
            not audited_errors,
            "per phase below; requests made during a RabbitMQ or PostgreSQL restart or the API's own kill "
            "are reported, not audited: " + json.dumps({k: v for k, v in audited_errors.items() if v}),
        )
    )
    lines.append(
        AuditLine(
            "processes that ended without the harness asking (started again after 2 s)",
            len(o.unexpected_exits),
            None,
            True,
            "; ".join(o.unexpected_exits) or "none",
        )
    )
    details["statuses"] = dict(statuses)
    return lines, details, api_phases


async def gather_observed(h: Harness, reached_final: bool) -> Observed:
    async with await psycopg.AsyncConnection.connect(h.postgres.dsn("soak"), autocommit=True) as conn:
        cursor = await conn.execute(
            """SELECT m.id, m.mailing_id, m.client_id, m.status, m.attempts,
                      c.timezone, c.operator_code, c.tag
               FROM messages m JOIN clients c ON c.id = m.client_id"""
        )
        cols = ("id", "mailing_id", "client_id", "status", "attempts", "timezone", "operator_code", "tag")
        messages = [dict(zip(cols, row, strict=True)) for row in await cursor.fetchall()]
        missing: dict[str, int] = {}
        for name, mid in h.mailings.items():
            if name == "cancel_midway":
                continue
            missing[name] = await _scalar(
                conn,
                """SELECT count(*) FROM clients c, mailings g
                   WHERE g.id = %s AND c.deleted_at IS NULL
                     AND (cardinality(g.filter_tags) = 0 OR c.tag = ANY(g.filter_tags))
                     AND (cardinality(g.filter_operator_codes) = 0
                          OR c.operator_code = ANY(g.filter_operator_codes))
                     AND NOT EXISTS (SELECT 1 FROM messages m
                                     WHERE m.mailing_id = g.id AND m.client_id = c.id)""",
                (mid,),
            )
    assert h.services is not None
    return Observed(
        messages=messages,
        missing=missing,
        accepted=await h.stand_in("/_stub/accepted"),
        requests=await h.stand_in("/_stub/requests"),
        mailings=h.mailings,
        mailing_end={k: v.timestamp() for k, v in h.mailing_end.items()},
        window=h.window,
        narrowed_at=h.narrowed_at,
        kills=h.kills,
        fence_samples=h.fence_samples,
        lease_seconds=h.config.lease_seconds,
        requeued_final=h.requeued_final,
        sweep_log_lines=h.services.count_in_logs(SWEEP_LOG_LINE, ["scheduler1", "scheduler2"]),
        api_samples=h.api_samples,
        phases=h.phases,
        t0=h.t0,
        reached_final=reached_final,
        unexpected_exits=list(h.services.unexpected),
        extra={"stand_in_stats": await h.stand_in("/_stub/stats"), "requeued_final": h.requeued_final},
    )


async def run_soak(config: SoakConfig, logs: Path) -> SoakResult:
    started = time.time()
    h = Harness(config, logs)
    try:
        await h.start()
        await h.load_clients()
        await h.create_mailings()
        load = asyncio.create_task(h.api_load())
        await h.timeline()
        reached = await h.wait_final(config.deadline_seconds)
        h.load_stop.set()
        await load
        await asyncio.sleep(1)
        await h.collect_scheduler_metrics()
        observed = await gather_observed(h, reached)
    finally:
        await h.close()
    lines, details, api_phases = audit(observed)
    names = {mid: name for name, mid in h.mailings.items()}
    per_mailing: dict[str, Counter[str]] = defaultdict(Counter)
    for m in observed.messages:
        per_mailing[names.get(m["mailing_id"], str(m["mailing_id"]))][m["status"]] += 1
    details["run_seconds"] = round(time.time() - started, 1)
    return SoakResult(
        config=config,
        started_at=started,
        t0=h.t0,
        events=h.events,
        phases=h.phases,
        kills=h.kills,
        lines=lines,
        statuses=dict(Counter(m["status"] for m in observed.messages)),
        per_mailing={k: dict(v) for k, v in per_mailing.items()},
        api_phases=api_phases,
        details=details,
        logs=str(logs),
    )


def write_result(result: SoakResult, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(result.markdown())
    out.with_suffix(".json").write_text(json.dumps(result.to_json(), indent=1, default=str))


def print_audit(lines: Iterable[AuditLine]) -> None:
    for line in lines:
        verdict = "info" if line.bound is None else ("ok" if line.ok else "VIOLATED")
        bound = "" if line.bound is None else f" (bound {line.bound:g})"
        print(f"{verdict:>8}  {line.name}: {line.value:g}{bound}  {line.note}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=None, help="clients loaded before the run")
    parser.add_argument("--quick", action="store_true", help="5,000 clients, a 30 s freeze, about 5 minutes")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument(
        "--deadline",
        type=float,
        default=None,
        help="seconds after the last fault for every message to be final",
    )
    parser.add_argument("--out", type=Path, default=None, help="markdown report (JSON beside it)")
    args = parser.parse_args(argv)
    config = SoakConfig.quick() if args.quick else SoakConfig()
    if args.clients is not None:
        config.clients = args.clients
    if args.seed is not None:
        config.seed = args.seed
    if args.deadline is not None:
        config.deadline_seconds = args.deadline
    stamp = datetime.now(UTC).strftime("%Y-%m-%d-%H%M")
    out: Path = args.out or ROOT / "bench" / "results" / f"soak-{stamp}.md"
    logs = out.with_name(out.stem + "-logs")
    result = asyncio.run(run_soak(config, logs))
    write_result(result, out)
    print()
    print_audit(result.lines)
    print(f"\nreport: {out} (+ .json), logs: {logs}")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
