"""Security headers on every answer, a strict policy for the admin UI, CORS closed unless configured."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from services.api.app import build_api
from services.api.settings import ApiSettings

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    ("method", "path", "headers"),
    [
        ("GET", "/healthz", {}),
        ("GET", "/api/v1/clients", {}),
        ("GET", "/api/v1/clients", None),
        ("GET", "/admin/", None),
        ("GET", "/admin/static/app/app.css", None),
        ("GET", "/docs/", None),
        ("POST", "/api/v1/mailings", {"Content-Length": str(10 * 1024 * 1024)}),
    ],
)
async def test_every_answer_carries_the_security_headers(
    api: httpx.AsyncClient, method: str, path: str, headers: dict[str, str] | None
) -> None:
    extra = {"Authorization": ""} if headers is not None else {}
    if method == "POST":
        response = await api.request(method, path, content=b"x" * (2 * 1024 * 1024), headers=extra)
        assert response.status_code == 413
    else:
        response = await api.request(method, path, headers={**extra, **(headers or {})})
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["referrer-policy"] == "no-referrer"
    policy = response.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in policy
    if not path.startswith("/docs"):
        assert "script-src 'self';" in policy and "unsafe-eval" not in policy
        # The sign-in provider's origin: logout's answer redirects there (the development one here).
        assert policy.endswith("form-action 'self' http://127.0.0.1:8099")


def test_the_admin_pages_have_no_inline_script_and_tell_htmx_not_to_eval() -> None:
    templates = Path(__file__).resolve().parents[2] / "services/api/admin/templates"
    for template in templates.rglob("*.html"):
        text = template.read_text()
        assert "<script>" not in text and " on" + "click=" not in text and "hx-on" not in text, template
    base = (templates / "base.html").read_text()
    assert '"allowEval": false' in base and '"includeIndicatorStyles": false' in base


async def test_cors_is_closed_unless_origins_are_configured(
    api: httpx.AsyncClient, api_settings: ApiSettings
) -> None:
    preflight = {"Origin": "https://evil.example", "Access-Control-Request-Method": "DELETE"}
    closed = await api.options("/api/v1/clients/1", headers=preflight)
    assert "access-control-allow-origin" not in closed.headers
    got = await api.get("/api/v1/clients", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in got.headers

    app = build_api(api_settings.model_copy(update={"cors_origins": ["https://ops.example"]})).app
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as client:
        allowed = await client.options(
            "/api/v1/clients/1", headers={**preflight, "Origin": "https://ops.example"}
        )
        assert allowed.headers["access-control-allow-origin"] == "https://ops.example"
        refused = await client.options("/api/v1/clients/1", headers=preflight)
        assert "access-control-allow-origin" not in refused.headers
