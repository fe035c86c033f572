"""Failed authentications in a sliding window per source, the key cache's freshness, the client address."""

from __future__ import annotations

import pytest

from services.api.auth import Principal
from services.api.auth_guard import FailedAuthentications, FailurePolicy, KeyCache, client_address
from shared.domain.roles import Role

pytestmark = pytest.mark.unit

POLICY = FailurePolicy(
    window_seconds=60, before_delay=2, before_refusal=5, delay_step_seconds=0.5, max_delay_seconds=1.0
)


def test_failures_past_the_first_threshold_are_answered_more_and_more_slowly() -> None:
    failures = FailedAuthentications(POLICY)
    assert [failures.fail("a", now=float(t)) for t in range(5)] == [0.0, 0.0, 0.5, 1.0, 1.0]


def test_a_source_is_refused_past_the_second_threshold_until_the_window_has_room() -> None:
    failures = FailedAuthentications(POLICY)
    for t in range(5):
        assert failures.retry_after("a", now=float(t)) is None
        failures.fail("a", now=float(t))
    assert failures.retry_after("a", now=10.0) == 50  # the failure at 0 leaves the window at 60
    assert failures.retry_after("b", now=10.0) is None
    assert failures.retry_after("a", now=60.0) is None


def test_old_failures_leave_the_window() -> None:
    failures = FailedAuthentications(POLICY)
    for t in range(4):
        failures.fail("a", now=float(t))
    assert failures.fail("a", now=100.0) == 0.0


def test_cached_keys_expire_and_unknown_keys_sooner() -> None:
    cache = KeyCache(known_seconds=5, unknown_seconds=2)
    principal = Principal("k", Role.VIEWER, key_id=1)
    cache.put("known", principal, now=0)
    cache.put("unknown", None, now=0)
    assert cache.get("known", now=4.9) == (True, principal)
    assert cache.get("unknown", now=1.9) == (True, None)
    assert cache.get("unknown", now=2.0) == (False, None)
    assert cache.get("known", now=5.0) == (False, None)
    cache.put("known", principal, now=10)
    cache.clear()
    assert cache.get("known", now=10) == (False, None)


@pytest.mark.parametrize(
    ("peer", "forwarded", "hops", "expected"),
    [
        ("10.0.0.1", "6.6.6.6", 0, "10.0.0.1"),
        ("10.0.0.1", "6.6.6.6, 203.0.113.7", 1, "203.0.113.7"),
        ("10.0.0.1", "6.6.6.6, 203.0.113.7, 10.0.0.9", 2, "203.0.113.7"),
        ("10.0.0.1", None, 1, "10.0.0.1"),
        (None, None, 0, "unknown"),
    ],
)
def test_the_client_address_trusts_only_the_configured_proxies(
    peer: str | None, forwarded: str | None, hops: int, expected: str
) -> None:
    assert client_address(peer, forwarded, hops) == expected
