"""The external sending API over one shared HTTP client (`services.sender.http`), one log line a call."""

from __future__ import annotations

import json
import ssl
import time
from typing import Protocol

from services.sender.checks import Claim
from services.sender.http import HttpClient, HttpClientError
from shared.domain.retry import ProviderResult, classify_exception, classify_response
from shared.logging import HotLine, info_enabled

TEXT_CACHE_SIZE = 256
JSON = "application/json"
# One line a call to the API, with the ids that find it (docs/operations.md).
CALLED = HotLine(
    "probe POST /v1/send/{} -> {} ({})",
    "message_id",
    "mailing_id",
    "client_id",
    "attempt",
    "status_code",
    "duration_ms",
)


class Provider(Protocol):
    async def send(self, claim: Claim, text: str, limit_seconds: float | None = None) -> ProviderResult: ...


def result_label(result: ProviderResult, status: int | None) -> str:
    if result.ok:
        return "ok"
    if status is None:
        return result.reason.split(":", 1)[0].replace(" ", "_")
    if status == 200:
        return "malformed"
    if status >= 500:
        return "http_5xx"
    return f"http_{status}"


def make_client(
    base_url: str,
    token: str,
    timeout_seconds: float,
    max_in_flight: int,
    ssl_context: ssl.SSLContext | None = None,
) -> HttpClient:
    """The API's client: whatever path `base_url` has (a proxy prefix, say) comes before the API's own."""
    return HttpClient(
        base_url,
        {"Authorization": f"Bearer {token}", "Content-Type": JSON},
        timeout_seconds=timeout_seconds,
        max_connections=max_in_flight,
        ssl_context=ssl_context,
    )


class ProbeClient:
    def __init__(self, client: HttpClient, on_answer: AnswerHook | None = None) -> None:
        self.client = client
        self.on_answer = on_answer
        # Mailing texts already JSON-encoded: a mailing's text goes out thousands of times.
        self._encoded_texts: dict[str, str] = {}

    def _body(self, claim: Claim, text: str) -> bytes:
        encoded = self._encoded_texts.get(text)
        if encoded is None:
            if len(self._encoded_texts) >= TEXT_CACHE_SIZE:
                self._encoded_texts.clear()
            encoded = self._encoded_texts[text] = json.dumps(text)
        # The id and the phone are numbers (the phone is stored as validated digits).
        return f'{{"id":{claim.message_id},"phone":{int(claim.phone)},"text":{encoded}}}'.encode()

    async def send(self, claim: Claim, text: str, limit_seconds: float | None = None) -> ProviderResult:
        """Call the API once; `limit_seconds` shortens the client's own timeout for this call."""
        body = self._body(claim, text)
        status: int | None = None
        started = time.perf_counter()
        try:
            response = await self.client.post(f"/v1/send/{claim.message_id}", body, limit_seconds)
            status = response.status
            result = classify_response(status, response.body, response.header("Retry-After"))
        except (TimeoutError, OSError, HttpClientError) as exc:
            result = classify_exception(exc)
        duration = time.perf_counter() - started
        if self.on_answer is not None:
            self.on_answer("ok" if result.ok else result_label(result, status), duration)
        if not info_enabled():
            return result
        CALLED.info(
            claim.message_id,
            status or "no answer",
            result.reason,
            message_id=claim.message_id,
            mailing_id=claim.mailing_id,
            client_id=claim.client_id,
            attempt=claim.attempts,
            status_code=status,
            duration_ms=round(duration * 1000, 1),
        )
        return result


class AnswerHook(Protocol):
    def __call__(self, label: str, duration: float) -> None: ...
