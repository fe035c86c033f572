"""Fault injection for the soak and the restart tests: a private RabbitMQ node and a private PostgreSQL
cluster (restarting them disturbs nobody else), a TCP proxy that freezes a connection without closing it,
and every service as its own process with its logs in files.

The recipes are those of FAULTS.md (shared notes): both servers refuse to run as root, RabbitMQ's
machine-wide config pins 5672, so the private node gets its own config, folder and node name.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Final

import aiohttp
import psycopg
from prometheus_client.parser import text_string_to_metric_families
from psycopg import sql

from shared.migrate import upgrade

ROOT: Final = Path(__file__).resolve().parent.parent
LOCALHOST: Final = "127.0.0.1"


def free_ports(count: int) -> list[int]:
    """Distinct ports nobody listens on; the sockets are held until all are chosen so none repeats."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind((LOCALHOST, 0))
            sockets.append(s)
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


def free_port() -> int:
    return free_ports(1)[0]


async def port_accepts(port: int, host: str = LOCALHOST) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 2)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


async def run(*args: str, env: Mapping[str, str] | None = None, within: float = 120.0) -> tuple[int, str]:
    """A command's exit code and its output (stdout and stderr together)."""
    process = await asyncio.create_subprocess_exec(
        *args,
        env=None if env is None else dict(env),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(process.communicate(), within)
    except TimeoutError:
        process.kill()
        await process.wait()
        return -1, f"{' '.join(args)}: no end after {within} s"
    assert process.returncode is not None
    return process.returncode, out.decode(errors="replace")


async def check(*args: str, env: Mapping[str, str] | None = None, within: float = 120.0) -> str:
    code, out = await run(*args, env=env, within=within)
    if code != 0:
        raise RuntimeError(f"{' '.join(args)} exited {code}: {out[-2000:]}")
    return out


class PrivateRabbit:
    """A RabbitMQ node of its own on free ports, in a temporary folder owned by the `rabbitmq` user."""

    def __init__(self, port: int | None = None, dist_port: int | None = None) -> None:
        ports = free_ports(2)
        self.port = port or ports[0]
        self.dist_port = dist_port or ports[1]
        self.node = f"chaos{self.port}@localhost"
        self.dir: Path | None = None
        self.restarts = 0

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@{LOCALHOST}:{self.port}/"

    def _env(self) -> dict[str, str]:
        assert self.dir is not None
        d = self.dir
        return {
            **os.environ,
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(d / "mnesia"),
            "RABBITMQ_LOG_BASE": str(d / "log"),
            "RABBITMQ_PID_FILE": str(d / "pid"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq"),
        }

    async def start(self, within: float = 90.0) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="chaos-rabbit-"))
        (self.dir / "enabled_plugins").write_text("[].\n")
        (self.dir / "rabbitmq.conf").write_text(f"listeners.tcp.local = {LOCALHOST}:{self.port}\n")
        await check("chown", "-R", "rabbitmq:rabbitmq", str(self.dir))
        await check("rabbitmq-server", "-detached", env=self._env())
        await self.wait_ready(within)

    async def ctl(self, *args: str, within: float = 60.0) -> tuple[int, str]:
        return await run("rabbitmqctl", "-n", self.node, *args, within=within)

    async def wait_ready(self, within: float = 90.0) -> None:
        """Until the AMQP port accepts and the node answers `status`."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if await port_accepts(self.port) and (await self.ctl("status", within=20))[0] == 0:
                return
            await asyncio.sleep(0.5)
        raise RuntimeError(f"RabbitMQ node {self.node} not ready on port {self.port} within {within} s")

    async def stop_app(self) -> None:
        """The broker goes away: every client connection is closed with CONNECTION_FORCED (320)."""
        code, out = await self.ctl("stop_app")
        if code != 0:
            raise RuntimeError(f"stop_app failed: {out}")

    async def start_app(self, within: float = 90.0) -> None:
        code, out = await self.ctl("start_app")
        if code != 0:
            raise RuntimeError(f"start_app failed: {out}")
        await self.wait_ready(within)

    async def restart(self, down_seconds: float = 7.0) -> None:
        await self.stop_app()
        await asyncio.sleep(down_seconds)
        await self.start_app()
        self.restarts += 1

    async def stop(self) -> None:
        if self.dir is None:
            return
        code, _ = await self.ctl("stop", within=60)
        pid_file = self.dir / "pid"
        if code != 0 and pid_file.exists():
            with contextlib.suppress(ValueError, ProcessLookupError):
                os.kill(int(pid_file.read_text().strip()), signal.SIGKILL)
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir = None


class PostgresUnavailable(RuntimeError):
    """This machine has no PostgreSQL server binaries (initdb, pg_ctl) to run a private cluster with."""


def postgres_bin() -> Path:
    """The newest server's `bin` folder under /usr/lib/postgresql (Debian's layout), else that of a
    `pg_ctl` on PATH."""
    found = sorted(
        (pg_ctl.parent for pg_ctl in Path("/usr/lib/postgresql").glob("*/bin/pg_ctl")),
        key=lambda bin_dir: [int(n) for n in re.findall(r"\d+", bin_dir.parent.name)],
    )
    if found:
        return found[-1]
    pg_ctl = shutil.which("pg_ctl")
    if pg_ctl is None:
        raise PostgresUnavailable("no PostgreSQL server binaries (pg_ctl) on this machine")
    return Path(pg_ctl).parent


class PrivatePostgres:
    """A PostgreSQL cluster of its own on a free port, trust authentication for `postgres`. As root its
    programs run as the `postgres` user through runuser (the server refuses root), otherwise as whoever
    runs them.

    `start` creates and starts the cluster and `stop` stops and removes it; in between, `stop_server` and
    `start_server` take the server down and bring it back with its data (a fast shutdown closes every
    connection, as a failover does), and `restart` does both at once."""

    def __init__(self, port: int | None = None, *, max_connections: int = 300) -> None:
        self.port = port or free_port()
        self.max_connections = max_connections
        self.dir: Path | None = None
        self.bin = postgres_bin()
        self.restarts = 0

    def url(self, database: str = "postgres", *, driver: str = "postgresql+psycopg") -> str:
        """The SQLAlchemy URL the services take (another `driver` for another client)."""
        return f"{driver}://postgres@{LOCALHOST}:{self.port}/{database}"

    def dsn(self, database: str = "postgres") -> str:
        """The libpq DSN psycopg takes."""
        return self.url(database, driver="postgresql")

    async def _as_postgres(self, program: str, *args: str, within: float = 120.0) -> str:
        command = [str(self.bin / program), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        return await check(*command, within=within)

    def _pg_ctl_args(self, *, with_options: bool = True) -> list[str]:
        assert self.dir is not None, "the cluster is not started"
        args = ["-D", str(self.dir / "data"), "-w", "-t", "60"]
        if with_options:
            opts = f"-p {self.port} -k {self.dir} -c listen_addresses={LOCALHOST} -c fsync=off"
            opts += f" -c max_connections={self.max_connections}"
            args += ["-o", opts, "-l", str(self.dir / "log")]
        return args

    async def start(self) -> None:
        """A new cluster in a temporary folder, started."""
        self.dir = Path(tempfile.mkdtemp(prefix="private-pg-"))
        if os.geteuid() == 0:
            await check("chown", "postgres", str(self.dir))
        await self._as_postgres("initdb", "-D", str(self.dir / "data"), "-A", "trust", "-U", "postgres")
        await self.start_server()

    async def stop_server(self) -> None:
        """A fast shutdown: open connections are closed, as in a failover; the data stays."""
        await self._as_postgres("pg_ctl", *self._pg_ctl_args(with_options=False), "-m", "fast", "stop")

    async def start_server(self) -> None:
        await self._as_postgres("pg_ctl", *self._pg_ctl_args(), "start")

    async def restart(self) -> None:
        await self._as_postgres("pg_ctl", *self._pg_ctl_args(), "-m", "fast", "restart")
        self.restarts += 1

    async def stop(self) -> None:
        """Stops the server if it runs and removes the cluster; nothing to do before `start`."""
        if self.dir is None:
            return
        if (self.dir / "data" / "postmaster.pid").exists():
            with contextlib.suppress(RuntimeError):
                await self.stop_server()
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir = None

    async def create_database(self, name: str) -> str:
        """Creates the database, applies every migration and returns its SQLAlchemy URL."""
        async with await psycopg.AsyncConnection.connect(self.dsn(), autocommit=True) as conn:
            await conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        url = self.url(name)
        await asyncio.to_thread(upgrade, url)
        return url


class FreezingProxy:
    """A TCP proxy that, on `freeze()`, stops forwarding in both directions without closing anything:
    the peers see a connection that simply stops answering (a half-open link, a paused server).

    `stop()` drops every connection and stops listening (the upstream is unreachable); `start()` again
    listens on the same port, so the peers find their way back as after a network outage."""

    def __init__(self, upstream_port: int, upstream_host: str = LOCALHOST) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = 0
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def frozen(self) -> bool:
        return not self._flowing.is_set()

    def freeze(self) -> None:
        self._flowing.clear()

    def unfreeze(self) -> None:
        self._flowing.set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, LOCALHOST, self.port, reuse_address=True)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pump(src, dst))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while True:
                await self._flowing.wait()
                data = await src.read(65536)
                if not data:
                    break
                # Bytes read just before a freeze are held back too: nothing crosses while frozen.
                await self._flowing.wait()
                dst.write(data)
                await dst.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            dst.close()
            self._writers.discard(dst)

    async def stop(self) -> None:
        self.unfreeze()
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for writer in list(self._writers):
            writer.close()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
            self._server = None


# What each kind of service reads as its listening port, and the path that says it is up.
PORT_SETTING: Final = {
    "api": "MAILING_API_PORT",
    "scheduler": "MAILING_SCHEDULER_METRICS_PORT",
    "sender": "MAILING_SENDER_METRICS_PORT",
    "reporter": "MAILING_REPORTER_METRICS_PORT",
    "probe_stub": "MAILING_PROBE_PORT",
}
HOST_SETTING: Final = {
    "api": "MAILING_API_HOST",
    "scheduler": "MAILING_SCHEDULER_METRICS_HOST",
    "sender": "MAILING_SENDER_METRICS_HOST",
    "reporter": "MAILING_REPORTER_METRICS_HOST",
    "probe_stub": "MAILING_PROBE_HOST",
}


@dataclass
class Service:
    name: str
    kind: str
    port: int
    env: dict[str, str]
    log: Path
    process: asyncio.subprocess.Process | None = None
    pump: asyncio.Task[None] | None = None
    starts: int = 0
    kills: list[float] = field(default_factory=list)
    expected_exit: bool = False
    watch: asyncio.Task[None] | None = None

    @property
    def base(self) -> str:
        return f"http://{LOCALHOST}:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None


def _clean_environment() -> dict[str, str]:
    # The services read MAILING_* from the environment first: none of the caller's may leak in.
    return {k: v for k, v in os.environ.items() if not k.startswith("MAILING_")}


class Services:
    """Each service as its own `python -m services.<kind>` process, its output piped into a log file."""

    def __init__(self, logs: Path, common_env: Mapping[str, str]) -> None:
        self.logs = logs
        self.logs.mkdir(parents=True, exist_ok=True)
        self.common_env = dict(common_env)
        self.services: dict[str, Service] = {}
        self.unexpected: list[str] = []
        self.supervise = True

    def add(self, name: str, kind: str, **env: str) -> Service:
        port = free_port()
        full = {
            **_clean_environment(),
            "MAILING_LOG_LEVEL": "INFO",
            **self.common_env,
            HOST_SETTING[kind]: LOCALHOST,
            PORT_SETTING[kind]: str(port),
            **env,
        }
        service = Service(name, kind, port, full, self.logs / f"{name}.log")
        self.services[name] = service
        return service

    def __getitem__(self, name: str) -> Service:
        return self.services[name]

    async def start(self, name: str) -> Service:
        service = self.services[name]
        if service.running:
            return service
        # `python -m bench.service_process` runs `services.<kind>` as `python -m` would (see its docstring).
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.service_process",
            cwd=ROOT,
            env={**service.env, "CHAOS_SERVICE": f"services.{service.kind}"},
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        service.process = process
        service.starts += 1
        assert process.stdout is not None
        log = service.log.open("ab", buffering=0)
        log.write(f"--- harness: start #{service.starts} pid {process.pid} at {time.time():.3f}\n".encode())
        service.pump = asyncio.create_task(_copy(process.stdout, log))
        service.expected_exit = False
        service.watch = asyncio.create_task(self._watch(service, process))
        return service

    async def _watch(self, service: Service, process: asyncio.subprocess.Process) -> None:
        """A process that ends without the harness asking (a crash, or a signal from outside) is noted and,
        when `supervise` is on, started again after two seconds, as a supervisor would."""
        code = await process.wait()
        if service.expected_exit or service.process is not process:
            return
        note = f"{service.name} exited by itself with {code} at {time.time():.3f}"
        self.unexpected.append(note)
        with service.log.open("ab") as log:
            log.write(f"--- harness: {note}\n".encode())
        if self.supervise:
            await asyncio.sleep(2)
            if service.process is process:
                await self.start(service.name)

    async def wait_healthy(self, name: str, within: float = 60.0, path: str = "/healthz") -> None:
        service = self.services[name]
        deadline = time.monotonic() + within
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as http:
            while time.monotonic() < deadline:
                if not service.running:
                    raise RuntimeError(f"{name} exited with {self._exit_code(name)}; see {service.log}")
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with http.get(service.base + path) as response:
                        if response.status == 200:
                            return
                await asyncio.sleep(0.2)
        raise RuntimeError(f"{name} not healthy at {service.base}{path} within {within} s; see {service.log}")

    def _exit_code(self, name: str) -> int | None:
        process = self.services[name].process
        return None if process is None else process.returncode

    async def kill(self, name: str) -> None:
        """SIGKILL: no shutdown handlers, no flush; what the process held in memory is gone."""
        service = self.services[name]
        if service.process is None or service.process.returncode is not None:
            return
        service.expected_exit = True
        service.process.send_signal(signal.SIGKILL)
        service.kills.append(time.time())
        await service.process.wait()
        await self._end_pump(service)

    async def restart(self, name: str, after: float = 0.0) -> None:
        await self.kill(name)
        if after:
            await asyncio.sleep(after)
        await self.start(name)

    async def stop(self, name: str, grace: float = 25.0) -> None:
        service = self.services[name]
        process = service.process
        service.expected_exit = True
        if process is not None and process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), grace)
            except TimeoutError:
                process.kill()
                await process.wait()
        await self._end_pump(service)

    async def stop_all(self) -> None:
        self.supervise = False
        await asyncio.gather(*(self.stop(name) for name in self.services), return_exceptions=True)
        watches = [s.watch for s in self.services.values() if s.watch is not None]
        for watch in watches:
            watch.cancel()
        await asyncio.gather(*watches, return_exceptions=True)

    async def _end_pump(self, service: Service) -> None:
        if service.pump is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(service.pump, 5)
            service.pump = None

    async def metrics(self, name: str) -> dict[str, float]:
        """The process's /metrics as {'name{label="v",...}': value}, and each name summed over labels."""
        service = self.services[name]
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http,
            http.get(service.base + "/metrics") as response,
        ):
            response.raise_for_status()
            text = await response.text()
        values: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
                values[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
                if labels:
                    values[sample.name] = values.get(sample.name, 0.0) + sample.value
        return values

    async def metric(self, name: str, metric: str, default: float = 0.0) -> float:
        try:
            return (await self.metrics(name)).get(metric, default)
        except (aiohttp.ClientError, TimeoutError):
            return default

    def count_in_logs(self, text: str, names: list[str] | None = None) -> int:
        needle = text.encode()
        total = 0
        for name in names or list(self.services):
            path = self.services[name].log
            if path.exists():
                with path.open("rb") as f:
                    total += sum(1 for line in f if needle in line)
        return total


async def _copy(source: asyncio.StreamReader, sink: IO[bytes]) -> None:
    try:
        while chunk := await source.read(65536):
            sink.write(chunk)
    finally:
        sink.close()
