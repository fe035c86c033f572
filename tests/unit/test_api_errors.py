"""Which database errors the API answers with 503 and Retry-After: the ones worth trying again."""

from __future__ import annotations

import psycopg
import pytest
from sqlalchemy import exc as sa_exc

from services.api.errors import database_unavailable

pytestmark = pytest.mark.unit


def wrapped(orig: Exception, *, invalidated: bool = False) -> sa_exc.StatementError:
    """The error as SQLAlchemy raises it: psycopg's exception as `orig` of its DBAPIError subclass."""
    return sa_exc.DBAPIError.instance("SELECT 1", {}, orig, psycopg.Error, connection_invalidated=invalidated)


@pytest.mark.parametrize(
    "error",
    [
        wrapped(psycopg.OperationalError("connection refused")),
        wrapped(psycopg.errors.QueryCanceled("canceling statement due to statement timeout")),
        wrapped(psycopg.errors.AdminShutdown("terminating connection due to administrator command")),
        wrapped(psycopg.InterfaceError("the connection is closed")),
        wrapped(psycopg.DatabaseError("server closed the connection"), invalidated=True),
        sa_exc.TimeoutError("QueuePool limit of size 5 overflow 5 reached"),
        psycopg.OperationalError("connection refused"),
        ConnectionRefusedError(111, "Connection refused"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_an_unreachable_or_slow_database_is_unavailable(error: Exception) -> None:
    assert database_unavailable(error)


@pytest.mark.parametrize(
    "error",
    [
        wrapped(psycopg.errors.UniqueViolation("duplicate key")),
        wrapped(psycopg.errors.UndefinedColumn("column does not exist")),
        ValueError("not a database error"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_a_conflict_or_a_bug_is_not_an_outage(error: Exception) -> None:
    assert not database_unavailable(error)
