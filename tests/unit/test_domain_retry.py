from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.domain.retry import (
    FailureKind,
    ProviderResult,
    RetryDecision,
    RetryPolicy,
    classify_exception,
    classify_response,
    decide_retry,
)
from shared.domain.statuses import Route
from shared.settings import CommonSettings

pytestmark = pytest.mark.unit

NOW = datetime(2026, 5, 1, 12, tzinfo=UTC)
FAR_END = NOW + timedelta(days=1)
TRANSIENT = ProviderResult(ok=False, kind=FailureKind.TRANSIENT, reason="http 503")


class TestClassifyResponse:
    @pytest.mark.parametrize(
        "body",
        [
            b'{"code": 0, "message": "OK"}',
            b'{"code":0,"message":"OK"}',
            b'{ "message": "accepted", "code": 0 }',
            b'{"code": 0}',
        ],
    )
    def test_code_zero_in_200_is_success(self, body: bytes) -> None:
        # The first two are the documented answer, taken without parsing; the others are parsed.
        result = classify_response(200, body)
        assert result.ok
        assert result.kind is None

    def test_a_near_copy_of_the_documented_answer_is_still_parsed(self) -> None:
        result = classify_response(200, b'{"code": 1, "message": "OK"}')
        assert (result.ok, result.reason) == (False, "provider code 1: OK")

    @pytest.mark.parametrize(
        "body,reason",
        [
            (b"<html>oops</html>", "malformed body: not JSON"),
            (b"", "malformed body: not JSON"),
            (b"\xff\xfe\x00", "malformed body: not JSON"),
            (b"[0]", "malformed body: not a JSON object"),
            (b'{"message": "OK"}', "malformed body: no integer code"),
            (b'{"code": false}', "malformed body: no integer code"),
            (b'{"code": "0"}', "malformed body: no integer code"),
            (b'{"code": 0.0}', "malformed body: no integer code"),
        ],
    )
    def test_malformed_200_is_a_transient_failure(self, body: bytes, reason: str) -> None:
        result = classify_response(200, body)
        assert not result.ok
        assert result.kind is FailureKind.TRANSIENT
        assert result.reason == reason

    def test_nonzero_code_is_transient_and_explained(self) -> None:
        result = classify_response(200, b'{"code": 5, "message": "busy"}')
        assert (result.ok, result.kind) == (False, FailureKind.TRANSIENT)
        assert "5" in result.reason and "busy" in result.reason

    def test_rejected_request_is_permanent(self) -> None:
        result = classify_response(400, b'{"code": 1}')
        assert (result.ok, result.kind, result.reason) == (False, FailureKind.PERMANENT, "http 400")

    @pytest.mark.parametrize("status", [401, 403])
    def test_bad_token_is_an_auth_failure(self, status: int) -> None:
        assert classify_response(status, b"").kind is FailureKind.AUTH

    def test_rate_limit_carries_retry_after(self) -> None:
        result = classify_response(429, b"", "17")
        assert result.kind is FailureKind.TRANSIENT
        assert result.retry_after == 17.0

    @pytest.mark.parametrize("header", [None, "soon", "Wed, 21 Oct 2026 07:28:00 GMT", "-1", "nan", "inf"])
    def test_unusable_retry_after_is_ignored(self, header: str | None) -> None:
        assert classify_response(429, b"", header).retry_after is None

    @pytest.mark.parametrize("status", [500, 502, 503, 504, 404, 302, 201])
    def test_other_statuses_are_transient(self, status: int) -> None:
        result = classify_response(status, b'{"code": 0}')
        assert (result.ok, result.kind, result.reason) == (False, FailureKind.TRANSIENT, f"http {status}")


class TestClassifyException:
    def test_timeout_is_transient(self) -> None:
        result = classify_exception(TimeoutError())
        assert result.kind is FailureKind.TRANSIENT
        assert result.reason.startswith("timeout")
        assert "TimeoutError" in result.reason

    def test_client_library_timeout_is_recognised_by_name(self) -> None:
        class ReadTimeout(Exception):
            pass

        assert classify_exception(ReadTimeout("read")).reason.startswith("timeout")

    def test_refused_connection_is_transient(self) -> None:
        result = classify_exception(ConnectionRefusedError(111, "Connection refused"))
        assert result.kind is FailureKind.TRANSIENT
        assert result.reason.startswith("connection refused: ConnectionRefusedError")

    @pytest.mark.parametrize("exc", [OSError("unreachable"), ConnectionResetError(), RuntimeError("boom")])
    def test_any_exception_is_transient_never_permanent(self, exc: BaseException) -> None:
        result = classify_exception(exc)
        assert not result.ok
        assert result.kind is FailureKind.TRANSIENT
        assert type(exc).__name__ in result.reason


class TestDecideRetry:
    policy = RetryPolicy()

    def test_permanent_failure_fails_at_once(self) -> None:
        rejected = classify_response(400, b"")
        decision = decide_retry(self.policy, 1, rejected, NOW, FAR_END, 0.5)
        assert decision == RetryDecision(Route.FAIL, reason="http 400")

    def test_exhausted_attempts_fail(self) -> None:
        decision = decide_retry(self.policy, 8, TRANSIENT, NOW, FAR_END, 0.5)
        assert decision.action == "fail"
        assert "attempts exhausted" in decision.reason

    def test_first_retry_uses_the_first_tier(self) -> None:
        decision = decide_retry(self.policy, 1, TRANSIENT, NOW, FAR_END, 0.5)
        assert decision == RetryDecision(Route.RETRY, tier=0, delay=1.0, reason="http 503")

    def test_delays_grow_with_attempts(self) -> None:
        tiers = [decide_retry(self.policy, n, TRANSIENT, NOW, FAR_END, 0.0).tier for n in range(1, 8)]
        assert tiers == [0, 1, 2, 3, 4, 4, 4]

    def test_jitter_above_a_tier_moves_to_the_next(self) -> None:
        decision = decide_retry(self.policy, 1, TRANSIENT, NOW, FAR_END, 0.99)
        assert (decision.tier, decision.delay) == (1, 5.0)

    def test_retry_after_pushes_to_a_long_enough_tier(self) -> None:
        limited = classify_response(429, b"", "20")
        decision = decide_retry(self.policy, 1, limited, NOW, FAR_END, 0.5)
        assert (decision.tier, decision.delay) == (2, 30.0)

    def test_retry_after_beyond_all_tiers_uses_the_last(self) -> None:
        limited = classify_response(429, b"", "3600")
        assert decide_retry(self.policy, 1, limited, NOW, FAR_END, 0.5).tier == 4

    def test_auth_failure_is_retried_not_burned(self) -> None:
        decision = decide_retry(self.policy, 1, classify_response(401, b""), NOW, FAR_END, 0.5)
        assert decision.action == "retry"
        assert not decision.counts

    @pytest.mark.parametrize("attempts", [1, 2, 5])
    def test_auth_failure_waits_about_two_minutes_whatever_the_attempts(self, attempts: int) -> None:
        # Its attempts never grow, so the delay cannot come from them (it would stay at the first tier).
        policy = RetryPolicy(delays=(1.0, 5.0, 30.0, 120.0, 600.0))
        for rand in (0.0, 0.5, 0.999):
            decision = decide_retry(policy, attempts, classify_response(401, b""), NOW, FAR_END, rand)
            assert (decision.action, decision.delay) == ("retry", 120.0)

    @pytest.mark.parametrize("status", [401, 403])
    def test_auth_failure_never_exhausts_the_attempts(self, status: int) -> None:
        refused = classify_response(status, b"")
        decision = decide_retry(self.policy, self.policy.max_attempts + 5, refused, NOW, FAR_END, 0.5)
        assert (decision.action, decision.counts) == ("retry", False)
        transient = decide_retry(self.policy, self.policy.max_attempts, TRANSIENT, NOW, FAR_END, 0.5)
        assert (transient.action, transient.counts) == ("fail", True)

    def test_auth_failure_still_expires_at_the_mailing_end(self) -> None:
        refused = classify_response(401, b"")
        decision = decide_retry(self.policy, 1, refused, NOW, NOW + timedelta(milliseconds=500), 0.5)
        assert (decision.action, decision.counts) == ("expire", False)

    def test_nothing_is_retried_past_the_mailing_end(self) -> None:
        decision = decide_retry(self.policy, 3, TRANSIENT, NOW, NOW + timedelta(seconds=30), 0.5)
        assert decision.action == "expire"
        assert "mailing ends before next attempt" in decision.reason

    def test_success_needs_no_decision(self) -> None:
        with pytest.raises(ValueError):
            decide_retry(self.policy, 1, classify_response(200, b'{"code": 0}'), NOW, FAR_END, 0.5)

    @pytest.mark.parametrize(
        "kwargs",
        [{"delays": ()}, {"delays": (5.0, 1.0)}, {"delays": (0.0,)}, {"max_attempts": 0}, {"jitter": 1.0}],
    )
    def test_nonsensical_policy_is_refused(self, kwargs: dict[str, object]) -> None:
        with pytest.raises(ValueError):
            RetryPolicy(**kwargs)  # type: ignore[arg-type]

    @settings(max_examples=200)
    @given(
        attempts=st.integers(1, 20),
        rand=st.floats(0, 1, exclude_max=True),
        retry_after=st.none() | st.floats(0, 10_000),
        seconds_left=st.floats(0.001, 100_000),
    )
    def test_retry_is_scheduled_on_a_tier_before_the_end(
        self, attempts: int, rand: float, retry_after: float | None, seconds_left: float
    ) -> None:
        result = ProviderResult(False, FailureKind.TRANSIENT, "x", retry_after)
        end = NOW + timedelta(seconds=seconds_left)
        decision = decide_retry(self.policy, attempts, result, NOW, end, rand)
        if attempts >= self.policy.max_attempts:
            assert decision.action == "fail"
        elif decision.action == "retry":
            assert decision.tier is not None and decision.delay == self.policy.delays[decision.tier]
            assert NOW + timedelta(seconds=decision.delay) < end
            if retry_after is not None and retry_after <= self.policy.delays[-1]:
                assert decision.delay >= retry_after
        else:
            assert decision.action == "expire"


def test_the_topology_has_one_retry_queue_per_delay_of_the_policy() -> None:
    policy = RetryPolicy(delays=(2.0, 7.0))
    topology = CommonSettings(retry_delays_seconds=policy.delays, amqp_namespace="t").topology()
    assert topology.retry_delays == policy.delays
    assert [topology.retry_key(t) for t in range(2)] == ["retry.2000ms", "retry.7000ms"]
    assert CommonSettings.model_fields["retry_delays_seconds"].default == RetryPolicy().delays
