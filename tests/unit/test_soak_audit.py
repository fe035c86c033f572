from __future__ import annotations

from datetime import UTC, datetime
from datetime import time as dtime
from typing import Any

import pytest

from bench.soak import NARROW_REMOVED, AuditLine, Kill, Observed, Phase, audit, frozen_calls

pytestmark = pytest.mark.unit

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC).timestamp()


def iso(seconds: float) -> str:
    return datetime.fromtimestamp(T0 + seconds, UTC).isoformat()


def message(msg_id: int, mailing: int, status: str = "sent", **client: Any) -> dict[str, Any]:
    return {
        "id": msg_id,
        "mailing_id": mailing,
        "client_id": msg_id,
        "status": status,
        "attempts": 1,
        "timezone": client.get("timezone", "UTC"),
        "operator_code": client.get("operator_code", "950"),
        "tag": "x",
    }


def accepted(msg_id: int, at: float) -> dict[str, Any]:
    return {"msg_id": msg_id, "phone": 79000000000 + msg_id, "text": "t", "received_at": iso(at)}


def request(msg_id: int, at: float, answered: float, result: str) -> dict[str, Any]:
    return {"msg_id": msg_id, "received_at": iso(at), "answered_at": iso(answered), "result": result}


def observed(**overrides: Any) -> Observed:
    base: dict[str, Any] = {
        "messages": [],
        "missing": {},
        "accepted": [],
        "requests": [],
        "mailings": {"growing": 1, "window": 2, "narrowed": 3},
        "mailing_end": {"growing": T0 + 3600, "window": T0 + 3600, "narrowed": T0 + 3600},
        "window": (dtime(9, 0), dtime(13, 0)),
        "narrowed_at": None,
        "kills": [],
        "fence_samples": [],
        "lease_seconds": 10.0,
        "requeued_final": {},
        "sweep_log_lines": 0,
        "api_samples": [],
        "phases": [],
        "t0": T0,
        "reached_final": True,
    }
    return Observed(**(base | overrides))


def line(lines: list[AuditLine], starts: str) -> AuditLine:
    return next(entry for entry in lines if entry.name.startswith(starts))


def test_a_clean_run_violates_nothing() -> None:
    lines, _, _ = audit(observed(messages=[message(1, 1)], accepted=[accepted(1, 5)]))

    assert [entry.name for entry in lines if not entry.ok] == []


def test_a_message_sent_in_the_database_but_never_accepted_is_lost() -> None:
    lines, _, _ = audit(observed(messages=[message(1, 1), message(2, 1, "queued")]))

    assert line(lines, "lost").value == 2


def test_duplicates_within_the_in_flight_bound_pass_and_beyond_it_fail() -> None:
    messages = [message(1, 1), message(2, 1)]
    twice = [accepted(1, 1), accepted(1, 2), accepted(2, 1), accepted(2, 2)]
    kills = [Kill("sender1", T0, in_flight=1.0)]

    within, _, _ = audit(
        observed(
            messages=messages, accepted=twice, kills=kills, fence_samples=[(0.0, 0.0, 10.0), (5.0, 1.0, 10.0)]
        )
    )
    beyond, _, _ = audit(
        observed(messages=messages, accepted=twice, kills=kills, fence_samples=[(20.0, 5.0, 0.0)])
    )

    unrecorded = "calls whose outcome was never recorded"
    assert (line(within, unrecorded).value, line(within, unrecorded).bound) == (2, 2)
    assert line(within, unrecorded).ok
    assert not line(beyond, unrecorded).ok


def test_the_frozen_sender_counts_the_calls_it_had_in_flight_and_those_it_started_before_its_fence() -> None:
    samples = [(0.0, 2.0, 100.0), (0.5, 3.0, 102.0), (1.0, 0.0, 106.0), (30.0, 9.0, 200.0)]
    # 2 in flight at the freeze, 4 more started after it (106 - 100 ended, none left in flight); the read
    # after the window does not count.
    assert frozen_calls(samples, window=10.0) == 6.0
    assert frozen_calls(samples[:1], window=10.0) == 2.0
    assert frozen_calls([], window=10.0) == 0.0


def test_a_call_accepted_and_then_recorded_cancelled_spends_the_same_budget_as_a_duplicate() -> None:
    # The sender died between the provider's answer and the write; the mailing was cancelled meanwhile.
    messages = [message(1, 1), message(2, 1, "cancelled")]
    kills = [Kill("sender1", T0, in_flight=1.0)]

    within, _, _ = audit(observed(messages=messages, accepted=[accepted(1, 1), accepted(2, 1)], kills=kills))
    beyond, _, _ = audit(
        observed(messages=messages, accepted=[accepted(1, 1), accepted(1, 2), accepted(2, 1)], kills=kills)
    )

    assert line(within, "calls whose outcome").ok
    assert line(beyond, "calls whose outcome").value == 2
    assert not line(beyond, "calls whose outcome").ok


def test_a_send_in_the_clients_night_is_outside_the_window() -> None:
    # 12:00 UTC is 21:00 in Tokyo: outside 09:00-13:00 even with the tolerance.
    messages = [message(1, 2, timezone="Asia/Tokyo"), message(2, 2, timezone="UTC")]

    _, details, _ = audit(observed(messages=messages, accepted=[accepted(1, 0), accepted(2, 0)]))

    assert details["outside_window_sample"] == [1]


def test_a_send_to_an_excluded_client_counts_only_past_the_tolerance() -> None:
    messages = [message(n, 3, operator_code=NARROW_REMOVED) for n in (1, 2)]

    lines, _, _ = audit(
        observed(messages=messages, accepted=[accepted(1, 1), accepted(2, 10)], narrowed_at=T0)
    )

    assert line(lines, "sent to a client").value == 1


def test_a_call_sooner_than_the_smallest_delay_after_a_failure_is_early() -> None:
    requests = [
        request(1, 0, 0.1, "error"),
        request(1, 0.3, 0.4, "error"),
        request(1, 2.0, 2.1, "accepted"),
        request(1, 2.2, 2.3, "accepted"),
    ]

    lines, details, _ = audit(
        observed(messages=[message(1, 1)], accepted=[accepted(1, 2)], requests=requests)
    )

    assert line(lines, "attempts spent early").value == 1
    assert details["early_by_previous_result"] == {"error": 1}


def test_api_errors_count_only_outside_the_apis_own_faults() -> None:
    phases = [
        Phase("provider outage", T0, T0 + 10, True),
        Phase("postgresql restart", T0 + 5, T0 + 10, False),
    ]
    samples = [(T0 + 1, 500), (T0 + 6, 500), (T0 + 20, 200)]

    lines, _, per_phase = audit(observed(api_samples=samples, phases=phases))

    assert line(lines, "API").value == 1
    assert per_phase["provider outage"]["5xx"] == 2
    assert per_phase["no fault"]["requests"] == 1
