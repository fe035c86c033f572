"""The sender's direct encoding of `MessagesFinalized` against the model's own."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.contracts import MessageOutcome, MessagesFinalized, finalized_body

ids = st.integers(min_value=0, max_value=2**63 - 1)
outcome_rows = st.tuples(
    ids,
    ids,
    ids,
    st.sampled_from(["sent", "failed", "expired", "cancelled"]),
    st.integers(min_value=0, max_value=1000),
    st.none() | st.text(),
)
instants = st.datetimes(
    min_value=datetime(2000, 1, 1),
    max_value=datetime(2100, 1, 1),
    timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8))]),
)


@given(st.lists(outcome_rows, min_size=1, max_size=20), instants)
def test_the_direct_body_parses_to_the_model_built_from_the_same_outcomes(
    rows: list[tuple[int, int, int, str, int, str | None]], at: datetime
) -> None:
    expected = MessagesFinalized(
        outcomes=[
            MessageOutcome(
                message_id=m, mailing_id=g, client_id=c, status=s, attempts=a, occurred_at=at, reason=r
            )
            for m, g, c, s, a, r in rows
        ]
    )

    decoded = MessagesFinalized.model_validate_json(finalized_body(rows, at))

    assert decoded == expected
    assert decoded.routing_key == "message.finalized"


@pytest.mark.parametrize(
    ("rows", "at", "problem"),
    [
        ([], datetime.now(UTC), "at least one outcome"),
        ([(1, 2, 3, "retrying", 1, None)], datetime.now(UTC), "not a final status"),
        ([(1, 2, 3, "sent", 1, None)], datetime(2026, 1, 1), "timezone-aware"),
        ([("1", 2, 3, "sent", 1, None)], datetime.now(UTC), "must be integers"),
        ([(1, 2, 3, "sent", True, None)], datetime.now(UTC), "must be integers"),
        ([(1, 2.0, 3, "sent", 1, None)], datetime.now(UTC), "must be integers"),
    ],
)
def test_what_no_event_may_carry_is_refused(
    rows: list[tuple[int, int, int, str, int, str | None]], at: datetime, problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        finalized_body(rows, at)
