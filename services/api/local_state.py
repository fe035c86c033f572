"""What development generates once and keeps in a git-ignored directory: the first admin API key and
the session secret. Production never calls this."""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path

from services.api.auth import new_key

ADMIN_KEY_FILE = "admin-api-key"
SESSION_SECRET_FILE = "session-secret"  # noqa: S105 a file name, not a secret


def ensure_secret(directory: Path, name: str, make: str) -> tuple[str, bool]:
    """The secret kept in directory/name, written with `make` (mode 0600) when absent; True when this
    call wrote it. Exclusive creation makes two processes starting together agree on one value."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = directory / name
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        for _ in range(50):
            value = path.read_text().strip()
            if value:
                return value, False
            time.sleep(0.02)  # the other process is between creating the file and writing it
        raise RuntimeError(f"{path} is empty; delete it to generate a new one") from None
    with os.fdopen(fd, "w") as file:
        file.write(make + "\n")
    return make, True


def ensure_admin_key(directory: Path) -> tuple[str, bool]:
    return ensure_secret(directory, ADMIN_KEY_FILE, new_key())


def ensure_session_secret(directory: Path) -> tuple[str, bool]:
    return ensure_secret(directory, SESSION_SECRET_FILE, secrets.token_urlsafe(48))


def read_admin_key(directory: Path) -> str | None:
    try:
        return (directory / ADMIN_KEY_FILE).read_text().strip() or None
    except FileNotFoundError:
        return None
