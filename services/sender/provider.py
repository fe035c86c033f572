"""The external sending API over one shared aiohttp session, with one log line per call."""

from __future__ import annotations

import json
import time
from typing import Protocol

import aiohttp
from aiohttp.payload import BytesPayload
from yarl import URL

from services.sender.checks import Claim
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


def make_session(token: str, timeout_seconds: float, max_in_flight: int) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=max_in_flight, keepalive_timeout=30, ttl_dns_cache=300)
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=timeout_seconds, connect=min(timeout_seconds, 3.0)),
        headers={"Authorization": f"Bearer {token}", "Content-Type": JSON},
        raise_for_status=False,
    )


class ProbeClient:
    def __init__(
        self, session: aiohttp.ClientSession, base_url: str, on_answer: AnswerHook | None = None
    ) -> None:
        self.session = session
        self.base_url = URL(base_url)
        # Whatever path the base URL has (a proxy prefix, say) comes before the API's own.
        self._path_prefix = self.base_url.raw_path.rstrip("/")
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
        """Call the API once; `limit_seconds` shortens the session's own timeout for this call."""
        # Built ready-encoded (the id is a number) and handed over as a payload: aiohttp then has
        # neither a URL to parse nor a payload type to look up.
        url = self.base_url.with_path(f"{self._path_prefix}/v1/send/{claim.message_id}", encoded=True)
        body = BytesPayload(self._body(claim, text), content_type=JSON)
        status: int | None = None
        started = time.perf_counter()
        try:
            call = (
                self.session.post(url, data=body)
                if limit_seconds is None
                else self.session.post(url, data=body, timeout=aiohttp.ClientTimeout(total=limit_seconds))
            )
            async with call as response:
                status = response.status
                payload = await response.read()
                result = classify_response(status, payload, response.headers.get("Retry-After"))
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
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
