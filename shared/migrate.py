"""`python -m shared.migrate`: create the database when it is missing, then apply every migration.

`python -m shared.migrate --wait`: the init container of every service in a cluster; wait until the
schema is at or beyond the revision this code knows as its head, so no pod starts against an older
schema, and a pod of the previous release still starts after a newer release has migrated (a rollback).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import psycopg
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from psycopg import sql
from sqlalchemy import create_engine
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


def alembic_config(database_url: str) -> Config:
    """The project's Alembic configuration, pointed at `database_url`."""
    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade(database_url: str) -> None:
    command.upgrade(alembic_config(database_url), "head")


def schema_is_ready(script: ScriptDirectory, current: str | None) -> bool:
    """The database's revision is this code's head or beyond it.

    Beyond: a revision whose ancestors include the head, or one this code has never heard of, which
    only a newer release can have written (migrations stay compatible with the previous release).
    """
    head = script.get_current_head()
    if current is None:
        return head is None
    if current == head:
        return True
    try:
        ancestors = {rev.revision for rev in script.iterate_revisions(current, "base")}
    except Exception:  # alembic raises several kinds for a revision missing from this script directory
        return True
    return head in ancestors


def wait_for_schema(database_url: str, timeout_seconds: float = 1800.0, poll_seconds: float = 2.0) -> bool:
    script = ScriptDirectory.from_config(Config(str(ROOT / "alembic.ini")))
    engine = create_engine(database_url, pool_pre_ping=True)
    deadline = time.monotonic() + timeout_seconds
    try:
        while True:
            try:
                with engine.connect() as conn:
                    current = MigrationContext.configure(conn).get_current_revision()
                if schema_is_ready(script, current):
                    print(
                        f"schema at {current}: ready for this code (head {script.get_current_head()})",
                        flush=True,
                    )
                    return True
                print(
                    f"schema at {current}, waiting for {script.get_current_head()} (the migration job)",
                    flush=True,
                )
            except Exception as exc:  # any connection failure: wait for the database as for the schema
                print(f"database not reachable yet: {exc}", flush=True)
            if time.monotonic() >= deadline:
                return False
            time.sleep(poll_seconds)
    finally:
        engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shared.migrate")
    parser.add_argument("--wait", action="store_true", help="wait for the schema instead of migrating")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait with --wait")
    args = parser.parse_args(argv)
    settings = CommonSettings()
    if args.wait:
        return 0 if wait_for_schema(settings.database_url, args.timeout) else 1
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
