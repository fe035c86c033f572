import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp
import jwt
import pytest
from prometheus_client import CollectorRegistry

from bench.chaos import free_port
from services.probe_stub.app import ProbeStubService, build_probe_stub
from services.probe_stub.settings import ProbeStubSettings
from services.probe_stub.token import make_token

pytestmark = pytest.mark.unit

SECRET = "test-secret-long-enough-for-hmac-sha256"
RECEIVED_AT = datetime(2024, 3, 1, 12, 30, tzinfo=UTC)
EARLIER = RECEIVED_AT.timestamp() - 61
PHONE = 79_001_234_567


class Client:
    """The stand-in started on a free port and an HTTP session to it; every answer is read in full."""

    def __init__(self, service: ProbeStubService) -> None:
        self.service = service
        self.base_url = f"http://127.0.0.1:{service.port}"
        self.session = aiohttp.ClientSession(base_url=self.base_url)

    async def request(self, method: str, path: str, **kwargs: Any) -> aiohttp.ClientResponse:
        async with self.session.request(method, path, **kwargs) as response:
            await response.read()
        return response

    async def get(self, path: str, **kwargs: Any) -> aiohttp.ClientResponse:
        return await self.request("GET", path, **kwargs)

    async def post(self, path: str, **kwargs: Any) -> aiohttp.ClientResponse:
        return await self.request("POST", path, **kwargs)

    async def put(self, path: str, **kwargs: Any) -> aiohttp.ClientResponse:
        return await self.request("PUT", path, **kwargs)

    async def close(self) -> None:
        await self.session.close()
        await self.service.stop()


MakeClient = Callable[..., Awaitable[Client]]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
async def make_client(clock: FakeClock, registry: CollectorRegistry) -> AsyncIterator[MakeClient]:
    clients: list[Client] = []

    async def make(**settings: Any) -> Client:
        # model_construct keeps MAILING_PROBE_* variables of the machine out of the tests.
        service = build_probe_stub(
            ProbeStubSettings.model_construct(jwt_secret=SECRET, host="127.0.0.1", port=0, **settings),
            clock=clock,
            rng=random.Random(20240301),
            registry=registry,
            wall_clock=RECEIVED_AT.timestamp,
        )
        await service.start()
        client = Client(service)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


@pytest.fixture
async def client(make_client: MakeClient) -> Client:
    return await make_client()


def auth(token: str | None = None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token or make_token(SECRET)}"}


async def send(
    client: Client,
    msg_id: int = 1,
    body: Any = None,
    headers: dict[str, str] | None = None,
    client_timeout: float | None = None,
) -> aiohttp.ClientResponse:
    payload = {"id": msg_id, "phone": PHONE, "text": "hello"} if body is None else body
    return await client.post(
        f"/v1/send/{msg_id}",
        json=payload,
        headers=auth() if headers is None else headers,
        timeout=aiohttp.ClientTimeout(total=client_timeout),
    )


async def put_faults(client: Client, **faults: Any) -> dict[str, Any]:
    response = await client.put("/_stub/faults", json=faults)
    assert response.status == 200, await response.text()
    result: dict[str, Any] = await response.json()
    return result


async def stats(client: Client) -> dict[str, int]:
    result: dict[str, int] = await (await client.get("/_stub/stats")).json()
    return result


async def test_valid_send_is_answered_ok_and_recorded(client: Client) -> None:
    response = await send(client, msg_id=42)

    assert response.status == 200
    assert await response.json() == {"code": 0, "message": "OK"}
    assert await stats(client) == {"requests": 1, "accepted": 1, "distinct_accepted": 1, "duplicates": 0}
    accepted = await (await client.get("/_stub/accepted")).json()
    assert accepted == [
        {"msg_id": 42, "phone": PHONE, "text": "hello", "received_at": "2024-03-01T12:30:00+00:00"}
    ]


async def test_second_send_of_the_same_message_counts_as_a_duplicate(client: Client) -> None:
    await send(client, msg_id=7)
    await send(client, msg_id=7)
    await send(client, msg_id=8)

    assert await stats(client) == {"requests": 3, "accepted": 3, "distinct_accepted": 2, "duplicates": 1}


async def test_accepted_can_be_filtered_by_message_id(client: Client) -> None:
    await send(client, msg_id=7)
    await send(client, msg_id=8)
    await send(client, msg_id=7)

    accepted = await (await client.get("/_stub/accepted", params={"msg_id": "7"})).json()

    assert [record["msg_id"] for record in accepted] == [7, 7]


async def test_accepted_rejects_a_non_integer_message_id_filter(client: Client) -> None:
    response = await client.get("/_stub/accepted", params={"msg_id": "seven"})

    assert response.status == 400
    assert "msg_id" in (await response.json())["message"]


@pytest.mark.parametrize(
    ("headers", "problem"),
    [
        pytest.param({}, "missing", id="missing header"),
        pytest.param({"Authorization": "Basic abc"}, "Bearer", id="wrong scheme"),
        pytest.param(auth("not-a-jwt"), "invalid token", id="garbage token"),
        pytest.param(auth(make_token("another-secret")), "invalid token", id="foreign secret"),
        pytest.param(auth(make_token(SECRET, ttl_seconds=60, issued_at=EARLIER)), "expired", id="expired"),
    ],
)
async def test_send_without_a_valid_token_is_unauthorized(
    client: Client, headers: dict[str, str], problem: str
) -> None:
    response = await send(client, headers=headers)

    assert response.status == 401
    body = await response.json()
    assert body["code"] == 401
    assert problem in body["message"]
    assert await stats(client) == {"requests": 1, "accepted": 0, "distinct_accepted": 0, "duplicates": 0}


async def test_token_with_a_future_expiry_is_accepted(client: Client) -> None:
    token = make_token(SECRET, ttl_seconds=60, issued_at=RECEIVED_AT.timestamp() - 59)

    response = await send(client, headers=auth(token))

    assert response.status == 200


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        pytest.param([1, 2], "JSON object", id="array"),
        pytest.param({"id": 1, "text": "hi"}, "phone is required", id="missing phone"),
        pytest.param({"id": 1, "phone": str(PHONE), "text": "hi"}, "phone", id="phone as string"),
        pytest.param({"id": 1, "phone": 7_900_123_456, "text": "hi"}, "phone", id="ten digits"),
        pytest.param({"id": 1, "phone": 89_001_234_567, "text": "hi"}, "phone", id="starts with 8"),
        pytest.param({"id": True, "phone": PHONE, "text": "hi"}, "id must be", id="boolean id"),
        pytest.param({"id": 1.0, "phone": PHONE, "text": "hi"}, "id must be", id="float id"),
        pytest.param({"id": 1, "phone": PHONE, "text": 5}, "text", id="text as number"),
    ],
)
async def test_send_with_a_bad_body_is_rejected_naming_the_problem(
    client: Client, body: Any, problem: str
) -> None:
    response = await send(client, msg_id=1, body=body)

    assert response.status == 400
    answer = await response.json()
    assert answer["code"] == 400
    assert problem in answer["message"]
    assert (await stats(client))["accepted"] == 0


async def test_send_with_a_non_json_body_is_rejected(client: Client) -> None:
    response = await client.post("/v1/send/1", data=b"{not json", headers=auth())

    assert response.status == 400
    assert "JSON" in (await response.json())["message"]


async def test_send_whose_id_differs_from_the_path_is_rejected(client: Client) -> None:
    response = await client.post("/v1/send/5", json={"id": 6, "phone": PHONE, "text": "hi"}, headers=auth())

    assert response.status == 400
    assert "does not match" in (await response.json())["message"]


async def test_send_to_a_non_integer_path_is_rejected(client: Client) -> None:
    response = await client.post("/v1/send/abc", json={"id": 1, "phone": PHONE, "text": "hi"}, headers=auth())

    assert response.status == 400
    assert "msgId" in (await response.json())["message"]


async def test_error_rate_of_one_answers_with_a_server_error(client: Client) -> None:
    await put_faults(client, error_rate=1.0)

    statuses = {(await send(client, msg_id=i)).status for i in range(20)}

    assert statuses <= {500, 502, 503}
    assert await stats(client) == {"requests": 20, "accepted": 0, "distinct_accepted": 0, "duplicates": 0}


async def test_rate_limit_rate_of_one_answers_429_with_retry_after(client: Client) -> None:
    await put_faults(client, rate_limit_rate=1.0)

    response = await send(client)

    assert response.status == 429
    assert response.headers["Retry-After"] == "1"
    assert (await stats(client))["accepted"] == 0


async def test_reject_rate_of_one_answers_400(client: Client) -> None:
    await put_faults(client, reject_rate=1.0)

    response = await send(client)

    assert response.status == 400
    assert (await response.json())["code"] == 400
    assert (await stats(client))["accepted"] == 0


async def test_malformed_rate_of_one_never_answers_a_success(client: Client) -> None:
    await put_faults(client, malformed_rate=1.0)

    bodies = set()
    for msg_id in range(30):
        response = await send(client, msg_id=msg_id)
        assert response.status == 200
        bodies.add(await response.text())

    assert len(bodies) == 3
    assert '{"code": 0, "message": "OK"}' not in bodies
    assert await stats(client) == {"requests": 30, "accepted": 0, "distinct_accepted": 0, "duplicates": 0}


async def test_timeout_rate_of_one_never_answers(client: Client) -> None:
    await put_faults(client, timeout_rate=1.0)

    with pytest.raises(TimeoutError):
        await send(client, client_timeout=0.2)

    assert await stats(client) == {"requests": 1, "accepted": 0, "distinct_accepted": 0, "duplicates": 0}


async def test_latency_delays_the_answer(client: Client) -> None:
    await put_faults(client, latency_ms=50)
    loop = asyncio.get_running_loop()

    started = loop.time()
    response = await send(client)

    assert response.status == 200
    assert loop.time() - started >= 0.05


async def test_outage_drops_connections_until_it_is_over(client: Client, clock: FakeClock) -> None:
    faults = await put_faults(client, outage_seconds=30)
    assert faults["outage_remaining_seconds"] == 30

    with pytest.raises(aiohttp.ClientConnectionError):
        await send(client, msg_id=1)
    clock.now += 29
    with pytest.raises(aiohttp.ClientConnectionError):
        await send(client, msg_id=2)
    clock.now += 1
    response = await send(client, msg_id=3)

    assert response.status == 200
    assert await stats(client) == {"requests": 3, "accepted": 1, "distinct_accepted": 1, "duplicates": 0}
    assert (await (await client.get("/_stub/faults")).json())["outage_remaining_seconds"] == 0


async def test_faults_from_settings_apply_from_the_start(make_client: MakeClient) -> None:
    client = await make_client(reject_rate=1.0)

    response = await send(client)

    assert response.status == 400
    assert (await (await client.get("/_stub/faults")).json())["reject_rate"] == 1.0


async def test_outage_from_settings_starts_at_start_up(make_client: MakeClient, clock: FakeClock) -> None:
    client = await make_client(outage_seconds=10.0)

    with pytest.raises(aiohttp.ClientConnectionError):
        await send(client)
    clock.now += 10

    assert (await send(client)).status == 200


async def test_putting_faults_changes_only_the_fields_given(client: Client) -> None:
    await put_faults(client, error_rate=0.25)
    faults = await put_faults(client, latency_ms=10, latency_jitter_ms=5)

    assert faults == {
        "latency_ms": 10,
        "latency_jitter_ms": 5,
        "error_rate": 0.25,
        "timeout_rate": 0,
        "malformed_rate": 0,
        "reject_rate": 0,
        "rate_limit_rate": 0,
        "outage_seconds": 0,
        "outage_remaining_seconds": 0,
    }
    assert await (await client.get("/_stub/faults")).json() == faults


@pytest.mark.parametrize(
    ("body", "field"),
    [
        pytest.param({"error_rate": 1.5}, "error_rate", id="rate above one"),
        pytest.param({"timeout_rate": -0.1}, "timeout_rate", id="negative rate"),
        pytest.param({"latency_ms": -1}, "latency_ms", id="negative latency"),
        pytest.param({"malformed_rate": "often"}, "malformed_rate", id="rate as string"),
        pytest.param({"reject_rate": True}, "reject_rate", id="rate as boolean"),
        pytest.param({"outage_seconds": None}, "outage_seconds", id="null"),
        pytest.param({"eror_rate": 0.5}, "eror_rate", id="unknown field"),
    ],
)
async def test_putting_invalid_faults_is_refused_naming_the_field(
    client: Client, body: dict[str, Any], field: str
) -> None:
    response = await client.put("/_stub/faults", json=body)

    assert response.status == 422
    answer = await response.json()
    assert answer["code"] == 422
    assert field in answer["message"]
    assert [error["field"] for error in answer["errors"]] == [field]
    assert (await (await client.get("/_stub/faults")).json())["error_rate"] == 0


async def test_putting_faults_that_are_not_json_is_refused(client: Client) -> None:
    response = await client.put("/_stub/faults", data=b"error_rate=1")

    assert response.status == 422


async def test_reset_forgets_everything_and_clears_the_faults(make_client: MakeClient) -> None:
    client = await make_client(latency_ms=5.0)
    await send(client, msg_id=1)
    await send(client, msg_id=1)
    await put_faults(client, error_rate=1.0, outage_seconds=60)

    response = await client.post("/_stub/reset")

    assert response.status == 200
    assert await stats(client) == {"requests": 0, "accepted": 0, "distinct_accepted": 0, "duplicates": 0}
    assert await (await client.get("/_stub/accepted")).json() == []
    faults = await (await client.get("/_stub/faults")).json()
    assert set(faults.values()) == {0}
    assert (await send(client, msg_id=1)).status == 200


async def test_metrics_count_requests_by_result(client: Client) -> None:
    await send(client, msg_id=1)
    await send(client, msg_id=2, headers={})
    await put_faults(client, rate_limit_rate=1.0)
    await send(client, msg_id=3)

    text = await (await client.get("/metrics")).text()

    assert 'mailing_probe_stub_requests_total{result="accepted"} 1.0' in text
    assert 'mailing_probe_stub_requests_total{result="unauthorized"} 1.0' in text
    assert 'mailing_probe_stub_requests_total{result="rate_limited"} 1.0' in text
    assert 'mailing_probe_stub_requests_total{result="outage"} 0.0' in text


async def test_health_is_ok(client: Client) -> None:
    response = await client.get("/healthz")

    assert response.status == 200
    assert await response.json() == {"status": "ok"}


def test_token_without_ttl_never_expires() -> None:
    claims = jwt.decode(make_token(SECRET, subject="me"), SECRET, algorithms=["HS256"])

    assert claims["sub"] == "me"
    assert "exp" not in claims


def test_token_with_ttl_expires() -> None:
    claims = jwt.decode(make_token(SECRET, ttl_seconds=60), SECRET, algorithms=["HS256"])

    assert claims["exp"] - claims["iat"] == 60


async def requests_seen(client: Client, **params: str) -> list[dict[str, Any]]:
    response = await client.get("/_stub/requests", params=params)
    assert response.status == 200, await response.text()
    result: list[dict[str, Any]] = await response.json()
    return result


async def test_every_request_is_recorded_with_its_answer(client: Client) -> None:
    await send(client, msg_id=5)
    await put_faults(client, error_rate=1.0)
    await send(client, msg_id=5)
    await send(client, msg_id=6, headers={})

    assert await requests_seen(client) == [
        {
            "msg_id": 5,
            "received_at": RECEIVED_AT.isoformat(),
            "answered_at": RECEIVED_AT.isoformat(),
            "result": r,
        }
        for r in ("accepted", "error")
    ] + [
        {
            "msg_id": 6,
            "received_at": RECEIVED_AT.isoformat(),
            "answered_at": RECEIVED_AT.isoformat(),
            "result": "unauthorized",
        }
    ]


async def test_requests_can_be_filtered_by_message_id(client: Client) -> None:
    for msg_id in (7, 8, 7):
        await send(client, msg_id=msg_id)

    assert [r["msg_id"] for r in await requests_seen(client, msg_id="7")] == [7, 7]
    response = await client.get("/_stub/requests", params={"msg_id": "seven"})
    assert response.status == 400


async def test_a_request_left_hanging_is_recorded_as_a_timeout_once_the_client_hangs_up(
    client: Client,
) -> None:
    await put_faults(client, timeout_rate=1.0)

    with pytest.raises(TimeoutError):
        await send(client, msg_id=9, client_timeout=0.2)

    async def recorded() -> list[dict[str, Any]]:
        for _ in range(50):
            seen = await requests_seen(client)
            if seen:
                return seen
            await asyncio.sleep(0.05)
        return []

    assert [(r["msg_id"], r["result"]) for r in await recorded()] == [(9, "timeout")]


async def test_outage_drops_are_recorded(client: Client) -> None:
    await put_faults(client, outage_seconds=30)

    with pytest.raises(aiohttp.ClientConnectionError):
        await send(client, msg_id=3)

    assert [(r["msg_id"], r["result"]) for r in await requests_seen(client)] == [(3, "outage")]


async def test_the_request_log_keeps_only_the_newest(make_client: MakeClient) -> None:
    client = await make_client(request_log_size=2)
    for msg_id in (1, 2, 3):
        await send(client, msg_id=msg_id)

    assert [r["msg_id"] for r in await requests_seen(client)] == [2, 3]


async def test_reset_forgets_the_request_log(client: Client) -> None:
    await send(client, msg_id=1)

    await client.post("/_stub/reset")

    assert await requests_seen(client) == []


async def test_the_service_listens_from_start_and_its_stop_ends_a_hanging_call() -> None:
    port = free_port()
    service = build_probe_stub(
        ProbeStubSettings.model_construct(jwt_secret=SECRET, host="127.0.0.1", port=port, timeout_rate=1.0)
    )
    await service.start()
    async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{port}") as http:
        try:
            async with http.get("/healthz") as response:
                assert await response.json() == {"status": "ok"}
            hanging = asyncio.create_task(http.post("/v1/send/1", json={"id": 1}))
            for _ in range(200):
                if service.stub.recorder.requests:
                    break
                await asyncio.sleep(0.01)
        finally:
            # Woken at once: left to itself, the hanging call would hold the stop for its 5 s of grace.
            await asyncio.wait_for(service.stop(), timeout=2)
        with pytest.raises(aiohttp.ClientConnectionError):
            await asyncio.wait_for(hanging, timeout=1)
        with pytest.raises(aiohttp.ClientConnectionError):
            await http.get("/healthz")
