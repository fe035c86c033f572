"""The schema wait of the services' init container: a rollback must not block on a newer schema."""

from __future__ import annotations

import psycopg
import pytest
from alembic.config import Config
from alembic.script import ScriptDirectory

from shared.migrate import ROOT, schema_is_ready, wait_for_schema
from shared.settings import CommonSettings

pytestmark = pytest.mark.integration


def set_revision(database_url: str, revision: str) -> None:
    dsn = CommonSettings(database_url=database_url).psycopg_dsn
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE alembic_version SET version_num = %s", (revision,))


def script() -> ScriptDirectory:
    return ScriptDirectory.from_config(Config(str(ROOT / "alembic.ini")))


def test_schema_at_the_codes_head_is_ready() -> None:
    assert schema_is_ready(script(), script().get_current_head())


def test_schema_behind_the_codes_head_or_missing_is_not_ready() -> None:
    head = script().get_current_head()
    assert head is not None
    previous = script().get_revision(head).down_revision
    assert isinstance(previous, str)
    assert not schema_is_ready(script(), previous)
    assert not schema_is_ready(script(), None)


def test_previous_release_starts_after_a_newer_migration(database_url: str) -> None:
    # The newer release's migration is unknown to this (older) code: the database is beyond its head.
    set_revision(database_url, "0999_from_a_newer_release")
    assert wait_for_schema(database_url, timeout_seconds=0)


def test_pod_waits_while_the_schema_is_older_than_its_code(database_url: str) -> None:
    head = script().get_current_head()
    assert head is not None
    set_revision(database_url, str(script().get_revision(head).down_revision))
    assert not wait_for_schema(database_url, timeout_seconds=0, poll_seconds=0)


def test_pod_starts_on_the_migrated_schema(database_url: str) -> None:
    assert wait_for_schema(database_url, timeout_seconds=0)
