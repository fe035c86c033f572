"""Bearer tokens for the stand-in; `python -m services.probe_stub.token` prints one for local runs."""

import time
import warnings

import jwt
from jwt.warnings import InsecureKeyLengthWarning

from services.probe_stub.settings import ProbeStubSettings


def make_token(
    secret: str,
    subject: str = "mailing-sender",
    ttl_seconds: int | None = None,
    *,
    issued_at: float | None = None,
) -> str:
    now = int(time.time() if issued_at is None else issued_at)
    claims: dict[str, object] = {"sub": subject, "iat": now}
    if ttl_seconds is not None:
        claims["exp"] = now + ttl_seconds
    with warnings.catch_warnings():
        # The local default secret is short on purpose: the stand-in guards nothing.
        warnings.simplefilter("ignore", InsecureKeyLengthWarning)
        return jwt.encode(claims, secret, algorithm="HS256")


def main() -> None:
    print(make_token(ProbeStubSettings().jwt_secret))


if __name__ == "__main__":
    main()
