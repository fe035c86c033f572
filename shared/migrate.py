"""`python -m shared.migrate`: create the database when it is missing, then apply every migration."""

from __future__ import annotations

import sys
from pathlib import Path

import psycopg
from alembic import command
from alembic.config import Config
from psycopg import sql
from sqlalchemy.engine import make_url

from shared.settings import CommonSettings

ROOT = Path(__file__).resolve().parent.parent


def ensure_database(database_url: str) -> bool:
    """Create the target database if it does not exist; return True when it was created."""
    url = make_url(database_url)
    admin = url.set(drivername="postgresql", database="postgres")
    dsn = admin.render_as_string(hide_password=False)
    with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (url.database,)).fetchone()
        if exists:
            return False
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(str(url.database))))
        return True


def upgrade(database_url: str) -> None:
    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    command.upgrade(config, "head")


def main() -> int:
    settings = CommonSettings()
    try:
        created = ensure_database(settings.database_url)
    except psycopg.OperationalError as exc:
        print(
            f"PostgreSQL is not reachable at {make_url(settings.database_url).render_as_string()}: {exc}\n"
            "Start it with: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start\n"
            "or point MAILING_DATABASE_URL at a running server.",
            file=sys.stderr,
        )
        return 1
    if created:
        print(f"created database {make_url(settings.database_url).database}")
    upgrade(settings.database_url)
    print("database schema is up to date")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
