"""`make demo`: against a running `make run`, load sample clients, run a mailing and watch it finish."""

from __future__ import annotations

import argparse
import io
import os
import random
import sys
import time
from datetime import UTC, datetime, timedelta

import httpx

from services.api.local_state import ADMIN_KEY_FILE, read_admin_key
from services.api.settings import ApiSettings
from shared.domain.statuses import FINAL_MESSAGE_STATUSES, MessageStatus

TIMEZONES = [
    "Europe/Kaliningrad", "Europe/Moscow", "Europe/Samara", "Asia/Yekaterinburg", "Asia/Omsk",
    "Asia/Novosibirsk", "Asia/Krasnoyarsk", "Asia/Irkutsk", "Asia/Yakutsk", "Asia/Vladivostok",
    "Asia/Magadan", "Asia/Kamchatka", "Europe/Berlin", "America/New_York", "UTC",
]  # fmt: skip
TAGS = ["retail", "vip", "b2b", "trial", ""]
FINAL = tuple(s.value for s in MessageStatus if s in FINAL_MESSAGE_STATUSES)


def sample_csv(count: int, rng: random.Random) -> bytes:
    out = io.StringIO()
    out.write("phone,operator_code,tag,timezone\n")
    base = rng.randrange(10**6)
    for i in range(count):
        phone = f"79{(base + i) % 10**9:09d}"
        out.write(f"{phone},,{rng.choice(TAGS)},{rng.choice(TIMEZONES)}\n")
    return out.getvalue().encode()


def to_every_client_now(text: str, hours: float = 2.0) -> dict[str, object]:
    """The body of a mailing to every client, starting now and ending `hours` later, with no window."""
    now = datetime.now(UTC)
    return {
        "text": text,
        "start_at": now.isoformat(),
        "end_at": (now + timedelta(hours=hours)).isoformat(),
        "filter": {"tags": [], "operator_codes": []},
        "window": None,
    }


def bar(done: int, total: int, width: int = 40) -> str:
    filled = width * done // max(total, 1)
    return "[" + "#" * filled + "." * (width - filled) + f"] {done}/{total}"


def admin_key(settings: ApiSettings) -> str | None:
    """MAILING_BOOTSTRAP_API_KEY (environment or .env), else the key `make run` generated."""
    if settings.bootstrap_api_key is not None:
        return settings.bootstrap_api_key.get_secret_value()
    return read_admin_key(settings.local_state_dir)


def main() -> int:
    settings = ApiSettings()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--api", default=os.environ.get("MAILING_DEMO_API", "http://127.0.0.1:8000"))
    parser.add_argument("--key", default=admin_key(settings), help="an operator or admin API key")
    parser.add_argument("--clients", type=int, default=3000)
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args()
    if not args.key:
        print(
            f"no API key: set MAILING_BOOTSTRAP_API_KEY, pass --key, or start `make run` once so that it "
            f"writes {settings.local_state_dir / ADMIN_KEY_FILE}",
            file=sys.stderr,
        )
        return 1
    rng = random.Random()  # noqa: S311 demo data, not security
    client = httpx.Client(base_url=args.api, headers={"Authorization": f"Bearer {args.key}"}, timeout=60)
    try:
        client.get("/healthz").raise_for_status()
    except httpx.HTTPError as exc:
        print(
            f"the API does not answer at {args.api} ({exc}); start it with `make run` first", file=sys.stderr
        )
        return 1
    files = {"file": ("clients.csv", sample_csv(args.clients, rng), "text/csv")}
    imported = client.post("/api/v1/clients/import", files=files)
    if imported.status_code in (401, 403):
        print(
            f"the API refused the key ({imported.status_code}: {imported.json().get('detail')})",
            file=sys.stderr,
        )
        return 1
    imported.raise_for_status()
    print(f"clients imported: {imported.json()}")
    mailing = client.post("/api/v1/mailings", json=to_every_client_now("Demo: your discount is waiting"))
    mailing.raise_for_status()
    mailing_id = mailing.json()["id"]
    print(f"mailing {mailing_id} created; following its progress")
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        stats = client.get(f"/api/v1/mailings/{mailing_id}/stats").json()
        counts, total = stats["counts"], stats["total"]
        final = sum(counts.get(s, 0) for s in FINAL)
        line = " ".join(f"{k}={v}" for k, v in counts.items() if v)
        print(f"\r{bar(final, total)} {line}   ", end="", flush=True)
        if total and final == total:
            print(f"\nmailing {mailing_id} is done: {line}")
            return 0
        time.sleep(0.5)
    print("\ngave up waiting; see the service logs", file=sys.stderr)
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
