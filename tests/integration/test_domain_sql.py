"""The domain's SQL forms, asked of PostgreSQL itself, against the Python rules they stand for."""

from __future__ import annotations

import psycopg
import pytest

from shared.domain.clients import operator_code_from_phone, operator_code_sql
from shared.domain.statuses import (
    FINAL_MESSAGE_STATUSES,
    FINAL_SQL,
    OPEN_MESSAGE_STATUSES,
    OPEN_SQL,
    MailingStatus,
    MessageStatus,
    ReportStatus,
)
from shared.settings import CommonSettings

pytestmark = pytest.mark.integration

PHONES = ["70000000000", "79161234567", "79999999999", "71230000000"]


def test_postgresql_derives_the_operator_code_the_python_rule_does(settings: CommonSettings) -> None:
    with psycopg.connect(settings.psycopg_dsn) as conn:
        for phone in PHONES:
            row = conn.execute(f"SELECT {operator_code_sql('%s')}", (phone,)).fetchone()
            assert row == (operator_code_from_phone(phone),)


def test_the_status_lists_are_the_statuses_postgresql_accepts(settings: CommonSettings) -> None:
    with psycopg.connect(settings.psycopg_dsn) as conn:
        for vocabulary, table in ((MessageStatus, "messages"), (MailingStatus, "mailings")):
            (check,) = conn.execute(
                "SELECT pg_get_constraintdef(oid) FROM pg_constraint"
                " WHERE conrelid = %s::regclass AND conname LIKE %s",
                (table, "%status_known"),
            ).fetchone() or ("",)
            assert all(f"'{s.value}'" in check for s in vocabulary), check
        everything = [s.value for s in MessageStatus]
        for listed, expected in ((OPEN_SQL, OPEN_MESSAGE_STATUSES), (FINAL_SQL, FINAL_MESSAGE_STATUSES)):
            rows = conn.execute(f"SELECT s FROM unnest(%s::text[]) AS s WHERE s IN {listed}", (everything,))
            assert {r[0] for r in rows} == {s.value for s in expected}
        assert ReportStatus.sql_list() == "('sending', 'sent')"
