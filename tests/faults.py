"""Private servers for fault tests: stopped, started and restarted at will without disturbing the
PostgreSQL and RabbitMQ every other test shares. Recipes: FAULTS.md of the steering repository."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

POSTGRES_PORTS = range(5440, 5450)
POSTGRES_USER = "postgres"


def _free_port(candidates: Sequence[int]) -> int:
    for port in candidates:
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port among {candidates[0]}-{candidates[-1]}")


def _as_user(user: str, command: Sequence[str]) -> list[str]:
    # The server refuses to run as root; anyone else runs it as themselves.
    return ["runuser", "-u", user, "--", *command] if os.geteuid() == 0 else list(command)


def _postgres_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    if found:
        return found[-1].parent
    pg_ctl = shutil.which("pg_ctl")
    if pg_ctl is None:
        pytest.skip("no PostgreSQL server binaries (pg_ctl) on this machine")
    return Path(pg_ctl).parent


@dataclass
class PrivatePostgres:
    """A throwaway PostgreSQL cluster on its own port; trust authentication for `postgres`."""

    port: int
    directory: Path
    bin: Path

    @property
    def dsn(self) -> str:
        """libpq DSN of its `postgres` database."""
        return self.url("postgres", driver="postgresql")

    def url(self, database: str, *, driver: str = "postgresql+psycopg") -> str:
        return f"{driver}://{POSTGRES_USER}@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        self._pg_ctl("start")

    def stop(self) -> None:
        """A fast shutdown: open connections are closed, as in a failover or a restart."""
        self._pg_ctl("stop", "-m", "fast")

    def restart(self) -> None:
        self._pg_ctl("restart", "-m", "fast")

    def _pg_ctl(self, action: str, *extra: str) -> None:
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c fsync=off"
        command = [str(self.bin / "pg_ctl"), "-D", str(self.directory / "data"), "-w", "-t", "60"]
        if action != "stop":
            command += ["-o", options, "-l", str(self.directory / "log")]
        subprocess.run(_as_user(POSTGRES_USER, [*command, *extra, action]), check=True, capture_output=True)


@contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    """A new cluster, started, on a free port of 5440-5449; stopped and removed when the block ends."""
    bin_dir = _postgres_bin()
    directory = Path(tempfile.mkdtemp(prefix="faults-pg-"))
    shutil.chown(directory, POSTGRES_USER)
    cluster = PrivatePostgres(_free_port(POSTGRES_PORTS), directory, bin_dir)
    try:
        subprocess.run(
            _as_user(
                POSTGRES_USER,
                [str(bin_dir / "initdb"), "-D", str(directory / "data"), "-A", "trust", "-U", POSTGRES_USER],
            ),
            check=True,
            capture_output=True,
        )
        cluster.start()
        yield cluster
    finally:
        if (directory / "data" / "postmaster.pid").exists():
            cluster.stop()
        shutil.rmtree(directory, ignore_errors=True)
