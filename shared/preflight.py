"""`python -m shared.preflight`: say clearly which dependency is down and how to start it."""

from __future__ import annotations

import socket
import sys
from urllib.parse import urlsplit

from shared.settings import CommonSettings

HOW_TO_START = {
    "PostgreSQL": "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
    "RabbitMQ": "rabbitmq-server -detached && rabbitmqctl await_startup",
}


def reachable(host: str, port: int, timeout: float = 2.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def main() -> int:
    settings = CommonSettings()
    targets = {
        "PostgreSQL": urlsplit(settings.database_url.replace("+psycopg", "")),
        "RabbitMQ": urlsplit(settings.amqp_url),
    }
    defaults = {"PostgreSQL": 5432, "RabbitMQ": 5672}
    missing = []
    for name, url in targets.items():
        host, port = url.hostname or "127.0.0.1", url.port or defaults[name]
        if reachable(host, port):
            print(f"ok: {name} at {host}:{port}")
        else:
            missing.append(name)
            print(
                f"MISSING: {name} is not reachable at {host}:{port}. Start it with:\n    {HOW_TO_START[name]}"
            )
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
