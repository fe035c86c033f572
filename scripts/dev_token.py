"""Print an access token of the local development provider for one of its users (default `viewer`), the
way a browser would get one (Authorization Code with PKCE), to try the REST API with a provider's token:

    curl -H "Authorization: Bearer $(uv run python -m scripts.dev_token operator)" .../api/v1/mailings
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import secrets
import sys
from urllib.parse import parse_qs, urlsplit

import httpx

from services.api.settings import DEV_OIDC_CLIENT_ID, DEV_OIDC_CLIENT_SECRET, DEV_OIDC_ISSUER

REDIRECT_URI = "http://127.0.0.1/dev-token"


def access_token(issuer: str, user: str) -> str:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    with httpx.Client(base_url=issuer, timeout=10) as http:
        answer = http.post(
            "/oauth2/authorize",
            params={
                "client_id": DEV_OIDC_CLIENT_ID,
                "response_type": "code",
                "redirect_uri": REDIRECT_URI,
                "scope": "openid profile",
                "state": secrets.token_urlsafe(8),
                "nonce": secrets.token_urlsafe(8),
                "code_challenge": challenge,
                "code_challenge_method": "S256",
            },
            data={"sub": user},
        )
        code = parse_qs(urlsplit(answer.headers.get("location", "")).query).get("code", [""])[0]
        if not code:
            raise RuntimeError(f"the provider gave no code ({answer.status_code}): {answer.text[:200]}")
        token = http.post(
            "/oauth2/token",
            data={
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": REDIRECT_URI,
                "client_id": DEV_OIDC_CLIENT_ID,
                "client_secret": DEV_OIDC_CLIENT_SECRET,
                "code_verifier": verifier,
            },
        )
        token.raise_for_status()
        value: str = token.json()["access_token"]
        return value


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("user", nargs="?", default="viewer", help="admin, operator or viewer")
    parser.add_argument("--issuer", default=DEV_OIDC_ISSUER)
    args = parser.parse_args()
    try:
        print(access_token(args.issuer, args.user))
    except (httpx.HTTPError, RuntimeError) as exc:
        print(f"no token from {args.issuer} ({exc}); is `make run` going?", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
