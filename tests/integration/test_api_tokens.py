"""The REST API takes the provider's access tokens (JWT) besides API keys: signature against the
provider's JWKS (a real HTTP server of this test's own), issuer, audience, expiry, key rotation; roles
from the claim; 401 and 403 told apart; every change logged with who made it and without the token."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from fastapi import FastAPI
from jwt.algorithms import RSAAlgorithm
from loguru import logger
from pydantic import SecretStr

from services.api.app import build_api
from services.api.settings import ApiSettings

from .conftest import ADMIN_KEY
from .test_api_mailings import mailing_body

pytestmark = pytest.mark.integration

CLIENT_ID = "mailing-test"


@dataclass
class SigningKey:
    kid: str
    private: RSAPrivateKey = field(
        default_factory=lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )

    def jwk(self) -> dict[str, Any]:
        entry: dict[str, Any] = RSAAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        return {**entry, "kid": self.kid, "use": "sig", "alg": "RS256"}


@dataclass
class Provider:
    """Discovery and JWKS over real HTTP, with keys the test can rotate and a count of JWKS fetches."""

    issuer: str = ""
    keys: list[SigningKey] = field(default_factory=lambda: [SigningKey("key-1")])
    jwks_fetches: int = 0

    def token(
        self,
        *,
        roles: list[str] | None = None,
        key: SigningKey | None = None,
        kid: str | None = None,
        **overrides: Any,
    ) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": CLIENT_ID,
            "sub": f"user-{uuid.uuid4().hex[:8]}",
            "iat": now,
            "exp": now + 300,
            "roles": roles if roles is not None else ["operator"],
            **overrides,
        }
        signer = key or self.keys[0]
        return jwt.encode(claims, signer.private, algorithm="RS256", headers={"kid": kid or signer.kid})


@pytest.fixture
async def provider() -> AsyncIterator[Provider]:
    state = Provider()

    async def discovery(_: web.Request) -> web.Response:
        return web.json_response({"issuer": state.issuer, "jwks_uri": f"{state.issuer}/jwks"})

    async def jwks(_: web.Request) -> web.Response:
        state.jwks_fetches += 1
        return web.json_response({"keys": [key.jwk() for key in state.keys]})

    app = web.Application()
    app.router.add_get("/.well-known/openid-configuration", discovery)
    app.router.add_get("/jwks", jwks)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    state.issuer = str(server.make_url("")).rstrip("/")
    yield state
    await server.close()


def token_settings(api_settings: ApiSettings, provider: Provider, **changes: Any) -> ApiSettings:
    values = {
        **api_settings.model_dump(),
        "oidc_issuer": provider.issuer,
        "oidc_client_id": CLIENT_ID,
        "oidc_client_secret": SecretStr("test-secret"),
        "oidc_jwks_refetch_seconds": 0.0,
        **changes,
    }
    return ApiSettings(**values, _env_file=None)


@pytest.fixture
async def client(api_settings: ApiSettings, provider: Provider) -> AsyncIterator[httpx.AsyncClient]:
    """The API (lifespan running) trusting `provider`; requests send no credentials unless told."""
    app = build_api(token_settings(api_settings, provider)).app
    async with app.router.lifespan_context(app), _client(app) as http:
        yield http


def _client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def log_lines() -> Iterator[list[dict[str, Any]]]:
    lines: list[dict[str, Any]] = []
    sink = logger.add(
        lambda m: lines.append({"text": m.record["message"], **m.record["extra"]}), level="INFO"
    )
    yield lines
    logger.remove(sink)


async def test_a_request_without_credentials_is_401_with_www_authenticate(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/mailings")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(
    "problem",
    ["wrong issuer", "wrong audience", "bad signature", "expired", "no expiry", "unknown key id", "garbage"],
)
async def test_a_token_that_is_not_the_providers_valid_one_is_401(
    client: httpx.AsyncClient, provider: Provider, problem: str
) -> None:
    now = int(time.time())
    makers: dict[str, Callable[[], str]] = {
        "wrong issuer": lambda: provider.token(iss="https://elsewhere.example"),
        "wrong audience": lambda: provider.token(aud="another-client"),
        # Signed by a key the provider never published, under the kid of one it did.
        "bad signature": lambda: provider.token(key=SigningKey("forger"), kid="key-1"),
        "expired": lambda: provider.token(iat=now - 3600, exp=now - 120),
        "no expiry": lambda: provider.token(exp=None),
        "unknown key id": lambda: provider.token(key=SigningKey("nobody-knows")),
        "garbage": lambda: "eyJhbGciOiJSUzI1NiJ9.bm90IGpzb24.c2ln",
    }
    token = makers[problem]()
    response = await client.get("/api/v1/mailings", headers=bearer(token))
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == "Bearer"


async def test_a_token_signed_with_a_shared_secret_or_none_is_401(
    client: httpx.AsyncClient, provider: Provider
) -> None:
    claims = {"iss": provider.issuer, "aud": CLIENT_ID, "sub": "x", "exp": int(time.time()) + 60}
    public_modulus = provider.keys[0].jwk()["n"]
    for token in (
        jwt.encode(claims, public_modulus, algorithm="HS256"),
        jwt.encode(claims, "", algorithm="none"),
    ):
        response = await client.get("/api/v1/mailings", headers=bearer(token))
        assert response.status_code == 401


# A POST that changes nothing (the body carries a filter to count): a viewer may use it.
READ_ONLY_POSTS = {"/api/v1/mailings/preview"}


async def test_a_viewer_token_reads_but_every_write_is_403(
    client: httpx.AsyncClient, provider: Provider
) -> None:
    headers = bearer(provider.token(roles=["viewer"]))
    assert (await client.get("/api/v1/mailings", headers=headers)).status_code == 200
    assert (await client.get("/api/v1/clients", headers=headers)).status_code == 200
    assert (await client.get("/api/v1/stats/mailings", headers=headers)).status_code == 200
    schema = (await client.get("/openapi.json")).json()
    writes = [
        (
            method.upper(),
            path.replace("{mailing_id}", "1").replace("{client_id}", "1").replace("{key_id}", "1"),
        )
        for path, operations in schema["paths"].items()
        for method in operations
        if method in ("post", "put", "patch", "delete") and path not in READ_ONLY_POSTS
    ]
    assert len(writes) >= 12
    for method, path in writes:
        response = await client.request(method, path, headers=headers)
        assert response.status_code == 403, (method, path, response.status_code)
    preview: dict[str, object] = {"filter": {"tags": [], "operator_codes": []}}
    assert (await client.post("/api/v1/mailings/preview", json=preview, headers=headers)).status_code == 200


async def test_an_operator_token_writes_mailings_but_cannot_create_api_keys(
    client: httpx.AsyncClient, provider: Provider
) -> None:
    headers = bearer(provider.token(roles=["operator"]))
    created = await client.post("/api/v1/mailings", json=mailing_body(), headers=headers)
    assert created.status_code == 201, created.text
    refused = await client.post("/api/v1/api-keys", json={"name": "mine"}, headers=headers)
    assert refused.status_code == 403
    assert (await client.get("/api/v1/api-keys", headers=headers)).status_code == 403


async def test_an_admin_token_manages_api_keys(client: httpx.AsyncClient, provider: Provider) -> None:
    headers = bearer(provider.token(roles=["admin"]))
    created = await client.post("/api/v1/api-keys", json={"name": "ci", "role": "viewer"}, headers=headers)
    assert created.status_code == 201
    assert created.json()["role"] == "viewer"


async def test_a_valid_token_without_a_known_role_is_403(
    client: httpx.AsyncClient, provider: Provider
) -> None:
    for roles in ([], ["superuser"]):
        response = await client.get("/api/v1/mailings", headers=bearer(provider.token(roles=roles)))
        assert response.status_code == 403


async def test_the_role_claim_and_its_mapping_come_from_settings(
    api_settings: ApiSettings, provider: Provider
) -> None:
    settings = token_settings(
        api_settings,
        provider,
        oidc_role_claim="realm_access.roles",
        oidc_role_map={"mailing-readers": "viewer", "mailing-writers": "operator"},
    )
    app = build_api(settings).app
    async with app.router.lifespan_context(app), _client(app) as http:
        token = provider.token(roles=["admin"], realm_access={"roles": ["offline", "mailing-writers"]})
        assert (
            await http.post("/api/v1/mailings", json=mailing_body(), headers=bearer(token))
        ).status_code == 201
        reader = provider.token(realm_access={"roles": ["mailing-readers"]})
        assert (
            await http.post("/api/v1/mailings", json=mailing_body(), headers=bearer(reader))
        ).status_code == 403
        # The plain "roles" claim no longer counts.
        assert (
            await http.get("/api/v1/mailings", headers=bearer(provider.token(roles=["admin"])))
        ).status_code == 403


async def test_a_token_of_a_rotated_key_is_accepted_after_one_refetch(
    client: httpx.AsyncClient, provider: Provider
) -> None:
    assert (await client.get("/api/v1/mailings", headers=bearer(provider.token()))).status_code == 200
    assert provider.jwks_fetches == 1
    rotated = SigningKey("key-2")
    provider.keys = [rotated, *provider.keys]
    response = await client.get("/api/v1/mailings", headers=bearer(provider.token(key=rotated)))
    assert response.status_code == 200
    assert provider.jwks_fetches == 2
    assert (
        await client.get("/api/v1/mailings", headers=bearer(provider.token(key=rotated)))
    ).status_code == 200
    assert provider.jwks_fetches == 2


async def test_unknown_key_ids_refetch_the_keys_at_most_once_per_interval(
    api_settings: ApiSettings, provider: Provider
) -> None:
    app = build_api(token_settings(api_settings, provider, oidc_jwks_refetch_seconds=3600.0)).app
    async with app.router.lifespan_context(app), _client(app) as http:
        assert (await http.get("/api/v1/mailings", headers=bearer(provider.token()))).status_code == 200
        for n in range(5):
            forged = provider.token(key=SigningKey(f"forged-{n}"))
            assert (await http.get("/api/v1/mailings", headers=bearer(forged))).status_code == 401
    assert provider.jwks_fetches == 1


async def test_an_unreachable_provider_is_503_not_401(api_settings: ApiSettings, provider: Provider) -> None:
    token = provider.token()
    settings = token_settings(api_settings, provider, oidc_issuer="http://127.0.0.1:9")
    app = build_api(settings).app
    async with app.router.lifespan_context(app), _client(app) as http:
        response = await http.get("/api/v1/mailings", headers=bearer(token))
    assert response.status_code == 503
    assert "Retry-After" in response.headers


async def test_api_keys_still_work_beside_tokens(client: httpx.AsyncClient) -> None:
    assert (await client.get("/api/v1/api-keys", headers=bearer(ADMIN_KEY))).status_code == 200


async def test_a_viewer_api_key_reads_but_cannot_write(client: httpx.AsyncClient) -> None:
    created = await client.post(
        "/api/v1/api-keys", json={"name": "dashboard", "role": "viewer"}, headers=bearer(ADMIN_KEY)
    )
    assert created.status_code == 201
    headers = bearer(created.json()["key"])
    assert (await client.get("/api/v1/mailings", headers=headers)).status_code == 200
    assert (await client.post("/api/v1/mailings", json=mailing_body(), headers=headers)).status_code == 403
    assert (await client.delete("/api/v1/clients/1", headers=headers)).status_code == 403


async def test_every_change_is_logged_with_its_actor_and_no_secret(
    client: httpx.AsyncClient, provider: Provider, log_lines: list[dict[str, Any]]
) -> None:
    token = provider.token(roles=["operator"], sub="ada@example.test")
    created = await client.post("/api/v1/mailings", json=mailing_body(), headers=bearer(token))
    assert created.status_code == 201
    await client.post(
        "/api/v1/clients", json={"phone": "79001234567", "timezone": "UTC"}, headers=bearer(ADMIN_KEY)
    )
    changes = [line for line in log_lines if line["text"].startswith("change by")]
    assert [(c["actor"], c["text"]) for c in changes] == [
        ("ada@example.test", "change by ada@example.test: POST /api/v1/mailings -> 201"),
        ("bootstrap admin", "change by bootstrap admin: POST /api/v1/clients -> 201"),
    ]
    inside = [line for line in log_lines if line.get("actor") == "ada@example.test" and line not in changes]
    assert inside, "the lines logged while handling the request carry the actor"
    await client.get("/api/v1/mailings", headers=bearer(provider.token(aud="nope")))
    await client.get("/api/v1/mailings", headers=bearer("mk_not-a-real-key"))
    refusals = [line["text"] for line in log_lines if line["text"].startswith("401")]
    assert len(refusals) == 2
    everything = repr(log_lines)
    assert token not in everything and token.split(".")[2] not in everything
    assert ADMIN_KEY not in everything and "mk_not-a-real-key" not in everything
